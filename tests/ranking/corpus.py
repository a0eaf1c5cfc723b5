"""A tiny search corpus for the search, API and browser tests.

Rows go straight into ``articles`` and ``article_terms`` (no store helper needed).
:class:`HashIndex` is a test double of ``ranking.index_files.PublishedIndex``: an exact
inner-product search over hashed bag-of-words vectors, so texts sharing words are near.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, insert

from litpulse.core import db
from litpulse.core.db import utcnow
from litpulse.core.schema import article_terms, articles

DIM = 128
TODAY = dt.date.today()


def days_ago(n: int) -> dt.date:
    return TODAY - dt.timedelta(days=n)


#: pmid -> fields; title+abstract decide the topic, the rest exercises filters and scoring.
ARTICLES: dict[int, dict[str, Any]] = {
    101: dict(title="CRISPR Cas9 gene editing off-target effects in human cells",
              abstract="We measure off-target cleavage of CRISPR Cas9 gene editing.",
              best=days_ago(30), rcr=1.2, mesh=["Humans", "CRISPR-Cas Systems", "Gene Editing"],
              ptype=["Journal Article"], lang="eng"),
    102: dict(title="Base editing with CRISPR: a review of gene editing tools",
              abstract="A review of CRISPR base editors for gene editing.",
              best=days_ago(3000), rcr=9.0, mesh=["Gene Editing", "Animals"],
              ptype=["Journal Article", "Review"], lang="eng"),
    103: dict(title="CRISPR gene editing in zebrafish embryos",
              abstract="", best=days_ago(400), rcr=None,
              mesh=["Animals", "Zebrafish", "Gene Editing"], ptype=["Journal Article"],
              lang="eng"),
    104: dict(title="Edición génica CRISPR en células humanas",
              abstract="CRISPR gene editing estudio en humanos.", best=days_ago(200), rcr=0.8,
              mesh=["Humans", "Gene Editing"], ptype=["Journal Article"], lang="spa"),
    105: dict(title="Retracted: CRISPR gene editing cures everything",
              abstract="CRISPR gene editing claims later retracted.", best=days_ago(100),
              rcr=0.5, mesh=["Humans", "Gene Editing"], ptype=["Journal Article"],
              lang="eng", retracted=True),
    106: dict(title="Deleted CRISPR gene editing record", abstract="CRISPR gene editing.",
              best=days_ago(50), rcr=1.0, mesh=["Gene Editing"], ptype=["Journal Article"],
              lang="eng", deleted=True),
    107: dict(title="CRISPR gene editing trial protocol, no date known",
              abstract="Clinical trial of CRISPR gene editing.", best=None, rcr=None,
              mesh=["Humans", "Gene Editing"], ptype=["Clinical Trial"], lang="eng"),
    201: dict(title="Malaria vaccine efficacy in African children",
              abstract="RTS,S malaria vaccine trial in children.", best=days_ago(60), rcr=2.0,
              mesh=["Humans", "Malaria Vaccines", "Child"], ptype=["Randomized Controlled Trial"],
              lang="eng", cpy=None),
    202: dict(title="Malaria parasite resistance to artemisinin",
              abstract="Plasmodium falciparum resistance to artemisinin malaria drugs.",
              best=days_ago(900), rcr=None, cpy=6.0, mesh=["Plasmodium falciparum", "Humans"],
              ptype=["Journal Article"], lang="eng"),
    203: dict(title="Mosquito nets and malaria transmission",
              abstract="Bed nets reduce malaria transmission by mosquitoes.", best=days_ago(1500),
              rcr=None, cited_by=4, mesh=["Mosquito Control", "Humans"],
              ptype=["Journal Article"], lang="eng"),
    301: dict(title="Deep learning for chest radiograph interpretation",
              abstract="Convolutional neural networks read chest radiographs.", best=days_ago(10),
              rcr=None, mesh=["Deep Learning", "Radiography, Thoracic", "Humans"],
              ptype=["Journal Article"], lang="eng"),
    302: dict(title="Neural networks detect pneumonia on chest radiographs",
              abstract="Deep learning detects pneumonia from radiographs.", best=days_ago(700),
              rcr=3.5, mesh=["Deep Learning", "Pneumonia", "Humans"],
              ptype=["Journal Article"], lang="eng"),
    303: dict(title="Transformers for radiology report generation",
              abstract="Language models write radiology reports.", best=days_ago(90), rcr=None,
              mesh=["Natural Language Processing", "Radiology"], ptype=["Preprint"],
              lang="eng"),
    401: dict(title="Insulin pump therapy in type 1 diabetes",
              abstract="Continuous insulin infusion for type 1 diabetes.", best=days_ago(250),
              rcr=1.0, mesh=["Diabetes Mellitus, Type 1", "Insulin", "Humans"],
              ptype=["Journal Article"], lang="eng"),
    402: dict(title="Metformin and type 2 diabetes outcomes",
              abstract="Metformin lowers glucose in type 2 diabetes.", best=days_ago(5000),
              rcr=15.0, mesh=["Diabetes Mellitus, Type 2", "Metformin", "Humans"],
              ptype=["Journal Article", "Meta-Analysis"], lang="eng"),
    403: dict(title="GLP-1 agonists for weight loss in diabetes",
              abstract="Semaglutide causes weight loss in type 2 diabetes.", best=days_ago(20),
              rcr=None, mesh=["Diabetes Mellitus, Type 2", "Obesity", "Humans"],
              ptype=["Journal Article"], lang="eng"),
    404: dict(title="Diabetes diet counselling in primary care",
              abstract="Dietary counselling for diabetes patients.", best=days_ago(1100),
              rcr=0.3, mesh=["Diabetes Mellitus", "Diet", "Humans"], ptype=["Journal Article"],
              lang="fre"),
    501: dict(title="Sleep deprivation and memory consolidation",
              abstract="Sleep loss impairs memory consolidation.", best=days_ago(330), rcr=1.1,
              mesh=["Sleep Deprivation", "Memory", "Humans"], ptype=["Journal Article"],
              lang="eng"),
    502: dict(title="Circadian rhythm genes in shift workers",
              abstract="Clock genes and circadian rhythm in shift work.", best=days_ago(1600),
              rcr=2.2, mesh=["Circadian Rhythm", "Humans"], ptype=["Journal Article"],
              lang="eng"),
    503: dict(title="Gut microbiome and sleep quality",
              abstract="The gut microbiome is linked to sleep quality.", best=days_ago(45),
              rcr=None, mesh=["Gastrointestinal Microbiome", "Sleep", "Humans"],
              ptype=["Journal Article"], lang="eng"),
}


def text_of(pmid: int) -> str:
    a = ARTICLES[pmid]
    return f"{a['title']}\n{a['abstract']}"


def article_rows() -> list[dict[str, Any]]:
    now = utcnow()
    rows = []
    for pmid, a in ARTICLES.items():
        best: dt.date | None = a["best"]
        rows.append(
            {
                "pmid": pmid,
                "version": 1,
                "source_kind": "file",
                "source_location": "tests/corpus",
                "title": a["title"],
                "abstract": a["abstract"],
                "journal": f"Journal of {a['title'].split()[0]} Studies",
                "pub_year": best.year if best else None,
                "pub_month": best.month if best else None,
                "best_date": best,
                "language": a["lang"],
                "doi": f"10.1000/test.{pmid}",
                "is_retracted": bool(a.get("retracted")),
                "is_deleted": bool(a.get("deleted")),
                "deleted_at": now if a.get("deleted") else None,
                "has_abstract": bool(a["abstract"]),
                "text_hash": hashlib.sha1(text_of(pmid).encode()).hexdigest(),
                "authors": [
                    {"last_name": "Doe", "fore_name": "Jane", "initials": "J"},
                    {"collective_name": "Test Consortium"},
                ],
                "mesh": [{"descriptor": m, "major": i == 0} for i, m in enumerate(a["mesh"])],
                "publication_types": a["ptype"],
                "record": {"volume": "12", "issue": "3", "pages": "100-110"},
                "relative_citation_ratio": a.get("rcr"),
                "citations_per_year": a.get("cpy"),
                "citation_count": None,
                "cited_by_in_corpus": a.get("cited_by", 0),
                "ingested_at": now,
                "updated_at": now,
            }
        )
    return rows


def term_rows() -> list[dict[str, Any]]:
    rows = []
    for pmid, a in ARTICLES.items():
        for i, m in enumerate(a["mesh"]):
            rows.append({"pmid": pmid, "kind": "mesh", "term": m, "major": i == 0})
        for t in a["ptype"]:
            rows.append({"pmid": pmid, "kind": "ptype", "term": t, "major": False})
    return rows


def load_corpus(engine: Engine) -> None:
    """Insert every test article and its MeSH/publication-type terms."""
    with engine.begin() as conn:
        conn.execute(insert(articles), article_rows())
        conn.execute(insert(article_terms), term_rows())


def hash_embed(text: str) -> np.ndarray:
    """A (1, DIM) L2-normalised bag-of-words vector (words hashed into DIM buckets)."""
    vec = np.zeros(DIM, dtype=np.float32)
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if len(word) < 3:
            continue
        bucket = int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM
        vec[bucket] += 1.0
    norm = float(np.linalg.norm(vec)) or 1.0
    return (vec / norm).reshape(1, DIM)


@dataclass
class HashIndex:
    """Exact inner-product index over :func:`hash_embed` vectors (PublishedIndex double)."""

    vectors: Mapping[int, np.ndarray]
    id: str = "test-index-1"
    model_version: str = "base"
    calls: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, pmids: Iterable[int] | None = None) -> HashIndex:
        ids = list(ARTICLES) if pmids is None else list(pmids)
        return cls({p: hash_embed(text_of(p))[0] for p in ids})

    @property
    def size(self) -> int:
        return len(self.vectors)

    def reconstruct(self, pmid: int) -> np.ndarray:
        """The stored vector of one PMID (``KeyError`` for an unknown one)."""
        return self.vectors[int(pmid)]

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(k)
        ids = np.array(list(self.vectors), dtype=np.int64)
        mat = np.stack([self.vectors[int(p)] for p in ids])
        sims = query_vectors @ mat.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(sims, order, axis=1).astype(np.float32)
        pmids = ids[order]
        if k > len(ids):  # pad like FAISS
            pad = k - len(ids)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            pmids = np.pad(pmids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, pmids


_REAL: dict[str, Any] = {}


def real_corpus(tmp_path_factory: Any) -> Any:
    """Settings of a SQLite store holding the corpus and a real published index.

    Built once per test session (the bundled model embeds the ~20 texts, ~15 s on a
    CPU); later calls return the same settings.
    """
    if "settings" not in _REAL:
        from litpulse.core import db
        from litpulse.core.settings import Settings
        from ranking.refresh import refresh_index

        settings = Settings.from_env({}, home=tmp_path_factory.mktemp("real-corpus"))
        load_corpus(db.connect(settings))
        report = refresh_index(settings)
        assert report.published and report.size == len(ARTICLES) - 1  # the deleted one is out
        _REAL["settings"] = settings
    return _REAL["settings"]


# ------------------------------------------- records through the real store, both indexes

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def make_article(
    pmid: int,
    title: str,
    abstract: str,
    *,
    languages: tuple[str, ...] = ("eng",),
    mesh: tuple[str, ...] = ("Humans",),
) -> Any:
    """A parsed record as the ingest produces it (stored through :class:`Store`)."""
    from ingest.records import AbstractSection, MeshHeading, PartialDate, Record, SourceRef

    return Record(
        pmid=pmid,
        version=1,
        title=title,
        source=SourceRef("file", "pubmed26n0001.xml.gz", sequence=1, fetched_at=T0),
        abstract_sections=(AbstractSection(abstract),) if abstract else (),
        journal="J Test",
        pub_date=PartialDate(2024, 3, None, "2024 Mar"),
        article_date=dt.date(2024, 2, 20),
        entrez_date=dt.date(2024, 2, 21),
        date_revised=dt.date(2025, 1, 1),
        mesh=tuple(MeshHeading(m, f"D{i}") for i, m in enumerate(mesh)),
        publication_types=("Journal Article",),
        languages=languages,
        doi=f"10.1000/{pmid}",
    )


def store_and_index(engine: Engine, tmp_path: Any, records: list[Any]) -> tuple[HashIndex, Any]:
    """Store the records through the ingest, and build both indexes over them."""
    from ingest.store import Store
    from ranking.lexical import LexicalIndex, build_lexical

    Store(engine).apply(records)
    build_lexical(
        engine, tmp_path / "lexical", base=None, add=None, remove=np.zeros(0, dtype=np.int64)
    )
    index = HashIndex({r.pmid: hash_embed(f"{r.title}\n{r.abstract}")[0] for r in records})
    return index, LexicalIndex.open(tmp_path / "lexical")


def search_in(
    settings: Any, engine: Engine, query: str, *, index: Any = None, lexical: Any = None,
    mode: str = "hybrid", k: int = 10, **filters: Any,
) -> Any:
    """:func:`ranking.search.run_search` over these indexes (the hash embedder)."""
    from ranking.search import SearchFilters, run_search

    return run_search(
        settings, query, k=k, filters=SearchFilters(**filters), engine=engine,
        index=index or HashIndex.of(), embed=hash_embed, lexical=lexical, mode=mode,
    )


def pmids_of(result: Any) -> list[int]:
    return [h.pmid for h in result.hits]


#: The ``params`` of a module fixture that builds its world on both databases.
BOTH_DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def world_on(
    database: str, tmp_path_factory: Any, name: str, build: Callable[[Any, str], Any]
) -> Iterator[Any]:
    """A module fixture's world on ``database`` (``sqlite`` or ``postgresql``, a database
    of its own): ``build(home, database_url)`` stores and indexes it (``""``: SQLite in
    ``home``); the engines and model caches are let go after."""
    from ranking import embed as em
    from tests.conftest import fresh_postgres_database

    home = tmp_path_factory.mktemp(f"{name}-{database}")
    em.clear_cache()
    if database == "sqlite":
        s = build(home, "")
        yield s
        eng = db._ENGINES.pop(s.effective_database_url, None)
        if eng is not None:
            eng.dispose()
    else:
        with fresh_postgres_database(f"litpulse_{name}") as url:
            yield build(home, url)
            db.dispose_engines()
    em.clear_cache()


def indexed_world(home: Any, url: str, tiny: str, records: list[Any], **changes: Any) -> Any:
    """Settings on the tiny encoder ``tiny`` (sequence length 32, no search server) over a
    store in ``home`` (or ``url``) holding ``records`` through the real store, with a
    published index of them all: the ``build`` of :func:`world_on` for review corpora."""
    from ingest.store import Store
    from litpulse.core.settings import Settings
    from ranking.refresh import refresh_index

    s = Settings.from_env({}, home=home, database_url=url).replace(
        model=tiny, max_seq_length=32, search_server_url="", **changes
    )
    Store(db.connect(s)).apply(records)
    report = refresh_index(s)
    assert report.published and report.size == len(records)
    return s


def dated(record: Any, year: int) -> Any:
    """``record`` published, dated and entered in June of ``year``."""
    from ingest.records import PartialDate

    return dataclasses.replace(
        record, pub_date=PartialDate(year, 6, None, f"{year} Jun"),
        article_date=dt.date(year, 6, 1), entrez_date=dt.date(year, 6, 2),
    )  # fmt: skip


def titled_records(base: int, corpus: Mapping[int, tuple[str, str]]) -> list[Any]:
    """``corpus`` (offset → title, abstract) as records ``base + offset``, each dated in
    June of ``2015 + offset % 10``: the corpora of the query-language reviews."""
    return [dated(make_article(base + off, title, abstract), 2015 + off % 10)
            for off, (title, abstract) in corpus.items()]


def review_world(
    request: Any, tmp_path_factory: Any, tiny: str, name: str, records: list[Any],
    **changes: Any,
) -> Iterator[Any]:
    """A module fixture's world of ``records`` on ``request.param``'s database
    (:func:`world_on` of :func:`indexed_world` with the tiny encoder ``tiny``)."""
    yield from world_on(request.param, tmp_path_factory, name,
                        lambda home, url: indexed_world(home, url, tiny, records, **changes))


def found_offsets(settings: Any, query: str, base: int, mode: str = "lexical") -> set[int]:
    """The offsets from ``base`` of the first 50 results of ``query`` in ``mode``."""
    from ranking.search import search

    return {h.pmid - base for h in search(settings, query, k=50, mode=mode)}
