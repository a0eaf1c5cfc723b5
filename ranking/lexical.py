"""The lexical index beside FAISS: biomedical tokens, BM25 over title, abstract, MeSH, keywords.

**Engine: tantivy** (PyPI ``tantivy``, the official bindings of the Rust library that
Quickwit maintains). Chosen over the alternatives for what an index version needs here:

* *versioned, atomic publish at a cost proportional to the change.* A tantivy index is a
  folder of write-once segment files; deletions go to new ``<segment>.<opstamp>.del``
  files and ``meta.json`` is replaced by rename. So a new version starts as **hard links**
  of the previous version's files (:func:`link_copy`: no bytes copied), then takes the
  night's deletions and additions and commits: only the new segments (and the occasional
  merge) are written, and the previous version's folder stays byte-for-byte as it was, for
  readers still on it and for rollback. The folder lives inside the version folder that
  is renamed into place with the FAISS files, so one rename publishes both.
* *the store is SQLite or PostgreSQL, interchangeably.* SQLite FTS5 and PostgreSQL full
  text would tie the lexical index to one database (two code paths, two rankings, neither
  versioned with the vector index: a rollback could not restore it); tantivy is the same
  files and the same BM25 whatever the store.
* *scale.* Segments on disk, memory-mapped, with a write heap of a few hundred MB: all of
  PubMed (~38M abstracts) fits one machine. ``bm25s`` keeps the whole matrix in memory
  and can only be rebuilt, not updated.
* *BM25 with field boosts*, over postings that scale to all of PubMed. tantivy's own
  BM25 constants are fixed (k1 = 1.2, b = 0.75), so it only *finds* the candidates; they
  are scored with our BM25, whose k1 and b are settings (see below).

**Scoring** (:class:`Bm25`, :meth:`LexicalIndex.search`). tantivy returns its best
:data:`FIRST_STAGE` (or ``k``, if more) matches; each is then scored with BM25 from what
was stored with it at index time: its field lengths (fast fields ``n_title`` …, column
reads) and the frequency of each of its terms per field (stored field ``tf``: per distinct
term a 16-byte record, the term's 64-bit key and its four frequencies, :data:`TF_RECORD`).
All candidates are scored at once: their records joined into one array, the query terms'
found by key, the weights computed and summed per document by numpy (the same operations
in the same order as one by one, so the same floats); only the explanations of the shown
hits are built term by term. A term's weight in a
document is ``Σ_field query_boost × FIELD_BOOSTS[field] × idf × (k1 + 1) × tf / (tf + k1 ×
(1 − b + b × len / avg_len))`` with ``idf = ln(1 + (N − df + 0.5) / (df + 0.5))`` (tantivy's
document frequency of the term in the field; ``N`` and the average field lengths are kept
in :data:`STATS_FILE`, updated with each refresh in proportion to its change). So the
per-query cost is proportional to the candidates, never to the corpus, and the
explanation (:meth:`LexicalIndex.explain`) lists the very numbers the score adds up.
With k1 = 1.2, b = 0.75 the score is tantivy's own (up to its one-byte length encoding).
The stored counts cost disk: on the BioASQ corpus (1,328 short records) the index is 688 KB
instead of 420 KB, and building it 0.62 s instead of 0.48 s (format 2, text lines; the
records of format 3 take 3.5 MB where those took 3.1 MB on 4,950 generated abstracts).
Per query the cost is then mostly tantivy's fetch of each candidate's stored document
(~5–10 µs each).

**Tokenisation** (:func:`bio_tokens`, the same for documents and queries). Text is
NFKC-normalised, lower-cased and folded to unaccented letters; Greek letters become their
names (``α`` → ``alpha``, ``TNF-α`` and ``TNFα`` both read ``tnf-alpha``); en dashes and
minus signs are hyphens; trade marks (``™``, ``®``) separate words. A *word* is a run of
letters and digits joined by hyphens; its *segments* split it at hyphens and at
letter/digit boundaries (``IL-6`` → ``il``, ``6``; ``BRCA1`` → ``brca``, ``1``). A document
is indexed under every segment and every joined run of adjacent segments (``COVID-19`` →
``covid``, ``19``, ``covid19``; ``IL6`` and ``IL-6`` both → ``il``, ``6``, ``il6``); a
query word is looked up joined (``IL-6`` and ``IL6`` → ``il6``) and, with a lower boost
(:data:`SEGMENT_BOOST`), by its segments, so a query matches across the spellings (``alpha
synuclein`` finds ``α-synuclein``). Then tantivy drops English stop words and applies the
English Snowball stemmer (``effects`` → ``effect``). An abbreviation in capitals that
spells a stop word (``NO`` nitric oxide, ``AS`` ankylosing spondylitis, ``AT``, ``OR``)
stays in capitals, a term of its own that the stop filter passes (joined into a longer
word it is lower case: ``NO-induced`` → ``NO``, ``induced``, ``noinduced``; a plural
``ORs`` is ``OR``); in a text of several words wholly in capitals, one of six or more
letters (``ROLE OF NO IN SEPSIS``, not ``AS HLA-B27``), and in the section labels of a
structured abstract (``PRACTICE OR POLICY:``) every word is lower-cased, and a capital
``AND``, ``OR`` or ``NOT`` between two query words is PubMed's operator, not a term.
``/`` separates words (``CRISPR/Cas9`` → ``crispr``, ``cas9``).

Public API (for search, the benchmark and retraining's hard negatives):

Example:
    >>> lex = open_lexical(settings)  # doctest: +SKIP
    >>> lex.search("IL-6 signalling in sepsis", 10)  # doctest: +SKIP
    [(31415926, 17.2), ...]
    >>> lex.explain("IL-6 sepsis", [31415926])[31415926].terms  # doctest: +SKIP
    (LexicalTerm(term='il6', weight=9.1, fields={'title': 6.0, 'abstract': 3.1}), ...)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from litpulse.core import db
from litpulse.core.errors import ConsistencyError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from litpulse.core.text import GREEK, fold
from ranking import quotes
from ranking.authors import AuthorClause, author_keys, split_authors, tidy_left_over
from ranking.models import published_index_row

__all__ = [
    "Bm25",
    "FIELD_BOOSTS",
    "FIRST_STAGE",
    "FORMAT",
    "LEXICAL_DIR",
    "IDS_FILE",
    "LexicalIndex",
    "LexicalMatch",
    "LexicalPlan",
    "LexicalTerm",
    "bio_tokens",
    "build_lexical",
    "constrains",
    "changed_docs",
    "doc_hash",
    "has_lexical",
    "link_copy",
    "open_lexical",
    "open_lexical_at",
    "plan_lexical",
    "phrase_forms",
    "phrase_terms",
    "query_authors",
    "exclusion_forms",
    "query_exclusions",
    "query_phrases",
    "query_problems",
    "query_terms",
    "quoted",
    "read_ids",
    "number_forms",
    "split_exclusions",
    "STATS_FILE",
    "text_changed_ids",
    "text_watermark",
    "word_terms",
]

logger = logging.getLogger(__name__)

#: Folder of the tantivy index inside an index version's folder.
LEXICAL_DIR = "lexical"
#: Version of the schema and tokenisation: a base of another format is rebuilt, not updated.
#: (2: analysed terms indexed as given, field lengths and term frequencies stored;
#: 3: the frequencies as binary records, :data:`TF_RECORD`; 4: abbreviations in capitals
#: that spell a stop word kept as terms in capitals, ``NO`` nitric oxide; 5: ø, ß, æ...
#: folded, apostrophe-like marks and invisible format characters inside a word dropped;
#: 6: the phrase field, :data:`PHRASE_FIELD`, for quoted phrases and NOT; the letter A
#: after a word a term in capitals, ``hepatitis A``; 7: the author field,
#: :data:`AUTHOR_FIELD`; 8: the word field, :data:`WORD_FIELD`, for NOT.)
FORMAT = 8
#: Formats an opened index is searched in: 3 and 4 differ from 5 only by the terms they
#: lack or spell otherwise (``NO``; ``tromsø``), 5 from 6 by its missing positions
#: (a query with a quoted phrase is refused on it: :meth:`LexicalIndex.phrases`) and 6
#: from 7 by its missing authors (a query naming an author is refused on it), 7 from 8 by
#: its missing words (NOT matches stemmed words on it, as it did), so search goes on until
#: a refresh rebuilds.
READABLE_FORMATS = frozenset({3, 4, 5, 6, 7, FORMAT})
#: The first format with the phrase field.
PHRASE_FORMAT = 6
#: The first format with the author field.
AUTHOR_FORMAT = 7
#: The first format with the word field.
WORD_FORMAT = 8
#: The field author clauses (``Smith J[au]``, :mod:`ranking.authors`) are looked up in:
#: each of an article's author keys (:func:`ranking.authors.author_keys`) as one raw
#: term. Only filters: it scores nothing.
AUTHOR_FIELD = "author"
#: The field quoted phrases and NOT are looked up in: each value of each text field (the
#: title, the abstract, each MeSH heading, each keyword) as the segments of its words with
#: their positions (:func:`analysed`), so a compound matches in any spelling
#: (``non-small-cell``, ``non small cell``) and a phrase never spans two values. Only
#: filters: it scores nothing.
PHRASE_FIELD = "phrase"
#: The field NOT is looked up in: the values of :data:`PHRASE_FIELD` with their words as
#: written (folded, stop words out), not stemmed; NOT looks up a word in its singular and
#: plural forms (:func:`number_forms`): ``NOT medication`` excludes *medication* and
#: *medications*, not *medical* (both ``medic`` to the stemmer). Only filters: it scores
#: nothing.
WORD_FIELD = "word"
#: BM25 multiplier of each text field (a term's weight is the sum over the fields).
FIELD_BOOSTS: dict[str, float] = {"title": 2.0, "abstract": 1.0, "mesh": 1.0, "keywords": 1.0}
#: The text fields, in the order of the frequencies of a ``tf`` record.
TEXT_FIELDS = ("title", "abstract", "mesh", "keywords")
#: Matches tantivy's BM25 finds before they are scored with :class:`Bm25` (more when a
#: caller asks for more): the first stage's ranking (k1 = 1.2, b = 0.75) decides which
#: documents are scored, ours their order.
FIRST_STAGE = 100
#: The file in the lexical folder with the document count and field lengths' totals.
STATS_FILE = "litpulse_bm25.json"
#: Boost of the segments of a compound query word (``IL-6`` → ``il``, ``6``) beside the
#: whole word (1.0): they widen recall (``alpha synuclein`` for ``α-synuclein``) without
#: counting one word three times.
SEGMENT_BOOST = 0.3
#: Words of the form of a question rather than its topic ("What is the role of ...",
#: "Which genes does ..."), dropped from queries beside tantivy's English stop words —
#: unless typed in capitals (ALL, the leukaemia) in a query not wholly in capitals.
QUERY_STOP_WORDS = frozenset(
    "what which who whom whose when where why how does do did done can could should would "
    "may might is are was were been being has have had its it they them this that these "
    "those any all most more some i me my we our you your he she his her from about also "
    "than so very list describe".split()
)
#: Segments of one word beyond which only the segments and the whole word are indexed.
MAX_JOIN = 4
#: Write heap of one refresh, in bytes (tantivy needs at least 15 MB per thread).
WRITER_HEAP = 256_000_000
#: Updates below this many documents are written by one thread with a quarter of the heap.
SMALL_UPDATE = 50_000
#: PMIDs per query when documents are looked up by PMID.
PMID_CHUNK = 1000
#: (field, term) pairs whose idf an opened index keeps (then it starts afresh).
IDF_CACHE = 100_000
#: tantivy's tokenizer of the text fields: the text given is already analysed.
_TOKENIZER = "litpulse_terms"

_WORD = re.compile(r"[^\W_]+(?:-+[^\W_]+)*")
_SEGMENT = re.compile(r"[^\W\d_]+|\d+")
#: Words of two or more letters (the capitals of an abbreviation, say).
_CAPS = re.compile(r"(?<![^\W\d_])[^\W\d_]{2,}(?![^\W\d_])")
#: Words of 2-5 ASCII capitals (tantivy's English stop words are such words in lower case),
#: or their plural (``ORs``): group 1 is the word; or the letter ``A`` after a word and a
#: space or hyphen (``hepatitis A``, ``vitamin A``, ``influenza A``): group 2.
_CAPS_WORD = re.compile(
    r"(?<![^\W\d_])([A-Z]{2,5})s?(?![^\W\d_])|(?<=[^\W_][ \t-])(A)(?![^\W\d_])"
)
#: The word that ends a text, before its last spaces or hyphens (group 1).
_LAST_WORD = re.compile(r"([^\W_]+)[ \t-]+$")
#: Words a letter names a kind of (``hepatitis A``, ``protein kinase A``, ``type A``): in a
#: text in Title Case (``Towards A Cure``) only after these is ``A`` the letter.
LETTER_WORDS = frozenset(
    "hepatitis vitamin influenza type group protein kinase class grade phase factor "
    "hemophilia haemophilia toxin botulinum complex subunit receptor site domain chain strain "
    "serotype serogroup clade genotype subtype lineage panel part appendix table figure "
    "plan zone category stage tier schedule arm cohort cluster variant allele form "
    "isoform region loop helix fragment peptide antigen immunoglobulin iga ige igg igm "
    "lipoprotein apolipoprotein coenzyme phospholipase cyclin lamin dystrophy syndrome "
    "streptococcus streptococci".split()
)
#: Words of four letters or more (telling a text in Title Case).
_LONG_WORDS = re.compile(r"[^\W\d_]{4,}")


def _title_case(text: str) -> bool:
    """A text whose words of four letters or more are mostly capitalised (three or more
    of them, seven in ten): a title in Title Case, whose capitals say nothing of an
    abbreviation either."""
    words = _LONG_WORDS.findall(text)
    return len(words) >= 3 and sum(w[0].isupper() for w in words) >= 0.7 * len(words)
#: A run of six or more letters: in a text wholly in capitals, a word (``EFFECT``,
#: ``SEPSIS``) rather than an abbreviation.
_LONG_WORD = re.compile(r"[^\W\d_]{6,}")
#: The label of a section of a structured abstract (``LABEL: text`` at a line's start, as
#: :attr:`ingest.records.Record.abstract` writes it): ``MATERIALS AND METHODS:``.
_LABEL = re.compile(r"^[^\S\n]*[A-Z][A-Z0-9 ,;&/()'-]*:", re.MULTILINE)
#: PubMed's operators typed between two query words (``COPD OR emphysema``): not terms.
_OPERATORS = frozenset({"AND", "OR", "NOT"})
#: Lower-case Greek letters, left out when telling whether a text is wholly in capitals.
_NO_GREEK = str.maketrans(dict.fromkeys(GREEK))


# --------------------------------------------------------------------------- tokenisation


def _shouted(text: str) -> bool:
    """A text of several words wholly in capitals (an old title, a query typed so), one of
    them a word of six or more letters (``ROLE OF NO IN SEPSIS``): its capitals say nothing
    of abbreviations. Lower-case Greek letters do not count (``TNF-α``); a text of short
    words only (``AS HLA-B27``, ``NO AND ROS``) is abbreviations; one word (``AS-ODN``) is
    never shouted."""
    return (
        len(text.split()) > 1
        and text.translate(_NO_GREEK).isupper()
        and _LONG_WORD.search(text) is not None
    )


@functools.lru_cache(maxsize=1024)
def _is_stop_word(word: str) -> bool:
    """Whether tantivy's analyzer drops ``word`` (lower case) as an English stop word."""
    return not _analyzer().analyze(word)


def _lower(text: str) -> str:
    """``text`` in lower case but for abbreviations in capitals that spell an English stop
    word (``NO`` nitric oxide, ``AS`` ankylosing spondylitis, ``AT``, ``OR``): in lower
    case the stop filter would drop them, in capitals they pass it as terms of their own
    (no lower-case word is spelt so), their plural too (``ORs`` → ``OR``); so does the
    letter ``A`` after a word that is no stop word (``hepatitis A``, not ``Of A``). A text
    wholly in capitals (:func:`_shouted`) and the section labels of a structured abstract
    (``PRACTICE OR POLICY:``) are lower-cased whole."""
    if _shouted(text):
        return text.lower()
    labels = [m.span() for m in _LABEL.finditer(text)] if ":" in text else []
    parts: list[str] = []
    last = 0
    for match in _CAPS_WORD.finditer(text):
        word = match.group(1) or match.group(2)
        if not _is_stop_word(word.lower()):
            continue
        if match.group(2) is not None:  # A: after a word that is no stop word
            before = _LAST_WORD.search(text, max(0, match.start() - 64), match.start())
            if before is None or _is_stop_word(before.group(1).lower()):
                continue
            if before.group(1).lower() not in LETTER_WORDS and _title_case(text):
                continue  # Towards A Cure: the article, capitalised as every word is
        if any(a <= match.start() < b for a, b in labels):
            continue
        parts += (text[last : match.start()].lower(), word)
        last = match.end()
    if not parts:
        return text.lower()
    parts.append(text[last:].lower())
    return "".join(parts)


def _normalise(text: str) -> str:
    return fold(text, _lower)


def _words(text: str) -> Iterator[list[str]]:
    """The segments of each word of ``text``."""
    for match in _WORD.finditer(_normalise(text)):
        segments = [s for part in match.group().split("-") for s in _SEGMENT.findall(part)]
        if segments:
            yield segments


def bio_tokens(text: str, *, query: bool = False) -> list[str]:
    """Tokens of ``text`` before stop words and stemming (see the module docstring).

    Args:
        text: Any text.
        query: Query mode: each word joined, then its segments when it has several
            (they weigh :data:`SEGMENT_BOOST` in a query); else the document mode, every
            segment and every joined run of adjacent segments.

    Example:
        >>> bio_tokens("IL-6 and TNF-α")
        ['il', '6', 'il6', 'and', 'tnf', 'alpha', 'tnfalpha']
        >>> bio_tokens("IL6 and TNFα", query=True)
        ['il6', 'il', '6', 'and', 'tnfalpha', 'tnf', 'alpha']
    """
    return _tokens(_words(text), query=query)


def _tokens(words: Iterable[list[str]], *, query: bool = False) -> list[str]:
    """:func:`bio_tokens` of the segments of each word (:func:`_words`)."""
    out: list[str] = []
    for seg in words:
        if len(seg) == 1:
            out.append(seg[0])
        elif query:
            out.extend([_joined(seg), *seg])
        elif len(seg) > MAX_JOIN:
            out.extend([*seg, _joined(seg)])
        else:
            out.extend(
                _joined(seg[i : i + n])
                for n in range(1, len(seg) + 1)
                for i in range(len(seg) - n + 1)
            )
    return out


def _joined(segments: list[str]) -> str:
    """Segments joined into one word, in lower case (``NO-induced`` → ``noinduced``, as the
    lower-case spelling reads): only a segment alone keeps an abbreviation's capitals."""
    return "".join(segments).lower() if len(segments) > 1 else segments[0]


_ANALYZERS: dict[bool, Any] = {}
_ANALYZER_LOCK = threading.Lock()


def _analyzer(*, stem: bool = True) -> Any:
    """tantivy's analyzer of the pre-tokenised text: stop words, then the stemmer (without
    it: the words of :data:`WORD_FIELD`)."""
    with _ANALYZER_LOCK:
        if stem not in _ANALYZERS:
            import tantivy

            builder = (
                tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace())
                .filter(tantivy.Filter.remove_long(40))
                .filter(tantivy.Filter.stopword("english"))
            )
            if stem:
                builder = builder.filter(tantivy.Filter.stemmer("english"))
            _ANALYZERS[stem] = builder.build()
        return _ANALYZERS[stem]


#: Words whose singular or plural in -s is another word: ``means`` (by means of) is no
#: plural of ``mean`` (a statistical mean), ``goods`` none of ``good``; ``number_forms``
#: links neither to the other.
_NO_NUMBER = frozenset({"mean", "means", "good", "goods"})


def number_forms(word: str) -> tuple[str, ...]:
    """``word`` and its regular English plural or singular forms, as NOT looks them up in
    :data:`WORD_FIELD` (which holds words as written): as a singular, its plural in -s,
    -es (after s, x, z, ch, sh) or -ies (after a consonant and y); as a plural, its
    singular without -s, -es (after s, x, z, ch, sh: ``testes`` is not ``test``) or -ies
    (→ -y). Only a singular of four letters or more is linked, either way (``news`` is not
    ``new``, ``aid`` not ``aids``); not an adjective in -ic and a noun in -ics (``genetic``,
    ``genetics``; ``logistic``, ``logistics``), nor ``mean`` and ``means``
    (:data:`_NO_NUMBER`). Only a word of letters
    in lower case has forms; an abbreviation in capitals (``NO``) or a word with digits is
    only itself. Forms no text holds (``viruse``) find nothing: they cost a term lookup.

    Example:
        >>> number_forms("knee"), number_forms("study"), number_forms("NO")
        (('knee', 'knees'), ('studies', 'study', 'studys'), ('NO',))
        >>> number_forms("viruses")
        ('virus', 'viruse', 'viruses', 'viruseses')
    """
    if len(word) < 3 or not (word.isalpha() and word.islower()) or word in _NO_NUMBER:
        return (word,)
    forms = {word}
    # a singular of four letters or more, either way: a shorter one is more often another
    # word than the plural's (news: new, aids: aid, cases: cas), and NOT would leave out
    # every article holding it; nor does an adjective in -ic have a plural (logistic:
    # logistics, tropic: tropics, genetic: genetics are other words)
    if len(word) >= 4 and not word.endswith("ic"):
        forms.add(word + ("es" if word.endswith(_ES_AFTER) else "s"))
        if word.endswith("y") and word[-2] not in "aeiou":
            forms.add(word[:-1] + "ies")
    # a field in -ics (genetics, economics, statistics) is no plural of its adjective
    if word.endswith("s") and not word.endswith(("ss", "ics")):
        singular = [word[:-1]]
        if word.endswith("es") and word[:-2].endswith(_ES_AFTER):  # boxes, churches
            singular.append(word[:-2])  # not testes: test, spines: spin
        if word.endswith("ies"):
            singular.append(word[:-3] + "y")
        forms.update(w for w in singular if len(w) >= 4)
    return tuple(sorted(forms))


#: The endings a plural in -es follows (boxes, churches, gases, buzzes, wishes).
_ES_AFTER = ("s", "x", "z", "ch", "sh")


def query_terms(query: str) -> dict[str, float]:
    """The index terms a query looks up and their boosts, in query order (stemmed, no stop
    words, no :data:`QUERY_STOP_WORDS`): a whole word 1.0, a segment of a compound word
    :data:`SEGMENT_BOOST`.

    A word the query excludes (``COPD NOT asthma``: :func:`split_exclusions`) is none.

    Example:
        >>> query_terms("What are the effects of IL-6 on the cells?")
        {'effect': 1.0, 'il6': 1.0, 'il': 0.3, '6': 0.3, 'cell': 1.0}
        >>> query_terms("COPD NOT asthma")
        {'copd': 1.0}
    """
    return dict(_query_terms(query))


@functools.lru_cache(maxsize=256)
def _query_terms(query: str) -> tuple[tuple[str, float], ...]:
    """:func:`query_terms` as pairs, kept for the last queries (a search looks its query's
    terms up for the candidates, their missing scores and the explanations)."""
    query = split_exclusions(query)[0]  # an excluded word is no term to look for
    analyzer = _analyzer()
    out: dict[str, float] = {}
    # a question word typed in capitals is an abbreviation — ALL (acute lymphoblastic
    # leukaemia), not "all" — unless the whole query of several words is in capitals
    capitals = set() if _shouted(query) else {
        w.lower() for w in _CAPS.findall(query) if w.isupper()
    }
    words = list(_words(query))
    syntax = bool(_QUOTED.search(query))  # "heart failure" OR: an operator, left dangling
    dangling = False
    for i, seg in enumerate(words):
        if len(seg) == 1 and seg[0] in _OPERATORS and (0 < i < len(words) - 1 or syntax):
            continue  # COPD OR emphysema: PubMed's operator, not the odds ratio
        if seg == ["NOT"] and len(words) > 1:
            dangling = True  # "COPD NOT": the word to exclude not typed (yet)
            continue
        parts = [(_joined(seg), 1.0)]
        if len(seg) > 1:
            parts += [(s, SEGMENT_BOOST) for s in seg]
        for token, boost in parts:
            if token in QUERY_STOP_WORDS and token not in capitals:
                continue
            for term in analyzer.analyze(token):
                out[term] = max(out.get(term, 0.0), boost)
    if dangling and not out:  # "to be or NOT": the word is all there is
        out["NOT"] = 1.0
    return tuple(out.items())


#: Double quotes and a quoted phrase (group 1 the text inside): :mod:`ranking.quotes`.
_OPEN, _CLOSE, _QUOTES, _QUOTED = quotes.OPEN, quotes.CLOSE, quotes.QUOTES, quotes.QUOTED


def quoted(query: str) -> list[str]:
    """The texts quoted in ``query``, in order (empty ones included)."""
    return [m.group(1) for m in _QUOTED.finditer(query)]


def _parts(text: str) -> list[str]:
    """The segments of the words of ``text``, in order (``non-small-cell`` and ``non small
    cell`` alike: ``non``, ``small``, ``cell``; ``IL6`` → ``il``, ``6``)."""
    return [s for seg in _words(text) for s in seg]


def phrase_terms(text: str, *, shouted: bool = False) -> tuple[str, ...]:
    """The terms a quoted phrase must hold one after the other in the phrase field
    (:data:`PHRASE_FIELD`): the segments of its words, stop words out, stemmed — so a
    compound matches in any spelling, hyphens or spaces (``"type 2 diabetes"``:
    *type-2 diabetes*). ``shouted``: the phrase's query is wholly in capitals
    (:func:`_shouted`), so its capitals say nothing of abbreviations either."""
    return tuple(_analyzer().analyze(" ".join(_parts(text.lower() if shouted else text))))


def word_terms(text: str, *, shouted: bool = False) -> tuple[str, ...]:
    """The terms an excluded ``text`` holds in the word field (:data:`WORD_FIELD`): the
    segments of its words as written, stop words out, not stemmed (a compound in any
    spelling, as :func:`phrase_terms`); :func:`exclusion_forms` adds the last word's
    singular and plural forms."""
    return tuple(_analyzer(stem=False).analyze(" ".join(_parts(text.lower() if shouted else text))))


def query_phrases(query: str) -> tuple[tuple[str, ...], ...]:
    """The quoted phrases of ``query`` as the index terms each must hold in a row (one
    term: that term), in query order, repeated ones and those with no term left out; of a
    group joined by OR (:func:`phrase_forms`), every alternative, a word's too (what
    snippets show).

    A document matches a phrase when a value of its :data:`PHRASE_FIELD` (its title, its
    abstract, one MeSH heading, one keyword) holds those terms one after the other: stop
    words aside (``"quality of life"`` matches *quality-of-life* and *quality and life*),
    stemmed (``"heart failures"`` matches *heart failure*), a compound in any spelling
    (``"type 2 diabetes"``: *type-2 diabetes*), never across two values. In a query wholly
    in capitals, its phrases are read in lower case as the rest of it.

    Example:
        >>> query_phrases('"heart failure" in the "elderly" and "IL-6 signalling"')
        (('heart', 'failur'), ('elder',), ('il', '6', 'signal'))
        >>> query_phrases('("heart failure" OR dyspnea) in the elderly')
        (('heart', 'failur'), ('dyspnea',))
    """
    return tuple(dict.fromkeys(alt[0] for group in _required(query) for alt in group))


#: One word of a query as OR and NOT take it: hyphens, inner dots, a possessive, brackets
#: inside it and a closing sign (``p.R132H``, ``25(OH)D``, ``1,25-dihydroxy``, ``HER2+``),
#: a tracer's or a stereo prefix (``[18F]FDG``, ``(S)-ibuprofen``).
_WORD_ITEM = (
    r"(?:\[[^\[\]\s]+\]|\((?:[RSEZDL]|[+\-\u00b1])\)-)?[^\W_]"
    r"(?:[\w-]|\.(?=\w)|(?<=\d),(?=\d)|\(\w+\)(?=[\w-])|['\u2019\u02bc](?=\w))*[+%]*"
)
#: A tracer's name, its isotope in square brackets: ``[18F]FDG``, ``[11C]PiB``.
_TRACER = r"\[[^\[\]\s]+\][\w-]+"
#: What a NOT excludes (group 1): a quoted phrase; a group (asthma OR bronchitis); a word,
#: possessive and all (Alzheimer's), after a quote left open.
_NOT_TARGET = (
    rf"([{_OPEN}][^{_QUOTES}]*[{_CLOSE}]"  # a quoted phrase
    r"|\((?:[^()]|\([^()]*\))*\)|\([^()]*$"  # a group (one inside it), or one left open
    rf"|{_TRACER}"  # a tracer: [18F]FDG
    r"|\[[^\[\]]*\]"  # a group in square brackets
    r"|['\u2018][^'\u2018\u2019]*[^'\u2018\u2019\s]['\u2019]"  # in single quotes
    rf"|[{_OPEN}]?{_WORD_ITEM})"  # a word
)
#: PubMed's exclusion, ``COPD NOT asthma``, ``COPD NOT "heart failure"``: a capital NOT
#: after a word or a quoted phrase, then what it excludes (group 1).
#: :func:`split_exclusions` decides which are exclusions.
_NOT_CLAUSE = re.compile(
    # after a word, a closing quote or bracket, or a sign ending a term (HER2+, 5%)
    rf"(?:(?<=[^\W_])|(?<=[{_CLOSE})\]+%]))\s+NOT\s+{_NOT_TARGET}"
)
#: ``NOT asthma COPD``, ``(NOT asthma) COPD``: a NOT first, or first in brackets, excludes
#: as Google's ``-asthma COPD`` does.
_FIRST_NOT = re.compile(rf"(?:^|\()\s*NOT\s+{_NOT_TARGET}")
#: An OR right after an exclusion (``NOT asthma OR COPD``): which one does it join?
_OR_AFTER = re.compile(r"\s*OR(?![\w-])")
_WORD_BEFORE = re.compile(r"[^\W_][\w-]*")
#: ``AND`` between a term and NOT (``COPD AND NOT asthma``, as Scopus writes it).
_AND_BEFORE = re.compile(r"\s+AND\s*$")
#: The words of a group after NOT: ``(asthma OR bronchitis)``.
_OR = re.compile(r"\s+OR\s+")


def split_exclusions(query: str) -> tuple[str, tuple[str, ...]]:
    """``query`` less the words and phrases it excludes the PubMed way, and those (their
    text, quotes off), in query order.

    ``A NOT B`` excludes ``B`` — the next word, or the next quoted phrase — when ``A`` is a
    term of the query (a word that is no stop or question word, or a quoted phrase), the
    ``NOT`` is in capitals and outside quotes, and the query is not wholly in capitals (a
    title typed so). So ``To treat or NOT to treat``, ``DO NOT RESUSCITATE orders``,
    ``COVID-19 in children: NOT just a cold`` and ``"do NOT resuscitate"`` exclude nothing
    (their ``NOT`` is no term either). A ``NOT`` first, or first in brackets, excludes what
    follows it unless that is a stop or question word (``NOT asthma COPD`` and ``(NOT
    asthma) COPD`` search COPD less asthma; ``NOT to treat`` and ``NOT all wheeze`` are
    searched): :func:`ranking.search.checked_query` refuses a query that only excludes.

    Example:
        >>> split_exclusions('COPD NOT asthma in adults NOT "heart failure"')
        ('COPD in adults', ('asthma', 'heart failure'))
        >>> split_exclusions("DO NOT RESUSCITATE orders")
        ('DO NOT RESUSCITATE orders', ())
    """
    searched, excluded, _ = _split(query)
    return searched, excluded


@functools.lru_cache(maxsize=256)
def _split(query: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """:func:`split_exclusions`, and the problems met (an OR right after an exclusion, an
    author clause that cannot be read). The query's author clauses (``Smith J[au]``,
    :func:`query_authors`) are out of it first: a name is no word to search."""
    query, authors, named = split_authors(query)
    quotes = [m.span() for m in _QUOTED.finditer(query)]
    # quotes and author clauses are syntax: a NOT beside them is the operator
    if "NOT" not in query or (_shouted(query) and not quotes and not authors):
        return query, (), named
    kept: list[str] = []
    excluded: list[str] = []
    problems: list[str] = list(named)
    last = 0
    found = sorted([*((m, True) for m in _FIRST_NOT.finditer(query)),
                    *((m, False) for m in _NOT_CLAUSE.finditer(query))],
                   key=lambda pair: pair[0].start())  # fmt: skip
    for match, first in found:
        if match.start() < last:
            continue  # NOT NOT x: the second is the first one's (refused: checked_query)
        at = match.start() + match.group(0).index("NOT")
        if any(a <= at < b for a, b in quotes):
            continue  # a NOT inside a quoted phrase is a word of it
        target = match.group(1)
        cut = match.start()
        if first:
            if not _excludable_first(target):
                continue  # NOT to treat, NOT all wheeze: words
        else:
            and_ = _AND_BEFORE.search(query, last, cut)
            if and_ is not None:  # A AND NOT B: A NOT B
                cut = and_.start()
            chained = bool(excluded) and not query[last:cut].strip()  # A NOT B NOT C
            if not chained and not any(b == cut for _, b in quotes):  # nor after a quote
                before = _WORD_BEFORE.findall(query, last, cut)
                if not before or not _term_before_not(before[-1]):
                    continue  # DO NOT, or NOT: no term before
        kept.append(query[last:cut])
        texts, problem = _excluded(target)
        excluded += texts
        if problem:
            problems.append(problem)
        if _or_beside(query, at):
            problems.append(f"NOT {target} inside brackets beside OR would exclude from "
                            "every alternative: put NOT after the brackets")
        last = match.end()
        if first and match.group(0).lstrip().startswith("("):  # (NOT asthma): its bracket
            close = re.match(r"\s*\)", query[last:])
            last += close.end() if close else 0
        if _OR_AFTER.match(query, last):
            problems.append(
                f"an OR right after NOT {target}: does it join what NOT excludes or what "
                f"is searched? Exclude several as NOT ({target.strip('()')} OR …), and "
                "put the alternatives to search before NOT"
            )
    if not excluded and len(problems) == len(named):
        return query, (), named
    kept.append(query[last:])
    # NOT copd AND asthma: the AND the exclusion leaves first is no word to search
    searched = tidy_left_over(" ".join(p.strip() for p in kept if p.strip()))
    return searched, tuple(excluded), tuple(problems)


def _excludable_first(target: str) -> bool:
    """Whether a NOT first (or first in brackets) excludes ``target``: a group, a quoted
    phrase with a term, or a word that is no stop or question word; an operator too
    (``NOT NOT``: refused by :func:`ranking.search.checked_query`)."""
    if target.startswith("(") or target in _OPERATORS:
        return True
    if target[0] in _OPEN:
        return bool(phrase_terms(target.strip(_QUOTES)))
    return _term_before_not(target)


#: One alternative of a group after NOT: a quoted phrase, or one word (a tracer, a dotted
#: variant, hyphens, a possessive and a closing sign in it).
_ONE_ALTERNATIVE = re.compile(
    rf"[{_OPEN}][^{_QUOTES}]*[{_CLOSE}]|{_WORD_ITEM}"
)


def _excluded(target: str) -> tuple[list[str], str | None]:
    """The texts a NOT's target excludes — each alternative of a group, else the word or
    phrase, quotes off — and the problem of a group that is no chain of ORs of words and
    quoted phrases (``(asthma AND bronchitis)``, ``(asthma, bronchitis)``, one left open)."""
    group = target[:1] in "([" and not re.fullmatch(_TRACER, target)
    if not group:
        return [target.strip(_QUOTES + "'\u2018\u2019").strip()], None
    if target[-1:] not in ")]":
        return [], f"NOT {target.strip()}: a bracket left open; close it"
    inner = re.sub(r"^[\s(]+|[\s)]+$", "", target[1:-1])  # ((a OR b)): one group
    out: list[str] = []
    for part in _OR.split(inner):
        part = re.sub(r"^[\s(]+|[\s)]+$", "", part)  # (a OR (b))
        if not _ONE_ALTERNATIVE.fullmatch(part) or part in _OPERATORS:
            return [], (f"NOT {target}: what NOT excludes in brackets must be words or "
                        "quoted phrases joined by OR, e.g. NOT (asthma OR \"chronic "
                        "bronchitis\"); to exclude several words, name each with NOT")
        out.append(part.strip(_QUOTES).strip())
    return out, None


def _or_beside(query: str, at: int) -> bool:
    """Whether the brackets around position ``at`` of ``query`` (outside quotes) are an
    alternative of an OR: ``("heart failure" NOT elderly) OR dyspnea``."""
    depth_at: list[int] = []
    stack: list[int] = []
    quoted = False
    for i, c in enumerate(query):
        if c in _QUOTES:
            quoted = not quoted
        if quoted:
            continue
        if i == at:
            depth_at = list(stack)
        if c == "(":
            stack.append(i)
        elif c == ")" and stack:
            start = stack.pop()
            if depth_at and start == depth_at[-1]:
                return bool(re.match(r"\s*OR(?![\w-])", query[i + 1:])
                            or re.search(r"(?<![\w-])OR\s*$", query[:start]))
    return False


def _term_before_not(word: str) -> bool:
    """Whether ``word``, just before a NOT, is a term of the query: not a stop word, nor a
    question word in any case (``DO NOT``, ``Why NOT``, ``ALL NOT``), nor an operator; an
    abbreviation in capitals that spells a stop word is one (``uveitis AS NOT psoriasis``)."""
    if word in _OPERATORS or word.lower() in QUERY_STOP_WORDS:
        return False
    return bool(query_terms(word))


def query_exclusions(query: str) -> tuple[tuple[str, ...], ...]:
    """The words and phrases ``query`` excludes (:func:`split_exclusions`) as the index
    terms each stands for in a row (:func:`phrase_terms`), in query order, those with no
    term (a stop word) left out."""
    return tuple(dict.fromkeys(forms[0] for forms in phrase_forms(query)[1]))


#: A lower-case ``a`` after a word and a space or hyphen (``hepatitis a``): typed for the
#: letter as often as for the article.
_LOWER_A = re.compile(r"(?<=[^\W_][ \t-])a(?![^\W\d_])")
Forms = tuple[tuple[str, ...], ...]


def _forms(
    text: str, shouted: bool, terms: Callable[..., tuple[str, ...]] | None = None
) -> Forms:
    """The term sequences a quoted (or excluded) ``text`` matches, any of them: its
    :func:`phrase_terms` (``terms``: another such function, :func:`word_terms`); typed
    with a lower-case ``a`` after a word, the same with the letter ``A`` there too
    (``"hepatitis a vaccine"`` finds *Hepatitis A vaccine*, which keeps ``A``, as well as
    texts without it); and with an abbreviation in capitals that spells a stop word
    (``NO``) left out, when two terms are left (a text wholly in capitals is indexed in
    lower case, without it)."""
    terms = terms or phrase_terms
    main = terms(text, shouted=shouted)
    if not main:
        return ()
    forms: dict[tuple[str, ...], None] = {main: None}
    if not shouted and "a" in text:
        capital = terms(_LOWER_A.sub("A", text))  # _lower keeps the A after a term
        if capital:
            forms.setdefault(capital)
    # a whole word only (NO synthase), never a segment of one (the OR of the gene OR2A4)
    kept = [w for w in text.split() if not (len(core := w.strip(_PUNCT)) > 1 and core.isupper()
                                            and core.isalpha() and _is_stop_word(core.lower()))]
    loose = terms(" ".join(kept), shouted=shouted) if len(kept) < len(text.split()) else main
    if loose != main and len(loose) >= 2:
        forms.setdefault(loose)
    return tuple(forms)


#: What may surround a word of a phrase: punctuation it is not made of.
_PUNCT = ".,;:!?()[]{}'\"\u2018\u2019\u201c\u201d"


#: The items of a query that OR joins (:func:`_structure`): a quoted phrase (group 1), a
#: capital OR (2), a species' abbreviation (3: ``E. coli``, ``S. aureus``), a word (4:
#: hyphens, inner dots, a possessive, a closing sign, a tracer's bracket: ``p.R132H``,
#: ``[18F]FDG``), an opening (5) or closing (6) bracket; anything else but space (7) ends
#: a chain.
_CHAIN_ITEM = re.compile(
    rf"[{_OPEN}]([^{_QUOTES}]*)[{_CLOSE}]|(?<![\w-])(OR)(?![\w-])"
    r"|(?<![\w.])([A-Z]\.[ \t]?[a-z]{3,})(?![\w-])"
    rf"|({_WORD_ITEM})"
    r"|([(\[])|([)\]])|(\S)"
)
#: A number alone, as an odds ratio's value follows OR: ``1.9``, ``95%``, ``0,8``.
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?%?")
#: What ends a chain of alternatives (punctuation, AND, NOT), and the OR between two.
_BREAK, _JOIN = "break", "or"
Alternative = tuple[str, bool]  # the text, and whether it was quoted
Node = Any  # an Alternative, _BREAK, _JOIN, or a list of nodes (a bracketed group)


def _structure(
    searched: str, shouted: bool, capitals: bool = False
) -> tuple[list[Node], list[str]]:
    """``searched`` as nested nodes (a bracketed group: a list), and the problems met.

    ``OR NOT`` before a term is a problem (it cannot be met: NOT excludes from what the
    other words find), unless the query is ``shouted`` (wholly in capitals, no quotes: a
    title, whose NOT is a word) or the word after NOT is a stop word (in a query wholly in
    ``capitals``, even one with quotes, ``TO`` is the word, no abbreviation). An OR before
    a number alone (``OR 1.9``, ``OR 95% CI``) is the odds ratio, no operator: it ends the
    chain.
    """
    matches = list(_CHAIN_ITEM.finditer(searched))
    stack: list[list[Node]] = [[]]
    problems: list[str] = []
    for i, m in enumerate(matches):
        phrase, op, species, word, opening, closing, _ = m.groups()
        top = stack[-1]
        nxt = matches[i + 1] if i + 1 < len(matches) else None
        if opening:
            stack.append([])
            top.append(stack[-1])
        elif closing:
            if len(stack) > 1:  # a bracket closing none is nothing
                stack.pop()
        elif op:
            number = nxt is not None and bool(_NUMBER.fullmatch(nxt.group(4) or ""))
            top.append(_BREAK if number else _JOIN)
        elif phrase is not None:
            top.append((phrase, True))
        elif species or (word and word not in _OPERATORS):
            top.append((species or word, False))
        else:
            top.append(_BREAK)
            quoted_next = nxt is not None and nxt.group(1) is not None
            after = None if nxt is None else nxt.group(1) if quoted_next else nxt.group(4)
            if not shouted and word == "NOT" and i and matches[i - 1].group(2) and after and (
                phrase_terms(after) if quoted_next
                else _term_before_not(after.lower() if capitals else after)
            ):
                typed = nxt.group(0) if nxt is not None else after
                problems.append(f"OR NOT {typed}: NOT excludes from what the other words "
                                f"find, it offers no alternative; write A NOT {typed}")
    return stack[0], problems


def _pure(group: list[Node]) -> list[Alternative] | None:
    """The alternatives of a bracketed group that is one chain of ORs (``(a OR "b c")``,
    nested ones too), else ``None`` (``("heart failure" elderly)``: several terms)."""
    out: list[Alternative] = []
    expect_term = True
    for node in group:
        if node is _JOIN and not expect_term:
            expect_term = True
            continue
        if node is _BREAK or node is _JOIN or not expect_term:
            return None
        inner = _pure(node) if isinstance(node, list) else [node]
        if inner is None:
            return None
        out += inner
        expect_term = False
    return out or None


def _holds_phrase(node: Node) -> bool:
    """Whether ``node`` is, or a bracketed group holds, a quoted phrase."""
    if isinstance(node, list):
        return any(_holds_phrase(n) for n in node)
    return isinstance(node, tuple) and node[1]


def _alternatives(
    nodes: list[Node], problems: list[str]
) -> list[list[Alternative]]:
    """The chains of alternatives joined by OR among ``nodes``, those holding a quoted
    phrase (a chain of words alone requires nothing: every word is scored anyway); a
    quoted phrase alone is a chain of one. A bracketed group beside OR is one chain of
    ORs, whose alternatives join the chain; one holding several terms is a problem."""
    chains: list[list[Node]] = []
    chain: list[Node] | None = None
    joined = False
    for node in nodes:
        if node is _JOIN:
            joined = chain is not None
            continue
        if node is _BREAK:
            chain, joined = None, False
            continue
        if joined and chain is not None:
            chain.append(node)
        else:
            chain = [node]
            chains.append(chain)
        joined = False
    out: list[list[Alternative]] = []
    for members in chains:
        if len(members) == 1 and isinstance(members[0], list):
            out += _alternatives(members[0], problems)  # a group on its own: inside it
            continue
        alternatives: list[Alternative] = []
        for node in members:
            inner = _pure(node) if isinstance(node, list) else [node]
            if inner is None:
                if not any(_holds_phrase(m) for m in members):
                    break  # words alone: OR changes nothing (an odds ratio, a title)
                problems.append("brackets beside OR hold several terms: a result must hold a "
                                "quoted phrase or one of its alternatives, each one word or "
                                "one quoted phrase; search the combinations apart")
                break
            alternatives += inner
        else:
            if any(quoted for _, quoted in alternatives):
                out.append(alternatives)
    return out


@functools.lru_cache(maxsize=256)
def _parsed(query: str) -> tuple[tuple[tuple[Alternative, ...], ...], tuple[str, ...]]:
    """The chains of alternatives of ``query`` (:func:`_alternatives`) and every problem
    met reading its NOT and OR."""
    searched, excluded, problems = _split(query)
    capitals = _shouted(query)
    nodes, more = _structure(searched, capitals and not _QUOTED.search(query), capitals)
    found: list[str] = [*problems, *more]
    chains = _alternatives(nodes, found)
    out: set[tuple[str, ...]] = {f for t in excluded for f in _forms(t, capitals)}
    for chain in chains:
        for text, _ in chain:
            if out & set(_forms(text, capitals)):  # "a" OR b NOT "a": asked for and excluded
                found.append(f"{text!r} is both asked for and excluded: drop it from one side")
    return tuple(tuple(c) for c in chains), tuple(dict.fromkeys(found))


def query_problems(query: str) -> tuple[str, ...]:
    """What makes ``query``'s NOT and OR impossible to read one way (``"a" OR NOT "b"``,
    ``NOT a OR b``, ``("a" b) OR c``), each as a message saying what to write instead."""
    return _parsed(query)[1]


@functools.lru_cache(maxsize=256)
def _required(query: str) -> tuple[tuple[Forms, ...], ...]:
    """The requirements of ``query``: for each quoted phrase, or group of alternatives
    joined by OR (:func:`_parsed`), the forms (:func:`_forms`) of each alternative
    that has a term; a group whose quoted phrases have none requires nothing."""
    shouted = _shouted(query)
    out: dict[tuple[Forms, ...], None] = {}
    for chain in _parsed(query)[0]:
        if not any(q and _forms(t, shouted) for t, q in chain):
            continue
        group = tuple(dict.fromkeys(f for f in (_forms(t, shouted) for t, _ in chain) if f))
        out.setdefault(group)
    return tuple(out)


@functools.lru_cache(maxsize=256)
def phrase_forms(query: str) -> tuple[tuple[Forms, ...], tuple[Forms, ...]]:
    """The forms (:func:`_forms`) each requirement of ``query`` is met by — a quoted
    phrase's, or those of every alternative of a group joined by OR (``"heart failure" OR
    "cardiac failure"``: either) — and those of each word or phrase it excludes, in query
    order, repeated ones and those with no term left out (the first form of each
    alternative: :func:`query_phrases`; of each exclusion: :func:`query_exclusions`)."""
    shouted = _shouted(query)
    required = {tuple(dict.fromkeys(f for alt in group for f in alt)): None
                for group in _required(query)}
    left_out = {f: None for f in (_forms(t, shouted) for t in split_exclusions(query)[1]) if f}
    return tuple(required), tuple(left_out)


@functools.lru_cache(maxsize=256)
def exclusion_forms(query: str, *, exact: bool = True) -> tuple[Forms, ...]:
    """The forms (:func:`_forms`) of each word or phrase ``query`` excludes, in query
    order, repeated ones and those with no term left out: as :data:`WORD_FIELD` holds
    words (:func:`word_terms`), each form also with its last word in its other number
    (:func:`number_forms`: ``NOT "heart failures"`` excludes *heart failure*, ``NOT knee``
    *knees*); or, ``exact=False``, as :data:`PHRASE_FIELD` holds them, stemmed (an index
    built before the word field)."""
    shouted = _shouted(query)
    texts = split_exclusions(query)[1]
    if not exact:
        return tuple({f: None for f in (_forms(t, shouted) for t in texts) if f})
    out: dict[Forms, None] = {}
    for text in texts:
        forms = {(*f[:-1], last): None
                 for f in _forms(text, shouted, word_terms) for last in number_forms(f[-1])}
        if forms:
            out.setdefault(tuple(forms))
    return tuple(out)


def constrains(query: str) -> bool:
    """Whether ``query`` quotes a phrase, excludes a word or names an author: only the
    lexical index can tell which articles meet it (in every mode)."""
    return bool(query_phrases(query) or query_exclusions(query) or query_authors(query))


def query_authors(query: str) -> tuple[AuthorClause, ...]:
    """The authors ``query`` asks for or excludes (``Smith J[au]``, ``NOT Li X[1au]``), in
    query order (:func:`ranking.authors.split_authors`); their words are no terms."""
    return split_authors(query)[1]


def _field_text(values: Iterable[str]) -> str:
    return " ".join(t for v in values for t in bio_tokens(v))


# ---------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class _Doc:
    pmid: int
    title: str
    abstract: str
    mesh: tuple[str, ...]
    keywords: tuple[str, ...]
    authors: tuple[str, ...] = ()  # author keys: ranking.authors.author_keys

    @property
    def hash(self) -> str:
        return doc_hash(self.title, self.abstract, self.mesh, self.keywords, self.authors)


def doc_hash(
    title: str,
    abstract: str,
    mesh: Sequence[str],
    keywords: Sequence[str],
    authors: Sequence[str] = (),
) -> str:
    """SHA-1 of what the lexical index holds of an article (and of :data:`FORMAT`): its
    text fields and its author keys, so a corrected author list is indexed again."""
    blob = json.dumps([FORMAT, title, abstract, list(mesh), list(keywords), list(authors)],
                      ensure_ascii=False)  # fmt: skip
    return hashlib.sha1(blob.encode()).hexdigest()


def _strings(value: Any, key: str | None = None) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for item in value:
        text = item.get(key) if key and isinstance(item, dict) else item
        if isinstance(text, str) and text.strip():
            out.append(text)
    return tuple(out)


_DOC_COLUMNS = (
    articles.c.pmid,
    articles.c.title,
    articles.c.abstract,
    articles.c.mesh,
    articles.c.record["keywords"].label("keywords"),
    articles.c.authors,
)


def _docs(engine: Engine, pmids: np.ndarray | None) -> Iterator[_Doc]:
    """The live articles' lexical fields: all of them (by PMID), or those of ``pmids``."""
    base = select(*_DOC_COLUMNS).where(articles.c.is_deleted.is_(False))
    with engine.connect() as conn:
        if pmids is None:
            rows: Iterable[Any] = conn.execution_options(yield_per=db.IN_CHUNK).execute(
                base.order_by(articles.c.pmid)
            )
            yield from (_doc(r) for r in rows)
            return
        wanted = [int(p) for p in pmids]
        for start in range(0, len(wanted), db.IN_CHUNK):
            chunk = wanted[start : start + db.IN_CHUNK]
            yield from (_doc(r) for r in conn.execute(base.where(articles.c.pmid.in_(chunk))))


def _doc(row: Any) -> _Doc:
    keywords = row.keywords
    if isinstance(keywords, str):  # SQLite hands back JSON text for a JSON path
        try:
            keywords = json.loads(keywords)
        except ValueError:
            keywords = []
    return _Doc(
        int(row.pmid),
        row.title or "",
        row.abstract or "",
        _strings(row.mesh, "descriptor"),
        _strings(keywords),
        author_keys(row.authors) if isinstance(row.authors, list) else (),
    )


def _schema() -> Any:
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_integer_field("pmid", stored=True, indexed=True, fast=True)
    for name in TEXT_FIELDS:
        sb.add_text_field(name, tokenizer_name=_TOKENIZER, index_option="freq")
    sb.add_text_field(PHRASE_FIELD, tokenizer_name=_TOKENIZER, index_option="position")
    sb.add_text_field(WORD_FIELD, tokenizer_name=_TOKENIZER, index_option="position")
    sb.add_text_field(AUTHOR_FIELD, tokenizer_name="raw", index_option="basic")
    for name in TEXT_FIELDS:
        sb.add_integer_field(f"n_{name}", fast=True)
    sb.add_bytes_field("tf", stored=True)
    sb.add_bytes_field("tfw", stored=True)
    sb.add_text_field("h", stored=True, tokenizer_name="raw", index_option="basic")
    return sb.build()


def _terms_tokenizer() -> Any:
    import tantivy

    return tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()).build()


def _values(doc: _Doc) -> dict[str, Sequence[str]]:
    return {"title": [doc.title], "abstract": [doc.abstract], "mesh": doc.mesh,
            "keywords": doc.keywords}


def analysed(doc: _Doc) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """The index terms of each text field of ``doc``, in order (stop words out, stemmed),
    and the values of its :data:`PHRASE_FIELD`: the title, the abstract, each MeSH heading
    and each keyword, each as the terms of its words' segments in order (what
    :func:`phrase_terms` looks for; a phrase never spans two: tantivy leaves a gap in the
    positions between two values of a field), and the same values for
    :data:`WORD_FIELD` (what :func:`word_terms` looks for: the words as written). Each
    value's words are cut once (the costly part), and each side analysed in one call."""
    analyzer = _analyzer()
    fields: dict[str, list[str]] = {}
    parts: list[str] = []
    for name, values in _values(doc).items():
        tokens: list[str] = []
        for v in values:
            words = list(_words(v))
            tokens += _tokens(words)
            parts += [s for seg in words for s in seg]
            parts.append(_VALUE_END)
        fields[name] = analyzer.analyze(" ".join(tokens))

    def values_of(terms: list[str]) -> list[str]:
        return [v.strip() for v in " ".join(terms).split(_VALUE_END)][:-1]

    return (
        fields,
        values_of(analyzer.analyze(" ".join(parts))),
        values_of(_analyzer(stem=False).analyze(" ".join(parts))),
    )


#: Ends each value in the one text of :func:`analysed`'s phrase values (a symbol no word
#: is made of: the analyzer passes it as it is, and it is cut out again).
_VALUE_END = "\u241e"


#: One record of the stored ``tf`` value: a term's :func:`term_key` and its frequency in
#: each of :data:`TEXT_FIELDS` (little-endian, so a blob is read as an array whatever the
#: machine).
TF_RECORD = np.dtype([("key", "<u8"), ("tf", "<u2", (len(TEXT_FIELDS),))])
#: The same with wider frequencies, stored instead (field ``tfw``) for a document with a
#: frequency above what a :data:`TF_RECORD` holds.
TF_WIDE = np.dtype([("key", "<u8"), ("tf", "<u4", (len(TEXT_FIELDS),))])
_TF_MAX = int(np.iinfo(np.uint16).max)


def term_key(term: str) -> int:
    """The 64-bit key of an index term in the stored ``tf`` records (BLAKE2b): a query term
    is found in a document's records by key, all candidates at once. Two of the terms of
    one query and one document sharing a key (a collision) has a chance of the order of
    1e-15; nothing else depends on it.

    Example:
        >>> term_key("il6") == term_key("il6") != term_key("il-6")
        True
    """
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "little")


def tf_records(fields: dict[str, list[str]]) -> tuple[str, bytes]:
    """The stored frequencies of a document: ``("tf", records)``, one :data:`TF_RECORD` per
    distinct term in the order of first occurrence, or ``("tfw", records)`` of
    :data:`TF_WIDE` when a frequency exceeds 65,535.

    Example:
        >>> name, raw = tf_records({"title": ["il6", "sepsi"], "abstract": ["il6"],
        ...                         "mesh": [], "keywords": []})
        >>> rec = np.frombuffer(raw, dtype=TF_RECORD)
        >>> name, rec["tf"].tolist(), int(rec["key"][0]) == term_key("il6")
        ('tf', [[1, 1, 0, 0], [1, 0, 0, 0]], True)
    """
    counts: dict[str, list[int]] = {}
    for i, name in enumerate(TEXT_FIELDS):
        for term in fields[name]:
            counts.setdefault(term, [0] * len(TEXT_FIELDS))[i] += 1
    wide = any(c > _TF_MAX for tf in counts.values() for c in tf)
    rec = np.zeros(len(counts), dtype=TF_WIDE if wide else TF_RECORD)
    if counts:
        rec["key"] = [term_key(t) for t in counts]
        rec["tf"] = list(counts.values())
    return ("tfw" if wide else "tf"), rec.tobytes()


def _document(
    doc: _Doc, fields: dict[str, list[str]], phrases: list[str], words: list[str]
) -> Any:
    """The tantivy document: each text field's terms (``fields``, :func:`analysed`), their
    lengths and frequencies, the phrase field (``phrases``) and the word field
    (``words``); all from :func:`analysed`."""
    import tantivy

    values: dict[str, Any] = {name: [" ".join(fields[name])] for name in TEXT_FIELDS}
    values[PHRASE_FIELD] = phrases
    values[WORD_FIELD] = words
    values[AUTHOR_FIELD] = list(doc.authors)
    values.update({f"n_{name}": len(fields[name]) for name in TEXT_FIELDS})
    name, tf = tf_records(fields)
    values[name] = [tf]
    return tantivy.Document(pmid=doc.pmid, h=[doc.hash], **values)


# ------------------------------------------------------------------------ the index


@dataclass(frozen=True)
class LexicalTerm:
    """One query term matched in a document: its BM25 weight, in total and per field."""

    term: str
    weight: float
    fields: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "weight": self.weight, "fields": dict(self.fields)}


@dataclass(frozen=True)
class LexicalMatch:
    """A document's BM25 score and the terms it is made of (weights sum to ``score``)."""

    pmid: int
    score: float
    terms: tuple[LexicalTerm, ...]


@dataclass(frozen=True)
class Bm25:
    """BM25's constants (settings ``bm25_k1``, ``bm25_b``). A term's weight in one field of
    one document is ``idf × (k1 + 1) × tf / (tf + norm)`` (:meth:`idf`, :meth:`norms`).

    Example:
        >>> bm25 = Bm25(k1=0.9, b=0.4)
        >>> norm = bm25.norms(np.array([10.0]), np.array([10.0]))[0]  # an average length
        >>> round(float(2.0 * (bm25.k1 + 1) * 1 / (1 + norm)), 6)  # idf 2, tf 1: idf
        2.0
    """

    k1: float = 0.9
    b: float = 0.4

    @classmethod
    def from_settings(cls, settings: Settings) -> Bm25:
        return cls(k1=settings.bm25_k1, b=settings.bm25_b)

    @staticmethod
    def idf(docs: int, doc_freq: int) -> float:
        """``ln(1 + (N - df + 0.5) / (df + 0.5))``, always > 0."""
        return math.log(1.0 + (docs - doc_freq + 0.5) / (doc_freq + 0.5))

    def norms(self, lengths: np.ndarray, avg_lengths: np.ndarray) -> np.ndarray:
        """``k1 × (1 - b + b × length / average length)``, elementwise."""
        return self.k1 * (1.0 - self.b + self.b * lengths / avg_lengths)


@dataclass(frozen=True)
class _Stats:
    """Live documents and the total length of each text field over them (written with the
    :data:`FORMAT`; an index of another format is not read)."""

    docs: int
    tokens: dict[str, int]
    format: int = FORMAT

    @classmethod
    def read(cls, folder: Path) -> _Stats:
        try:
            data = json.loads((folder / STATS_FILE).read_text(encoding="utf-8"))
            stats = cls(int(data["docs"]), {n: int(data["tokens"][n]) for n in TEXT_FIELDS})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConsistencyError(
                f"lexical index in {folder} has no BM25 statistics ({exc}); an index of an older "
                "format: run `litpulse index refresh`"
            ) from exc
        found = data.get("format", 2)  # format 2 wrote none
        if found not in READABLE_FORMATS:
            raise ConsistencyError(
                f"lexical index in {folder} is of format {found}, this release reads {FORMAT}: "
                "run `litpulse index refresh`"
            )
        return dataclasses.replace(stats, format=found)

    def write(self, folder: Path) -> None:
        """Into ``folder`` by rename (a hard-linked base's file stays as it was)."""
        tmp = folder / f"{STATS_FILE}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"format": FORMAT, "docs": self.docs, "tokens": self.tokens}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / STATS_FILE)

    def avg(self, name: str) -> float:
        return self.tokens[name] / self.docs if self.docs else 0.0


def _lengths(searcher: Any, addrs: list[Any]) -> dict[str, list[int]]:
    """The text fields' lengths of the given documents (fast-field reads)."""
    return {
        name: [int(v or 0) for v in searcher.fast_field_values(f"n_{name}", addrs)]
        for name in TEXT_FIELDS
    }


def _records(docs: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored frequencies of tantivy documents, all in one array, each document's in
    its stored order: ``(keys, frequencies, document)``, the term key, the four frequencies
    and the position in ``docs`` of each record."""
    blobs = [d.get_first("tf") or b"" for d in docs]
    narrow = np.frombuffer(b"".join(blobs), dtype=TF_RECORD)
    sizes = np.fromiter(map(len, blobs), dtype=np.intp, count=len(blobs))
    parts = [(narrow, np.repeat(np.arange(len(blobs)), sizes // TF_RECORD.itemsize))]
    for i, blob in enumerate(blobs):
        wide = None if blob else docs[i].get_first("tfw")
        if wide:
            rec = np.frombuffer(wide, dtype=TF_WIDE)
            parts.append((rec, np.full(len(rec), i, dtype=np.intp)))
    if len(parts) == 1:
        return narrow["key"], narrow["tf"], parts[0][1]
    return (
        np.concatenate([r["key"] for r, _ in parts]),
        np.concatenate([r["tf"] for r, _ in parts]),
        np.concatenate([o for _, o in parts]),
    )


@dataclass(frozen=True, eq=False)
class LexicalIndex:
    """One opened, read-only lexical index (of one index version); safe across threads.

    Attributes:
        path: Its folder.
        size: Documents in it.
        bm25: The constants its scores use (:meth:`with_bm25` for others).
    """

    path: str
    size: int
    _index: Any = field(repr=False)
    _stats: _Stats = field(repr=False)
    bm25: Bm25 = Bm25()
    _idfs: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path, bm25: Bm25 | None = None) -> LexicalIndex:
        """Open the tantivy index in ``path``.

        Raises:
            ConsistencyError: There is no index there, or no (consistent) statistics.
        """
        import tantivy

        folder = Path(path)
        if not (folder / "meta.json").exists():
            raise ConsistencyError(f"lexical index files are missing in {folder}")
        stats = _Stats.read(folder)
        index = tantivy.Index.open(str(folder))
        index.register_tokenizer(_TOKENIZER, _terms_tokenizer())
        index.config_reader(reload_policy="manual")
        size = int(index.searcher().num_docs)
        if stats.docs != size:
            raise ConsistencyError(
                f"lexical index in {folder} holds {size} documents, its statistics {stats.docs}"
            )
        return cls(path=str(folder), size=size, _index=index, _stats=stats, bm25=bm25 or Bm25())

    def with_bm25(self, bm25: Bm25) -> LexicalIndex:
        """The same index, scored with other constants."""
        return self if bm25 == self.bm25 else dataclasses.replace(self, bm25=bm25)

    @property
    def phrases(self) -> bool:
        """Whether this index can match quoted phrases (format :data:`PHRASE_FORMAT` on)."""
        return self._stats.format >= PHRASE_FORMAT

    @property
    def words(self) -> bool:
        """Whether NOT matches words as written here (format :data:`WORD_FORMAT` on)."""
        return self._stats.format >= WORD_FORMAT

    def _constraints(self, query: str) -> list[tuple[Any, Any]]:
        """The clauses of ``query``'s quoted phrases (each a ``Must``) and exclusions (each
        a ``MustNot``) on :data:`PHRASE_FIELD`, and of its authors (a ``Must``, or a
        ``MustNot`` after NOT) on :data:`AUTHOR_FIELD`, scoring nothing.

        Raises:
            ConsistencyError: A phrase or an exclusion, and this index was built before
                the phrase field (format 5 and older); an author, and it was built before
                the author field (format 6 and older).
        """
        import tantivy

        phrases, excluded = phrase_forms(query)
        if self.words:  # as written, not stemmed (an older index: stemmed, as it was)
            excluded = exclusion_forms(query)
        if not self.phrases and (phrases or excluded):
            raise ConsistencyError(
                f"the lexical index in {self.path} was built before quoted phrases and NOT "
                f"were indexed (format {self._stats.format}): run `litpulse index refresh`, "
                "which rebuilds it, or search without quotes and NOT"
            )
        authors = query_authors(query)
        if authors and self._stats.format < AUTHOR_FORMAT:
            raise ConsistencyError(
                f"the lexical index in {self.path} was built before authors were indexed "
                f"(format {self._stats.format}): run `litpulse index refresh`, which "
                f"rebuilds it, or search without {authors[0].shown}"
            )
        schema = self._index.schema

        def one(terms: tuple[str, ...], field: str) -> Any:
            if len(terms) == 1:
                return tantivy.Query.term_query(schema, field, terms[0], index_option="basic")
            return tantivy.Query.phrase_query(schema, field, list(terms))

        def anywhere(forms: Forms, field: str = PHRASE_FIELD) -> Any:
            query = one(forms[0], field) if len(forms) == 1 else tantivy.Query.boolean_query(
                [(tantivy.Occur.Should, one(f, field)) for f in forms]
            )
            return tantivy.Query.const_score_query(query, 0.0)

        def named(keys: tuple[str, ...]) -> Any:
            terms = [tantivy.Query.term_query(schema, AUTHOR_FIELD, key, index_option="basic")
                     for key in keys]  # fmt: skip
            query = terms[0] if len(terms) == 1 else tantivy.Query.boolean_query(
                [(tantivy.Occur.Should, t) for t in terms]
            )
            return tantivy.Query.const_score_query(query, 0.0)

        by = [(tantivy.Occur.MustNot if a.excluded else tantivy.Occur.Must, named(a.keys))
              for a in authors]  # fmt: skip
        against = WORD_FIELD if self.words else PHRASE_FIELD
        return [(tantivy.Occur.Must, anywhere(t)) for t in phrases] + [
            (tantivy.Occur.MustNot, anywhere(t, against)) for t in excluded
        ] + by

    def _query(
        self,
        terms: dict[str, float],
        pmids: Sequence[int] | None = None,
        constraints: Sequence[tuple[Any, Any]] = (),
    ) -> Any:
        import tantivy

        schema = self._index.schema
        should = [
            (
                tantivy.Occur.Should,
                tantivy.Query.boost_query(
                    tantivy.Query.term_query(schema, name, term, index_option="freq"),
                    boost * weight,
                ),
            )
            for term, weight in terms.items()
            for name, boost in FIELD_BOOSTS.items()
        ]
        text = tantivy.Query.boolean_query(should)
        musts = [(tantivy.Occur.Must, text), *constraints]
        if pmids is not None:
            only = tantivy.Query.const_score_query(
                tantivy.Query.term_set_query(schema, "pmid", [int(p) for p in pmids]), 0.0
            )
            musts.append((tantivy.Occur.Must, only))
        return text if len(musts) == 1 else tantivy.Query.boolean_query(musts)

    def _idf(self, searcher: Any, name: str, term: str) -> float:
        """:meth:`Bm25.idf` of ``term`` in field ``name`` (kept: the index is read-only).

        The document frequency is counted over the live documents: tantivy's ``doc_freq``
        also counts the documents an incremental refresh deleted (each revised article's
        old copy) until a merge drops them, which would drift from the live ``N`` of the
        statistics, by the night, down to a negative idf. Counting walks the term's
        postings (once per term and index: the cache).
        """
        import tantivy

        key = (name, term)
        idf = self._idfs.get(key)
        if idf is None:
            query = tantivy.Query.term_query(self._index.schema, name, term, index_option="basic")
            live = searcher.search(query, 1, count=True).count
            idf = Bm25.idf(self._stats.docs, int(live or 0))
            if len(self._idfs) >= IDF_CACHE:
                self._idfs.clear()
            self._idfs[key] = idf
        return idf

    def _scored(
        self,
        terms: dict[str, float],
        limit: int,
        pmids: Sequence[int] | None = None,
        constraints: Sequence[tuple[Any, Any]] = (),
    ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """What :meth:`_matches` adds up, for all of tantivy's best ``limit`` documents at
        once (among ``pmids`` if given; only those meeting ``constraints``,
        :meth:`_constraints`).

        Returns:
            ``(pmids, doc, term, weights)``: the documents' PMIDs (``-1``: none stored) and,
            per matched (document, query term) record in each document's stored order, the
            document's position, the term's position in ``terms`` and its weight in each
            of :data:`TEXT_FIELDS` (``0.0`` where the term is absent).
        """
        searcher = self._index.searcher()
        hits = searcher.search(self._query(terms, pmids, constraints), limit, count=False).hits
        empty = np.zeros(0, dtype=np.intp)
        if not hits:
            return [], empty, empty, np.zeros((0, len(TEXT_FIELDS)))
        addrs = [addr for _, addr in hits]
        ids = [-1 if p is None else int(p) for p in searcher.fast_field_values("pmid", addrs)]
        stored, counts, owner = _records([searcher.doc(addr) for addr in addrs])
        # which records are query terms (the keys sorted once, each record looked up)
        keys = np.fromiter((term_key(t) for t in terms), dtype=np.uint64, count=len(terms))
        order = np.argsort(keys)
        at = np.minimum(np.searchsorted(keys[order], stored), len(keys) - 1)
        found = keys[order][at] == stored
        doc, term = owner[found], order[at[found]]
        tf = counts[found].astype(np.float64)
        # per document and field: the norm; per term and field: query boost x field boost
        # x idf x (k1 + 1); a weight is then factor x tf / (tf + norm) (see Bm25)
        lengths = np.asarray(list(_lengths(searcher, addrs).values()), dtype=np.float64)
        avg = np.asarray([self._stats.avg(n) or 1.0 for n in TEXT_FIELDS])[:, None]
        norms = self.bm25.norms(lengths, avg).T
        k1 = self.bm25.k1
        factor = np.asarray(
            [
                [
                    boost * FIELD_BOOSTS[n] * (k1 + 1.0) * self._idf(searcher, n, t)
                    for n in TEXT_FIELDS
                ]
                for t, boost in terms.items()
            ]
        )
        with np.errstate(divide="ignore", invalid="ignore"):  # tf = 0 with norm = 0 (k1 = 0)
            weights = np.where(tf > 0, factor[term] * tf / (tf + norms[doc]), 0.0)
        return ids, doc, term, weights

    def _ranked(
        self,
        terms: dict[str, float],
        limit: int,
        pmids: Sequence[int] | None = None,
        constraints: Sequence[tuple[Any, Any]] = (),
    ) -> list[tuple[int, float]]:
        """``(pmid, bm25)`` of :meth:`_matches`, without the terms."""
        ids, doc, _, weights = self._scored(terms, limit, pmids, constraints)
        # summed in the order of the records, then of the fields: as term by term
        totals = np.bincount(
            np.repeat(doc, len(TEXT_FIELDS)), weights=weights.ravel(), minlength=len(ids)
        )
        out = [
            (pmid, total)
            for pmid, total in zip(ids, totals.tolist(), strict=True)
            if pmid >= 0 and total > 0
        ]
        out.sort(key=lambda m: (-m[1], m[0]))
        return out

    def _matches(
        self,
        terms: dict[str, float],
        limit: int,
        pmids: Sequence[int] | None = None,
        constraints: Sequence[tuple[Any, Any]] = (),
    ) -> list[LexicalMatch]:
        """The documents tantivy finds (its best ``limit``; among ``pmids`` if given; meeting
        ``constraints``), scored with :attr:`bm25`, best first (ties by PMID), with their
        matched terms."""
        ids, doc, term, weights = self._scored(terms, limit, pmids, constraints)
        names = list(terms)
        per_doc: dict[int, list[tuple[int, LexicalTerm]]] = {}
        for d, t, row in zip(doc.tolist(), term.tolist(), weights.tolist(), strict=True):
            per = {TEXT_FIELDS[f]: w for f, w in enumerate(row) if w}
            if per:
                per_doc.setdefault(d, []).append((t, LexicalTerm(names[t], sum(per.values()), per)))
        out = []
        for d, found in per_doc.items():
            if ids[d] < 0:
                continue
            matched = [m for _, m in sorted(found, key=lambda tm: tm[0])]  # in query order
            out.append(LexicalMatch(ids[d], sum(m.weight for m in matched), tuple(matched)))
        out.sort(key=lambda m: (-m.score, m.pmid))
        return out

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best ``(pmid, bm25)`` for a free-text query, best first (ties by PMID),
        among tantivy's best ``max(k, FIRST_STAGE)`` of the documents holding every quoted
        phrase of it and none of the words or phrases it excludes (:meth:`_constraints`).

        Raises:
            ConsistencyError: The query quotes a phrase and this index has no positions
                (:attr:`phrases`).
        """
        terms = query_terms(query)
        if not terms or k <= 0 or not self.size:
            return []
        return self._ranked(terms, max(k, FIRST_STAGE), None, self._constraints(query))[:k]

    def scores(self, query: str, pmids: Sequence[int]) -> dict[int, float]:
        """BM25 of the given PMIDs for ``query`` (absent: no query term occurs in it, or it
        lacks a quoted phrase of it, or holds a word it excludes)."""
        terms = query_terms(query)
        constraints = self._constraints(query) if terms else []
        out: dict[int, float] = {}
        for chunk in self._chunks(terms, pmids, None):
            out.update(self._ranked(terms, len(chunk), chunk, constraints))
        return out

    def explain(self, query: str, pmids: Sequence[int]) -> dict[int, LexicalMatch]:
        """The matched terms of each given PMID (the first :data:`PMID_CHUNK` by PMID) and
        their BM25 weights, per field; they add up to its score. A PMID lacking a quoted
        phrase of ``query``, or holding a word it excludes, has none."""
        terms = query_terms(query)
        constraints = self._constraints(query) if terms else []
        out: dict[int, LexicalMatch] = {}
        for chunk in self._chunks(terms, pmids, PMID_CHUNK):
            out.update(
                (m.pmid, m) for m in self._matches(terms, len(chunk), chunk, constraints)
            )
        return out

    def holders(self, query: str, limit: int) -> list[int]:
        """The PMIDs (sorted) of up to ``limit`` documents that meet ``query``'s
        constraints whatever its words: by each author it asks for (and by none it
        excludes), holding its quoted phrases; none when it asks for no author.

        Raises:
            ConsistencyError: As :meth:`matching`.
        """
        import tantivy

        if limit <= 0 or not any(not a.excluded for a in query_authors(query)):
            return []
        searcher = self._index.searcher()
        query_ = tantivy.Query.boolean_query(self._constraints(query))
        addrs = [addr for _, addr in searcher.search(query_, limit, count=False).hits]
        return sorted(int(p) for p in searcher.fast_field_values("pmid", addrs) if p is not None)

    def matching(self, query: str, pmids: Sequence[int]) -> set[int]:
        """Those of ``pmids`` that hold every quoted phrase of ``query`` and none of the
        words and phrases it excludes (all of them when it has neither; else a PMID this
        index does not hold is none).

        Raises:
            ConsistencyError: The query quotes a phrase and this index has no positions.
        """
        import tantivy

        constraints = self._constraints(query)
        if not constraints:
            return {int(p) for p in pmids}
        searcher = self._index.searcher()
        out: set[int] = set()
        wanted = sorted({int(p) for p in pmids})
        for start in range(0, len(wanted), PMID_CHUNK):
            chunk = wanted[start : start + PMID_CHUNK]
            only = tantivy.Query.term_set_query(self._index.schema, "pmid", chunk)
            query_ = tantivy.Query.boolean_query([(tantivy.Occur.Must, only), *constraints])
            addrs = [addr for _, addr in searcher.search(query_, len(chunk), count=False).hits]
            out.update(int(p) for p in searcher.fast_field_values("pmid", addrs) if p is not None)
        return out

    def _chunks(
        self, terms: dict[str, float], pmids: Sequence[int], limit: int | None
    ) -> Iterator[list[int]]:
        """The first ``limit`` of ``pmids`` (sorted, distinct) by :data:`PMID_CHUNK`; none
        when there is nothing to look up."""
        if not terms or not pmids or not self.size:
            return
        wanted = sorted({int(p) for p in pmids})[:limit]
        for start in range(0, len(wanted), PMID_CHUNK):
            yield wanted[start : start + PMID_CHUNK]

    def hashes(self, pmids: Sequence[int]) -> dict[int, str]:
        """The content hash (:func:`doc_hash`) indexed for each given PMID it holds."""
        import tantivy

        out: dict[int, str] = {}
        wanted = sorted({int(p) for p in pmids})
        searcher = self._index.searcher()
        for start in range(0, len(wanted), PMID_CHUNK):
            chunk = wanted[start : start + PMID_CHUNK]
            q = tantivy.Query.term_set_query(self._index.schema, "pmid", chunk)
            for _, addr in searcher.search(q, len(chunk), count=False).hits:
                doc = searcher.doc(addr)
                out[int(doc.get_first("pmid"))] = str(doc.get_first("h") or "")
        return out


# ------------------------------------------------------------------- build and update


def link_copy(src: Path, dst: Path) -> None:
    """Fill the new folder ``dst`` with hard links of ``src``'s files (copies where links fail).

    Lock files are left out: tantivy makes its own.
    """
    import shutil

    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if not entry.is_file() or entry.name.endswith(".lock"):
            continue
        try:
            os.link(entry, dst / entry.name)
        except OSError:
            shutil.copy2(entry, dst / entry.name)


def build_lexical(
    engine: Engine, folder: Path, *, base: Path | None, add: np.ndarray | None, remove: np.ndarray
) -> tuple[np.ndarray, int]:
    """Write a lexical index into the new folder ``folder``.

    Args:
        engine: The store.
        folder: Where (must not exist).
        base: A lexical index to start from (hard-linked, then updated), or ``None``.
        add: PMIDs to (re)index; ``None`` with no base: every live article.
        remove: PMIDs to delete from the base first (deleted and changed articles).

    Returns:
        ``(pmids indexed now, documents added)``; the caller keeps the id list.
    """
    import tantivy

    if base is not None:
        link_copy(base, folder)
        index = tantivy.Index.open(str(folder))
        docs, tokens = _removed(index, _Stats.read(base), remove)
    else:
        folder.mkdir(parents=True)
        index = tantivy.Index(_schema(), path=str(folder))
        docs, tokens = 0, dict.fromkeys(TEXT_FIELDS, 0)
    index.register_tokenizer(_TOKENIZER, _terms_tokenizer())
    small = add is not None and len(add) < SMALL_UPDATE
    threads = 1 if small else max(1, min(4, os.cpu_count() or 1))
    writer = index.writer(heap_size=WRITER_HEAP // 4 if small else WRITER_HEAP, num_threads=threads)
    for pmid in remove.tolist():
        writer.delete_documents_by_term("pmid", int(pmid))
    added: list[int] = []
    for doc in _docs(engine, add):
        fields, phrases, words = analysed(doc)
        writer.add_document(_document(doc, fields, phrases, words))
        added.append(doc.pmid)
        docs += 1
        for name in TEXT_FIELDS:
            tokens[name] += len(fields[name])
    writer.commit()
    writer.wait_merging_threads()
    _Stats(docs, tokens).write(folder)
    return np.asarray(sorted(added), dtype=np.int64), len(added)


def _removed(index: Any, stats: _Stats, remove: np.ndarray) -> tuple[int, dict[str, int]]:
    """``stats`` of the base less the documents of ``remove`` it holds (their lengths read
    from the base's fast fields): the work is proportional to ``remove``."""
    import tantivy

    docs, tokens = stats.docs, dict(stats.tokens)
    searcher = index.searcher()
    wanted = remove.tolist()
    for start in range(0, len(wanted), PMID_CHUNK):
        chunk = [int(p) for p in wanted[start : start + PMID_CHUNK]]
        q = tantivy.Query.term_set_query(index.schema, "pmid", chunk)
        addrs = [addr for _, addr in searcher.search(q, len(chunk), count=False).hits]
        if not addrs:
            continue
        docs -= len(addrs)
        for name, values in _lengths(searcher, addrs).items():
            tokens[name] -= sum(values)
    return docs, tokens


# ------------------------------------------------------------------------ the published


_CACHE: dict[str, LexicalIndex] = {}
_CACHE_LOCK = threading.Lock()


def open_lexical_at(version_path: str | Path, bm25: Bm25 | None = None) -> LexicalIndex | None:
    """The lexical index of a version folder (opened once per folder), scoring with ``bm25``
    (default :class:`Bm25`'s), or ``None`` when the version has none (made before lexical
    indexes existed).

    Raises:
        ConsistencyError: Its folder exists but holds no readable index (or one of an
            older format, without BM25 statistics).
    """
    folder = Path(version_path) / LEXICAL_DIR
    key = str(folder)
    bm25 = bm25 or Bm25()
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached.with_bm25(bm25)
        if not folder.exists():
            return None
        try:
            opened = LexicalIndex.open(folder, bm25)
        except ValueError as exc:  # tantivy's error for a damaged index
            raise ConsistencyError(f"lexical index in {folder} cannot be opened: {exc}") from exc
        if len(_CACHE) > 8:  # versions are pruned; keep the cache small
            _CACHE.clear()
        _CACHE[key] = opened
        return opened


def open_lexical(settings: Settings, engine: Engine | None = None) -> LexicalIndex | None:
    """The lexical index of the published index version, or ``None`` (none published, or the
    published version has no lexical part)."""
    row = published_index_row(engine or db.connect(settings))
    return None if row is None else open_lexical_at(row.path, Bm25.from_settings(settings))


# ------------------------------------------------------------------- plan of a refresh


#: Articles whose text changed this many seconds before a lexical index's watermark are
#: compared again (by content hash), covering transactions that committed late.
WATERMARK_SLACK_S = 300.0
#: The file beside :data:`LEXICAL_DIR` listing the PMIDs the lexical index holds (sorted).
IDS_FILE = "lexical_ids.npy"


def text_watermark(engine: Engine) -> dt.datetime | None:
    """When the newest article row was written (``articles.updated_at``)."""
    with engine.connect() as conn:
        value: dt.datetime | None = conn.execute(select(func.max(articles.c.updated_at))).scalar()
        return value


def text_changed_ids(engine: Engine, since: str | None) -> np.ndarray:
    """PMIDs whose row was written after ``since`` (ISO text) less the slack; all when
    ``since`` is ``None``."""
    stmt = select(articles.c.pmid)
    if since:
        start = dt.datetime.fromisoformat(since) - dt.timedelta(seconds=WATERMARK_SLACK_S)
        stmt = stmt.where(articles.c.updated_at > start)
    with engine.connect() as conn:
        return np.unique(
            np.fromiter((int(p) for p in conn.execute(stmt).scalars()), dtype=np.int64)
        )


def changed_docs(engine: Engine, lex: LexicalIndex, pmids: np.ndarray) -> np.ndarray:
    """Which of ``pmids`` (live and indexed) the index holds with other content than the
    store's (by :func:`doc_hash`), sorted."""
    if not len(pmids):
        return np.zeros(0, dtype=np.int64)
    indexed = lex.hashes(pmids.tolist())
    changed = [d.pmid for d in _docs(engine, pmids) if indexed.get(d.pmid) != d.hash]
    return np.asarray(sorted(changed), dtype=np.int64)


def has_lexical(version_path: str | Path) -> bool:
    """Whether a version folder holds a lexical index and its PMID list."""
    folder = Path(version_path)
    return (folder / LEXICAL_DIR / "meta.json").exists() and (folder / IDS_FILE).exists()


def read_ids(version_path: str | Path) -> np.ndarray:
    """The PMIDs a version's lexical index holds, sorted (int64)."""
    return np.asarray(np.load(Path(version_path) / IDS_FILE), dtype=np.int64)


@dataclass(frozen=True)
class LexicalPlan:
    """What one refresh does to the lexical index: start from ``base`` (or from nothing),
    remove ``remove``, (re)index ``add``.

    Attributes:
        engine: The store.
        base: The version folder whose lexical index is the starting point, or ``None``.
        base_ids: The PMIDs of that index.
        add: PMIDs to (re)index; ``None`` (with no base): every live article.
        remove: PMIDs to delete first (deleted and changed articles).
        upto: ``articles.updated_at`` watermark read before any row.
        reason: Why it is built from scratch, or ``None``.
    """

    engine: Engine
    base: Path | None
    base_ids: np.ndarray
    add: np.ndarray | None
    remove: np.ndarray
    upto: dt.datetime | None
    reason: str | None = None

    @property
    def unchanged(self) -> bool:
        """Nothing to add or remove: the base's lexical index is current."""
        return (
            self.base is not None
            and self.add is not None
            and not len(self.add)
            and not len(self.remove)
        )

    def write(self, version_folder: Path) -> dict[str, Any]:
        """Build the lexical index (and its PMID list) into a version folder being written.

        Returns:
            The ``lexical`` entry of the version's ``meta.json``.
        """
        import tantivy

        base = None if self.base is None else self.base / LEXICAL_DIR
        added_ids, added = build_lexical(
            self.engine, version_folder / LEXICAL_DIR, base=base, add=self.add, remove=self.remove
        )
        kept = np.setdiff1d(self.base_ids, self.remove, assume_unique=True)
        ids = np.union1d(kept, added_ids)
        np.save(version_folder / IDS_FILE, ids)
        with open(version_folder / IDS_FILE, "rb") as fh:
            os.fsync(fh.fileno())
        return {
            "format": FORMAT,
            "size": int(len(ids)),
            "added": int(added),
            "removed": int(len(self.base_ids) - len(kept)),
            "rebuilt": self.base is None,
            "reason": self.reason,
            "updated_upto": None if self.upto is None else self.upto.isoformat(),
            "engine": f"tantivy {tantivy.__version__}"
            if hasattr(tantivy, "__version__")
            else "tantivy",
        }


def _lexical_meta(version_path: str | Path) -> dict[str, Any]:
    """The ``lexical`` entry of a version's ``meta.json`` (``{}`` when it has none).

    Raises:
        ValueError: The file is not a JSON object (damaged, cut short).
        OSError: It cannot be read.
    """
    data = json.loads((Path(version_path) / "meta.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"meta.json of {version_path} is not a JSON object")
    entry = data.get("lexical")
    return entry if isinstance(entry, dict) else {}


def plan_lexical(
    engine: Engine, base_path: str | None, live: np.ndarray, *, rebuild: bool = False
) -> LexicalPlan:
    """The lexical side of a refresh, from a base version folder and the live PMIDs.

    The base is updated (new and changed articles added, deleted and changed removed) unless
    a rebuild is asked, there is no base with a lexical index, its :data:`FORMAT` differs, or
    it cannot be read (its version's ``meta.json``, its id list or the index itself): then
    it is built from scratch, and nothing of the base is read.
    """
    upto = text_watermark(engine)
    empty = np.zeros(0, dtype=np.int64)
    reason = "asked" if rebuild else None
    if reason is None and (base_path is None or not has_lexical(base_path)):
        reason = "no lexical index to update"
    if reason is not None or base_path is None:
        return LexicalPlan(engine, None, empty, None, empty, upto, reason)
    try:
        meta = _lexical_meta(base_path)
        if meta.get("format") != FORMAT:
            return LexicalPlan(engine, None, empty, None, empty, upto,
                               f"lexical format {meta.get('format')} -> {FORMAT}")
        base_ids = read_ids(base_path)
        lex = LexicalIndex.open(Path(base_path) / LEXICAL_DIR)
    except (ConsistencyError, OSError, EOFError, ValueError) as exc:
        logger.warning("cannot read lexical index of %s (%s): rebuilding", base_path, exc)
        return LexicalPlan(engine, None, empty, None, empty, upto, "lexical index unreadable")
    gone = np.setdiff1d(base_ids, live, assume_unique=True)
    new = np.setdiff1d(live, base_ids, assume_unique=True)
    candidates = np.intersect1d(
        text_changed_ids(engine, meta.get("updated_upto")),
        np.intersect1d(base_ids, live, assume_unique=True),
    )
    changed = changed_docs(engine, lex, candidates)
    logger.info(
        "lexical update of %s: +%d new, %d changed, -%d deleted",
        base_path,
        len(new),
        len(changed),
        len(gone),
    )
    return LexicalPlan(
        engine, Path(base_path), base_ids, np.union1d(new, changed), np.union1d(gone, changed), upto
    )
