"""Deterministic generator of realistic PubMed XML corpora, for tests, demos and benchmarks.

:func:`generate_corpus` writes ``pubmed26nNNNN.xml.gz`` files shaped like NLM's
baseline/update files — journal articles and book chapters, structured and unstructured
abstracts with inline markup and entities, every PubDate variant (named and numeric
months, seasons, ``MedlineDate`` ranges), authors with affiliations, ORCIDs and
collective names, MeSH with major flags, DOIs and PMC ids, references to earlier PMIDs
of the same corpus, retracted publications, revised records in later files (a higher
``Version``, or the same version with a later ``DateRevised`` and a new title),
``DeleteCitation`` blocks and, on request, malformed records — and returns a
:class:`CorpusManifest` with the state a store must end in after ingesting the files in
number order.

Everything is a pure function of the seed: every record is rendered from its own
:class:`ArticleSpec` with a random generator seeded by ``(seed, pmid, revision)``, so an
HTTP emulator can serve EFetch for any PMID (:func:`iter_generated_records` +
:func:`render_article_xml`) and get byte-identical XML. Files are written as a stream:
memory stays flat whatever the number of records.

Example:
    >>> import tempfile
    >>> m = generate_corpus(tempfile.mkdtemp(), n_records=50, n_files=2, seed=1)
    >>> [p.name for p in m.files]
    ['pubmed26n0001.xml.gz', 'pubmed26n0002.xml.gz']
    >>> len(m.live_pmids) + len(m.deleted_pmids) + m.quarantined == 50
    True

Command line: ``litpulse demo generate OUT_DIR --records N --files F --seed S``; the
vocabulary (topics, sentence templates, names, journals) is ``vocabulary.json`` beside
this module.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import hashlib
import html
import io
import json
import logging
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any
from xml.sax.saxutils import escape as _xml_escape

from litpulse.app.demo.pubmed_xml import DOCTYPE, FOOTER, HEADER, date_xml, deletion_xml
from litpulse.core.checksums import file_md5
from litpulse.core.errors import ConfigError

__all__ = [
    "ArticleSpec",
    "CorpusConfig",
    "CorpusManifest",
    "DOCTYPE",
    "TOPICS",
    "expected_title",
    "generate_corpus",
    "iter_file_plan",
    "iter_generated_records",
    "live_specs",
    "render_article_xml",
    "render_deletion_xml",
    "write_md5",
]

logger = logging.getLogger(__name__)

_TAG_RE = re.compile(r"<[^>]+>")

#: First PMID of a generated corpus; PMIDs grow by 1-3 per record, in entrez-date order.
BASE_PMID = 38_000_000
_PMID_STEP = 3
#: Retraction notices live outside the corpus' PMID range.
_NOTICE_BASE = 39_500_000

# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Concept:
    """Something an article is about, with the surface forms literature uses for it.

    ``forms[0]`` is the canonical name; the others are abbreviations, synonyms and a
    plain-words paraphrase. A title names a concept one way and its abstract another, as
    real titles and abstracts share meaning more than exact words.
    """

    forms: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.forms[0]


@dataclass(frozen=True)
class Topic:
    """A research topic: exposures and outcomes it studies, MeSH descriptors (name, UI),
    and the mechanisms of the investigational compounds of its trials (description,
    generic-name stem)."""

    name: str
    terms: tuple[str, ...]
    mesh: tuple[tuple[str, str], ...]
    emerging: bool = False
    exposures: tuple[Concept, ...] = ()
    outcomes: tuple[Concept, ...] = ()
    mechanisms: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Compound:
    """An investigational drug: trial titles name it by its code, abstracts by its generic
    name and mechanism (words a base model cannot link; the literature teaches them).

    ``intro`` is the share of the window after which articles start to study it.
    """

    code: str
    generic: str
    mechanism: str
    topic: str
    intro: float


def _vocabulary() -> dict[str, Any]:
    """The word lists of ``vocabulary.json`` (package data), lists made tuples."""

    def frozen(value: Any) -> Any:
        if isinstance(value, list):
            return tuple(frozen(v) for v in value)
        return value

    text = resources.files(__package__).joinpath("vocabulary.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return {k: v if k == "topics" else frozen(v) for k, v in data.items()}


def _topic_of(t: Mapping[str, Any]) -> Topic:
    exposures = tuple(Concept(tuple(c)) for c in t["exposures"])
    outcomes = tuple(Concept(tuple(c)) for c in t["outcomes"])
    return Topic(
        t["name"],
        tuple(c.name for c in (*exposures, *outcomes)),
        tuple(tuple(m) for m in t["mesh"]),
        t["emerging"],
        exposures,
        outcomes,
        tuple(tuple(m) for m in t["mechanisms"]),
    )


_VOCAB = _vocabulary()
#: The research topics of generated records (stable ones, and emerging ones late in the window).
TOPICS: tuple[Topic, ...] = tuple(_topic_of(t) for t in _VOCAB["topics"])
_STABLE_TOPICS = tuple(t for t in TOPICS if not t.emerging)
_EMERGING_TOPICS = tuple(t for t in TOPICS if t.emerging)
#: Terms planted into stable topics' records only late in the window (drift=True).
DRIFT_TERMS: tuple[str, ...] = _VOCAB["drift_terms"]
#: Who an article studies (canonical name first, then other ways to say it).
POPULATIONS: tuple[Concept, ...] = tuple(Concept(p) for p in _VOCAB["populations"])
#: Study designs (canonical name first).
DESIGNS: tuple[Concept, ...] = tuple(Concept(d) for d in _VOCAB["designs"])
_GENERAL: tuple[str, ...] = _VOCAB["general"]
_TITLES: tuple[str, ...] = _VOCAB["titles"]
_COMPOUND_TITLES: tuple[str, ...] = _VOCAB["compound_titles"]
_OPENERS: tuple[str, ...] = _VOCAB["openers"]
_BACKGROUND: tuple[str, ...] = _VOCAB["background"]
_METHODS: tuple[str, ...] = _VOCAB["methods"]
_RESULTS: tuple[str, ...] = _VOCAB["results"]
_COMPOUND_INTRO: tuple[str, ...] = _VOCAB["compound_intro"]
_MIDDLE: tuple[str, ...] = _VOCAB["middle"]
#: Middle sentences without inline markup: most real abstracts have none.
_MIDDLE_PLAIN = tuple(t for t in _MIDDLE if "<" not in t)
_CLOSERS: tuple[str, ...] = _VOCAB["closers"]
_SYLLABLES: tuple[str, ...] = _VOCAB["compound_syllables"]
#: Investigational compounds per topic with mechanisms (introduced one after another).
COMPOUNDS_PER_TOPIC = 4
_STRUCTURE: tuple[tuple[str, str], ...] = _VOCAB["structure"]
_LAST_NAMES: tuple[str, ...] = _VOCAB["last_names"]
_FORE_NAMES: tuple[str, ...] = _VOCAB["fore_names"]
_AFFILIATIONS: tuple[str, ...] = _VOCAB["affiliations"]
_COLLECTIVES: tuple[str, ...] = _VOCAB["collectives"]
_JOURNALS: tuple[tuple[str, str, str], ...] = _VOCAB["journals"]
_CHECK_TAGS: tuple[tuple[str, str], ...] = _VOCAB["check_tags"]
_QUALIFIERS: tuple[tuple[str, str], ...] = _VOCAB["qualifiers"]
_PUB_TYPES: tuple[tuple[str, str], ...] = _VOCAB["pub_types"]
_LANGS: tuple[tuple[str, str], ...] = _VOCAB["langs"]
_MONTH_ABBR = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_FULL = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_SEASON_OF = {
    12: "Winter",
    1: "Winter",
    2: "Winter",
    3: "Spring",
    4: "Spring",
    5: "Spring",
    6: "Summer",
    7: "Summer",
    8: "Summer",
    9: "Fall",
    10: "Fall",
    11: "Fall",
}

# --------------------------------------------------------------------------- config / specs


@dataclass(frozen=True)
class CorpusConfig:
    """Options of a generated corpus; every value is validated on construction."""

    n_records: int = field(default=1000, metadata={"help": "Original records (≥ 1)."})
    n_files: int = field(default=1, metadata={"help": "Files to spread records over."})
    seed: int = field(default=0, metadata={"help": "Seed: same seed, same bytes."})
    start_date: dt.date = field(
        default=dt.date(2024, 1, 1), metadata={"help": "First entrez date of the window."}
    )
    days: int = field(default=30, metadata={"help": "Length of the entrez window, in days."})
    revise_fraction: float = field(
        default=0.05, metadata={"help": "Share of records revised in a later position."}
    )
    delete_fraction: float = field(
        default=0.01, metadata={"help": "Share of records deleted by a DeleteCitation."}
    )
    malformed_fraction: float = field(
        default=0.0, metadata={"help": "Share of records rendered broken (quarantined)."}
    )
    drift: bool = field(
        default=False, metadata={"help": "Plant topics/terms only in the late part of the window."}
    )
    book_fraction: float = field(default=0.01, metadata={"help": "Share of book chapters."})
    retract_fraction: float = field(
        default=0.005, metadata={"help": "Share of retracted publications."}
    )
    first_file_number: int = field(
        default=1, metadata={"help": "NNNN of the first pubmed26nNNNN file."}
    )
    cite_window: int = field(
        default=4000,
        metadata={
            "help": "How many records back an article's citations may reach (PubMed's "
            "reach decades: a baseline file cites articles of most earlier files)."
        },
    )

    def __post_init__(self) -> None:
        if self.n_records < 1:
            raise ConfigError("`n_records` must be at least 1")
        if not 1 <= self.n_files <= self.n_records:
            raise ConfigError("`n_files` must be between 1 and n_records")
        if self.days < 1:
            raise ConfigError("`days` must be at least 1")
        # the records' other dates reach ~20 years before and ~1 after the entrez dates;
        # a four-digit year and the calendar's ends bound them
        first, last = dt.date(1800, 1, 1), dt.date(9998, 1, 1)
        if self.start_date < first or self.start_date.toordinal() + self.days > last.toordinal():
            raise ConfigError(
                f"`start_date` and `days` must keep the generated dates within {first} .. "
                f"{last}, got {self.start_date} and {self.days} days"
            )
        if self.first_file_number < 0:
            raise ConfigError("`first_file_number` must not be negative")
        if self.cite_window < 1:
            raise ConfigError("`cite_window` must be at least 1")
        for name in (
            "revise_fraction",
            "delete_fraction",
            "malformed_fraction",
            "book_fraction",
            "retract_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"`{name}` must be between 0 and 1")

    @property
    def drift_cutoff(self) -> dt.date:
        """With drift, emerging topics and terms only appear on or after this date."""
        return self.start_date + dt.timedelta(days=(2 * self.days) // 3)

    def file_name(self, file_index: int) -> str:
        """``pubmed26nNNNN.xml.gz`` of the 0-based file index (without .gz if not gz)."""
        return f"pubmed26n{self.first_file_number + file_index:04d}.xml"


@dataclass(frozen=True)
class ArticleSpec:
    """Everything needed to render one record occurrence, deterministically.

    Attributes:
        pmid: The PMID.
        index: Position of the original record in the corpus (0-based, entrez order).
        revision: 0 for the original, 1 for its revision.
        version: The PMID ``Version`` attribute.
        file_index: 0-based index of the file that carries this occurrence.
        entrez_date: Entrez (create) date; the ``pubmed`` history date is the same.
        date_revised: ``DateRevised`` of this occurrence.
        topic: Topic name.
        is_book: Rendered as a ``PubmedBookArticle``.
        retracted: Carries "Retracted Publication" and a RetractionIn link.
        malformed: None, or how the record is broken (``missing_pmid``,
            ``bad_pmid``, ``no_medline_citation``).
        references: PMIDs cited (earlier records of the corpus plus a few outside).
        drift_term: A late-window term planted in the abstract, if any.
        seed: The corpus seed.
        exposure: Canonical name of what the article studies (a compound's code for a
            trial of an investigational compound).
        outcome: Canonical name of the outcome it studies.
        population: Canonical name of who it studies.
        design: Canonical name of its study design.
        compound: The code of the investigational compound it tests, if any.
        title_forms: How the title names (exposure, outcome, population).
        abstract_forms: How the abstract first names them (another form of each).
    """

    pmid: int
    index: int
    revision: int
    version: int
    file_index: int
    entrez_date: dt.date
    date_revised: dt.date
    topic: str
    is_book: bool = False
    retracted: bool = False
    malformed: str | None = None
    references: tuple[int, ...] = ()
    drift_term: str | None = None
    seed: int = 0
    exposure: str = ""
    outcome: str = ""
    population: str = ""
    design: str = ""
    compound: str | None = None
    title_forms: tuple[str, ...] = ()
    abstract_forms: tuple[str, ...] = ()


@dataclass(frozen=True)
class CorpusManifest:
    """The files written and the state a store must end in after ingesting them in order.

    Attributes:
        config: The options the corpus was generated with.
        files: The files, in number order.
        live_pmids: PMIDs present at the end (not deleted, not malformed).
        deleted_pmids: PMIDs named in DeleteCitation blocks (all were in the corpus).
        quarantined: Number of malformed records (each yields one QuarantineEntry).
        malformed_pmids: PMIDs intended for the malformed records (unreadable in the XML).
        versions: Final ``Version`` per live PMID.
        revised_titles: Final title per revised live PMID.
        topics: Topic name per PMID (every original record, live or not).
        entrez_dates: Entrez date per PMID (every original record).
        cited_by: Citations from live records to each live PMID (in-corpus, ≥ 1 only).
        books: PMIDs rendered as PubmedBookArticle.
        retracted: PMIDs carrying "Retracted Publication".
        n_items: Items a parser yields for all files (records + deletions + quarantines).
    """

    config: CorpusConfig
    files: tuple[Path, ...]
    live_pmids: frozenset[int]
    deleted_pmids: frozenset[int]
    quarantined: int
    malformed_pmids: frozenset[int]
    versions: Mapping[int, int]
    revised_titles: Mapping[int, str]
    topics: Mapping[int, str]
    entrez_dates: Mapping[int, dt.date]
    cited_by: Mapping[int, int]
    books: frozenset[int]
    retracted: frozenset[int]
    n_items: int

    @property
    def drift_topics(self) -> tuple[str, ...]:
        """Topics that only appear late in the window (empty without drift)."""
        return tuple(t.name for t in _EMERGING_TOPICS) if self.config.drift else ()


# --------------------------------------------------------------------------- planning


def _pmid_of(index: int, seed: int) -> int:
    # Strictly increasing in index; the jitter makes gaps of 1-5 like real PMIDs.
    jitter = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=2).digest()[0] % _PMID_STEP
    return BASE_PMID + _PMID_STEP * index + jitter


@dataclass(frozen=True)
class _Plan:
    """Per-original decisions, computed in one pass (a few small ints per record)."""

    cfg: CorpusConfig
    file_of: tuple[int, ...]  # file index of each original
    revise_file: Mapping[int, int]  # index -> file carrying its revision
    revise_bumps: frozenset[int]  # indexes whose revision has Version 2
    delete_file: Mapping[int, int]  # index -> file carrying its DeleteCitation
    malformed: Mapping[int, str]


def _plan(cfg: CorpusConfig) -> _Plan:
    rng = random.Random(f"plan:{cfg.seed}")
    n, nf = cfg.n_records, cfg.n_files
    file_of = tuple(min(nf - 1, (i * nf) // n) for i in range(n))
    indexes = list(range(n))
    n_bad = round(cfg.malformed_fraction * n)
    bad = sorted(rng.sample(indexes, n_bad)) if n_bad else []
    kinds = ("missing_pmid", "bad_pmid", "no_medline_citation")
    malformed = {i: kinds[k % len(kinds)] for k, i in enumerate(bad)}
    good = [i for i in indexes if i not in malformed]
    n_rev = min(len(good), round(cfg.revise_fraction * n))
    revised = sorted(rng.sample(good, n_rev)) if n_rev else []
    revise_file = {i: rng.randint(file_of[i], nf - 1) for i in revised}
    bumps = frozenset(i for i in revised if rng.random() < 0.5)
    n_del = min(len(good), round(cfg.delete_fraction * n))
    deleted = sorted(rng.sample(good, n_del)) if n_del else []
    delete_file = {i: rng.randint(max(file_of[i], revise_file.get(i, 0)), nf - 1) for i in deleted}
    return _Plan(cfg, file_of, revise_file, bumps, delete_file, malformed)


def _entrez_date(cfg: CorpusConfig, index: int) -> dt.date:
    return cfg.start_date + dt.timedelta(days=(index * cfg.days) // cfg.n_records)


@functools.lru_cache(maxsize=16)
def compounds(seed: int) -> tuple[Compound, ...]:
    """The investigational compounds of a corpus: :data:`COMPOUNDS_PER_TOPIC` per topic
    with mechanisms, introduced one after another over the window."""
    r = random.Random(f"compounds:{seed}")
    out: list[Compound] = []
    seen: set[str] = set()
    for topic in _STABLE_TOPICS:
        for k in range(COMPOUNDS_PER_TOPIC if topic.mechanisms else 0):
            mechanism, stem = topic.mechanisms[k % len(topic.mechanisms)]
            while True:
                generic = "".join(r.sample(_SYLLABLES, 2)) + stem
                letters = "".join(r.choice("ABCDEFGHJKLMNPRSTVXZ") for _ in range(r.choice((2, 3))))
                code = f"{letters}-{r.randint(100, 9999)}"
                if generic not in seen and code not in seen:
                    break
            seen.update((generic, code))
            intro = 0.8 * (k + 0.1) / COMPOUNDS_PER_TOPIC  # the last one at two thirds
            out.append(Compound(code, generic, mechanism, topic.name, intro=intro))
    return tuple(out)


def _compound(seed: int, code: str) -> Compound:
    for c in compounds(seed):
        if c.code == code:
            return c
    raise ConfigError(f"unknown compound {code!r}")


@dataclass(frozen=True, eq=False)
class _Latent:
    """What article ``index`` is about (a pure function of seed and index)."""

    topic: Topic
    exposure: Concept | None
    compound: Compound | None
    outcome: Concept
    population: Concept
    design: Concept

    def exposure_name(self) -> str:
        if self.compound is not None:
            return self.compound.code
        return self.exposure.name if self.exposure else ""


def _topic_weights(frac: float) -> list[float]:
    """Shares of the stable topics at a point of the window: each waxes and wanes."""
    n = len(_STABLE_TOPICS)
    return [1.0 + 0.6 * math.sin(2 * math.pi * (frac + k / n)) for k in range(n)]


@functools.lru_cache(maxsize=1 << 14)
def _latent(cfg: CorpusConfig, index: int) -> _Latent:
    """What article ``index`` is about (cached: citing articles look earlier ones up)."""
    r = random.Random(cfg.seed * 1_000_003 + index)
    frac = index / cfg.n_records
    late = _entrez_date(cfg, index) >= cfg.drift_cutoff
    if cfg.drift and late and r.random() < 0.35:
        topic = r.choice(_EMERGING_TOPICS)
    elif cfg.drift:
        topic = r.choices(_STABLE_TOPICS, weights=_topic_weights(frac))[0]
    else:
        topic = r.choice(_STABLE_TOPICS)
    compound = None
    if topic.mechanisms and r.random() < 0.5:
        ready = [c for c in compounds(cfg.seed) if c.topic == topic.name and c.intro <= frac]
        if ready:
            compound = r.choice(ready)
    exposure = None if compound else r.choice(topic.exposures)
    return _Latent(
        topic,
        exposure,
        compound,
        r.choice(topic.outcomes),
        r.choice(POPULATIONS),
        r.choice(DESIGNS),
    )


def _two_forms(r: random.Random, concept: Concept) -> tuple[str, str]:
    """Two different forms of a concept: the title's (rarely the long paraphrase) and the
    abstract's first mention."""
    n = len(concept.forms)
    weights = [2, 5, 3, 1][:n] if n >= 4 else [1] * n
    t = r.choices(range(n), weights=weights)[0]
    a = r.choice([i for i in range(n) if i != t])
    return concept.forms[t], concept.forms[a]


def _related_refs(cfg: CorpusConfig, index: int, lat: _Latent, r: random.Random) -> list[int]:
    """Earlier articles of the corpus an article cites: mostly related ones (same topic,
    sharing its exposure, compound or outcome), a few others of its topic, and some
    PMIDs outside the corpus."""
    related: list[int] = []
    same_topic: list[int] = []
    lo = max(0, index - cfg.cite_window)
    for _ in range(min(48, 2 * (index - lo))):
        j = r.randrange(lo, index)
        other = _latent(cfg, j)
        if other.topic is not lat.topic:
            continue
        if other.exposure_name() == lat.exposure_name() or other.outcome is lat.outcome:
            related.append(j)
        else:
            same_topic.append(j)
    picked = list(dict.fromkeys(related))[: r.randint(1, 8)]
    picked += list(dict.fromkeys(same_topic))[: r.randint(0, 1)]
    refs = [_pmid_of(j, cfg.seed) for j in sorted(picked)]
    refs.extend(r.randint(1_000_000, 30_000_000) for _ in range(r.randint(0, 6)))
    return refs


def _spec(plan: _Plan, index: int, revision: int) -> ArticleSpec:
    cfg = plan.cfg
    r = random.Random(f"spec:{cfg.seed}:{index}")
    entrez = _entrez_date(cfg, index)
    late = entrez >= cfg.drift_cutoff
    lat = _latent(cfg, index)
    drift_term = r.choice(DRIFT_TERMS) if cfg.drift and late and r.random() < 0.5 else None
    is_book = r.random() < cfg.book_fraction and index not in plan.malformed
    retracted = (not is_book) and r.random() < cfg.retract_fraction
    refs: list[int] = []
    if index and not is_book and r.random() < 0.85:
        refs = _related_refs(cfg, index, lat, r)
    if lat.compound is not None:
        c = lat.compound
        x_forms = (c.code, f"{c.generic}, {c.mechanism},")
    else:
        assert lat.exposure is not None
        x_forms = _two_forms(r, lat.exposure)
    y_forms, p_forms = _two_forms(r, lat.outcome), _two_forms(r, lat.population)
    date_revised = entrez + dt.timedelta(days=r.randint(0, 3))
    version = 1
    file_index = plan.file_of[index]
    if revision:
        file_index = plan.revise_file[index]
        date_revised += dt.timedelta(days=30 + r.randint(0, 60))
        if index in plan.revise_bumps:
            version = 2
    return ArticleSpec(
        pmid=_pmid_of(index, cfg.seed),
        index=index,
        revision=revision,
        version=version,
        file_index=file_index,
        entrez_date=entrez,
        date_revised=date_revised,
        topic=lat.topic.name,
        is_book=is_book,
        retracted=retracted,
        malformed=plan.malformed.get(index),
        references=tuple(dict.fromkeys(refs)),
        drift_term=drift_term,
        seed=cfg.seed,
        exposure=lat.exposure_name(),
        outcome=lat.outcome.name,
        population=lat.population.name,
        design=lat.design.name,
        compound=lat.compound.code if lat.compound else None,
        title_forms=(x_forms[0], y_forms[0], p_forms[0]),
        abstract_forms=(x_forms[1], y_forms[1], p_forms[1]),
    )


def iter_file_plan(
    config: CorpusConfig,
) -> Iterator[tuple[int, list[ArticleSpec | int]]]:
    """Per file, in number order: the file index and its items in file order.

    Items are :class:`ArticleSpec` (records, originals then revisions) and ``int``
    (PMIDs of the file's final ``DeleteCitation`` block).
    """
    plan = _plan(config)
    rev_by_file: dict[int, list[int]] = {}
    for i, f in plan.revise_file.items():
        rev_by_file.setdefault(f, []).append(i)
    del_by_file: dict[int, list[int]] = {}
    for i, f in plan.delete_file.items():
        del_by_file.setdefault(f, []).append(i)
    n, nf = config.n_records, config.n_files
    i = 0
    for f in range(nf):
        items: list[ArticleSpec | int] = []
        while i < n and plan.file_of[i] == f:
            items.append(_spec(plan, i, 0))
            i += 1
        items.extend(_spec(plan, j, 1) for j in sorted(rev_by_file.get(f, [])))
        items.extend(_pmid_of(j, config.seed) for j in sorted(del_by_file.get(f, [])))
        yield f, items


def iter_generated_records(
    config: CorpusConfig | None = None, **options: object
) -> Iterator[ArticleSpec]:
    """Every record occurrence of the corpus in file order (originals and revisions).

    Args:
        config: The corpus options; or give them as keywords (as to
            :func:`generate_corpus`, without ``out_dir``).
        **options: CorpusConfig fields, when ``config`` is None.

    Yields:
        One ArticleSpec per ``PubmedArticle``/``PubmedBookArticle`` written; render it with
        :func:`render_article_xml`. The last spec of a PMID is its final state.
    """
    cfg = config or CorpusConfig(**options)  # type: ignore[arg-type]
    for _f, items in iter_file_plan(cfg):
        for item in items:
            if isinstance(item, ArticleSpec):
                yield item


def live_specs(config: CorpusConfig | None = None, **options: object) -> dict[int, ArticleSpec]:
    """The final occurrence of every live PMID (deleted and malformed ones left out).

    What an EFetch emulator serves after all files are out: ``render_article_xml`` of
    each value; ``spec.entrez_date`` answers ESearch date windows.

    Args:
        config: The corpus options; or give them as keywords.
        **options: CorpusConfig fields, when ``config`` is None.
    """
    cfg = config or CorpusConfig(**options)  # type: ignore[arg-type]
    final: dict[int, ArticleSpec] = {}
    for _f, items in iter_file_plan(cfg):
        for item in items:
            if isinstance(item, int):
                final.pop(item, None)
            elif not item.malformed:
                final[item.pmid] = item
    return final


# --------------------------------------------------------------------------- rendering


def _esc(text: str) -> str:
    return _xml_escape(text)


def _cap(text: str) -> str:
    """Sentence case for a phrase starting a sentence (``ctDNA`` and ``p-tau`` stay)."""
    first = text.split(" ", 1)[0]
    plain = first.replace("-", "")
    if plain.isalpha() and plain.islower() and len(first.split("-")[0]) > 1:
        return text[:1].upper() + text[1:]
    return text


def _topic(name: str) -> Topic:
    for t in TOPICS:
        if t.name == name:
            return t
    raise ConfigError(f"unknown topic {name!r}")


def _concept(concepts: Sequence[Concept], name: str) -> Concept:
    for c in concepts:
        if c.name == name:
            return c
    raise ConfigError(f"unknown concept {name!r}")


def _later(r: random.Random, concept: Concept, title_form: str) -> str:
    """A later mention in the abstract: any form but the title's."""
    return r.choice([f for f in concept.forms if f != title_form])


def _fill(template: str, r: random.Random, **words: str) -> str:
    """A template with its words XML-escaped, ``{Xc}`` capitalised, numbers drawn."""
    values = {k: _esc(v) for k, v in words.items()}
    if "X" in values:
        values["Xc"] = _cap(values["X"])
    if "G" in values:
        values["Gc"] = _cap(values["G"])
    values.update(
        d=r.choice(("rise", "reduction", "difference", "change")),
        e=r.choice(_GENERAL),
        n=str(r.randint(1, 9)),
        n2=str(r.randint(0, 9)),
        n3=str(r.randint(0, 9)),
    )
    return template.format(**values)


def _title_xml(spec: ArticleSpec, r: random.Random, topic: Topic) -> str:
    x, y, p = spec.title_forms or (topic.terms[0], topic.terms[-1], POPULATIONS[0].name)
    design = r.choice(_concept(DESIGNS, spec.design).forms) if spec.design else "cohort study"
    if spec.compound:
        template = r.choice(_COMPOUND_TITLES)
        n = str(r.randint(1, 3))
    else:
        template = r.choice(_TITLES)
        n = ""
    title = template.format(X=_esc(x), Y=_esc(y), P=_esc(p), D=_esc(design), n=n)
    title = _cap(title) if not title.startswith("<") else title
    if spec.revision:
        title = title[:-1] + " (corrected)."
    return title


def expected_title(spec: ArticleSpec) -> str:
    """The plain-text title a parser must produce for ``spec`` (markup removed)."""
    r = random.Random(f"art:{spec.seed}:{spec.pmid}:{spec.revision}")
    xml = _title_xml(spec, r, _topic(spec.topic))
    return " ".join(html.unescape(_TAG_RE.sub("", xml)).split())


def _abstract_sections(spec: ArticleSpec, r: random.Random, topic: Topic) -> list[list[str]]:
    """The abstract's sentences by section (background, methods, results, conclusions):
    what the title says, in other words, among background and methods."""
    x_t, y_t, p_t = spec.title_forms
    x_a, y_a, p_a = spec.abstract_forms
    outcome = _concept(topic.outcomes, spec.outcome)
    population = _concept(POPULATIONS, spec.population)
    design = r.choice(_concept(DESIGNS, spec.design).forms)
    if spec.compound:
        c = _compound(spec.seed, spec.compound)
        generic = f"{c.generic} ({c.code})" if r.random() < 0.15 else c.generic

        def x_later() -> str:
            return c.generic

        first = _fill(r.choice(_COMPOUND_INTRO), r, G=generic, M=c.mechanism, Y=y_a, P=p_a)
    else:
        exposure = _concept(topic.exposures, spec.exposure)
        if len(x_t) <= 8 and r.random() < 0.15:  # the abbreviation defined, as papers do
            x_a = f"{x_a} ({x_t})"

        def x_later() -> str:
            return _later(r, exposure, x_t)

        first = _fill(r.choice(_OPENERS), r, X=x_a, Y=y_a, P=p_a)
    background = [first]
    if spec.drift_term:
        background.append(f"We applied {spec.drift_term} to study {_esc(outcome.name)}.")
    noise_x = r.choice([e for e in topic.exposures if e.name != spec.exposure])
    noise_y = r.choice([o for o in topic.outcomes if o is not outcome])
    background.append(
        _fill(r.choice(_BACKGROUND), r, X=r.choice(noise_x.forms), Y=r.choice(noise_y.forms))
    )
    methods = [_fill(r.choice(_METHODS), r, D=design, P=_later(r, population, p_t))]
    if r.random() < 0.4:  # short abstracts (a demo embeds quickly): not every part is there
        methods = []
    results = [
        _fill(template, r, X=x_later(), Y=_later(r, outcome, y_t))
        for template in r.sample(_RESULTS, 1 if r.random() < 0.7 else 2)
    ]
    middle = _MIDDLE if r.random() < 0.25 else _MIDDLE_PLAIN  # a quarter carry markup
    if r.random() < 0.25:
        results.append(_fill(r.choice(middle), r))
    closer = _fill(
        r.choice(_CLOSERS), r, X=x_later(), Y=_later(r, outcome, y_t), P=_later(r, population, p_t)
    )
    return [background, methods, results, [_cap(closer)] if r.random() < 0.6 else []]


def _abstract_xml(spec: ArticleSpec, r: random.Random, topic: Topic) -> str:
    sections = _abstract_sections(spec, r, topic)
    sentences = [s for section in sections for s in section]
    if r.random() < 0.4 and all(sections):  # structured
        parts = []
        for (label, cat), section in zip(_STRUCTURE, sections, strict=True):
            text = " ".join(section)
            parts.append(f'<AbstractText Label="{label}" NlmCategory="{cat}">{text}</AbstractText>')
        return "".join(parts)
    if r.random() < 0.1:  # two unlabelled paragraphs
        mid = len(sentences) // 2
        return (
            f"<AbstractText>{' '.join(sentences[:mid])}</AbstractText>"
            f"<AbstractText>{' '.join(sentences[mid:])}</AbstractText>"
        )
    return f"<AbstractText>{' '.join(sentences)}</AbstractText>"


def _pubdate_xml(r: random.Random, d: dt.date) -> str:
    form = r.randrange(10)
    y, m = d.year, d.month
    if form < 3:
        return f"<Year>{y}</Year><Month>{_MONTH_ABBR[m - 1]}</Month><Day>{d.day:02d}</Day>"
    if form < 5:
        return f"<Year>{y}</Year><Month>{_MONTH_ABBR[m - 1]}</Month>"
    if form == 5:
        return f"<Year>{y}</Year><Month>{m:02d}</Month>"
    if form == 6:
        return f"<Year>{y}</Year><Month>{_MONTH_FULL[m - 1]}</Month>"
    if form == 7:
        return f"<Year>{y}</Year><Season>{_SEASON_OF[m]}</Season>"
    if form == 8:
        nxt = _MONTH_ABBR[m % 12]
        if m == 12:
            return f"<MedlineDate>{y} Dec-{y + 1} Jan</MedlineDate>"
        return f"<MedlineDate>{y} {_MONTH_ABBR[m - 1]}-{nxt}</MedlineDate>"
    return f"<Year>{y}</Year>"


def _authors_xml(r: random.Random, book: bool = False) -> str:
    out = ['<AuthorList CompleteYN="Y"' + (' Type="authors"' if book else "") + ">"]
    for k in range(r.randint(1, 10)):
        if k and r.random() < 0.03:
            out.append(
                f'<Author ValidYN="Y"><CollectiveName>{r.choice(_COLLECTIVES)}'
                "</CollectiveName></Author>"
            )
            continue
        last, fore = r.choice(_LAST_NAMES), r.choice(_FORE_NAMES)
        initials = "".join(p[0] for p in fore.replace("-", " ").split())
        parts = [
            f'<Author ValidYN="Y"><LastName>{_esc(last)}</LastName>'
            f"<ForeName>{fore}</ForeName><Initials>{initials}</Initials>"
        ]
        if r.random() < 0.2:
            orcid = "-".join(f"{r.randint(0, 9999):04d}" for _ in range(4))
            parts.append(f'<Identifier Source="ORCID">https://orcid.org/{orcid}</Identifier>')
        for aff in r.sample(_AFFILIATIONS, r.choice((1, 1, 1, 2))):
            parts.append(f"<AffiliationInfo><Affiliation>{aff}</Affiliation></AffiliationInfo>")
        parts.append("</Author>")
        out.append("".join(parts))
    out.append("</AuthorList>")
    return "".join(out)


def _mesh_xml(r: random.Random, topic: Topic) -> str:
    heads: list[tuple[str, str, bool, list[tuple[str, str, bool]]]] = []
    for name, ui in r.sample(topic.mesh, r.randint(1, len(topic.mesh))):
        quals = [(q, qui, r.random() < 0.2) for q, qui in r.sample(_QUALIFIERS, r.randint(0, 2))]
        heads.append((name, ui, r.random() < 0.4, quals))
    for name, ui in r.sample(_CHECK_TAGS, r.randint(1, 4)):
        heads.append((name, ui, False, []))
    heads.sort()
    out = ["<MeshHeadingList>"]
    for name, ui, major, quals in heads:
        out.append(
            f'<MeshHeading><DescriptorName UI="{ui}" MajorTopicYN="{"Y" if major else "N"}">'
            f"{name}</DescriptorName>"
        )
        for q, qui, qmaj in quals:
            out.append(
                f'<QualifierName UI="{qui}" MajorTopicYN="{"Y" if qmaj else "N"}">'
                f"{q}</QualifierName>"
            )
        out.append("</MeshHeading>")
    out.append("</MeshHeadingList>")
    return "".join(out)


def _keywords(spec: ArticleSpec, r: random.Random, topic: Topic) -> list[str]:
    """Author keywords: what the article itself studies (its exposure or compound, its
    outcome and who it studies, each in one of its short forms), sometimes its field too,
    as authors list them."""
    if spec.compound:
        c = _compound(spec.seed, spec.compound)
        exposure = r.choice((c.code, c.generic))
    else:
        exposure = r.choice(_concept(topic.exposures, spec.exposure).forms[:3])
    outcome = r.choice(_concept(topic.outcomes, spec.outcome).forms[:3])
    population = r.choice(_concept(POPULATIONS, spec.population).forms[:2])
    own = [exposure, outcome, population]
    return [*own, topic.name] if r.random() < 0.5 else own


def _history_xml(spec: ArticleSpec, r: random.Random) -> str:
    e = spec.entrez_date
    received = e - dt.timedelta(days=r.randint(60, 240))
    accepted = e - dt.timedelta(days=r.randint(5, 50))
    hh, mm = r.randint(0, 23), r.randint(0, 59)
    out = ["<History>"]
    out.append(date_xml("PubMedPubDate", received, ' PubStatus="received"'))
    out.append(date_xml("PubMedPubDate", accepted, ' PubStatus="accepted"'))
    for status in ("medline", "pubmed", "entrez"):
        out.append(
            f'<PubMedPubDate PubStatus="{status}"><Year>{e.year}</Year><Month>{e.month}</Month>'
            f"<Day>{e.day}</Day><Hour>{hh}</Hour><Minute>{mm}</Minute></PubMedPubDate>"
        )
    out.append("</History>")
    return "".join(out)


def _references_xml(spec: ArticleSpec, r: random.Random) -> str:
    if not spec.references:
        return ""
    out = ["<ReferenceList>"]
    for k, p in enumerate(spec.references):
        out.append(
            f"<Reference><Citation>Author {k + 1} et al. Example citation. "
            f"J Example. {spec.entrez_date.year - r.randint(1, 20)};{r.randint(1, 99)}:"
            f"{r.randint(1, 999)}.</Citation><ArticleIdList>"
            f'<ArticleId IdType="pubmed">{p}</ArticleId></ArticleIdList></Reference>'
        )
    out.append("</ReferenceList>")
    return "".join(out)


def render_article_xml(spec: ArticleSpec) -> str:
    """The ``PubmedArticle`` (or ``PubmedBookArticle``) element of one record occurrence.

    Args:
        spec: The record occurrence (from :func:`iter_generated_records`).

    Returns:
        The element as a string (no XML declaration), ending with a newline.

    Longer than the usual 80 lines on purpose: the elements are appended in the order a
    PubMed record has them, and each random draw must stay in that order for the output
    to stay byte-identical for a seed.
    """
    if spec.is_book:
        return _render_book(spec)
    r = random.Random(f"art:{spec.seed}:{spec.pmid}:{spec.revision}")
    topic = _topic(spec.topic)
    title = _title_xml(spec, r, topic)
    abstract = _abstract_xml(spec, r, topic)
    journal, iso, issn = r.choice(_JOURNALS)
    e = spec.entrez_date
    pub = e + dt.timedelta(days=r.randint(-20, 40))
    volume, issue = r.randint(1, 400), r.randint(1, 12)
    start_page = r.randint(1, 2000)
    prefix = r.randint(1000, 99999)
    doi = f"10.{prefix}/{iso.lower().replace(' ', '')}.{e.year}.{spec.pmid % 100000}"
    lang_other = r.random() < 0.05
    lang, vernacular = r.choice(_LANGS) if lang_other else ("eng", "")
    pub_types = [("Journal Article", "D016428")]
    pub_types += r.sample(_PUB_TYPES, r.choice((0, 0, 1, 2)))
    if spec.retracted:
        pub_types.append(("Retracted Publication", "D016441"))
    x: list[str] = []
    status = r.choice(("MEDLINE", "MEDLINE", "PubMed-not-MEDLINE", "In-Process", "Publisher"))
    x.append("<PubmedArticle>")
    if spec.malformed != "no_medline_citation":
        x.append(f'<MedlineCitation Status="{status}" Owner="NLM" IndexingMethod="Automated">')
        if spec.malformed == "bad_pmid":
            x.append(f'<PMID Version="{spec.version}">{spec.pmid}x</PMID>')
        elif spec.malformed != "missing_pmid":
            x.append(f'<PMID Version="{spec.version}">{spec.pmid}</PMID>')
        if status == "MEDLINE":
            x.append(date_xml("DateCompleted", spec.date_revised))
        x.append(date_xml("DateRevised", spec.date_revised))
        x.append('<Article PubModel="Print-Electronic"><Journal>')
        x.append(f'<ISSN IssnType="Electronic">{issn}</ISSN><JournalIssue CitedMedium="Internet">')
        x.append(f"<Volume>{volume}</Volume><Issue>{issue}</Issue>")
        x.append(f"<PubDate>{_pubdate_xml(r, pub)}</PubDate></JournalIssue>")
        x.append(f"<Title>{journal}</Title><ISOAbbreviation>{iso}</ISOAbbreviation></Journal>")
        x.append(f"<ArticleTitle>{title}</ArticleTitle>")
        end_page = start_page + r.randint(3, 15)
        x.append(
            f"<Pagination><StartPage>{start_page}</StartPage>"
            f"<MedlinePgn>{start_page}-{end_page}</MedlinePgn></Pagination>"
        )
        if r.random() < 0.8:
            x.append(f'<ELocationID EIdType="doi" ValidYN="Y">{doi}</ELocationID>')
        x.append(f"<Abstract>{abstract}")
        if r.random() < 0.3:
            x.append(f"<CopyrightInformation>© {e.year} The Authors.</CopyrightInformation>")
        x.append("</Abstract>")
        x.append(_authors_xml(r))
        x.append(f"<Language>{lang}</Language>")
        x.append("<PublicationTypeList>")
        x.extend(f'<PublicationType UI="{ui}">{name}</PublicationType>' for name, ui in pub_types)
        x.append("</PublicationTypeList>")
        if vernacular:
            x.append(f"<VernacularTitle>{vernacular}</VernacularTitle>")
        if r.random() < 0.7:
            art = e - dt.timedelta(days=r.randint(0, 20))
            x.append(date_xml("ArticleDate", art, ' DateType="Electronic"'))
        x.append("</Article>")
        x.append(
            f"<MedlineJournalInfo><Country>United States</Country><MedlineTA>{iso}"
            f"</MedlineTA><ISSNLinking>{issn}</ISSNLinking></MedlineJournalInfo>"
        )
        x.append("<CitationSubset>IM</CitationSubset>")
        if spec.retracted:
            notice = _NOTICE_BASE + spec.index
            x.append(
                '<CommentsCorrectionsList><CommentsCorrections RefType="RetractionIn">'
                f"<RefSource>{iso}. {e.year + 1}</RefSource>"
                f'<PMID Version="1">{notice}</PMID></CommentsCorrections>'
                "</CommentsCorrectionsList>"
            )
        x.append(_mesh_xml(r, topic))
        if r.random() < 0.6:
            kws = _keywords(spec, r, topic)
            x.append('<KeywordList Owner="NOTNLM">')
            x.extend(f'<Keyword MajorTopicYN="N">{k}</Keyword>' for k in kws)
            x.append("</KeywordList>")
        x.append("</MedlineCitation>")
    x.append("<PubmedData>")
    x.append(_history_xml(spec, r))
    x.append("<PublicationStatus>ppublish</PublicationStatus><ArticleIdList>")
    x.append(f'<ArticleId IdType="pubmed">{spec.pmid}</ArticleId>')
    x.append(f'<ArticleId IdType="doi">{doi}</ArticleId>')
    if r.random() < 0.4:
        x.append(f'<ArticleId IdType="pmc">PMC{r.randint(7_000_000, 12_999_999)}</ArticleId>')
    x.append("</ArticleIdList>")
    x.append(_references_xml(spec, r))
    x.append("</PubmedData></PubmedArticle>\n")
    return "".join(x)


def _render_book(spec: ArticleSpec) -> str:
    r = random.Random(f"art:{spec.seed}:{spec.pmid}:{spec.revision}")
    topic = _topic(spec.topic)
    title = _title_xml(spec, r, topic)
    abstract = _abstract_xml(spec, r, topic)
    e = spec.entrez_date
    nbk = f"NBK{500000 + spec.index}"
    x = ["<PubmedBookArticle><BookDocument>"]
    if spec.malformed == "bad_pmid":
        x.append(f'<PMID Version="{spec.version}">{spec.pmid}x</PMID>')
    elif spec.malformed != "missing_pmid":
        x.append(f'<PMID Version="{spec.version}">{spec.pmid}</PMID>')
    x.append(f'<ArticleIdList><ArticleId IdType="bookaccession">{nbk}</ArticleId></ArticleIdList>')
    x.append(
        "<Book><Publisher><PublisherName>StatPearls Publishing</PublisherName>"
        "<PublisherLocation>Treasure Island (FL)</PublisherLocation></Publisher>"
    )
    x.append('<BookTitle book="statpearls">StatPearls</BookTitle>')
    x.append(f"<PubDate><Year>{e.year}</Year><Month>{_MONTH_ABBR[e.month - 1]}</Month></PubDate>")
    x.append(
        '<AuthorList Type="editors"><Author><LastName>Editor</LastName>'
        "<ForeName>Example</ForeName><Initials>E</Initials></Author></AuthorList>"
    )
    x.append("<Medium>Internet</Medium></Book>")
    x.append(f'<LocationLabel Type="chapter">{topic.name.title()}</LocationLabel>')
    x.append(f'<ArticleTitle book="statpearls" part="{nbk.lower()}">{title}</ArticleTitle>')
    x.append("<Language>eng</Language>")
    x.append(_authors_xml(r, book=True))
    x.append('<PublicationType UI="D016454">Review</PublicationType>')
    x.append(f"<Abstract>{abstract}</Abstract>")
    x.append(date_xml("ContributionDate", e))
    x.append(date_xml("DateRevised", spec.date_revised))
    x.append("</BookDocument><PubmedBookData>")
    x.append(_history_xml(spec, r))
    x.append("<PublicationStatus>ppublish</PublicationStatus><ArticleIdList>")
    x.append(f'<ArticleId IdType="pubmed">{spec.pmid}</ArticleId></ArticleIdList>')
    x.append("</PubmedBookData></PubmedBookArticle>\n")
    return "".join(x)


#: A ``DeleteCitation`` block naming ``pmids`` (the shared builder's).
render_deletion_xml = deletion_xml


# --------------------------------------------------------------------------- writing


def write_md5(path: str | Path) -> Path:
    """Write NLM's ``.md5`` sidecar (``MD5(name)= hex``) beside ``path``; return its path."""
    path = Path(path)
    side = path.with_name(path.name + ".md5")
    side.write_text(f"MD5({path.name})= {file_md5(path)}\n", encoding="ascii")
    return side


def generate_corpus(
    out_dir: str | Path,
    *,
    n_records: int,
    n_files: int = 1,
    seed: int = 0,
    start_date: dt.date = dt.date(2024, 1, 1),
    days: int = 30,
    revise_fraction: float = 0.05,
    delete_fraction: float = 0.01,
    malformed_fraction: float = 0.0,
    drift: bool = False,
    gz: bool = True,
    md5: bool = False,
    book_fraction: float = 0.01,
    retract_fraction: float = 0.005,
    first_file_number: int = 1,
    cite_window: int = 4000,
) -> CorpusManifest:
    """Write a corpus of PubMed XML files and return the state it must ingest to.

    Args:
        out_dir: Folder for the files (created if missing).
        n_records: Original records (malformed ones included).
        n_files: Files to spread them over, numbered from ``first_file_number``.
        seed: Same seed and options → byte-identical files.
        start_date: First entrez date.
        days: Length of the entrez window (days); entrez dates grow with the PMID.
        revise_fraction: Share of records revised in the same or a later file.
        delete_fraction: Share of records deleted by a DeleteCitation in a later position.
        malformed_fraction: Share of records rendered broken (quarantined by the parser).
        drift: Emerging topics and terms appear only in the last third of the window.
        gz: Write ``.xml.gz`` (else plain ``.xml``).
        md5: Also write NLM's ``.md5`` sidecar beside each file.
        book_fraction: Share of book chapters (PubmedBookArticle).
        retract_fraction: Share of retracted publications.
        first_file_number: NNNN of the first file.
        cite_window: How many records back citations may reach.

    Returns:
        The manifest of files and expected final state.

    Longer than the usual 80 lines: a third is this docstring and the options passed on to
    :class:`CorpusConfig`; the rest is one streaming loop over the file plan.
    """
    cfg = CorpusConfig(
        n_records=n_records,
        n_files=n_files,
        seed=seed,
        start_date=start_date,
        days=days,
        revise_fraction=revise_fraction,
        delete_fraction=delete_fraction,
        malformed_fraction=malformed_fraction,
        drift=drift,
        book_fraction=book_fraction,
        retract_fraction=retract_fraction,
        first_file_number=first_file_number,
        cite_window=cite_window,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    final: dict[int, ArticleSpec] = {}
    topics: dict[int, str] = {}
    entrez: dict[int, dt.date] = {}
    deleted: set[int] = set()
    malformed: set[int] = set()
    n_items = 0
    for f, items in iter_file_plan(cfg):
        path = out / (cfg.file_name(f) + (".gz" if gz else ""))
        with open(path, "wb") as raw:
            sink: io.BufferedIOBase | gzip.GzipFile
            sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
            try:
                buf: list[str] = [HEADER]
                size = 0
                dels: list[int] = []
                for item in items:
                    if isinstance(item, int):
                        dels.append(item)
                        deleted.add(item)
                        n_items += 1
                        final.pop(item, None)
                        continue
                    n_items += 1
                    if item.revision == 0:
                        topics[item.pmid] = item.topic
                        entrez[item.pmid] = item.entrez_date
                    if item.malformed:
                        malformed.add(item.pmid)
                    else:
                        final[item.pmid] = item
                    xml = render_article_xml(item)
                    buf.append(xml)
                    size += len(xml)
                    if size > 1 << 20:
                        sink.write("".join(buf).encode())
                        buf, size = [], 0
                buf.append(render_deletion_xml(dels))
                buf.append(FOOTER)
                sink.write("".join(buf).encode())
            finally:
                if sink is not raw:
                    sink.close()
        if md5:
            write_md5(path)
        files.append(path)
        logger.info("wrote %s (%d items)", path, len(items))
    live = frozenset(final)
    cited: dict[int, int] = {}
    for spec in final.values():
        for p in spec.references:
            if p in live and p != spec.pmid:
                cited[p] = cited.get(p, 0) + 1
    return CorpusManifest(
        config=cfg,
        files=tuple(files),
        live_pmids=live,
        deleted_pmids=frozenset(deleted),
        quarantined=len(malformed),
        malformed_pmids=frozenset(malformed),
        versions=MappingProxyType({p: s.version for p, s in final.items()}),
        revised_titles=MappingProxyType(
            {p: expected_title(s) for p, s in final.items() if s.revision}
        ),
        topics=MappingProxyType(topics),
        entrez_dates=MappingProxyType(entrez),
        cited_by=MappingProxyType(cited),
        books=frozenset(p for p, s in final.items() if s.is_book),
        retracted=frozenset(p for p, s in final.items() if s.retracted),
        n_items=n_items,
    )
