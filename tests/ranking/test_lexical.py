"""The lexical index: biomedical tokens, BM25 with explanations, refresh/publish/rollback
together with the vector index, crash safety and the consistency check.

Articles carry real text; their vectors are synthetic (as in test_index.py), so no model
is loaded and nothing is pending to embed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, insert, update

from litpulse.core import db
from litpulse.core.errors import ConfigError, StorageError
from litpulse.core.schema import articles, embeddings
from litpulse.core.settings import Settings
from ranking import index_files, lexical, publish, refresh
from ranking import index_status as ix_status
from ranking.embed import vector_to_bytes
from tests.ranking.corpus import make_article, pmids_of, search_in, store_and_index
from tests.ranking.test_index import _vec, delete_article

DOCS: dict[int, tuple[str, str, list[str], list[str]]] = {
    1: (
        "IL-6 signalling in sepsis",
        "Interleukin-6 rises early in septic shock.",
        ["Interleukin-6", "Sepsis"],
        ["cytokine storm"],
    ),
    2: (
        "TNF-α blockade in rheumatoid arthritis",
        "Anti-TNFα antibodies reduce joint damage.",
        ["Tumor Necrosis Factor-alpha", "Arthritis, Rheumatoid"],
        [],
    ),
    3: (
        "COVID-19 vaccines and myocarditis",
        "Myocarditis after SARS-CoV-2 mRNA vaccination.",
        ["COVID-19 Vaccines", "Myocarditis"],
        ["mRNA vaccine"],
    ),
    4: (
        "BRCA1 mutations in breast cancer",
        "Carriers of BRCA1 variants have a higher risk.",
        ["Genes, BRCA1", "Breast Neoplasms"],
        ["hereditary cancer"],
    ),
    5: (
        "Sleep and memory consolidation",
        "Sleep loss impairs memory in students.",
        ["Sleep", "Memory"],
        ["hippocampus"],
    ),
    6: (
        "β-amyloid and α-synuclein aggregates",
        "Protein aggregates in neurodegeneration.",
        ["Amyloid beta-Peptides", "alpha-Synuclein"],
        [],
    ),
}


def _hash(title: str, abstract: str) -> str:
    return f"{abs(hash((title, abstract))):x}"[:40]


def put(
    engine: Engine, pmid: int, title: str, abstract: str, mesh: list[str], keywords: list[str]
) -> None:
    """One article with its (synthetic) vector, as ingest and embed would leave it."""
    now = db.utcnow()
    th = _hash(title, abstract)
    with engine.begin() as conn:
        conn.execute(
            insert(articles).values(
                pmid=pmid,
                version=1,
                source_kind="test",
                source_location="t",
                title=title,
                abstract=abstract,
                text_hash=th,
                is_deleted=False,
                best_date=dt.date(2024, 1, 1) + dt.timedelta(days=pmid % 300),
                mesh=[{"descriptor": m, "major": False} for m in mesh],
                record={"keywords": keywords},
                ingested_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            insert(embeddings).values(
                pmid=pmid,
                model_version="base",
                text_hash=th,
                vector=vector_to_bytes(_vec(pmid)),
                created_at=now,
            )
        )


def load(engine: Engine, pmids: list[int] | None = None) -> None:
    for pmid in pmids or list(DOCS):
        put(engine, pmid, *DOCS[pmid])


def revise(
    engine: Engine, pmid: int, *, title: str | None = None, mesh: list[str] | None = None
) -> None:
    """A revised record: a new title (re-embedded) or new MeSH headings (same text)."""
    now = db.utcnow()
    values: dict[str, object] = {"updated_at": now}
    if mesh is not None:
        values["mesh"] = [{"descriptor": m, "major": False} for m in mesh]
    with engine.begin() as conn:
        if title is not None:
            th = _hash(title, DOCS[pmid][1])
            values.update(title=title, text_hash=th)
            conn.execute(
                update(embeddings)
                .where(embeddings.c.pmid == pmid)
                .values(text_hash=th, vector=vector_to_bytes(_vec(pmid, salt=1)), created_at=now)
            )
        conn.execute(update(articles).where(articles.c.pmid == pmid).values(**values))


def found(settings: Settings, query: str, k: int = 10) -> list[int]:
    lex = lexical.open_lexical(settings)
    assert lex is not None
    return [pmid for pmid, _ in lex.search(query, k)]


# ------------------------------------------------------------------------- tokenisation


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("BRCA1", ["brca", "1", "brca1"]),
        ("IL-6", ["il", "6", "il6"]),
        ("IL\u20106", ["il", "6", "il6"]),  # a Unicode hyphen, as PubMed often has
        ("IL6", ["il", "6", "il6"]),
        ("COVID-19", ["covid", "19", "covid19"]),
        ("TNF-α", ["tnf", "alpha", "tnfalpha"]),
        ("TNFα", ["tnf", "alpha", "tnfalpha"]),
        (
            "β2-microglobulin",
            ["beta", "2", "microglobulin", "beta2", "2microglobulin", "beta2microglobulin"],
        ),
        ("CRISPR/Cas9", ["crispr", "cas", "9", "cas9"]),
        ("Naïve T cells", ["naive", "t", "cells"]),
        ("Alzheimer's", ["alzheimers"]),
        ("MAVYRET™ (glecaprevir®)", ["mavyret", "glecaprevir"]),
        # the letter A after a word is a term (hepatitis A), not after a stop word, nor
        # in a text in capitals
        ("hepatitis A virus", ["hepatitis", "A", "virus"]),
        ("A study of vitamin A.", ["a", "study", "of", "vitamin", "A"]),
        ("Effect Of A New Drug", ["effect", "of", "a", "new", "drug"]),
        ("HEPATITIS A OUTBREAK IN CHILDREN", ["hepatitis", "a", "outbreak", "in", "children"]),
        # in Title Case, only after a word a letter names a kind of
        ("Towards A Cure For Sepsis", ["towards", "a", "cure", "for", "sepsis"]),
        ("Hepatitis A Virus In Children", ["hepatitis", "A", "virus", "in", "children"]),
    ],
)
def test_document_tokens_of_biomedical_terms(text: str, tokens: list[str]) -> None:
    assert lexical.bio_tokens(text) == tokens


def test_query_terms_join_compounds_stem_and_drop_stop_words() -> None:
    assert (
        lexical.query_terms("IL-6")
        == lexical.query_terms("IL6")
        == {"il6": 1.0, "il": lexical.SEGMENT_BOOST, "6": lexical.SEGMENT_BOOST}
    )
    assert lexical.query_terms("TNF-α")["tnfalpha"] == 1.0
    assert lexical.query_terms("TNFα") == lexical.query_terms("TNF-alpha")
    assert list(lexical.query_terms("the effects of sleep on the memories")) == [
        "effect",
        "sleep",
        "memori",
    ]
    assert lexical.query_terms("the of and") == {}
    assert list(lexical.query_terms("Which genes does BRCA1 regulate?")) == [
        "gene",
        "brca1",
        "brca",
        "1",
        "regul",
    ]


@pytest.mark.parametrize(
    ("query", "pmid"),
    [
        ("IL6", 1),
        ("il-6 sepsis", 1),
        ("interleukin 6", 1),
        ("alpha synuclein", 6),
        ("TNF alpha", 2),
        ("TNFα blockade", 2),
        ("tnf-alpha", 2),
        ("COVID19", 3),
        ("covid", 3),
        ("SARS-CoV-2", 3),
        ("brca1", 4),
        ("BRCA-1 breast cancer", 4),
        ("beta amyloid", 6),
        ("Aβ aggregates", 6),
        ("cytokine storm", 1),
        ("hippocampus", 5),
        ("Rheumatoid", 2),  # keywords and MeSH
    ],
)
def test_queries_match_across_spellings(sqlite_settings: Settings, query: str, pmid: int) -> None:
    load(db.connect(sqlite_settings))
    refresh.refresh_index(sqlite_settings)
    assert found(sqlite_settings, query)[0] == pmid
    assert set(found(sqlite_settings, "alpha")) == {2, 6}  # TNF-α, α-synuclein


def test_explanation_terms_add_up_to_the_bm25_score(sqlite_settings: Settings) -> None:
    load(db.connect(sqlite_settings))
    refresh.refresh_index(sqlite_settings)
    lex = lexical.open_lexical(sqlite_settings)
    assert lex is not None and lex.size == len(DOCS)
    hits = dict(lex.search("IL-6 in septic sepsis", 5))
    assert list(hits)[0] == 1
    explained = lex.explain("IL-6 in septic sepsis", list(hits))
    assert set(explained) == set(hits)
    for pmid, match in explained.items():
        assert match.score == pytest.approx(hits[pmid], rel=1e-5)
        assert sum(t.weight for t in match.terms) == pytest.approx(match.score, rel=1e-4)
        for t in match.terms:
            assert sum(t.fields.values()) == pytest.approx(t.weight)
    terms = {t.term: t for t in explained[1].terms}
    assert {"il6", "sepsi"} <= set(terms)
    assert set(terms["il6"].fields) == {"title"}  # "Interleukin-6" is no "il6"...
    assert set(terms["6"].fields) == {"title", "abstract", "mesh"}  # ...but has a "6"
    assert terms["6"].weight < terms["il6"].weight  # a segment weighs less
    assert terms["6"].fields["title"] > terms["6"].fields["abstract"]  # title x2
    assert set(terms["sepsi"].fields) == {"title", "mesh"}
    assert lex.scores("IL-6 sepsis", [1, 5, 99]) == {
        1: pytest.approx(lex.search("IL-6 sepsis", 1)[0][1])
    }
    assert lex.search("the of", 5) == [] and lex.explain("zebra", [1]) == {}


def test_bm25_is_tantivys_with_its_constants_and_follows_k1_and_b(
    sqlite_settings: Settings,
) -> None:
    load(db.connect(sqlite_settings))
    refresh.refresh_index(sqlite_settings)
    lex = lexical.open_lexical(sqlite_settings)
    assert lex is not None and lex.bm25 == lexical.Bm25(0.9, 0.4)  # the settings' defaults
    query = "IL-6 sepsis memory amyloid"
    # tantivy's own scores (k1 1.2, b 0.75; these fields are short enough for its
    # one-byte length encoding to be exact) are what ours give with its constants
    searcher = lex._index.searcher()
    engine_hits = searcher.search(lex._query(lexical.query_terms(query)), 10).hits
    pmids = searcher.fast_field_values("pmid", [a for _, a in engine_hits])
    tantivy_scores = {p: s for (s, _), p in zip(engine_hits, pmids, strict=True)}
    ours = dict(lex.with_bm25(lexical.Bm25(k1=1.2, b=0.75)).search(query, 10))
    assert ours == pytest.approx(tantivy_scores, rel=1e-5)

    # one term by hand: "memori" once in the title ("sleep memori consolid"), the abstract
    # ("sleep loss impair memori student") and the MeSH ("sleep memori") of 5, nowhere else
    n = len(DOCS)
    idf = np.log(1 + (n - 1 + 0.5) / (1 + 0.5))
    tokens = _stats(Path(lex.path))["tokens"]
    assert isinstance(tokens, dict)
    for k1, b in ((0.0, 0.0), (2.0, 0.0), (0.9, 0.4)):
        got = lex.with_bm25(lexical.Bm25(k1, b)).explain("memory", [5])[5]
        assert [t.term for t in got.terms] == ["memori"]
        want = {
            name: boost * idf * (k1 + 1) / (1 + k1 * (1 - b + b * length * n / tokens[name]))
            for name, boost, length in (("title", 2.0, 3), ("abstract", 1.0, 5), ("mesh", 1.0, 2))
        }
        assert got.terms[0].fields == pytest.approx(want)
        assert got.score == pytest.approx(sum(want.values()))
    # and they change the order: "insomnia" three times in the title of 8, once in 7's
    engine = db.connect(sqlite_settings)
    put(engine, 7, "Insomnia trial", "", [], [])
    put(engine, 8, "Insomnia insomnia insomnia trial", "", [], [])
    refresh.refresh_index(sqlite_settings)
    lex = lexical.open_lexical(sqlite_settings)
    assert lex is not None
    flat = lex.with_bm25(lexical.Bm25(k1=0.0, b=0.0))  # a term counts once: a tie, by PMID
    (first, s1), (_, s2) = flat.search("insomnia", 2)
    assert first == 7 and s1 == pytest.approx(s2)
    assert lex.with_bm25(lexical.Bm25(k1=2.0, b=0.0)).search("insomnia", 1)[0][0] == 8


def test_frequencies_beyond_two_bytes_score_exactly(sqlite_settings: Settings) -> None:
    # a frequency above 65,535 does not fit the stored records' two bytes: that document's
    # are stored wide, and it scores and explains like any other
    engine = db.connect(sqlite_settings)
    load(engine)
    put(engine, 7, "Insomnia trial", "insomnia " * 70_000, [], [])
    put(engine, 8, "Insomnia insomnia", "Sleep.", [], [])
    refresh.refresh_index(sqlite_settings)
    lex = lexical.open_lexical(sqlite_settings)
    assert lex is not None
    n, tokens = len(DOCS) + 2, _stats(Path(lex.path))["tokens"]
    assert isinstance(tokens, dict)
    k1, b = lex.bm25.k1, lex.bm25.b
    want = {}
    for name, boost, tf, length, df in (
        ("title", 2.0, 1, 2, 2),
        ("abstract", 1.0, 70_000, 70_000, 1),
    ):
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        norm = k1 * (1 - b + b * length * n / tokens[name])
        want[name] = boost * idf * (k1 + 1) * tf / (tf + norm)
    got = lex.explain("insomnia", [7, 8])
    assert got[7].terms[0].fields == pytest.approx(want)
    assert dict(lex.search("insomnia", 2)) == {
        7: pytest.approx(sum(want.values())),
        8: pytest.approx(got[8].score),
    }
    assert lex.scores("insomnia", [7]) == {7: pytest.approx(got[7].score)}


def test_an_index_of_another_format_is_not_read(sqlite_settings: Settings) -> None:
    # an index written by an older release (its stored frequencies in another layout) is
    # refused when opened, so search runs semantic until a refresh rebuilds it
    from litpulse.core.errors import ConsistencyError

    load(db.connect(sqlite_settings))
    refresh.refresh_index(sqlite_settings)
    lex = lexical.open_lexical(sqlite_settings)
    assert lex is not None and lex.search("sepsis", 1)[0][0] == 1
    folder = Path(lex.path)
    stats = _stats(folder)
    assert stats["format"] == lexical.FORMAT
    (folder / lexical.STATS_FILE).write_text(json.dumps({**stats, "format": 2}))
    with pytest.raises(ConsistencyError, match="format 2"):
        lexical.LexicalIndex.open(folder)
    del stats["format"]  # format 2 wrote none
    (folder / lexical.STATS_FILE).write_text(json.dumps(stats))
    with pytest.raises(ConsistencyError, match="format"):
        lexical.LexicalIndex.open(folder)


def test_bm25_settings_are_range_checked() -> None:
    from litpulse.core.errors import ConfigError

    assert Settings.from_env({"LITPULSE_BM25_K1": "1.2", "LITPULSE_BM25_B": "0.75"}).bm25_b == 0.75
    for name, value in (("LITPULSE_BM25_K1", "-1"), ("LITPULSE_BM25_B", "1.5")):
        with pytest.raises(ConfigError):
            Settings.from_env({name: value})


def _stats(folder: Path) -> dict[str, object]:
    return json.loads((folder / lexical.STATS_FILE).read_text())


def _counts(folder: Path) -> dict[str, object]:
    """The statistics' document count and field lengths."""
    stats = _stats(folder)
    return {"docs": stats["docs"], "tokens": stats["tokens"]}


def _aggregated(folder: Path) -> dict[str, object]:
    """What the live documents' fast fields add up to (the whole index read)."""
    import tantivy

    index = tantivy.Index.open(str(folder))
    searcher = index.searcher()
    agg = searcher.aggregate(
        tantivy.Query.all_query(),
        {name: {"sum": {"field": f"n_{name}"}} for name in lexical.TEXT_FIELDS},
    )
    tokens = {name: int(agg[name]["value"] or 0) for name in lexical.TEXT_FIELDS}
    return {"docs": searcher.num_docs, "tokens": tokens}


# --------------------------------------------------------------- refresh and publish


def _inodes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in folder.iterdir() if p.is_file()}


def test_refresh_carries_adds_revisions_and_deletions_to_the_lexical_index(
    settings: Settings, engine: Engine
) -> None:
    load(engine, [1, 2, 3, 4])
    first = refresh.refresh_index(settings)
    assert first.lexical_rebuilt and first.lexical_size == 4 and first.lexical_added == 4
    assert found(settings, "sleep memory") == []

    load(engine, [5])
    delete_article(engine, 3)
    revise(engine, 4, title="Zebrafish models of heart regeneration")
    revise(engine, 2, mesh=["Adalimumab"])  # MeSH only: the vectors do not change
    second = refresh.refresh_index(settings)
    assert second.published and not second.lexical_rebuilt
    assert second.lexical_added == 3  # 5 (new), 4 and 2 (revised)
    assert second.lexical_removed == 3  # 3 (deleted), the old 4 and 2
    assert second.lexical_size == 4 and second.size == 4
    assert found(settings, "sleep memory") == [5]
    assert found(settings, "covid") == []
    assert found(settings, "zebrafish") == [4] and found(settings, "mutations") == []
    assert found(settings, "adalimumab") == [2] and found(settings, "rheumatoid") == [2]
    # the new version started from hard links of the old one: its untouched segment
    # files are the same files on disk (cost in proportion to the change)
    old, new = (Path(r.path) / lexical.LEXICAL_DIR for r in (first, second))
    shared = set(_inodes(old).items()) & set(_inodes(new).items())
    assert any(name.endswith(".idx") for name, _ in shared)
    assert lexical.LexicalIndex.open(old).search("covid", 3)[0][0] == 3  # old one intact

    # the BM25 statistics were updated by the change alone, and are exact
    assert _counts(new) == _aggregated(new) and _stats(new)["docs"] == 4
    assert _counts(old) == _aggregated(old) and _stats(old)["docs"] == 4  # untouched

    third = refresh.refresh_index(settings)
    assert not third.published and third.id == second.id
    assert ix_status.check_consistency(settings)["ok"]

    revise(engine, 5, mesh=["Sleep Deprivation"])  # lexical-only change publishes
    fourth = refresh.refresh_index(settings)
    assert fourth.published and fourth.added == 0 and fourth.lexical_added == 1
    assert found(settings, "deprivation") == [5]


def test_rollback_restores_both_indexes(settings: Settings, engine: Engine) -> None:
    load(engine, [1, 2, 3])
    v1 = refresh.refresh_index(settings)
    load(engine, [5])
    delete_article(engine, 1)
    v2 = refresh.refresh_index(settings)
    assert found(settings, "sleep") == [5] and found(settings, "sepsis") == []

    back = publish.rollback_index(settings)
    assert back["to"] == v1.id
    pub = index_files.open_published(settings)
    assert pub is not None and pub.id == v1.id and pub.lexical is not None
    assert found(settings, "sleep") == [] and found(settings, "sepsis") == [1]
    assert sorted(pub.ids.tolist()) == [1, 2, 3]

    v3 = refresh.refresh_index(settings)  # catches up from the rolled-back version
    assert v3.lexical_added == 1 and v3.lexical_removed == 1 and v3.id != v2.id
    assert found(settings, "sleep") == [5] and found(settings, "sepsis") == []
    assert ix_status.check_consistency(settings)["ok"]


def test_a_crash_between_the_two_writes_publishes_nothing(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(engine, [1, 2])
    v1 = refresh.refresh_index(settings)
    load(engine, [5])
    written: list[bool] = []

    def crash(index: object, path: Path) -> None:  # the lexical index is already written
        written.append((Path(path).parent / lexical.LEXICAL_DIR / "meta.json").exists())
        raise OSError("disk full")

    # FAISS writes through a Python file now (index_files.write_faiss: 34b's B1), and a
    # writer's failure is one StorageError (B2)
    monkeypatch.setattr(index_files, "write_faiss", crash)
    with pytest.raises(StorageError, match="disk full"):
        refresh.refresh_index(settings)
    assert written == [True]
    pub = index_files.open_published(settings)
    assert pub is not None and pub.id == v1.id
    assert found(settings, "sleep") == []
    assert sorted(p.name for p in (settings.home / "indexes").iterdir()) == [v1.id]
    monkeypatch.undo()
    v2 = refresh.refresh_index(settings)
    assert v2.published and found(settings, "sleep") == [5]


def test_consistency_check_covers_the_lexical_index(settings: Settings, engine: Engine) -> None:
    load(engine, [1, 2, 3, 4])
    first = refresh.refresh_index(settings)
    report = ix_status.check_consistency(settings)
    assert report["ok"] and report["lexical_size"] == 4

    revise(engine, 2, mesh=["Adalimumab"])  # text the vectors do not see
    delete_article(engine, 3)
    load(engine, [5])
    report = ix_status.check_consistency(settings)
    assert not report["ok"]
    assert report["lexical_stale"] == 1
    assert report["lexical_extra_sample"] == [3] and report["lexical_missing_sample"] == [5]

    refresh.refresh_index(settings)
    assert ix_status.check_consistency(settings)["ok"]
    assert ix_status.index_status(settings)["lexical_size"] == 4

    # a version without its lexical part (made before there was one) fails the check,
    # and the next refresh builds the lexical index from scratch, the vectors updated
    pub = index_files.open_published(settings)
    assert pub is not None
    shutil.rmtree(Path(pub.path) / lexical.LEXICAL_DIR)
    os.remove(Path(pub.path) / lexical.IDS_FILE)
    lexical._CACHE.clear()
    index_files._CACHE.clear()
    report = ix_status.check_consistency(settings)
    assert any("no lexical index" in p for p in report["problems"])
    put(engine, 6, *DOCS[6])
    upgraded = refresh.refresh_index(settings)
    assert upgraded.lexical_rebuilt and not upgraded.rebuilt and upgraded.lexical_size == 5
    assert ix_status.check_consistency(settings)["ok"]
    assert first.id != upgraded.id


def test_rebuild_on_request_rebuilds_the_lexical_index(sqlite_settings: Settings) -> None:
    load(db.connect(sqlite_settings), [1, 2])
    refresh.refresh_index(sqlite_settings)
    forced = refresh.refresh_index(sqlite_settings, rebuild=True)
    assert forced.lexical_rebuilt and forced.lexical_size == 2 and forced.lexical_removed == 0
    meta = index_files.read_files(forced.path)[2]
    assert meta["lexical"]["reason"] == "asked" and meta["lexical"]["format"] == lexical.FORMAT
    assert np.array_equal(lexical.read_ids(forced.path), [1, 2])


def test_all_leukaemia_abbreviation_is_searched(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    from litpulse.core import db

    engine = db.connect(sqlite_settings)
    index, lex = store_and_index(engine, tmp_path, [
        make_article(1, "AML relapse after transplant", "Children with AML relapse."),
        make_article(2, "ALL relapse after transplant", "Children with ALL relapse."),
    ])
    assert pmids_of(search_in(sqlite_settings, engine, "ALL", index=index, lexical=lex,
                    mode="lexical")) == [2]
    assert pmids_of(search_in(sqlite_settings, engine, "ALL relapse", index=index, lexical=lex,
                    mode="lexical"))[0] == 2


# An abbreviation in capitals that spells an English stop word (NO nitric oxide, AS
# ankylosing spondylitis, AT ataxia telangiectasia, OR odds ratio) was dropped from
# documents and queries alike: tantivy's stop filter ran on the lower-cased word.


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("NO synthase", ["NO", "synthase"]),
        ("NO-induced injury", ["NO", "induced", "noinduced", "injury"]),
        ("nitric oxide (NO) and no effect", ["nitric", "oxide", "NO", "and", "no", "effect"]),
        ("AT and AS", ["AT", "and", "AS"]),
        # a text wholly in capitals is read as words, not abbreviations
        ("ROLE OF NO IN SEPSIS", ["role", "of", "no", "in", "sepsis"]),
        # an abbreviation that is no stop word is lower-cased as before
        ("TNF and IL-6", ["tnf", "and", "il", "6", "il6"]),
    ],
)
def test_capital_stop_word_abbreviations_are_kept_in_documents(
    text: str, tokens: list[str]
) -> None:
    assert lexical.bio_tokens(text) == tokens


def test_capital_stop_word_abbreviations_are_query_terms() -> None:
    assert list(lexical.query_terms("role of NO in sepsis")) == ["role", "NO", "sepsi"]
    assert list(lexical.query_terms("no role of it in sepsis")) == ["role", "sepsi"]
    assert "AS" in lexical.query_terms("TNF blockers in AS")
    assert list(lexical.query_terms("ROLE OF NO IN SEPSIS")) == ["role", "sepsi"]
    assert lexical.query_terms("NO") == {"NO": 1.0}


def test_nitric_oxide_and_ankylosing_spondylitis_are_found(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    engine = db.connect(sqlite_settings)
    index, lex = store_and_index(engine, tmp_path, [
        make_article(1, "NO synthase in septic shock", "Inducible NO synthase rises in sepsis."),
        make_article(2, "Statins in septic shock", "There was no effect of statins in sepsis."),
        make_article(3, "TNF blockers in AS", "Spinal fusion slows in AS under TNF blockers."),
        make_article(4, "TNF blockers as therapy", "TNF blockers as a first therapy."),
    ])  # fmt: skip

    def lexical_hits(query: str) -> list[int]:
        return pmids_of(search_in(sqlite_settings, engine, query, index=index, lexical=lex,
                                  mode="lexical"))  # fmt: skip

    assert lexical_hits("NO") == [1]
    assert lexical_hits("NO sepsis")[0] == 1
    assert lexical_hits("AS") == [3]
    assert lexical_hits("TNF blockers in AS")[0] == 3
    with pytest.raises(ConfigError, match="no word to search for"):
        lexical_hits("no")  # the English word: a stop word still (nothing to search for)


def as_format(version: Path, found: int) -> Path:
    """Make the lexical index of the index version folder ``version`` read as one of format
    ``found`` (its statistics and the version's meta say so), as an older release wrote it;
    its folder."""
    folder = version / lexical.LEXICAL_DIR
    (folder / lexical.STATS_FILE).write_text(json.dumps({**_stats(folder), "format": found}))
    meta_path = version / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["lexical"]["format"] = found
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    return folder


def test_a_format_3_index_is_still_searched_and_refresh_rebuilds_it(
    sqlite_settings: Settings,
) -> None:
    # format 4 only adds the capital abbreviations' terms: a format 3 index (the release
    # before) is searched as it is (such a term finds nothing there, as before) until the
    # next refresh rebuilds it; older formats are still refused (the test above)
    load(db.connect(sqlite_settings))
    first = refresh.refresh_index(sqlite_settings)
    folder = as_format(Path(first.path), 3)
    assert [p for p, _ in lexical.LexicalIndex.open(folder).search("IL6", 1)] == [1]
    again = refresh.refresh_index(sqlite_settings)
    assert again.lexical_rebuilt
    assert index_files.read_files(again.path)[2]["lexical"]["format"] == lexical.FORMAT


def test_not_looks_up_words_as_written_in_their_singular_and_plural() -> None:
    """What NOT matches (:data:`lexical.WORD_FIELD`): words as written, not stemmed (stop
    words out, compounds cut as the phrase field cuts them, capitals kept), the last word
    of each excluded text in its singular and plural forms."""
    forms = lexical.number_forms
    assert forms("knee") == ("knee", "knees")
    assert {"virus", "viruses"} <= set(forms("virus")) & set(forms("viruses"))
    assert {"study", "studies"} <= set(forms("study")) & set(forms("studies"))
    assert "churches" in forms("church") and "church" in forms("churches")
    assert "medical" not in forms("medication") and "medic" not in forms("medications")
    assert forms("NO") == ("NO",) and forms("cd4s") == ("cd4s",)  # capitals, digits
    # a singular under four letters is more often another word, either way: NOT news is
    # not NOT new, NOT aid not NOT aids (every article on AIDS: the field is lower case)
    for word, other in (("news", "new"), ("aids", "aid"), ("cases", "cas"), ("boxes", "box")):
        assert other not in forms(word) and word not in forms(other), word
    assert forms("gas") == ("gas",) and forms("aid") == ("aid",)
    # -es is a plural's only after s, x, z, ch, sh: NOT testes is not NOT test
    for word, other in (("testes", "test"), ("spines", "spin"), ("planes", "plan")):
        assert other not in forms(word), word
    assert "spine" in forms("spines") and "plane" in forms("planes")
    assert "cell" in forms("cells") and "virus" in forms("viruses")
    # a field in -ics is no plural of its adjective, either way: NOT genetics is not NOT
    # genetic (every article saying "genetic" would go), NOT logistic (regression) not NOT
    # logistics; NOT means is not NOT mean (a statistical mean), nor NOT mean NOT means
    # (by means of), NOT goods not NOT good. A missed form (NOT antibiotics keeps
    # "antibiotic") shows in the results; a word removed does not
    for word in ("genetics", "economics", "statistics", "dynamics", "physics", "ethics",
                 "antibiotics", "means", "goods", "logistics", "tropics"):  # fmt: skip
        assert word[:-1] not in forms(word), forms(word)
        assert word not in forms(word[:-1]), forms(word[:-1])
    assert lexical.word_terms("medications") == ("medications",)
    assert lexical.phrase_terms("medication") == lexical.phrase_terms("medical")  # Snowball
    assert lexical.word_terms("the non-small-cell lung cancers") == (
        "non", "small", "cell", "lung", "cancers")
    assert lexical.word_terms("NO synthases") == ("NO", "synthases")
    assert lexical.word_terms("ROLE OF NO", shouted=True) == ("role",)
    assert lexical.word_terms("living wills") == ("living", "wills")  # not the stop word
    (failure,) = lexical.exclusion_forms('sepsis NOT "heart failures"')
    assert {("heart", "failure"), ("heart", "failures")} <= set(failure)
    assert lexical.exclusion_forms('sepsis NOT "heart failures"', exact=False) == (
        (lexical.phrase_terms("heart failures"),),)


def test_an_index_built_before_the_word_field_excludes_stemmed_until_a_refresh_rebuilds_it(
    sqlite_settings: Settings,
) -> None:
    """An index of format 7 is searched on, its NOT matching stemmed words as it did (the
    word field is not there); the next refresh rebuilds it and NOT matches words."""
    engine = db.connect(sqlite_settings)
    put(engine, 1, "Medical records in hypertension", "Lifestyle advice.", [], [])
    put(engine, 2, "Medication adherence in hypertension", "Adherence to drugs.", [], [])
    first = refresh.refresh_index(sqlite_settings)
    now = lexical.LexicalIndex.open(Path(first.path) / lexical.LEXICAL_DIR)
    assert now.words and [p for p, _ in now.search("hypertension NOT medication", 5)] == [1]
    old = lexical.LexicalIndex.open(as_format(Path(first.path), 7))
    assert not old.words
    assert [p for p, _ in old.search("hypertension NOT medication", 5)] == []  # "medic"
    again = refresh.refresh_index(sqlite_settings)
    assert again.lexical_rebuilt
    rebuilt = lexical.open_lexical(sqlite_settings)
    assert rebuilt is not None and rebuilt.words
    assert [p for p, _ in rebuilt.search("hypertension NOT medication", 5)] == [1]
