"""Query-like anchors from the literature itself, and hard negatives from the lexical index.

Researchers do not type titles: they type a few headings' worth of words or a sentence-long
question. An article already carries such queries about itself:

* ``mesh`` — a few of its MeSH headings (the indexers' words for what it is about);
* ``keywords`` — a few of its author keywords;
* ``sentence`` — one sentence of its abstract, whose positive is the article *without that
  sentence* (the inverse cloze task: the model has to recognise the context a claim comes
  from, not find the same words again).

An article without an abstract (letters, editorials, many older records) has its
headings and keywords as anchors, and its title as their positive.

Its title (→ abstract) is the older ``title_abstract`` pair of :mod:`retrain.pairs`.
Every choice (which headings, which sentence) is seeded by the article's PMID and the seed,
so a round's pairs are reproducible.

Hard negatives come from a lexical ranker (the application floor passes the published BM25
index's ``search``; retrain imports no index code): for an anchor, a document BM25 ranks
high that is not the anchor's article. The very top of BM25 is skipped (``skip``): on a
topic-dense corpus the best lexical match besides the positive is often just as relevant
(another study of the same question), and pushing it away would teach the wrong thing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

__all__ = [
    "ANCHOR_KINDS",
    "Anchor",
    "LexicalSearch",
    "article_anchors",
    "heldout_anchor",
    "pick_negative",
    "sentences",
]

#: Kinds of query-like anchor, besides the title.
ANCHOR_KINDS = ("mesh", "keywords", "sentence")

#: A lexical ranker: ``(query, k)`` → up to ``k`` ``(pmid, score)``, best first (the
#: signature of :meth:`ranking.lexical.LexicalIndex.search`).
LexicalSearch = Callable[[str, int], Sequence[tuple[int, float]]]

#: Most headings or keywords in one anchor.
MAX_TERMS = 3
#: Fewest words of a sentence anchor (shorter ones are headings or fragments).
MIN_SENTENCE_WORDS = 6

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


@dataclass(frozen=True)
class Anchor:
    """A query-like text about one article, and the document text it should find."""

    kind: str
    text: str
    #: The article's title and abstract as the positive sees them (``sentence`` anchors:
    #: the abstract without the sentence).
    title: str
    abstract: str


def _unit(*parts: object) -> float:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _seeded_order(items: Sequence[str], *salt: object) -> list[str]:
    return sorted(items, key=lambda t: _unit(*salt, t))


def sentences(text: str) -> list[str]:
    """The sentences of an abstract (split after ``.``, ``!``, ``?`` before a capital)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def article_anchors(
    pmid: int,
    title: str,
    abstract: str,
    mesh: Sequence[str],
    keywords: Sequence[str],
    *,
    seed: int,
) -> list[Anchor]:
    """The query-like anchors of one article (at most one of each kind).

    Example:
        >>> a = article_anchors(1, "BRCA1 in breast cancer",
        ...     "BRCA1 is a tumour suppressor gene. Its loss raises the risk of cancer.",
        ...     ["Breast Neoplasms"], [], seed=13)
        >>> [(x.kind, x.text) for x in a]
        [('mesh', 'Breast Neoplasms'), ('sentence', 'Its loss raises the risk of cancer.')]
        >>> a[1].abstract
        'BRCA1 is a tumour suppressor gene.'
    """
    out: list[Anchor] = []
    for kind, terms in (("mesh", mesh), ("keywords", keywords)):
        unique = list(dict.fromkeys(t.strip() for t in terms if t and t.strip()))
        if unique:
            chosen = _seeded_order(unique, seed, pmid, kind)[:MAX_TERMS]
            out.append(Anchor(kind, " ".join(chosen), title, abstract))
    parts = sentences(abstract)
    usable = [s for s in parts if len(s.split()) >= MIN_SENTENCE_WORDS]
    if usable and (title or len(parts) > 1):
        chosen_sentence = _seeded_order(usable, seed, pmid, "sentence")[0]
        rest = " ".join(s for s in parts if s != chosen_sentence)
        out.append(Anchor("sentence", chosen_sentence, title, rest))
    return out


def heldout_anchor(
    pmid: int,
    title: str,
    abstract: str,
    mesh: Sequence[str],
    keywords: Sequence[str],
    *,
    seed: int,
) -> Anchor | None:
    """One query-like anchor of a held-out article (its kind chosen by a stable hash)."""
    anchors = article_anchors(pmid, title, abstract, mesh, keywords, seed=seed)
    if not anchors:
        return None
    return anchors[int(_unit(seed, pmid, "heldout-kind") * len(anchors))]


def pick_negative(
    ranked: Sequence[tuple[int, float]],
    exclude: AbstractSet[int],
    *,
    skip: int,
    key: tuple[object, ...],
    allowed: Callable[[int], bool] | None = None,
) -> int | None:
    """A hard negative among a lexical ranking: one of the ranked PMIDs, not excluded, after
    the first ``skip`` of them, and ``allowed`` (chosen by a stable hash of ``key``);
    ``None`` if none is left.

    Example:
        >>> pick_negative([(7, 9.0), (1, 8.0), (3, 5.0), (4, 2.0)], {7}, skip=1, key=(0,))
        3
    """
    candidates = [pmid for pmid, _ in ranked if pmid not in exclude][skip:]
    if allowed is not None:
        candidates = [pmid for pmid in candidates if allowed(pmid)]
    if not candidates:
        return None
    # lean towards the higher ranks: the square of a uniform number picks rank r with
    # probability falling like 1/sqrt(r)
    return candidates[int(_unit(*key) ** 2 * len(candidates))]
