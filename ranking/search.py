"""Search the published index version: candidates, filter, fuse, re-rank, explain.

Modes (:class:`~litpulse.core.states.SearchMode`): ``hybrid`` (default) asks both indexes
of the published version, ``semantic`` the vector index, ``lexical`` the lexical one. The
query is embedded with the model version the published index was built with and the
``rerank_candidates`` nearest neighbours are fetched from FAISS; the
``rerank_candidates`` best BM25 matches from the lexical index (:mod:`ranking.lexical`).
Their rows are read from the database in one query (filters applied in SQL). In hybrid
mode every candidate then gets both inputs (the cosine from its stored vector, the BM25
restricted to the candidates), the two parts are fused (RRF or a min-max mix, ranks and
ranges taken over the candidates that pass the filters) and the survivors are re-ranked by
:func:`ranking.scoring.score_article` with recency and citation impact. When the filters
are selective the lists are widened ×4 (up to the whole index) until ``k`` articles
survive or the indexes are exhausted; an IVF index searches only ``ivf_nprobe`` of its
lists, so once its probed lists run dry (or the list reaches its size) the passing
articles are scored exactly against their stored vectors (:func:`nearest`). Deleted
articles never come back; retracted ones only on request. ``sort=date`` returns the same
hits newest first (ties and undated last by PMID, highest first), reproducible for one
index version and reference day: the hits ``sort=score`` returns for that ``k`` and
``offset``, in date order across all of them (a list of authors alone is the exception:
every article of theirs is listed, so its pages slice one list of them newest first).
Pages (``offset``) are slices of one list of results, built in blocks of
``rerank_candidates`` each ranked from a deeper candidate list (see :func:`run_search`).

A published version without a lexical index (made before there was one) answers hybrid
queries semantically (the explanation says ``"mode": "semantic"``).

Example:
    >>> hits = search(settings, "CRISPR off-target effects", k=5, since="2024-01-01",
    ...               mesh="Humans")                                  # doctest: +SKIP
    >>> hits[0].pmid, round(hits[0].score, 3), hits[0].explanation["text"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import and_, exists, func, or_, select

from litpulse.core import db
from litpulse.core.errors import ConfigError, ConsistencyError, NotFoundError
from litpulse.core.schema import article_terms, articles, term_forms
from litpulse.core.settings import Settings
from litpulse.core.states import RETRACTED_TYPE, Fusion, SearchMode, SearchSort
from litpulse.core.text import as_typed, checked_text, doi_key, fold_term
from litpulse.core.timeutil import iso, parse_date
from ranking.details import links, published_text, with_details
from ranking.scoring import Relevance, ScoringOptions, score_article, scores
from ranking.snippets import Snippet

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy import Engine, Select

__all__ = [
    "MAX_OFFSET",
    "MAX_PAGE",
    "MAX_QUERY_CHARS",
    "checked_query",
    "load_rows",
    "Hit",
    "nearest",
    "NoIndexError",
    "SearchFilters",
    "SearchResult",
    "relevances",
    "search",
    "run_search",
    "sort_by_date",
    "stored_cosines",
    "widened",
    "warm_up",
]

logger = logging.getLogger(__name__)

#: Longest query accepted, in characters.
MAX_QUERY_CHARS = 512
#: Largest ``offset`` of a page (a deeper page ranks more, and longer, candidate lists).
MAX_OFFSET = 1000
#: Most results of one page of ``GET /search`` (``k``): a ``litpulse search -k`` above it is
#: searched in process, not asked of a running server.
MAX_PAGE = 100
#: Most by which the neighbour list grows in one step while too few candidates pass.
WIDEN_FACTOR = 4


def next_page(more: bool, offset: int, k: int) -> tuple[bool, bool]:
    """Whether a page of ``k`` at ``offset`` that ``more`` results follow has a next page
    (its offset, ``offset + k``, is accepted: at most :data:`MAX_OFFSET`), and whether
    it is cut instead (more follow past the deepest offset: said, never left as the end):
    ``(has_more, truncated)``."""
    within = offset + k <= MAX_OFFSET
    return more and within, more and not within


def widened(n: int, passing: int, wanted: int, size: int) -> int:
    """The next candidate list length after ``n`` gave ``passing`` of ``wanted``.

    Grows by what the pass rate seen so far says is missing, with a quarter's margin
    (at least a quarter more, at most :data:`WIDEN_FACTOR` times): a few retracted
    neighbours among 200 cost ~50 more candidates, not 600; a selective filter still
    grows fast. Never beyond ``size``.
    """
    if passing <= 0:  # no pass rate known yet
        return min(size, n * WIDEN_FACTOR)
    estimate = -(-n * wanted * 5 // (4 * passing))  # ceil(n * wanted / passing * 1.25)
    return min(size, max(n + max(n // 4, 1), min(estimate, n * WIDEN_FACTOR)))

_ROW_COLUMNS = (
    articles.c.pmid,
    articles.c.title,
    articles.c.journal,
    articles.c.pub_year,
    articles.c.pub_month,
    articles.c.pub_day,
    articles.c.article_date,
    articles.c.best_date,
    articles.c.language,
    articles.c.has_abstract,
    articles.c.is_retracted,
    articles.c.relative_citation_ratio,
    articles.c.icite_provisional,
    articles.c.citations_per_year,
    articles.c.citation_count,
    articles.c.cited_by_in_corpus,
)


class NoIndexError(NotFoundError):
    """Nothing is published yet, so there is nothing to search."""


class SearchableIndex(Protocol):
    """What search needs of :class:`ranking.index_files.PublishedIndex`."""

    @property
    def id(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    @property
    def size(self) -> int: ...

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class LexicalSearcher(Protocol):
    """What search needs of :class:`ranking.lexical.LexicalIndex`."""

    @property
    def size(self) -> int: ...

    def search(self, query: str, k: int) -> list[tuple[int, float]]: ...

    def scores(self, query: str, pmids: Sequence[int]) -> dict[int, float]: ...

    def explain(self, query: str, pmids: Sequence[int]) -> dict[int, Any]: ...

    def matching(self, query: str, pmids: Sequence[int]) -> set[int]: ...

    def holders(self, query: str, limit: int) -> list[int]: ...


@dataclass(frozen=True)
class Hit:
    """One search result with its score components and explanation."""

    pmid: int
    title: str
    score: float
    similarity: float
    recency: float
    citation: float
    journal: str | None = None
    pub_year: int | None = None
    best_date: dt.date | None = None
    explanation: dict[str, Any] = field(default_factory=dict, compare=False)
    #: the publication date as precisely as PubMed gives it (ranking.details.published_text)
    published: str | None = None
    lexical: float = 0.0
    bm25: float | None = None
    # what a result list shows (ranking.details): the first authors and how many there are
    authors: tuple[str, ...] = ()
    author_count: int = 0
    snippet: Snippet | None = field(default=None, compare=False)
    title_highlights: tuple[tuple[int, int], ...] = ()
    mesh: tuple[str, ...] = ()
    publication_types: tuple[str, ...] = ()
    doi: str | None = None
    retracted: bool = False
    #: article, chapter or book (ranking.details.Kind)
    kind: str = "article"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (dates as ISO strings; highlight spans in code points)."""
        return {
            "pmid": self.pmid,
            "title": self.title,
            "journal": self.journal,
            "pub_year": self.pub_year,
            "best_date": iso(self.best_date),
            "published": self.published,
            "score": self.score,
            "similarity": self.similarity,
            "recency": self.recency,
            "citation": self.citation,
            "lexical": self.lexical,
            "bm25": self.bm25,
            "explanation": self.explanation,
            "authors": list(self.authors),
            "author_count": self.author_count,
            "snippet": self.snippet.to_dict() if self.snippet else None,
            "title_highlights": [list(h) for h in self.title_highlights],
            "mesh": list(self.mesh),
            "publication_types": list(self.publication_types),
            "doi": self.doi,
            "retracted": self.retracted,
            "kind": self.kind,
            "links": links(self.pmid, self.doi),
        }


def _terms(name: str, value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, str | list | tuple):  # a mapping's keys are no terms (36g X3)
        raise ConfigError(f"{name} must be text or a list of text, got {value!r:.80}")
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{name} must be text, got {item!r}")
        # runs of white space as one space, as the stored terms have them (a term copied
        # from a web page brings a doubled or non-breaking space along)
        item = " ".join(checked_text(item, name).split())
        if len(item) > 255:
            raise ConfigError(f"{name} is longer than 255 characters")
        # copied from a PubMed query (Neoplasms[mh]): no stored term ends so, none matched
        attached = re.sub(r"\s+\[", "[", item)
        tagged = _FIELD_TAG.search(attached)
        if tagged and tagged.end() == len(attached):
            tag = (tagged.group(1) or tagged.group(2)).lower()
            bare = attached[: tagged.start()] + (
                MAJOR_MARK if name == "mesh" and tag in ("majr", "mesh major topic") else "")
            raise ConfigError(f"{name} {item!r} holds PubMed's field tag {tagged.group(0)!r}: "
                              f"give the term alone ({bare!r})")
        if name == "mesh" and _QUALIFIED.search(item):
            descriptor = major_topic(item.split("/")[0])[0]
            raise ConfigError(
                f"mesh {item!r} names a subheading: MeSH subheadings are not filtered on; "
                f"filter by the descriptor ({descriptor!r}), and add the subheading's words "
                "to the query"
            )
        # a term of no letter or digit folds to nothing (fold_term) and names no stored
        # one: it would match no article, an empty answer without a word
        named = major_topic(item)[0] if name == "mesh" else item
        if item and not fold_term(named):
            why = "it holds no letter or digit"
            if name == "mesh" and MAJOR_MARK in item:
                why = f"{MAJOR_MARK!r} marks a major topic after one ('Neoplasms{MAJOR_MARK}')"
            raise ConfigError(f"{name} {item!r} names no {_TERM_KINDS[name]}: {why}")
        if item:
            out.append(item)
    return tuple(out)


#: What a term of each filter names, for a message.
_TERM_KINDS = {"mesh": "descriptor", "publication_type": "publication type"}


#: The publication type every retracted article carries, folded.
_RETRACTED_TYPE = fold_term(RETRACTED_TYPE)
#: PubMed's descriptor/subheading form (``Neoplasms/genetics``, ``Neoplasms/drug therapy*``).
_QUALIFIED = re.compile(r"\S\s*/\s*[A-Za-z]")
#: The mark of a major topic after a MeSH descriptor (``Neoplasms*``), as PubMed shows it,
#: or before it (``*Neoplasms``), as MEDLINE's format (EDirect's, a .nbib file) does.
MAJOR_MARK = "*"


def major_topic(term: str) -> tuple[str, bool]:
    """A MeSH filter term without its major-topic marks, and whether it had one (after
    the descriptor, PubMed's way, or before it, MEDLINE's)."""
    bare = term.strip(MAJOR_MARK + " ")
    return bare, bare != term.strip() and MAJOR_MARK in term
#: Language names as PubMed lists them, and the codes its records hold (ISO 639-2/B).
LANGUAGE_CODES = {
    "afrikaans": "afr", "albanian": "alb", "arabic": "ara", "armenian": "arm",
    "bosnian": "bos", "bulgarian": "bul", "catalan": "cat", "chinese": "chi",
    "croatian": "hrv", "czech": "cze", "danish": "dan", "dutch": "dut", "english": "eng",
    "esperanto": "epo", "estonian": "est", "finnish": "fin", "french": "fre",
    "georgian": "geo", "german": "ger", "greek": "gre", "hebrew": "heb", "hindi": "hin",
    "hungarian": "hun", "icelandic": "ice", "indonesian": "ind", "irish": "gle",
    "italian": "ita", "japanese": "jpn", "korean": "kor", "latin": "lat", "latvian": "lav",
    "lithuanian": "lit", "macedonian": "mac", "malay": "may", "norwegian": "nor",
    "persian": "per", "polish": "pol", "portuguese": "por", "romanian": "rum",
    "russian": "rus", "sanskrit": "san", "serbian": "srp", "slovak": "slo",
    "slovenian": "slv", "spanish": "spa", "swedish": "swe", "thai": "tha", "turkish": "tur",
    "ukrainian": "ukr", "urdu": "urd", "vietnamese": "vie", "welsh": "wel",
    "multiple languages": "mul", "undetermined": "und", "amharic": "amh",
    "azerbaijani": "aze", "basque": "baq", "bengali": "ben", "burmese": "bur",
    "kinyarwanda": "kin", "malayalam": "mal", "maori": "mao", "pashto": "pus",
    "pushto": "pus", "scottish gaelic": "gla", "tibetan": "tib",
}  # fmt: skip
#: The ISO 639-2 terminology (T) codes of the languages that have two, and the
#: bibliographic (B) code PubMed's records hold: ISO 639-3 and most software write ``fra``
#: and ``deu``, PubMed ``fre`` and ``ger``.
TERMINOLOGY_CODES = {
    "sqi": "alb", "hye": "arm", "eus": "baq", "mya": "bur", "zho": "chi", "ces": "cze",
    "nld": "dut", "fra": "fre", "kat": "geo", "deu": "ger", "ell": "gre", "isl": "ice",
    "mkd": "mac", "mri": "mao", "msa": "may", "fas": "per", "ron": "rum", "slk": "slo",
    "bod": "tib", "cym": "wel",
}  # fmt: skip


def _language(value: str | None) -> str | None:
    """A language filter as the code records hold: a code (``eng``, any case; a
    terminology code as its bibliographic one, ``fra`` as ``fre``) or a name
    (``English``).

    Raises:
        ConfigError: Neither a three-letter code nor a known name.
    """
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"language must be text, got {value!r}")
    lang = " ".join(checked_text(value or "", "language").split()).lower() or None
    if lang is None:
        return None
    code = TERMINOLOGY_CODES.get(lang, LANGUAGE_CODES.get(lang, lang))
    if code in _KNOWN_CODES:
        return code
    # any three letters taken for a stored code matched nothing, without a word
    raise ConfigError(
        f"language must be a code PubMed's records hold ({', '.join(sorted(_KNOWN_CODES))}; "
        f"ISO 639-2 fra, deu... read as fre, ger...) or a name like 'English', got {value!r}"
    )


#: The language codes PubMed's records hold (its list of languages, ISO 639-2/B).
_KNOWN_CODES = frozenset(LANGUAGE_CODES.values()) | frozenset(TERMINOLOGY_CODES.values())


@dataclass(frozen=True)
class SearchFilters:
    """Which articles may be returned.

    Args:
        since: Earliest publication day (inclusive); articles without a date are then
            out. An article is in the range ``since..until`` when its ``best_date`` is, or
            when any day of its issue's publication period is (its ``pub_year``, month and
            day, as far as PubMed gives them: a year-only 2019 article is in a
            June-December 2019 range; a January 2020 issue published online in November
            2019 is in 2020): PubMed's own [dp] matches the print or the electronic date.
        until: Latest publication day (inclusive); see ``since``.
        mesh: MeSH descriptors the article must all carry, compared folded
            (:func:`litpulse.core.text.fold_term`: case, accents, apostrophes, dashes,
            Greek letters and white space aside: ``Sjögren’s syndrome`` finds
            ``Sjogren's Syndrome``, ``α-Synuclein`` finds ``alpha-Synuclein``).
        publication_type: Publication types it must all have (likewise).
        language: Language code, e.g. ``eng`` (case-insensitive): any language of the
            article (stores older than this rule know only the first of an article
            stored before, until a revision of it is stored).
        has_abstract: ``True`` only with an abstract, ``False`` only without, ``None`` any.
        include_retracted: Also return retracted articles (flagged in the explanation).

    Raises:
        ConfigError: ``has_abstract`` neither ``True``, ``False`` nor ``None``, or
            ``include_retracted`` no bool (``"false"`` is text, not false: stored filters
            and Python callers are held to what the CLI and the API accept), a
            malformed date, ``since`` after ``until``, an over-long term, a
            term naming nothing (no letter or digit: a dash, the major-topic mark ``*``
            alone), or a term or language holding a control character
            (:func:`litpulse.core.text.checked_text`).
    """

    since: dt.date | None = None
    until: dt.date | None = None
    mesh: tuple[str, ...] = ()
    publication_type: tuple[str, ...] = ()
    language: str | None = None
    has_abstract: bool | None = None
    include_retracted: bool = False

    def __post_init__(self) -> None:
        if not (self.has_abstract is None or isinstance(self.has_abstract, bool)):
            raise ConfigError(
                f"has_abstract must be true, false or null, got {self.has_abstract!r}")
        if not isinstance(self.include_retracted, bool):
            raise ConfigError(
                f"include_retracted must be true or false, got {self.include_retracted!r}")
        object.__setattr__(self, "since", parse_date(self.since, "since"))
        object.__setattr__(self, "until", parse_date(self.until, "until"))
        if self.since and self.until and self.since > self.until:
            raise ConfigError(f"since ({self.since}) must not be after until ({self.until})")
        object.__setattr__(self, "mesh", _terms("mesh", self.mesh))
        object.__setattr__(
            self, "publication_type", _terms("publication_type", self.publication_type)
        )
        object.__setattr__(self, "language", _language(self.language))
        # every article of this type is retracted (ingest.fields): asking for the type asks
        # for retracted articles, which would otherwise be left out, silently, all of them
        if any(fold_term(t) == _RETRACTED_TYPE for t in self.publication_type):
            object.__setattr__(self, "include_retracted", True)

    @property
    def selective(self) -> bool:
        """Whether anything beyond the always-on deleted/retracted rule applies."""
        return bool(
            self.since
            or self.until
            or self.mesh
            or self.publication_type
            or self.language
            or self.has_abstract is not None
        )

    def clauses(self) -> list[Any]:
        """SQL conditions on ``articles`` (deleted rows are always excluded).

        They restrict rows looked up by PMID (the candidates), so none of them may look
        like a better way in to the planner: ``is_deleted`` is wrapped, else SQLite
        (without statistics) walks its index, every live article for every query.
        """
        conds: list[Any] = [func.coalesce(articles.c.is_deleted, True).is_(False)]
        if not self.include_retracted:
            conds.append(articles.c.is_retracted.is_(False))
        if self.since or self.until:
            conds.append(or_(_best_in(self.since, self.until), _issue_in(self.since, self.until)))
        if self.language:  # its first language, or another of a bilingual article
            conds.append(or_(
                func.lower(articles.c.language) == self.language,
                exists().where(and_(
                    article_terms.c.pmid == articles.c.pmid,
                    article_terms.c.kind == "lang",
                    article_terms.c.term == self.language,
                )),
            ))  # fmt: skip
        if self.has_abstract is not None:
            conds.append(articles.c.has_abstract.is_(bool(self.has_abstract)))
        t, f = article_terms.c, term_forms.c
        for kind, terms in (("mesh", self.mesh), ("ptype", self.publication_type)):
            for term in terms:
                major = False
                if kind == "mesh":
                    term, major = major_topic(term)
                # any stored spelling of the same folded form (Sjögren’s, α-, ‐), or the
                # term itself in any case (spellings stored before term_forms was filled)
                spellings = select(f.term).where(f.kind == kind, f.folded == fold_term(term))
                conds.append(exists().where(
                    t.pmid == articles.c.pmid,
                    t.kind == kind,
                    or_(func.lower(t.term) == term.lower(), t.term.in_(spellings)),
                    *([t.major.is_(True)] if major else []),
                ))  # fmt: skip
        return conds

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "mesh": list(self.mesh),
            "publication_type": list(self.publication_type),
            "language": self.language,
            "has_abstract": self.has_abstract,
            "include_retracted": self.include_retracted,
        }


@dataclass(frozen=True)
class SearchResult:
    """The hits of one query and where they came from."""

    query: str
    index_version: str
    model_version: str
    hits: tuple[Hit, ...]
    candidates: int
    options: ScoringOptions
    filters: SearchFilters
    mode: SearchMode = SearchMode.SEMANTIC
    sort: SearchSort = SearchSort.SCORE
    requested_mode: SearchMode = SearchMode.SEMANTIC
    offset: int | None = None  # a page (see run_search), or None: the k best
    has_more: bool = False  # a page: whether a next page may hold results
    excluded: tuple[str, ...] = ()  # what the query excludes with NOT
    authors: tuple[str, ...] = ()  # its author clauses as read: Smith J[au], NOT Li X[1au]
    #: what the query does not do that its syntax may suggest, and what to write instead
    #: (:func:`query_notes`: Google's ``-word`` is searched for); that more results match
    #: than the deepest page reaches
    notes: tuple[str, ...] = ()
    #: a page: more results match past the deepest offset (:data:`MAX_OFFSET`): not paged
    truncated: bool = False
    #: the store as ranked (:func:`litpulse.core.db.store_version`): pages with the same
    #: index version, day and store version are slices of one list
    store_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "index_version": self.index_version,
            "model_version": self.model_version,
            "mode": str(self.mode),
            "requested_mode": str(self.requested_mode),
            "sort": str(self.sort),
            "candidates": self.candidates,
            "offset": self.offset or 0,
            "has_more": self.has_more,
            "truncated": self.truncated,
            "store_version": self.store_version,
            "excluded": list(self.excluded),
            "authors": list(self.authors),
            "notes": list(self.notes),
            "options": self.options.to_dict(),
            "filters": self.filters.to_dict(),
            "results": [h.to_dict() for h in self.hits],
        }


def warm_up(settings: Settings, engine: Engine | None = None) -> str | None:
    """Load what the first search would: the published index (vectors and BM25) and its
    model version's query encoder, which embeds a probe query.

    A server calls it before it answers, so that its first search costs what every other
    does. Returns the index version's id, or ``None`` when nothing is published yet.
    """
    from ranking.index_files import open_published

    engine = engine or db.connect(settings)
    index = open_published(settings, engine)
    if index is None:
        return None
    _query_embedder(settings, engine, index)("warm-up")
    return str(index.id)


def _open_index(settings: Settings, engine: Engine) -> SearchableIndex:
    from ranking.index_files import open_published

    index = open_published(settings, engine)
    if index is None:
        raise NoIndexError(
            "no index is published yet: ingest articles, then run `litpulse index refresh`"
        )
    return index


def _best_in(since: dt.date | None, until: dt.date | None) -> Any:
    """``best_date`` within ``since..until`` (either may be open)."""
    a = articles.c
    return and_(*([a.best_date >= since] if since else []),
                *([a.best_date <= until] if until else []))


def _issue_in(since: dt.date | None, until: dt.date | None) -> Any:
    """Some day of the issue's publication period (``pub_year``, and ``pub_month`` and
    ``pub_day`` where PubMed gives them) within ``since..until``, compared as ``YYYYMMDD``
    numbers: a year runs from its 0101 to its 1231, a month from its 01 to its 31; a
    period whose text reaches further (``2019 Nov-Dec``, ``2000 Spring``) ends on its
    ``pub_period_end``."""
    a = articles.c
    year = a.pub_year * 10000
    first = year + func.coalesce(a.pub_month, 1) * 100 + func.coalesce(a.pub_day, 1)
    last = year + func.coalesce(a.pub_month, 12) * 100 + func.coalesce(a.pub_day, 31)
    conds: list[Any] = [a.pub_year.is_not(None)]
    if since:
        conds.append(or_(
            last >= since.year * 10000 + since.month * 100 + since.day,
            a.pub_period_end >= since,
        ))  # fmt: skip
    if until:
        conds.append(first <= until.year * 10000 + until.month * 100 + until.day)
    return and_(*conds)


def _rows_query(pmids: Sequence[int], conds: list[Any]) -> Select[Any]:
    """The rows of the given candidates that pass ``conds``."""
    return select(*_ROW_COLUMNS).where(articles.c.pmid.in_(list(pmids)), *conds)


def load_rows(engine: Engine, pmids: Sequence[int], conds: list[Any]) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    keys = [c.name for c in _ROW_COLUMNS]
    with engine.connect() as conn:
        for start in range(0, len(pmids), db.IN_CHUNK):
            stmt = _rows_query(pmids[start : start + db.IN_CHUNK], conds)
            for r in conn.execute(stmt).all():
                rows[int(r[0])] = dict(zip(keys, r, strict=True))
    return rows


#: Passing articles scored at once when a neighbour list is scored exactly.
EXACT_CHUNK = 50_000


def stored_cosines(index: Any, pmids: Sequence[int], vector: np.ndarray) -> dict[int, float]:
    """The cosine of ``vector`` (``(1, d)``) with the stored vector of each of ``pmids``
    the index holds (others are left out: not embedded yet), from ``vectors_of`` (one
    call) or else ``reconstruct`` (one call each); ``{}`` from an index with neither."""
    import numpy as np

    if not len(pmids):
        return {}
    vectors_of = getattr(index, "vectors_of", None)
    if vectors_of is not None:
        found, vectors = vectors_of(pmids)
        sims = np.asarray(vectors, dtype=np.float32) @ vector[0]
        keep = np.isfinite(sims)  # a stored vector of NaN (an older release kept them): none
        return dict(zip(np.asarray(found)[keep].tolist(), sims[keep].tolist(), strict=True))
    reconstruct = getattr(index, "reconstruct", None)
    out: dict[int, float] = {}
    if reconstruct is None:
        return out
    for pmid in pmids:
        try:
            cosine = float(np.dot(np.asarray(reconstruct(pmid)), vector[0]))
        except (RuntimeError, KeyError):  # not in the vector index (not embedded)
            continue
        if math.isfinite(cosine):
            out[int(pmid)] = cosine
    return out


def _scores_exactly(index: Any) -> bool:
    """Whether the passing articles' stored vectors can be scored (``vectors_of`` or
    ``reconstruct``)."""
    return hasattr(index, "vectors_of") or hasattr(index, "reconstruct")


def _exact_neighbours(
    engine: Engine, index: Any, vector: np.ndarray, n: int, conds: list[Any]
) -> list[tuple[int, float]]:
    """The ``n`` articles passing ``conds`` whose stored vectors are nearest ``vector``:
    ``(pmid, cosine)``, best first (ties: lower PMID first); every passing article the
    index holds is scored."""
    import numpy as np

    with engine.connect() as conn:
        passing = [int(p) for p in conn.execute(select(articles.c.pmid).where(*conds)).scalars()]
    held = getattr(index, "ids", None)
    if held is not None and passing:  # the PMIDs a PublishedIndex holds: skip the others
        arr = np.asarray(passing, dtype=np.int64)
        passing = arr[np.isin(arr, np.asarray(held, dtype=np.int64))].tolist()
    ids = np.zeros(0, dtype=np.int64)
    sims = np.zeros(0, dtype=np.float64)
    for start in range(0, len(passing), EXACT_CHUNK):
        got = stored_cosines(index, passing[start : start + EXACT_CHUNK], vector)
        ids = np.concatenate([ids, np.fromiter(got, np.int64, len(got))])
        sims = np.concatenate([sims, np.fromiter(got.values(), np.float64, len(got))])
        if len(ids) > n:  # keep the best n (and their ties) of what is scored so far
            cut = np.partition(-sims, n - 1)[n - 1]
            keep = -sims <= cut
            ids, sims = ids[keep], sims[keep]
    order = np.lexsort((ids, -sims))[:n]
    return list(zip(ids[order].tolist(), sims[order].tolist(), strict=True))


def nearest(
    engine: Engine, index: Any, vector: np.ndarray, n: int, conds: list[Any]
) -> tuple[list[tuple[int, float]], bool]:
    """The ``n`` stored vectors nearest ``vector`` as ``(pmid, cosine)``, and whether every
    article passing ``conds`` that the index holds is among them (no longer list can hold
    another).

    FAISS answers the nearest of what it searches: the whole of a flat index, but only
    the ``ivf_nprobe`` lists nearest the query in an IVF one. So when ``n`` reaches an
    IVF index's size, or FAISS answers fewer than asked (the probed lists ran dry), a
    longer list could never reach the passing articles in the other lists: the articles
    passing ``conds`` are then scored exactly against their stored vectors instead
    (:func:`stored_cosines`), and the best ``n`` of them are the list. A flat index, or a
    probe that fills the list, keeps FAISS's answer (the first page of a search).
    """
    size = int(index.size)
    want = min(n, size)
    if want <= 0:
        return [], True
    approximate = getattr(index, "kind", "flat") != "flat"
    pairs: list[tuple[int, float]] = []
    if not (approximate and n >= size and _scores_exactly(index)):
        scores, pmids = index.search(vector, want)
        pairs = [
            (int(pmid), float(score))
            for score, pmid in zip(scores[0].tolist(), pmids[0].tolist(), strict=True)
            if pmid >= 0 and math.isfinite(score)
        ]
        if len(pairs) >= want or not _scores_exactly(index):
            return pairs, n >= size
    exact = _exact_neighbours(engine, index, vector, want, conds)
    logger.debug("the index answered %d of %d neighbours: %d passing scored exactly",
                 len(pairs), want, len(exact))
    return exact, len(exact) < want or n >= size


def run_search(
    settings: Settings,
    query: str,
    *,
    k: int = 10,
    filters: SearchFilters | None = None,
    options: ScoringOptions | None = None,
    engine: Engine | None = None,
    index: SearchableIndex | None = None,
    embed: Callable[[str], np.ndarray] | None = None,
    lexical: LexicalSearcher | None = None,
    mode: SearchMode | str = SearchMode.HYBRID,
    sort: SearchSort | str = SearchSort.SCORE,
    offset: int | None = None,
) -> SearchResult:
    """Search and return the hits with the index and model versions used.

    Each hit carries what a result list shows (authors, an abstract snippet with the query
    terms highlighted, MeSH, publication types, DOI, retracted flag; :mod:`ranking.details`).

    Args:
        settings: Store, model and scoring defaults.
        query: Free text, 1..512 characters after trimming.
        k: Hits wanted (>= 1).
        filters: Which articles may be returned (default: any live, non-retracted).
        options: Weights, half-life and fusion (default from the settings).
        engine: Database engine (default :func:`litpulse.core.db.connect`).
        index: The vector index to search (default the published one).
        embed: Turns the query into a ``(1, d)`` float32 vector (default: the index's own
            model version through :func:`ranking.embed.encode_query`).
        lexical: The lexical index (default the one of ``index``'s version, if it has one).
        mode: ``hybrid``, ``semantic`` or ``lexical``.
        sort: ``score`` (best first) or ``date`` (the same hits, newest first).
        offset: A page: the ``k`` results after the first ``offset`` of the query's one
            list of results, built in blocks of ``rerank_candidates`` that depend on
            neither the page nor ``k`` (see :func:`_page`): the first block is the best
            of the candidates a search for that many results meets, each further block
            the best not listed before among the candidates of a search for twice, three
            times … as many (the lists widen until that many pass the filters). So pages
            of one query, index version and reference day are disjoint slices of one
            list up to :data:`MAX_OFFSET`; a page within the first block costs what the
            ``k`` best do, one ending in the ``i``-th block ``i`` candidate searches. With
            ``sort=date`` the page holds the same results as with ``score``, newest first
            across the page (a CLI ``-k`` past one block included; pages are each
            ordered, their union is the same). ``None`` (the default): the ``k`` best,
            widening until ``k`` pass; ``sort=date`` orders them likewise.

    Raises:
        ConfigError: An empty or over-long query, one holding a control character
            (:func:`litpulse.core.text.checked_text`), ``k`` < 1, an ``offset`` outside
            0..:data:`MAX_OFFSET`, or an unknown mode or sort.
        NoIndexError: Nothing is published yet, or lexical mode (or a query quoting a
            phrase or excluding with NOT) on a version without a lexical index.
        ConsistencyError: A query quoting a phrase or excluding with NOT on a lexical
            index built before phrases were indexed (a refresh rebuilds it).
    """
    import numpy as np

    from ranking.lexical import constrains, query_authors, split_exclusions

    text = _checked_query(query, k)
    searched, excluded = split_exclusions(text)
    _check_offset(offset)
    requested, order = _mode(mode), _sort(sort)
    filters = filters or SearchFilters()
    options = options or ScoringOptions.from_settings(settings)
    if options.today is None:  # one reference day for every candidate of this query
        options = dataclasses.replace(options, today=options.reference_day())
    engine = engine or db.connect(settings)
    # read before ranking: a write while this page is ranked shows as a change on the next
    with engine.connect() as conn:
        version = db.store_version(conn)
    if index is None:
        index = _open_index(settings, engine)
    if lexical is None:
        lexical = getattr(index, "lexical", None)
    effective = requested
    if lexical is None:
        # one that could not be opened for a moment is opened again by the next search
        failed = getattr(index, "lexical_error", None)
        why = (f"index {index.id}'s cannot be opened now ({failed}): try again shortly"
               if failed else
               f"index {index.id} has none yet: run `litpulse index refresh`")  # fmt: skip
        if requested == SearchMode.LEXICAL:
            raise NoIndexError(f"lexical mode searches the lexical index, and {why}")
        if constrains(text):
            raise NoIndexError(
                f"quoted phrases, NOT and authors ([au]) are matched in the lexical index, "
                f"and {why}, or search without them"
            )
        effective = SearchMode.SEMANTIC
    conds = filters.clauses()
    by_date = order == SearchSort.DATE
    if lexical is not None and lists_authors(text):
        # authors alone (Smith J[au]): their articles, by recency and citation
        effective = SearchMode.LEXICAL
        hits, pool, has_more = _listing(engine, index, lexical, text, conds, options, k=k,
                                        offset=offset, by_date=by_date)  # fmt: skip
    else:
        vector = None
        if effective != SearchMode.LEXICAL:
            embed = embed or _query_embedder(settings, engine, index)
            # what is embedded is what is searched for: not the words excluded
            vector = np.ascontiguousarray(
                np.asarray(embed(searched), dtype=np.float32).reshape(1, -1)
            )
        has_more = False
        if offset is None:
            pool = _candidates(
                settings, engine, index, lexical, vector, text, k, conds, effective
            )
            ranked = _rank(pool, options, effective, lexical)
            hits = _explain(ranked, ranked.order[:k], options, effective, lexical, text)
        else:
            hits, pool, has_more = _page(
                settings, engine, index, lexical, vector, text, conds, effective, options,
                start=offset, k=k,
            )  # fmt: skip
        if by_date:  # the same results, newest first across all of them (not block by block)
            hits = sort_by_date(hits)
    hits = with_details(engine, hits, text)
    notes = query_notes(text) + unused_share_notes(settings, options, requested, effective)
    # a next page only where one can be asked for (its offset is refused past MAX_OFFSET);
    # more results past it are said, never left for the end of the list
    start = offset or 0
    has_more, truncated = next_page(has_more, start, k)
    if truncated:
        notes += (
            f"More articles match than the deepest page reaches (results past "
            f"{start + len(hits):,} are not paged: offsets stop at {MAX_OFFSET:,}): narrow "
            "the query with a filter, a recent date range (the newest) or more words "
            "(sorting by date orders the page, it reaches no deeper).",
        )
    logger.info(
        "query %r (%s): %d candidates, %d pass filters, returning %d (index %s)",
        text[:60],
        effective,
        pool.seen,
        len(pool.rows),
        len(hits),
        index.id,
    )
    return SearchResult(
        query=text,
        index_version=str(index.id),
        model_version=str(index.model_version),
        hits=tuple(hits),
        candidates=pool.seen,
        options=options,
        filters=filters,
        mode=effective,
        sort=order,
        requested_mode=requested,
        offset=offset,
        has_more=has_more,
        excluded=excluded,
        authors=tuple(a.shown for a in query_authors(text)),
        notes=notes,
        truncated=truncated,
        store_version=version,
    )


def _mode(value: SearchMode | str) -> SearchMode:
    try:
        return SearchMode(value)
    except ValueError:
        raise ConfigError(f"mode must be hybrid, semantic or lexical, got {value!r}") from None


def _sort(value: SearchSort | str) -> SearchSort:
    try:
        return SearchSort(value)
    except ValueError:
        raise ConfigError(f"sort must be score or date, got {value!r}") from None


def sort_by_date(hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` newest first; equal dates, and undated hits (last), by PMID, highest first."""
    return sorted(hits, key=lambda h: _date_key(h.best_date, h.pmid))


def _check_offset(offset: int | None) -> None:
    """Refuse a page's offset outside 0..:data:`MAX_OFFSET` (a ``ConfigError``)."""
    if offset is None:
        return
    if isinstance(offset, bool) or not isinstance(offset, int) or not (0 <= offset <= MAX_OFFSET):
        raise ConfigError(f"offset must be an integer in 0..{MAX_OFFSET}, got {offset!r}")


def _checked_query(query: str, k: int) -> str:
    """:func:`checked_query`, and ``k`` >= 1."""
    text = checked_query(query)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return text


#: PubMed's field tags, attached to their term as PubMed writes them (``covid[ti]``,
#: ``humans[mh]``, ``vaccine[Title/Abstract]``), and what to use instead. Only these are
#: refused: a bracket after a space, or in capitals (``leukaemia [ALL]``, ``Cr[VI]``,
#: ``gold [Au]``: an abbreviation, an oxidation state, an element), and any other
#: bracketed text (a translated title, ``[18F]FDG``) is searched.
_FIELD_TAG = re.compile(
    r"(?<=[^\s\[])\[\s*(ti|tiab|ab|tw|all|mh|mesh|mh:noexp|majr|sh|dp|pdat|edat|crdt|mhda|"
    r"pt|la|ad|affl|ta|jour|pmid|uid|doi|aid|lid|nm|ot|gr|sb|ir|fir|auid"
    # as PubMed's search builder writes them ("Asthma"[Mesh], [Majr]): no abbreviation in
    # capitals is spelt so ([MH] malignant hyperthermia, [ALL] and [Ti] are searched)
    r"|(?i:mesh|majr|tiab|pdat|edat|crdt|mhda|affl|jour|pmid|auid|mesh:noexp|mh:noexp))"
    r"(?::~\d+)?\s*\]"  # proximity: [tiab:~3]
    r"|(?<=[^\s\[])\[\s*(?i:(title|title/abstract|abstract|text word|all fields|mesh terms|"
    r"mesh major topic|subheading|publication date|date - publication|publication type|"
    r"language|affiliation|journal|filter|investigator|author - identifier))(?::~\d+)?\s*\]"
)
_TAG_ADVICE = {
    **dict.fromkeys(("mh", "mesh", "mesh terms", "mh:noexp", "majr", "mesh major topic"),
                    "filter by MeSH instead (--mesh, mesh=; 'Term*' for a major topic)"),
    **dict.fromkeys(("dp", "pdat", "edat", "publication date", "date - publication"),
                    "bound the date instead (--since/--until)"),
    **dict.fromkeys(("pt", "publication type"), "filter by type instead (--type, type=)"),
    **dict.fromkeys(("la", "language"), "filter by language instead (--language)"),
    **dict.fromkeys(("ir", "fir", "investigator", "auid", "author - identifier"),
                    "investigators and author identifiers are not indexed; an author is "
                    "searched as Smith J[au]"),
}  # fmt: skip
#: Truncation the PubMed way: a lower-case stem of three letters or more, then ``*``
#: (``cardio*``, ``vaccin*``); not a star after a digit or a capital (``miR-21*``,
#: ``E6*``, a title's footnote ``Children*``) nor a pair (``*BRCA1*``).
_TRUNCATION = re.compile(r"(?<![\w*$\\])[a-z]{3,}[*$](?![\w*$])")  # wheez$: Ovid's
#: A query that is a PMID alone (``33301246``, ``PMID: 33301246``, in any digits: ``２０１``);
#: a DOI alone: :func:`doi_key`.
_PMID_ONLY = re.compile(r"(?:pmid\s*:?\s*)?(\d{1,9})", re.IGNORECASE)


_WORDS_ALIKE = ("the words are searched in titles, abstracts, MeSH headings and keywords "
                "alike")
#: Ovid's MeSH explode, ``exp Asthma/``: the heading (group 1).
_OVID_EXP = re.compile(r"(?<![\w/])exp\s+([A-Z][^/\n]{0,80}?)/(?=[\s),]|$)")
#: Ovid's field suffixes, ``asthma.ti,ab.``, ``.mp.``, ``.tw.`` (group 1: the codes), in
#: lower case after a word, a bracket or a quote (``m.p.``, ``i.v.`` are no such codes).
_OVID_CODES = r"(?:ti|ab|tw|mp|kw|kf|sh|hw|pt|af|fs|ot|tx|nm|rn|mh|xm)"
_OVID_FIELD = re.compile(
    rf"(?<=[\w)\"\u201d])\.({_OVID_CODES}(?:,{_OVID_CODES})+|ti|ab|tw|mp|kw|kf)\.(?!\w)"
)
#: Cochrane's field suffixes, ``asthma:ti,ab,kw`` (lower case: ``Ag:Ab`` is an antigen).
_COCHRANE_FIELD = re.compile(  # one code alone only of ti, ab, kw (nurse:pt is a ratio)
    r"(?<=[\w)\"\u201d]):((?:ti|ab|kw|tw|mh|pt)(?:,(?:ti|ab|kw|tw|mh|pt))+|ti|ab|kw)(?![\w:])"
)
#: Cochrane's MeSH line, ``MeSH descriptor: [Asthma] explode all trees`` (group 1: it).
_COCHRANE_MESH = re.compile(r"(?i:mesh descriptor)\s*:?\s*\[([^\]\n]{1,80})\]")
#: Proximity: Ovid's ``adj3``, Scopus's ``W/3`` and ``PRE/3``, ``NEAR/3`` (Web of Science,
#: Cochrane, Embase), ``NEXT/3`` (Embase); in capitals but ``adj`` (``w/3``: with 3).
_PROXIMITY = re.compile(r"(?<![\w/])(?:adj\d{1,2}|(?:W|PRE|NEAR|NEXT)/\d{1,2})(?![\w/])")
#: Proximity after a quoted phrase (Europe PMC, Lucene): ``"asthma children"~5``.
_PHRASE_PROXIMITY = re.compile(r"~\d{1,3}(?![\w.])")
#: Search history lines: a query of line numbers, operators and brackets only (``#1 AND
#: #2``, ``1 or 2 or 3``; ``Patients #1 and #2 were siblings`` is searched).
_HISTORY = re.compile(
    r"^[\s(]*#?\d+[\s)]*(?:(?i:and|or|not)[\s(]+#?\d+[\s)]*)+$"
)
#: Scopus's field codes before a bracket (group 1), its date bound (group 2).
_SCOPUS = re.compile(
    r"(?<![\w-])(TITLE-ABS-KEY|TITLE-ABS|AUTHKEY|AUTHOR-NAME|AUTHLASTNAME|SRCTITLE|AFFIL|"
    r"DOCTYPE|INDEXTERMS)\s*\("
    r"|(?<![\w-])(PUBYEAR)\s*(?:[<>=]|AFT\b|BEF\b|IS\b)"
    # the short codes right before a bracket, in a query with a Boolean operator in capitals
    # (ABS(acrylonitrile butadiene styrene) in a title is searched)
    r"|(?<![\w-])(TITLE|ABS|KEY|AUTH)\((?=.*(?<![\w-])(?:AND|OR|NOT)(?![\w-]))"
    r"|(?<![\w-])(?:AND|OR|NOT)(?![\w-]).*(?<![\w-])(TITLE|ABS|KEY|AUTH)\("
)
#: Web of Science's field codes, ``TS=(asthma)``: no space around ``=``, first in the query or
#: after a capital operator or a bracket (``TI = (LD50/ED50)``, ``DO = (dissolved oxygen)``
#: define abbreviations).
_WOS = re.compile(
    r"(?:^|(?<=\()|(?<=\sAND\s)|(?<=\sOR\s)|(?<=\sNOT\s))\s*"
    r"(TS|TI|AB|AU|SO|PY|DO|SU|WC|AK|KP|OG|ALL)=\("
)
#: Embase's Emtree terms, ``'asthma'/exp`` (group 1: the term, group 2: the link).
_EMTREE = re.compile(r"['\u2018\u2019\"\u201c\u201d]([^'\u2018\u2019\"\u201c\u201d\n]{1,80})"
                     r"['\u2018\u2019\"\u201c\u201d]/(exp|de|mj|syn|br|lnk)\b")
#: Google Scholar's operators (``intitle:asthma``, ``author:"smith"``) and Europe PMC's
#: fields (``AUTH:"Smith J"``, ``TITLE:asthma``): group 1, right before what they take.
_COLON_FIELD = re.compile(
    r"(?<![\w-])(allintitle|intitle|allintext|intext|allinurl|inurl"
    r"|AUTH|TITLE|ABSTRACT|KW|JOURNAL|PUB_YEAR|PUB_TYPE|TITLE_ABS):(?=\S)"
    # author: and source: before a quoted value, site: before a host (source:sink ratio,
    # site:treatment interaction and Corresponding author:Jane Doe are searched)
    r"|(?<![\w-])(author|source):(?=[\"\u201c])|(?<![\w-])(site):(?=[\w-]+\.[a-z]{2,})"
)
#: What a colon field or ``author:`` takes: a quoted name, or a word.
_COLON_VALUE = re.compile(r"[\"\u201c]([^\"\u201d\n]{1,80})[\"\u201d]|([^\s\"()]+)")


def _mesh_advice(what: str, term: str) -> str:
    return (f"{what} is not supported: filter by MeSH instead (--mesh {term.strip()!r}, "
            "mesh= on the API)")


#: Each form :func:`foreign_syntax` refuses: its pattern, whether it is looked for in the
#: whole query (else outside quoted phrases), and the message it gets.
_FOREIGN: tuple[tuple[re.Pattern[str], bool, Callable[[re.Match[str], str], str]], ...] = (
    (_OVID_EXP, False,
     lambda m, q: _mesh_advice(f"Ovid's MeSH heading {m.group(0)!r}", m.group(1))),
    (_OVID_FIELD, False,
     lambda m, q: f"Ovid field suffixes such as '.{m.group(1)}.' are not supported: "
                  f"{_WORDS_ALIKE}: drop the suffix"),
    (_COCHRANE_FIELD, False,
     lambda m, q: f"Cochrane field suffixes such as ':{m.group(1)}' are not supported: "
                  f"{_WORDS_ALIKE}: drop the suffix"),
    (_COCHRANE_MESH, True,
     lambda m, q: _mesh_advice(f"Cochrane's MeSH line {m.group(0)!r}", m.group(1))),
    (_EMTREE, True,
     lambda m, q: f"Emtree terms such as {m.group(0)!r} are not supported: filter by MeSH "
                  f"(--mesh {m.group(1).strip()!r}), or search the words"),
    (_PROXIMITY, False,
     lambda m, q: f"proximity operators such as {m.group(0)!r} are not supported: write "
                  f"the words ({_tidy(_PROXIMITY.sub(' ', q))}), or quote a phrase to "
                  "require them side by side"),

    (_HISTORY, False,
     lambda m, q: "search history lines (#1 AND #2) are not supported: write the lines' "
                  "words themselves"),
    (_SCOPUS, False,
     lambda m, q: "Scopus's PUBYEAR is not supported: bound the date instead "
                  "(--since/--until)" if m.group(2) else
                  f"Scopus field codes such as {m.group(1) or m.group(3) or m.group(4)}( ) "
                  "are not supported: "
                  f"{_WORDS_ALIKE}: drop the code and keep the words"),
    (_WOS, False,
     lambda m, q: f"Web of Science field codes such as {m.group(1)}=( ) are not "
                  f"supported: {_WORDS_ALIKE}: drop the code and keep the words"),
)  # fmt: skip


def _in_path(text: str, at: int) -> bool:
    """Whether ``text[at]`` is inside a URL or a file or host name (a token holding
    ``://``, or a dot before ``at``): ``http://bioinfo.ntu.edu.tw.`` ends no Ovid line."""
    start = max(text.rfind(" ", 0, at), text.rfind("\t", 0, at)) + 1
    end = len(text) if (e := text.find(" ", at)) < 0 else e
    token = text[start:end]
    return "://" in token or "." in text[start:at]


def foreign_syntax(query: str) -> str | None:
    """Why ``query`` holds another database's syntax that would be searched as words —
    Ovid's ``exp Asthma/``, ``.ti,ab.``, ``adj3`` and ``wheez$``; Scopus's
    ``TITLE-ABS-KEY( )``, ``PUBYEAR >``, ``W/3``; Web of Science's ``TS=( )``; Embase's
    ``'asthma'/exp``; Cochrane's ``:ti,ab,kw`` and MeSH line; Google Scholar's
    ``intitle:``, ``author:``; Europe PMC's ``AUTH:`` and ``"…"~5``; search history lines
    (``#1 AND #2``) — as a message saying what to write instead; ``None`` when it holds
    none. Each form is one no biomedical text takes (``W/kg``, ``w/v``, ``Ti:sapphire``,
    ``m.p.``, ``US$``, ``TI = 10``, ``corresponding author: J Smith`` are searched)."""
    from ranking.quotes import QUOTED, blank_quoted

    bare = blank_quoted(query)  # a phrase holds no syntax
    for pattern, whole, say in _FOREIGN:
        m = pattern.search(query if whole else bare)
        if m and not _in_path(query, m.start()):
            return say(m, query)
    for quoted in QUOTED.finditer(query):  # "asthma children"~5 (not 2"~3": inch marks)
        near = _PHRASE_PROXIMITY.match(query, quoted.end())
        if near and quoted.group(1).strip():
            return (f"proximity ({near.group(0)} after a quoted phrase) is not supported: "
                    f"drop {near.group(0)} to require the words side by side, or the quotes "
                    "to search the words")
    quotes = [q.span() for q in QUOTED.finditer(query)]
    for m in _COLON_FIELD.finditer(query):
        if any(a <= m.start() < b for a, b in quotes):
            continue  # a phrase holds no syntax
        field_ = m.group(1) or m.group(2) or m.group(3)
        value = _COLON_VALUE.match(query, m.end())
        taken = (value.group(1) or value.group(2)) if value else ""
        if field_.lower() in ("author", "auth") and field_ != "Auth":
            return (f"{field_}: is another database's author field (here it would search "
                    f"the name's words in the text): an author is searched as "
                    f"{taken or 'Smith J'}[au]")
        if field_.lower() in ("site", "allinurl", "inurl", "source", "journal"):
            return (f"{field_}: is not supported: journals and sites are not searched "
                    "apart; search the words")
        if field_ in ("PUB_YEAR",):
            return f"{field_}: is not supported: bound the date instead (--since/--until)"
        return (f"{field_}: is another database's field, not supported: {_WORDS_ALIKE}: "
                "drop it")
    return None


class ArticleQuery(ConfigError):
    """A query that names one article, a PMID or a DOI alone: no search. ``path`` is
    the API path that shows it (``/articles/201``, ``/articles/doi/10.1000/x``); the page
    follows it (the API's 400 carries it as ``article``)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def checked_query(query: str) -> str:
    """The trimmed query text of a search or a saved search, as typed
    (:func:`litpulse.core.text.as_typed`: composed, without a soft hyphen or a zero-width
    character), refused where it would be searched other than
    the user means (litpulse ranks by meaning and by BM25 over
    words: every word counts, a quoted phrase is required, ``A NOT B`` excludes ``B``
    (:func:`ranking.lexical.split_exclusions`), ``OR`` beside a quoted phrase offers
    alternatives (:func:`ranking.lexical.phrase_forms`); between words alone it changes
    nothing; ``Smith J[au]`` requires an author (:mod:`ranking.authors`)).

    Raises:
        ConfigError: An empty or over-long query, one holding a control character; one
            with nothing to search for (stop words or punctuation only); a PMID or a DOI
            alone (the message names the commands that show that article); PubMed's field
            tags (``covid[ti]``, ``humans[mh]``: the message names the filter to use);
            truncation (``cardio*``); a quoted phrase with no word to require (``"the"``),
            ``NOT`` a stop word (nothing to exclude), a query that only excludes
            (``NOT asthma``), ``OR`` that cannot be read one way
            (:func:`ranking.lexical.query_problems`); an author clause that cannot be
            read (``asthma Smith J[au]``: where does the name start?) or a query that
            only excludes authors (:mod:`ranking.authors`; authors alone list their
            articles: :func:`run_search`). Google's
            ``-word`` is not refused: a space before a hyphen is too common in biomedical
            text (``Ca2+ -activated``, ``(-OH)``).
    """
    # composed, invisible characters out: a name's or an excluded word's pattern would
    # stop at a second character of an accent or at a soft hyphen, which fold ignores
    text = as_typed(checked_text(query or "", "query")).strip()
    if not text:
        raise ConfigError("query must not be empty")
    if len(text) > MAX_QUERY_CHARS:
        raise ConfigError(f"query must be at most {MAX_QUERY_CHARS} characters")
    pmid = _PMID_ONLY.fullmatch(text)
    if pmid and int(pmid.group(1)) > 0:  # 0 names no article
        n = int(pmid.group(1))
        raise ArticleQuery(
            f"the query is a PMID alone: `litpulse article {n}` (GET /articles/{n}) shows "
            f"that article, `litpulse similar {n}` (GET /similar/{n}) the ones nearest it; "
            "search words to find articles",
            f"/articles/{n}",
        )
    doi = doi_key(text)
    if doi is not None:
        import shlex
        from urllib.parse import quote

        # each segment escaped, "." and ".." too: a client (the page) resolving the path
        # must not take them for the path's own steps
        path = "/articles/doi/" + "/".join(
            seg.replace(".", "%2E") if seg in (".", "..") else quote(seg, safe="")
            for seg in doi.split("/")
        )
        raise ArticleQuery(f"the query is a DOI alone: `litpulse article {shlex.quote(doi)}` "
                           f"(GET {path}) shows that article; search words to find articles",
                           path)  # fmt: skip
    from ranking.authors import split_authors
    from ranking.lexical import split_exclusions

    foreign = foreign_syntax(text)
    if foreign is not None:
        raise ConfigError(foreign)
    rest, authors, unread = split_authors(text)  # Smith J[au]: read before other tags
    for problem in unread:
        raise ConfigError(problem)
    tag = _FIELD_TAG.search(rest)
    if tag:
        name = (tag.group(1) or tag.group(2)).strip().lower()
        advice = _TAG_ADVICE.get(name, "the words are searched in titles, abstracts, MeSH "
                                       "headings and keywords alike: drop the tag")
        raise ConfigError(f"PubMed field tags such as {tag.group(0)!r} are not supported: "
                          f"{advice}")
    truncated = _TRUNCATION.search(text)
    if truncated:
        raise ConfigError(f"truncation ({truncated.group(0)}) is not supported: type whole "
                          "words (they are stemmed: vaccination also finds vaccine and "
                          "vaccines)")
    from ranking.lexical import phrase_terms, query_problems, query_terms, quoted

    searched, excluded = split_exclusions(text)
    listed = any(not a.excluded for a in authors)  # Smith J[au] alone: the author's list
    if authors and not listed and not query_terms(searched):
        shown = " ".join(a.shown for a in authors)
        raise ConfigError(f"the query only excludes ({shown}): NOT leaves out of what the "
                          f"rest finds; add what to search for (asthma {shown})")  # fmt: skip
    if not excluded and not listed and not query_terms(text):
        raise ConfigError("the query has no word to search for (only stop words or "
                          "punctuation)")
    for phrase in quoted(searched):
        if phrase.strip() and not phrase_terms(phrase):
            raise ConfigError(f"the quoted phrase {phrase.strip()!r} has no word to require "
                              "(only stop words or punctuation): quote words, or drop the "
                              "quotes")
    for word in excluded:
        if word in ("NOT", "AND", "OR"):
            raise ConfigError(f"NOT {word} is not an exclusion: NOT must be followed by the "
                              "word or the quoted phrase to exclude")
        if not phrase_terms(word):
            raise ConfigError(f"NOT {word!r} excludes nothing (a stop word or punctuation): "
                              "name a word or a quoted phrase to exclude")
    for problem in query_problems(text):
        raise ConfigError(problem)
    if not listed and not query_terms(searched):  # NOT asthma: before, it searched asthma
        raise ConfigError(
            f"the query only excludes ({', '.join(repr(w) for w in excluded)}): NOT leaves "
            "out of what the other words find; add what to search for (COPD NOT asthma)"
        )
    return text


#: Google's exclusion, ``COPD -asthma``, ``-"heart failure"``, ``-(asthma OR bronchitis)``:
#: a hyphen first or after a space (group 1: what comes before it), then what ``NOT``
#: would exclude there (group 2: a word, a quoted phrase or a group in brackets).
_MINUS: re.Pattern[str] | None = None
#: Words that follow a hyphen in a compound split by a stray space (``estrogen receptor
#: -positive``, ``TNF -induced``): no exclusion is meant.
_COMPOUND_ENDS = frozenset(
    "positive negative dependent independent activated induced related associated based "
    "like mediated free specific derived resistant sensitive lowering producing treated "
    "deficient containing binding responsive expressing exposed infected naive targeted "
    "linked coupled driven rich poor enriched labeled labelled tagged type refractory "
    "mutant mutated sparing bearing matched adjusted stratified guided assisted controlled "
    "null knockout".split()
)
#: Words that end in a hyphen when written alone: a prefix (``non -small cell``) or a
#: Greek letter (``beta -lactamase``) before a stray space.
_BOUND = frozenset(
    "non anti pre post co re un sub semi multi inter intra extra over under self well "
    "cross mid pseudo neo para peri pro trans ultra hyper hypo bi tri mono poly micro macro "
    "auto de dis mis counter alpha beta gamma delta epsilon zeta eta theta iota kappa lambda "
    "mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega".split()
)
#: An operator left doubled, first or last (a group's or the query's) once a -word is cut.
_LONE_OPERATOR = re.compile(
    r"(?<![\w-])(AND|OR)(?:\s+(?:AND|OR|NOT))+(?![\w-])"  # OR OR, AND OR, OR NOT
    r"|^\s*(?:AND|OR)(?![\w-])|(?<![\w-])(?:AND|OR|NOT)\s*$"  # first or last
    r"|(?<=[(\[])\s*(?:AND|OR)(?![\w-])|(?<![\w-])(?:AND|OR)\s*(?=[)\]])"  # in brackets
    r"|\(\s*\)|\[\s*\]"  # an empty group
)


def _minus_pattern() -> re.Pattern[str]:
    global _MINUS
    if _MINUS is None:
        from ranking.lexical import _NOT_TARGET

        _MINUS = re.compile(rf"(?:^\s*|(?<=(\S))\s+)-{_NOT_TARGET}")
    return _MINUS


def unused_share_notes(
    settings: Settings, options: ScoringOptions, requested: SearchMode, effective: SearchMode
) -> tuple[str, ...]:
    """A note where a λ (``w_lexical``, the lexical share of a hybrid search's relevance)
    is asked for (:attr:`ScoringOptions.lexical_asked`, even equal to the setting's), or
    one other than the settings' is given, and this search does not use it: a semantic
    search's λ is 0, a lexical one's 1 (:func:`ranking.scoring.lexical_share`), so the
    answer is the one without it, and says so rather than echo the λ as if it ranked.

    Example:
        >>> s = Settings.from_env({})
        >>> o = ScoringOptions.from_settings(s, weights={"lexical": 0.9})
        >>> unused_share_notes(s, o, SearchMode.SEMANTIC, SearchMode.SEMANTIC)[0][:36]
        'w_lexical (λ 0.9) is not used: it we'
    """
    if effective == SearchMode.HYBRID or (not options.lexical_asked and math.isclose(
        options.lexical_share, settings.weight_lexical, rel_tol=1e-9, abs_tol=1e-12
    )):  # fmt: skip
        return ()
    alone = ("semantic mode ranks by similarity alone (λ 0)" if effective == SearchMode.SEMANTIC
             else "lexical mode ranks by BM25 alone (λ 1)")
    why = ("" if requested == effective
           else f" (asked {requested.value}: searched as {effective.value})")
    return (
        f"w_lexical (λ {options.lexical_share:g}) is not used: it weighs the lexical part in "
        f"hybrid mode only, and {alone}{why}",
    )


@functools.lru_cache(maxsize=256)
def query_notes(query: str) -> tuple[str, ...]:
    """What a user may expect of ``query`` that it does not do, each as a sentence saying
    what to write instead (shown with the results; the query is searched as it reads):
    Google's exclusion (``COPD -asthma``: :func:`_minus_notes`), and Boolean operators in
    lower case as other databases read them (``"heart failure" or "cardiac failure"``:
    both phrases are required; ``(asthma or wheeze) not copd``: copd is searched for;
    :func:`_lower_case_notes`).

    Example:
        >>> query_notes("COPD -asthma in adults")[0].rsplit(": ", 1)[1]
        'COPD NOT asthma in adults'
        >>> query_notes("beta -lactamase"), query_notes("asthma or COPD in smokers")
        ((), ())
    """
    return _minus_notes(query) + _lower_case_notes(query)


#: Lower-case ``or`` between two quoted phrases (both are then required).
_LOWER_OR = re.compile(r"(?<=[\"\u201d])(\s+)or(\s+)(?=[\"\u201c])")
#: A group of single terms (words or quoted phrases) joined by lower-case or/and.
_TERMS_JOINED = re.compile(
    r"(?:[\w'-]+|\"[^\"]+\")(?:\s+(?:or|and)\s+(?:[\w'-]+|\"[^\"]+\"))+"
)
#: Lower-case ``not`` after a bracket (an operator when the group holds ``or``/``and``).
_LOWER_NOT = re.compile(r"\)(\s+)not(\s+)(?=\S)")


def _lower_case_notes(query: str) -> tuple[str, ...]:
    """Notes on ``or`` and ``not`` in lower case where another database's strategy reads
    them as operators: between two quoted phrases (``"a b" or "c d"``), and after a
    bracket group of such operators (``(a or b) not c``). Elsewhere they are words of a
    title or question (``asthma not controlled by``, ``asthma or COPD in smokers``: every
    word is searched either way). Each note's query is checked as :func:`_minus_notes`'s."""
    from ranking.lexical import phrase_forms, query_terms, split_exclusions

    notes: list[str] = []
    if _LOWER_OR.search(query):
        instead = _LOWER_OR.sub(lambda m: f"{m.group(1)}OR{m.group(2)}", query)
        try:
            merged = len(phrase_forms(checked_query(instead))[0]) < len(phrase_forms(query)[0])
        except ConfigError:
            merged = False
        if merged:
            notes.append('lower-case "or" is a word here: each quoted phrase is required. '
                         f"For any of them, write: {instead}")
    for m in _LOWER_NOT.finditer(query):
        group = _group_before(query, m.start())
        if group is None or not _TERMS_JOINED.fullmatch(group.strip()) or any(
            not query_terms(t) for t in re.split(r"\s+(?:or|and)\s+", group.strip())
        ):
            continue  # prose: (with or without nasal polyps) not controlled by
        instead = f"{query[: m.start() + 1]}{m.group(1)}NOT{m.group(2)}{query[m.end():]}"
        try:
            excluded = split_exclusions(checked_query(instead))[1]
        except ConfigError:
            continue
        if excluded and not split_exclusions(query)[1]:
            what = excluded[0]
            notes.append(f'lower-case "not" is a word here: {what} is searched for, not left '
                         f"out. To leave out the articles that mention {what}, write: "
                         f"{instead}")
            break
    return tuple(notes)


def _group_before(text: str, close: int) -> str | None:
    """The text of the bracket group that ends at ``text[close]`` (a ``)``), or ``None``."""
    depth = 0
    for i in range(close, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            depth -= 1
            if depth == 0:
                return text[i + 1 : close]
    return None


def _minus_notes(query: str) -> tuple[str, ...]:
    """The note on Google's exclusion in ``query``, if it holds one.

    Google's exclusion — a hyphen first or after a space, then a word, a quoted phrase or
    a group in brackets (``COPD -asthma``, ``-"heart failure"``, ``-(asthma OR
    bronchitis)``) — is searched for as if the hyphen were not there (a space before a
    hyphen is common in biomedical text), so those articles are found, not left out: the
    note gives the query with ``NOT`` instead, checked to be accepted and to exclude what
    the hyphen meant to and nothing else (else it says how to write it). No note for what
    no exclusion is meant by: a compound split by a stray space (after a digit or a sign,
    ``Ca2+ -activated``, ``Ki-67 -positive``; after a prefix or a Greek letter, ``non
    -small cell``, ``beta -lactamase``; before a word with digits, ``-log10``, or that ends
    compounds, ``receptor -positive``), a word of under three characters (``ER -ve``), a
    stop word (``Long COVID -what we know``), an operator, what quotes hold or the query
    excludes with NOT already.

    Example:
        >>> _minus_notes("hydroxyl (-OH) groups")
        ()
    """
    from ranking.lexical import query_terms, split_exclusions
    from ranking.quotes import QUOTED

    if "-" not in query:
        return ()
    query = as_typed(query)  # an accent is one character (macOS: two), no soft hyphen
    searched, excluded = split_exclusions(query)
    searched_terms = set(query_terms(searched))
    gone = {e.lower() for e in excluded}
    quotes = [m.span() for m in QUOTED.finditer(query)]
    found: list[tuple[int, int, str]] = []  # (start, end, what NOT would exclude)
    for m in _minus_pattern().finditer(query):
        at = m.start() + m.group(0).index("-")
        target = m.group(2)
        before = query[:at].split()
        if any(a <= at < b for a, b in quotes) or not _meant_to_exclude(
            before[-1] if before else None, target
        ):
            continue
        bare = target.strip("\"'()[]\u201c\u201d\u2018\u2019").lower()
        terms = set(query_terms(target))
        if bare in gone or not terms or not terms <= searched_terms:
            continue  # excluded already, or nothing of it is searched
        grouped = target[0] in "\"'(\u201c\u2018["  # a phrase or a group, else a word
        found.append((at, m.end(), target if grouped else target.rstrip("-")))
    if not found:
        return ()
    targets = list(dict.fromkeys(t for _, _, t in found))
    shown = " and ".join(f"-{t}" for t in targets)
    one = len(targets) == 1
    what = targets[0].strip("()[]") if one else "them"
    # a quoted phrase is required: only the articles holding it are found
    done = "required" if all(t[0] in "\"\u201c" for t in targets) else "searched for"
    head = (f"{shown} {'is' if one else 'are'} {done}, not left out: a hyphen excludes "
            f"nothing here. To leave out the articles that mention {what}, ")
    nots = " ".join(f"NOT {t}" for t in targets)
    for instead in _with_not(query, found, targets):
        if _excludes(instead, targets, searched_terms - _terms_of(targets)):
            return (f"{head}write: {instead}",)
    rest = _cut(query, found)
    if not query_terms(rest) and not _authors_in(rest):
        return (f"{head}add the words to search for, then {nots}",)
    each = f"NOT {targets[0]} in place of -{targets[0]}" if one else "NOT in place of each hyphen"
    longer = len(query) + 3 * len(found) > MAX_QUERY_CHARS
    return (f"{head}write {each}" + (f" (in {MAX_QUERY_CHARS} characters at most: shorten "
                                     "the query)" if longer else ""),)  # fmt: skip


def _meant_to_exclude(before: str | None, target: str) -> bool:
    """Whether ``-target`` after the word ``before`` (``None``: first in the query) may be
    Google's exclusion, not a compound split by a stray space."""
    if target[0] in "\"'(\u201c\u2018[":
        return True  # a quoted phrase or a group
    if not target[0].isalpha() or any(c.isdigit() for c in target) or len(target) < 3:
        return False  # -80, -log10, -ve
    if target in ("AND", "OR", "NOT") or target.lower() in _COMPOUND_ENDS:
        return False
    if before is None or before in ("AND", "OR", "NOT"):
        return True
    if any(c.isdigit() for c in before) or before.lower().strip("\"'()[]") in _BOUND:
        return False  # Ki-67 -positive, sox2 -dependent, non -small cell, beta -lactamase
    return before[-1].isalpha() or before[-1] in "\"')]\u201d\u2019"


def _with_not(query: str, found: list[tuple[int, int, str]], targets: list[str]) -> Iterator[str]:
    """Queries that say with NOT what ``query``'s hyphens meant: each in its place, then
    all after the rest; in lower case too (NOT is a word in a query wholly in capitals)."""
    nots = " ".join(f"NOT {t}" for t in targets)
    cut = _cut(query, found)
    for lower in (False, True):
        out, last, placed = [], 0, set()
        for start, end, target in found:
            out.append(query[last:start])
            if target not in placed:  # a repeated one once
                out.append(f"NOT {target.lower() if lower else target}")
                placed.add(target)
            last = end
        out.append(query[last:])
        yield _tidy("".join(out))
        yield _tidy(f"{cut} {nots.lower() if lower else nots}")


def _cut(query: str, found: list[tuple[int, int, str]]) -> str:
    """``query`` without the hyphens' words, tidied (no operator left doubled or alone)."""
    out, last = [], 0
    for start, end, _ in found:
        out.append(query[last:start])
        last = end
    out.append(query[last:])
    return _tidy("".join(out))


def _tidy(text: str) -> str:
    """``text`` with single spaces, and no operator left doubled, alone or at an end."""
    text = " ".join(text.split()).replace("( ", "(").replace(" )", ")")
    while True:
        tidy = " ".join(_LONE_OPERATOR.sub(lambda m: m.group(1) or " ", text).split())
        tidy = tidy.replace("( ", "(").replace(" )", ")")
        if tidy == text:
            return text
        text = tidy


def _terms_of(targets: list[str]) -> set[str]:
    from ranking.lexical import query_terms

    return {t for target in targets for t in query_terms(target)}


def _authors_in(text: str) -> bool:
    from ranking.lexical import query_authors

    return bool(query_authors(text))


def _excludes(instead: str, targets: list[str], kept: set[str]) -> bool:
    """Whether ``instead`` is accepted, excludes each target, and searches ``kept``."""
    from ranking.lexical import query_terms, split_exclusions

    try:
        text = checked_query(instead)
    except ConfigError:
        return False
    searched, excluded = split_exclusions(text)
    return _terms_of(targets) <= _terms_of(list(excluded)) and set(query_terms(searched)) == kept


def _query_embedder(
    settings: Settings, engine: Engine, index: Any
) -> Callable[[str], np.ndarray]:
    """Query text → vector as the index's own vectors were made: its model version, cut
    at the sequence length its meta records (whatever ``LITPULSE_MAX_SEQ_LENGTH`` says now).

    Raises:
        ConsistencyError: The base model configured now (``LITPULSE_MODEL``) is not the one
            the index's vectors are of: its queries would be compared with another model's
            vectors.
    """
    from ranking.embed import base_model_changed, encode_query, model_spec

    spec = model_spec(settings, index.model_version, engine)
    details = getattr(index, "details", None) or {}
    changed = base_model_changed(details, spec)
    if changed is not None:
        raise ConsistencyError(f"not searching index {index.id}: {changed}")
    seq = (details.get("base_model") or {}).get("max_seq_length")
    if seq is not None and int(seq) != settings.max_seq_length:
        spec = dataclasses.replace(spec, max_seq_length=int(seq))
        settings = settings.replace(max_seq_length=int(seq))

    def embed(text: str) -> np.ndarray:
        return encode_query(settings, spec, text)

    return embed


@dataclass
class _Pool:
    """The candidates of one query: cosine and BM25 by PMID, and the rows passing the
    filters."""

    sims: dict[int, float] = field(default_factory=dict)
    bm25: dict[int, float] = field(default_factory=dict)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    seen: int = 0
    exhausted: bool = False  # the lists reached the whole index


def _candidates(
    settings: Settings,
    engine: Engine,
    index: SearchableIndex,
    lexical: LexicalSearcher | None,
    vector: np.ndarray | None,
    text: str,
    k: int,
    conds: list[Any],
    mode: SearchMode,
    known: dict[int, dict[str, Any] | None] | None = None,
) -> _Pool:
    """Nearest neighbours and best BM25 matches, and the rows of those passing the filters.

    Starts at ``settings.rerank_candidates`` of each and widens (:func:`widened`)
    while fewer than ``k`` pass. A query quoting a phrase or excluding a word (``NOT``)
    passes only the candidates holding every quoted phrase and no excluded word
    (:meth:`ranking.lexical.LexicalIndex.matching`; the lexical list holds only such), in
    every mode: once the lexical list has every document holding the phrases, no deeper
    neighbour can pass. In hybrid mode the missing input of each passing
    candidate is then filled in (cosine from its stored vector, BM25 of the candidates).
    ``known``: rows read before with the same ``conds`` (``None``: it does not pass),
    kept up to date, so that the pools of one page read each row once.
    """
    from ranking.lexical import constrains, query_authors, query_phrases

    pool = _Pool()
    dense = mode != SearchMode.LEXICAL
    lex = lexical if mode != SearchMode.SEMANTIC else None
    size = max(int(index.size) if dense else 0, int(lex.size) if lex is not None else 0)
    n = min(max(settings.rerank_candidates, k), size)
    seen: set[int] = set()
    dense_complete = not dense or vector is None
    phrases = bool(query_phrases(text))
    by_author = any(not a.excluded for a in query_authors(text))
    constrained = lexical if lexical is not None and constrains(text) else None
    while n > 0:
        fresh: list[int] = []
        if not dense_complete and vector is not None:
            pairs, dense_complete = nearest(engine, index, vector, n, conds)
            for pmid, score in pairs:
                pool.sims.setdefault(pmid, score)
        lexical_exhausted = lex is None
        if lex is not None:
            found = lex.search(text, n)
            # fewer than asked: every document matching a term is in the list already
            lexical_exhausted = len(found) < n
            for pmid, score in found:
                pool.bm25.setdefault(pmid, score)
        for pmid in (*pool.sims, *pool.bm25):
            if pmid not in seen:
                seen.add(pmid)
                fresh.append(pmid)
        if constrained is not None:
            unsure = [p for p in fresh if p not in pool.bm25]  # the lexical list's meet them
            held = constrained.matching(text, unsure) if unsure else set()
            fresh = [p for p in fresh if p in pool.bm25 or p in held]
            if by_author and not dense_complete and vector is not None \
                    and _scores_exactly(index):
                # an author's articles are few: when fewer than n meet the query, score
                # them all by their stored vectors (those without its words too) instead
                # of widening the neighbours towards the whole index to meet them
                authored = constrained.holders(text, n)
                if len(authored) < n:
                    fresh += _score_all(pool, seen, index, authored, vector)
                    dense_complete = True
            if phrases and lex is not None and lexical_exhausted:
                dense_complete = True  # every document holding the phrases is listed
            elif phrases and lex is None and not dense_complete and vector is not None \
                    and _scores_exactly(index):
                # semantic: when fewer than n articles hold the phrases, score them all by
                # their stored vectors instead of widening the neighbours towards the
                # whole index to meet them
                holders = constrained.search(text, n)
                if len(holders) < n:
                    fresh += _score_all(pool, seen, index, [p for p, _ in holders], vector)
                    dense_complete = True
        if known is None:
            pool.rows.update(load_rows(engine, fresh, conds))
        else:
            todo = [p for p in fresh if p not in known]
            loaded = load_rows(engine, todo, conds)
            known.update((p, loaded.get(p)) for p in todo)
            pool.rows.update((p, row) for p in fresh if (row := known[p]) is not None)
        if len(pool.rows) >= k or n >= size or (dense_complete and lexical_exhausted):
            break
        n = widened(n, len(pool.rows), k, size)
        logger.debug(
            "only %d of %d candidates pass the filters; widening to %d", len(pool.rows), k, n
        )
    pool.seen = len(seen)
    # no longer list holds another passing candidate
    pool.exhausted = n >= size or (dense_complete and lexical_exhausted)
    if mode == SearchMode.HYBRID and lex is not None:
        _fill_in(pool, index, lex, vector, text)
    return pool


#: Most articles a query of authors alone lists (``Smith J[au]``); one naming more that
#: pass its filters is refused with what to add (the topic's words, the initials, a date).
LISTING_MAX = 10_000
#: Most articles of the authors a listing reads to apply its filters to (``Wang Y[au]``
#: has ~10⁵ in PubMed; ``--since`` leaves a few hundred): only their PMIDs are read.
HOLDERS_MAX = 1_000_000
#: PMIDs per statement when the filters are applied to the authors' articles.
_PASS_CHUNK = 100_000
#: How a listed article's relevance is made (its explanation says so).
_LISTED = ("the query names authors alone, and each article by them (as asked) meets it "
           "whole")


def lists_authors(text: str) -> bool:
    """Whether ``text`` names authors and no word to search (``Smith J[au]``,
    ``Smith J[au] NOT Li X[au]``)."""
    from ranking.lexical import query_authors, query_terms

    return any(not a.excluded for a in query_authors(text)) and not query_terms(text)


def _listing(
    engine: Engine,
    index: SearchableIndex,
    lexical: LexicalSearcher,
    text: str,
    conds: list[Any],
    options: ScoringOptions,
    *,
    k: int,
    offset: int | None,
    by_date: bool,
) -> tuple[list[Hit], _Pool, bool]:
    """The articles of a query of authors alone: every article of this index version by
    them (its lexical index holds every live one, embedded or not yet) and passing the
    filters, each meeting the query whole (relevance 1), so ranked by recency and citation
    (``by_date``: newest first); the ``k`` from ``offset``, the pool (``seen``: how many
    the authors have; ``rows``: those passing), and whether a next page may hold results.
    An index with ``only`` (a digest's new articles) lists those of them alone.

    Raises:
        ConfigError: More than :data:`LISTING_MAX` of the authors' articles pass the
            filters (all of them count when they have more than :data:`HOLDERS_MAX`; not
            asked for an index with ``only``: a few of theirs among those).
    """
    only = getattr(index, "only", None)
    if only is not None:
        found = sorted(lexical.matching(text, [int(p) for p in only]))
        seen = len(found)
    else:
        found = lexical.holders(text, LISTING_MAX + 1)
        seen = len(found)
        if len(found) > LISTING_MAX:  # too many to list, unless the filters leave fewer
            every = lexical.holders(text, HOLDERS_MAX + 1)
            seen = len(every)
            found = _passing(engine, every, conds) if seen <= HOLDERS_MAX else every
        if len(found) > LISTING_MAX:
            from ranking.lexical import query_authors

            shown = " ".join(a.shown for a in query_authors(text))
            raise ConfigError(f"{shown} names more than {LISTING_MAX:,} articles that pass "
                              f"the filters: add the topic's words (asthma AND {shown}), "
                              "the initials, or a date range")  # fmt: skip
    import numpy as np

    rows = load_rows(engine, found, conds)
    pmids = list(rows)
    if by_date:
        order = sorted(pmids, key=lambda p: _date_key(rows[p].get("best_date"), p))
    else:  # ranked by every score at once, as a search ranks its candidates (_rank)
        n = len(pmids)
        total = scores(np.zeros(n), np.ones(n), list(rows.values()), options, SearchMode.LEXICAL)
        ids = np.asarray(pmids, dtype=np.int64)
        order = [pmids[i] for i in np.lexsort((ids, -total)).tolist()]
    start = offset or 0
    end = start + k
    # explained (score_article: the same score) only the page shown, not every listed one
    rel = Relevance(SearchMode.LEXICAL, similarity=0.0, lexical=1.0, how=_LISTED)
    hits = [_hit(p, rows[p], options, rel, 0.0) for p in order[start:end]]
    pool = _Pool(rows=rows, seen=seen, exhausted=True)
    return hits, pool, len(order) > end


def _passing(engine: Engine, pmids: Sequence[int], conds: list[Any]) -> list[int]:
    """Those of ``pmids`` whose articles pass ``conds`` (sorted): their PMIDs alone read,
    :data:`_PASS_CHUNK` in one statement (one bound parameter: :func:`db.id_in_clause`)."""
    out: list[int] = []
    with engine.connect() as conn:
        for start in range(0, len(pmids), _PASS_CHUNK):
            chunk = pmids[start : start + _PASS_CHUNK]
            ids = db.id_in_clause(conn, "articles.pmid", chunk)
            out += [int(p) for p in conn.execute(select(articles.c.pmid).where(ids, *conds))
                    .scalars()]  # fmt: skip
    return sorted(out)


def _score_all(
    pool: _Pool, seen: set[int], index: Any, pmids: Sequence[int], vector: np.ndarray
) -> list[int]:
    """Give each of ``pmids`` not seen yet its cosine from its stored vector (one not
    embedded yet is left out); the PMIDs scored."""
    cosines = stored_cosines(index, [p for p in pmids if p not in seen], vector)
    pool.sims.update(cosines)
    seen.update(cosines)
    return list(cosines)


def _fill_in(
    pool: _Pool, index: SearchableIndex, lex: LexicalSearcher, vector: np.ndarray | None, text: str
) -> None:
    """Cosine of the passing lexical-only candidates, BM25 of the semantic-only ones."""
    if vector is not None:
        pool.sims.update(stored_cosines(index, [p for p in pool.rows if p not in pool.sims],
                                        vector))
    missing = [p for p in pool.rows if p not in pool.bm25]
    if missing:
        pool.bm25.update(lex.scores(text, missing))


@dataclass(frozen=True)
class _Fused:
    """The similarity and lexical parts of candidates, as arrays in candidate order."""

    ids: np.ndarray  # PMIDs (int64)
    cosine: np.ndarray  # cosine, NaN where none
    bm25: np.ndarray  # BM25 > 0, NaN where none (no query term matched)
    sim_rank: np.ndarray  # 1-based rank by cosine, 0 where none
    lex_rank: np.ndarray  # 1-based rank by BM25, 0 where none
    similarity: np.ndarray  # the similarity part's value
    lexical: np.ndarray  # the lexical part's value
    mode: SearchMode
    how: str

    def relevance(self, i: int) -> Relevance:
        """The :class:`Relevance` of the ``i``-th candidate."""
        c, b = float(self.cosine[i]), float(self.bm25[i])
        sr, lr = int(self.sim_rank[i]), int(self.lex_rank[i])
        return Relevance(
            mode=self.mode,
            similarity=float(self.similarity[i]),
            lexical=float(self.lexical[i]),
            cosine=None if math.isnan(c) else c,
            bm25=None if math.isnan(b) else b,
            similarity_rank=sr or None,
            lexical_rank=lr or None,
            how=self.how,
        )


def _ranks(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """1-based ranks of the non-NaN ``values``, best first (ties: lower PMID first); 0 for
    NaN."""
    import numpy as np

    ranks = np.zeros(len(values), dtype=np.int64)
    have = np.flatnonzero(~np.isnan(values))
    order = have[np.lexsort((ids[have], -values[have]))]
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def _scaled(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Min-max scaled to ``lo``..``hi`` (1 where the range is empty); 0 for NaN."""
    import numpy as np

    have = ~np.isnan(values)
    if hi <= lo:
        return np.where(have, 1.0, 0.0)
    return np.where(have, (np.where(have, values, lo) - lo) / (hi - lo), 0.0)


def _fuse(
    sims: dict[int, float],
    bm25: dict[int, float],
    pmids: Iterable[int],
    mode: SearchMode,
    options: ScoringOptions,
) -> _Fused:
    """The similarity and lexical parts of every candidate at once (see :func:`relevances`)."""
    import numpy as np

    ids = np.fromiter(pmids, dtype=np.int64)
    nan = math.nan
    cos = np.fromiter((sims.get(p, nan) for p in ids.tolist()), np.float64, len(ids))
    lex = np.fromiter((bm25.get(p, nan) for p in ids.tolist()), np.float64, len(ids))
    lex[~(lex > 0)] = nan  # no query term matched
    cos_rank, lex_rank = _ranks(cos, ids), _ranks(lex, ids)
    have_cos, have_lex = ~np.isnan(cos), ~np.isnan(lex)
    clo, chi = (
        (float(cos[have_cos].min()), float(cos[have_cos].max())) if have_cos.any() else (0.0, 0.0)
    )
    llo, lhi = (
        (float(lex[have_lex].min()), float(lex[have_lex].max())) if have_lex.any() else (0.0, 0.0)
    )
    if mode == SearchMode.LEXICAL:
        llo = 0.0  # BM25 / best BM25: 1 for the best match
    rrf = mode == SearchMode.HYBRID and options.fusion == Fusion.RRF
    k = options.rrf_k
    how = (
        f"RRF (k={k}): (k+1)/(k+rank)"
        if rrf
        else "min-max over the candidates"
        if mode == SearchMode.HYBRID
        else ""
    )
    zeros = np.zeros(len(ids), dtype=np.float64)
    if rrf:
        sim_v = np.where(have_cos, (k + 1) / (k + cos_rank.astype(np.float64)), 0.0)
        lex_v = np.where(have_lex, (k + 1) / (k + lex_rank.astype(np.float64)), 0.0)
    elif mode == SearchMode.HYBRID:
        sim_v, lex_v = _scaled(cos, clo, chi), _scaled(lex, llo, lhi)
    elif mode == SearchMode.LEXICAL:
        sim_v, lex_v = zeros, _scaled(lex, llo, lhi)
    else:
        sim_v, lex_v = np.where(have_cos, cos, 0.0), zeros
    return _Fused(
        ids=ids,
        cosine=cos,
        bm25=lex,
        sim_rank=cos_rank,
        lex_rank=lex_rank,
        similarity=sim_v,
        lexical=lex_v,
        mode=mode,
        how=how,
    )


def relevances(
    sims: dict[int, float],
    bm25: dict[int, float],
    pmids: Iterable[int],
    mode: SearchMode,
    options: ScoringOptions,
) -> dict[int, Relevance]:
    """The similarity and lexical parts of each candidate (see :mod:`ranking.scoring`).

    Args:
        sims: Cosine by PMID (candidates without one have no semantic part).
        bm25: BM25 by PMID (those without one matched no query term).
        pmids: The candidates that passed the filters: ranks and ranges are theirs.
        mode: The effective search mode.
        options: Fusion and its k.
    """
    fused = _fuse(sims, bm25, pmids, mode, options)
    return {int(p): fused.relevance(i) for i, p in enumerate(fused.ids.tolist())}


def _date_key(best_date: dt.date | None, pmid: int) -> tuple[bool, int, int]:
    """Newest first; equal dates, and undated (last), by PMID, highest first."""
    return (best_date is None, -(best_date.toordinal() if best_date else 0), -pmid)


@dataclass(frozen=True)
class _Ranked:
    """The passing candidates of one pool, scored and ordered."""

    pool: _Pool
    rows: list[dict[str, Any]]
    ids: np.ndarray  # PMIDs (int64), in the order of ``rows``
    cosine: np.ndarray  # cosine per row, 0 where none
    fused: _Fused | None  # with a lexical index: the fused parts
    order: list[int]  # row indices, best first (ties: higher cosine, then lower PMID)


def _rank(
    pool: _Pool, options: ScoringOptions, mode: SearchMode, lexical: LexicalSearcher | None
) -> _Ranked:
    """Every candidate of ``pool`` scored at once (:func:`ranking.scoring.scores`), best
    first."""
    import numpy as np

    rows = list(pool.rows.values())
    ids = np.fromiter(pool.rows, dtype=np.int64, count=len(rows))
    cosine = np.fromiter((pool.sims.get(p, 0.0) for p in pool.rows), np.float64, len(rows))
    if not rows:
        return _Ranked(pool, rows, ids, cosine, None, [])
    fused = _fuse(pool.sims, pool.bm25, pool.rows, mode, options) if lexical else None
    if fused is None:
        total = scores(cosine, None, rows, options)
    else:
        total = scores(fused.similarity, fused.lexical, rows, options, mode)
    order = np.lexsort((ids, -cosine, -total)).tolist()
    return _Ranked(pool, rows, ids, cosine, fused, order)


def _explain(
    ranked: _Ranked,
    chosen: Sequence[int],
    options: ScoringOptions,
    mode: SearchMode,
    lexical: LexicalSearcher | None,
    text: str,
) -> list[Hit]:
    """The hits of the ``chosen`` rows of ``ranked``, in that order, with the matched
    terms of each in its explanation (the same numbers as the ranking:
    :func:`score_article`)."""
    rows, ids, cosine, fused = ranked.rows, ranked.ids, ranked.cosine, ranked.fused
    pmids = [int(ids[i]) for i in chosen]
    if fused is None or lexical is None or not chosen:
        return [
            _hit(p, rows[i], options, None, float(cosine[i]))
            for p, i in zip(pmids, chosen, strict=True)
        ]
    if mode == SearchMode.SEMANTIC:  # shown, not used: ranks among all the candidates,
        pool = ranked.pool  # as in the other modes (not among the hits of this page)
        every = [int(p) for p in ids]
        missing = [p for p in every if p not in pool.bm25]
        if missing:
            pool.bm25.update(lexical.scores(text, missing))
        rels = relevances(pool.sims, pool.bm25, every, mode, options)
    else:
        rels = {p: fused.relevance(i) for p, i in zip(pmids, chosen, strict=True)}
    matches = lexical.explain(text, pmids)
    out = []
    for p, i in zip(pmids, chosen, strict=True):
        match = matches.get(p)
        rel = rels[p]
        if match is not None:
            rel = dataclasses.replace(rel, terms=tuple(t.to_dict() for t in match.terms))
        out.append(_hit(p, rows[i], options, rel, float(cosine[i])))
    return out


def _page(
    settings: Settings,
    engine: Engine,
    index: SearchableIndex,
    lexical: LexicalSearcher | None,
    vector: np.ndarray | None,
    text: str,
    conds: list[Any],
    mode: SearchMode,
    options: ScoringOptions,
    *,
    start: int,
    k: int,
) -> tuple[list[Hit], _Pool, bool]:
    """The ``k`` hits after the first ``start`` of the query's one list of pages, the last
    pool searched, and whether a next page may hold results.

    The list is built in blocks of ``b = rerank_candidates``, none depending on the page
    or on ``k``: block 0 is the best ``b`` of the candidates a search for ``b`` results
    meets (:func:`_candidates`: ``b`` of each list, widened until ``b`` pass), block
    ``i`` the best ``b`` not listed before among the candidates of a search for
    ``(i + 1) * b``; once a search reaches every candidate there is (fewer than wanted
    pass), all the rest of its ranking is the last block. Each block is ranked in its own
    pool, and its hits are explained there. One deep pool for every page would make the
    first page as slow as the deepest, and rank it unlike the ``k`` best (recency and
    citation lift deeper candidates; RRF ranks and min-max ranges are the pool's). This
    way a page within block 0 costs one pool of ``b``, as the ``k`` best do, and one
    ending in block ``i`` costs ``i + 1`` pools (each row is read once). Best first:
    ``sort=date`` orders the page it returns (:func:`run_search`), never a block, whose
    edges a page's reader cannot see.
    """
    block = settings.rerank_candidates
    end = start + k
    listed: list[tuple[_Ranked, int]] = []
    shown: set[int] = set()
    known: dict[int, dict[str, Any] | None] = {}
    pool, final, tier = _Pool(), False, 0
    while len(listed) < end and not final:
        depth = (tier + 1) * block
        pool = _candidates(
            settings, engine, index, lexical, vector, text, depth, conds, mode, known
        )
        ranked = _rank(pool, options, mode, lexical)
        final = pool.exhausted or len(pool.rows) < depth  # no deeper pool holds more
        fresh = [i for i in ranked.order if int(ranked.ids[i]) not in shown]
        if not final:
            fresh = fresh[:block]
        shown.update(int(ranked.ids[i]) for i in fresh)
        listed += [(ranked, i) for i in fresh]
        tier += 1
    page = listed[start:end]
    by_pool: dict[int, tuple[_Ranked, list[int]]] = {}
    for ranked, i in page:
        by_pool.setdefault(id(ranked), (ranked, []))[1].append(i)
    explained: dict[int, Hit] = {}
    for ranked, chosen in by_pool.values():
        for h in _explain(ranked, chosen, options, mode, lexical, text):
            explained[h.pmid] = h
    hits = [explained[int(ranked.ids[i])] for ranked, i in page]
    return hits, pool, len(listed) > end or not final


def _hit(
    pmid: int, row: dict[str, Any], options: ScoringOptions, rel: Relevance | None, cosine: float
) -> Hit:
    s = score_article(cosine, row, options, rel)
    if row.get("is_retracted"):
        s.explanation["retracted"] = True
    return Hit(
        pmid=pmid,
        title=row.get("title") or "",
        score=s.score,
        similarity=s.similarity,
        recency=s.recency,
        citation=s.citation,
        journal=row.get("journal"),
        pub_year=row.get("pub_year"),
        best_date=row.get("best_date"),
        published=published_text(row),
        explanation=s.explanation,
        lexical=s.lexical,
        bm25=rel.bm25 if rel is not None else None,
    )


def search(
    settings: Settings,
    query: str,
    *,
    k: int = 10,
    since: dt.date | str | None = None,
    until: dt.date | str | None = None,
    mesh: str | Sequence[str] | None = None,
    publication_type: str | Sequence[str] | None = None,
    language: str | None = None,
    has_abstract: bool | None = None,
    include_retracted: bool = False,
    weights: Mapping[str, float | None] | None = None,
    half_life_days: float | None = None,
    mode: SearchMode | str = SearchMode.HYBRID,
    sort: SearchSort | str = SearchSort.SCORE,
) -> list[Hit]:
    """The ``k`` best hits for ``query``; see :func:`run_search` and :class:`SearchFilters`.

    ``weights`` overrides the settings' weights by name (``similarity``, ``recency``,
    ``citation``, ``lexical``); ``half_life_days`` the recency half-life; ``mode``
    (``hybrid``, ``semantic``, ``lexical``) and ``sort`` (``score``, ``date``) as in
    :func:`run_search`.

    Raises:
        ConfigError: Invalid query, k, filter or weight.
        NoIndexError: Nothing is published yet (run ``litpulse index refresh``).
    """
    filters = SearchFilters(
        since=parse_date(since, "since"),
        until=parse_date(until, "until"),
        mesh=_terms("mesh", mesh),
        publication_type=_terms("publication_type", publication_type),
        language=language,
        has_abstract=has_abstract,
        include_retracted=include_retracted,
    )
    options = ScoringOptions.from_settings(settings, weights=weights, half_life_days=half_life_days)
    return list(
        run_search(
            settings, query, k=k, filters=filters, options=options, mode=mode, sort=sort
        ).hits
    )
