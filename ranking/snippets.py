"""Abstract snippets with the query's terms highlighted, for result lists.

:func:`snippet` picks the window of whole sentences (at most :data:`SNIPPET_CHARS`
characters) holding the most of the query's quoted phrases, then the most weight of
distinct query terms — earliest window on a tie,
the opening sentences when no term occurs — and returns it with the character spans of
the words to highlight. A word is highlighted when one of its index terms (the lexical
index's own analysis: :func:`ranking.lexical.query_terms`, so ``vaccines`` and
``vaccination`` both match the stem ``vaccin``, ``IL6`` matches ``IL-6``) is one of the
terms asked for. Spans count Unicode code points (Python string indices; in JavaScript
slice ``Array.from(text)``), and are never rendered as markup here: the page builds text
nodes.

Which terms: :func:`highlight_terms` takes the matched terms of a hit's lexical
explanation (what BM25 actually matched) and falls back to the query's own terms.

Example:
    >>> s = snippet("Malaria kills. Vaccines protect children from malaria.",
    ...             {"vaccin": 1.0, "malaria": 1.0})
    >>> s.text, [s.text[a:b] for a, b in s.highlights]
    ('Malaria kills. Vaccines protect children from malaria.', ['Malaria', 'Vaccines', 'malaria'])
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SNIPPET_CHARS", "Snippet", "highlight_spans", "highlight_terms", "snippet"]

#: Longest snippet, in characters (ellipses not counted).
SNIPPET_CHARS = 320

#: A letter or digit with the combining marks after it (an accent of decomposed text,
#: NFD, belongs to its letter: a highlight never splits a character).
_CHAR = r"[^\W_][\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]*"
#: A word as the lexical index reads one: letters/digits joined by hyphens or dashes.
_WORD = re.compile(rf"(?:{_CHAR})+(?:[-\u2010-\u2013\u2212](?:{_CHAR})+)*")
#: Sentence ends: . ! ? (optionally followed by a closing quote or bracket) then space.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
ELLIPSIS = "…"


@dataclass(frozen=True)
class Snippet:
    """A piece of text and the ``[start, end)`` code-point spans to highlight in it."""

    text: str
    highlights: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "highlights": [list(h) for h in self.highlights]}


@functools.lru_cache(maxsize=65536)
def _word_terms(word: str) -> frozenset[str]:
    from ranking.lexical import query_terms

    return frozenset(query_terms(word))


def _matches(text: str, terms: Mapping[str, float]) -> list[tuple[int, int, frozenset[str]]]:
    """``(start, end, matched terms)`` of every word of ``text`` matching ``terms``."""
    if not terms:
        return []
    out = []
    keys = frozenset(terms)
    for m in _WORD.finditer(text):
        hit = _word_terms(m.group()) & keys
        if hit:
            out.append((m.start(), m.end(), frozenset(hit)))
    return out


def highlight_spans(text: str, terms: Mapping[str, float]) -> tuple[tuple[int, int], ...]:
    """The spans of the words of ``text`` (a title, say) matching ``terms``."""
    return tuple((a, b) for a, b, _ in _matches(text or "", terms))


def _sentences(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return [(a, b) for a, b in spans if b > a]


def _window(
    sentences: list[tuple[int, int]],
    words: list[tuple[int, int, frozenset[str]]],
    terms: Mapping[str, float],
    limit: int,
    phrase_tokens: list[list[str]] | None = None,
    phrases: Sequence[tuple[str, ...]] = (),
) -> tuple[int, int]:
    """The run of whole sentences, no longer than ``limit`` (but at least one sentence),
    holding the most of ``phrases`` (``phrase_tokens``: each sentence's phrase terms),
    then with the most weight of distinct terms; the earliest, then the longest, on a
    tie."""
    # (phrases, weight, -start, end): most, most, earliest, longest
    best: tuple[int, float, int, int] | None = None
    # a word never spans two sentences (they are cut at white space): a window's terms are
    # those of its sentences; fsum: the weight does not depend on the set's order (which
    # varies with the process's string hashing)
    inside = [{t for a, b, ts in words if s <= a and b <= e for t in ts} for s, e in sentences]
    for i, (start, _) in enumerate(sentences):
        found: set[str] = set()
        tokens: list[str] = []
        for j in range(i, len(sentences)):
            if j > i and sentences[j][1] - start > limit:
                break
            end = sentences[j][1]
            found |= inside[j]
            held = 0
            if phrases and phrase_tokens is not None:
                # a phrase held within a sentence (the index takes one across a full stop
                # too, but a snippet shows the phrase only where it reads as one)
                tokens += [_SENTENCE_GAP, *phrase_tokens[j]]
                held = sum(_holds(tokens, p) for p in phrases)
            key = (held, math.fsum(terms[t] for t in found), -start, end)
            if best is None or key > best:
                best = key
    assert best is not None
    return -best[2], best[3]


#: Between two sentences' phrase terms: no phrase holds it.
_SENTENCE_GAP = "\u241e"


def _holds(tokens: list[str], phrase: tuple[str, ...]) -> bool:
    """Whether ``phrase`` occurs in ``tokens`` one term after the other."""
    n = len(phrase)
    return any(tuple(tokens[i : i + n]) == phrase for i in range(len(tokens) - n + 1))


def _cut(
    text: str,
    start: int,
    end: int,
    words: list[tuple[int, int, frozenset[str]]],
    limit: int,
    phrases: Sequence[tuple[str, ...]] = (),
) -> tuple[int, int]:
    """``[start, end)`` shortened to ``limit`` characters around its first phrase of
    ``phrases``, else its first match, at word boundaries."""
    if end - start <= limit:
        return start, end
    first = _phrase_at(text, start, end, phrases)
    if first is None:
        first = next((a for a, _, _ in words if start <= a < end), start)
    lo = max(start, min(first - limit // 4, end - limit))
    if lo > start:  # begin at a whole word: the one lo falls in, else the next
        m = next((w for w in _WORD.finditer(text, start, end) if w.end() > lo), None)
        lo = m.start() if m is not None else lo
    hi = min(end, lo + limit)
    if hi < end:  # end after a whole word
        cut = text.rfind(" ", lo, hi)
        hi = cut if cut > lo else hi
    return lo, hi


def _phrase_at(
    text: str, start: int, end: int, phrases: Sequence[tuple[str, ...]]
) -> int | None:
    """Where the first occurrence of one of ``phrases`` begins in ``text[start:end]``."""
    if not phrases:
        return None
    from ranking.lexical import phrase_terms

    terms: list[str] = []
    at: list[int] = []
    for m in _WORD.finditer(text, start, end):
        for term in phrase_terms(m.group()):
            terms.append(term)
            at.append(m.start())
    found = [
        i for p in phrases for i in range(len(terms) - len(p) + 1)
        if tuple(terms[i : i + len(p)]) == p
    ]
    return at[min(found)] if found else None


def snippet(
    text: str,
    terms: Mapping[str, float],
    *,
    limit: int = SNIPPET_CHARS,
    phrases: Sequence[tuple[str, ...]] = (),
) -> Snippet | None:
    """The best sentence window of ``text`` for ``terms`` (index term → weight) and the
    query's quoted ``phrases`` (:func:`ranking.lexical.query_phrases`): the window holding
    the most phrases, then the most weight of terms.

    Returns ``None`` for an empty text. The snippet starts/ends with ``…`` where it does
    not start/end the text; its spans point into the snippet's own text.
    """
    text = (text or "").strip()
    if not text:
        return None
    words = _matches(text, terms)
    sentences = _sentences(text)
    tokens = None
    if phrases:
        from ranking.lexical import phrase_terms

        tokens = [list(phrase_terms(text[a:b])) for a, b in sentences]
    start, end = _window(sentences, words, terms, limit, tokens, phrases)
    start, end = _cut(text, start, end, words, limit, phrases)
    head = ELLIPSIS + " " if start > 0 else ""
    tail = " " + ELLIPSIS if end < len(text) else ""
    shift = len(head) - start
    spans = tuple((a + shift, b + shift) for a, b, _ in words if a >= start and b <= end)
    return Snippet(head + text[start:end] + tail, spans)


def highlight_terms(explanation: Mapping[str, Any], query: str) -> dict[str, float]:
    """The index terms to highlight for a hit and their weights.

    The matched terms of the hit's lexical explanation (BM25 weights) when it has any,
    else the query's own terms (their boosts): a semantic hit may use no query word at
    all, and then nothing is highlighted.
    """
    lexical = (explanation.get("components") or {}).get("lexical") or {}
    matched = {t["term"]: float(t["weight"]) for t in lexical.get("terms") or () if t.get("term")}
    if matched:
        return matched
    from ranking.lexical import query_terms

    return dict(query_terms(query)) if query else {}
