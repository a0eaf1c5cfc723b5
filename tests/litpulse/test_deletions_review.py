"""Hostile review: a deleted, retracted or reinstated article, end to end.

PubMed withdraws records (``DeleteCitation`` → a tombstone row, ``articles.is_deleted``),
retracts them (``is_retracted``) and may bring them back. What a demanding user expects:
a deleted article leaves every search mode at once (and the index files at the next
refresh), ``/similar`` (as a hit and as a source), digests, exports, counts and training
pairs; a retracted one is flagged wherever it is shown; a reinstated one comes back.

Everything goes through the real code: records through :class:`ingest.store.Store` (or
real XML files through :func:`ingest.files.ingest_files`), a real published index
(:func:`ranking.refresh.refresh_index`: FAISS and the lexical index) over hashed
bag-of-words vectors written as the ``base`` model's embeddings (no model is loaded:
the queries are embedded with the same hash, :func:`tests.ranking.corpus.hash_embed`),
the real digest, API (FastAPI ``TestClient``), CLI and pair miner.

Tests marked ``xfail(strict=True)`` are defects found by this review; each fails on the
assertion about the defect (``pytest --runxfail`` shows it).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, select

from ingest.records import Deletion, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import NotFoundError
from litpulse.core.schema import articles, embeddings
from litpulse.core.settings import Settings
from ranking.embed import vector_to_bytes
from ranking.search import SearchFilters, run_search
from tests.litpulse.app.apistore import UNLIMITED
from tests.ranking.corpus import T0, hash_embed, make_article

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402

# ----------------------------------------------------------------------------- corpus

#: pmid -> (title, abstract); 8 is the article PubMed withdraws, 9 the retracted one
#: (no title or abstract says "retract": a flag must come from the store, not the text),
#: 10 and 11 cite others inside the corpus.
TEXTS: dict[int, tuple[str, str]] = {
    1: ("Malaria vaccine trial in African children",
        "RTS,S malaria vaccine efficacy in young children."),
    2: ("Malaria parasite resistance to artemisinin",
        "Plasmodium falciparum resistance to artemisinin drugs."),
    3: ("Mosquito bed nets reduce malaria transmission",
        "Insecticide treated nets lower malaria transmission."),
    4: ("Insulin pump therapy in type 1 diabetes",
        "Continuous subcutaneous insulin infusion in type 1 diabetes."),
    5: ("Metformin outcomes in type 2 diabetes",
        "Metformin lowers glucose in type 2 diabetes patients."),
    6: ("Sleep deprivation impairs memory consolidation",
        "Sleep loss impairs hippocampal memory consolidation."),
    7: ("Circadian clock genes in shift workers",
        "Clock gene expression in night shift workers."),
    8: ("Malaria vaccine booster doses in infants",
        "A malaria vaccine booster dose in infants raises antibody titres."),
    9: ("Malaria vaccine efficacy in toddlers",
        "Malaria vaccine efficacy measured in toddlers of two villages."),
    10: ("Review of malaria vaccine programmes",
         "We review malaria vaccine trials and booster schedules."),
    11: ("Commentary on malaria prevention",
         "Nets, drugs and vaccines for malaria prevention."),
}
REFS = {10: (1, 8), 11: (1, 3)}
GONE, RETRACTED, CITER = 8, 9, 10
QUERY = "malaria vaccine booster doses in infants"


def src(n: int) -> SourceRef:
    """Update file number ``n`` (later files win)."""
    return SourceRef("file", f"pubmed26n{n:04d}.xml.gz", sequence=n, fetched_at=T0)


def record(pmid: int, *, version: int = 1, title: str | None = None, n: int = 1,
           retracted: bool = False) -> Any:
    t, a = TEXTS[pmid]
    rec = make_article(pmid, title or t, a)
    return dataclasses.replace(rec, version=version, source=src(n), is_retracted=retracted,
                               references=REFS.get(pmid, ()))


def embed_all(engine: Engine) -> None:
    """What ``embed_pending`` does, with the hash embedder: a current ``base`` vector for
    every live article."""
    with engine.begin() as conn:
        rows = conn.execute(
            select(articles.c.pmid, articles.c.title, articles.c.abstract, articles.c.text_hash)
            .where(articles.c.is_deleted.is_(False))
        ).all()
        have = dict(conn.execute(select(embeddings.c.pmid, embeddings.c.text_hash)).all())
        stale = [p for p, _, _, h in rows if p in have and have[p] != h]
        if stale:
            conn.execute(delete(embeddings).where(embeddings.c.pmid.in_(stale)))
        todo = [
            {"pmid": p, "model_version": "base", "text_hash": h, "created_at": db.utcnow(),
             "vector": vector_to_bytes(hash_embed(f"{t}\n{a}")[0])}
            for p, t, a, h in rows if p not in have or p in stale
        ]
        if todo:
            conn.execute(insert(embeddings), todo)


def refresh(settings: Settings) -> Any:
    from ranking.refresh import refresh_index

    embed_all(db.connect(settings))
    return refresh_index(settings, embed=False)


def build(settings: Settings, *, retracted: bool = True) -> Engine:
    """Store the corpus (9 retracted) and publish an index of it."""
    engine = db.connect(settings)
    Store(engine).apply([record(p, retracted=retracted and p == RETRACTED) for p in TEXTS])
    assert refresh(settings).published
    return engine


def hits(settings: Settings, query: str = QUERY, mode: str = "hybrid", **filters: Any) -> list[int]:
    res = run_search(settings, query, k=20, embed=hash_embed, mode=mode,
                     filters=SearchFilters(**filters))
    return [h.pmid for h in res.hits]


def similar(settings: Settings, pmid: int, **kw: Any) -> list[int]:
    from ranking.similar import similar_articles

    return [h.pmid for h in similar_articles(settings, pmid, k=20, **kw).hits]


def indexed_ids(settings: Settings) -> tuple[set[int], set[int]]:
    """PMIDs the published version holds: (vectors, lexical documents)."""
    from ranking.index_files import open_published
    from ranking.lexical import read_ids
    from ranking.models import published_index_row

    idx = open_published(settings)
    row = published_index_row(db.connect(settings))
    assert idx is not None and row is not None
    return set(idx.ids.tolist()), set(read_ids(row.path).tolist())


def cli(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    from litpulse.app.cli import build_parser

    args = build_parser().parse_args(list(argv))
    code = int(args.func(args, settings.replace(search_server_url="")) or 0)
    return code, capsys.readouterr().out


@pytest.fixture
def client_for() -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(settings: Settings) -> TestClient:
        c = TestClient(create_app(settings.replace(**UNLIMITED)), raise_server_exceptions=False)
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def cited_by(engine: Engine, *pmids: int) -> dict[int, int]:
    with engine.connect() as conn:
        return dict(conn.execute(
            select(articles.c.pmid, articles.c.cited_by_in_corpus)
            .where(articles.c.pmid.in_(pmids))
        ).all())


# ------------------------------------------------------------- deletion, end to end


def test_a_deletion_leaves_every_search_at_once_and_the_index_at_the_next_refresh(
    settings: Settings,
) -> None:
    engine = build(settings)
    for mode in ("hybrid", "semantic", "lexical"):
        assert GONE in hits(settings, mode=mode), mode  # the control: found while live
    assert GONE in similar(settings, 1)

    Store(engine).apply([Deletion(GONE, src(2))])
    vectors, docs = indexed_ids(settings)
    assert GONE in vectors and GONE in docs  # the window: still in the published files
    for mode in ("hybrid", "semantic", "lexical"):
        assert GONE not in hits(settings, mode=mode), mode
        assert GONE not in hits(settings, mode=mode, include_retracted=True), mode
    assert GONE not in hits(settings, "malaria", mode="lexical", since="2000-01-01")
    assert GONE not in similar(settings, 1) and GONE not in similar(settings, 10)
    with pytest.raises(NotFoundError):
        similar(settings, GONE)
    # references of the live citer still name it, and its count is the live citers'
    assert cited_by(engine, GONE, 1) == {GONE: 1, 1: 2}

    report = refresh(settings)
    assert report.published and report.removed >= 1
    vectors, docs = indexed_ids(settings)
    assert GONE not in vectors and GONE not in docs
    assert vectors == docs == set(TEXTS) - {GONE}
    from ranking.index_status import check_consistency

    assert check_consistency(settings)["ok"]
    assert all(GONE not in hits(settings, mode=m) for m in ("hybrid", "semantic", "lexical"))


def test_a_reinstated_article_comes_back_everywhere(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str], client_for: Any,
) -> None:
    s = sqlite_settings
    engine = build(s)
    store = Store(engine)
    store.apply([Deletion(GONE, src(2)), Deletion(CITER, src(2))])
    assert cited_by(engine, 1, GONE) == {1: 1, GONE: 0}  # only 11 cites 1 now
    assert refresh(s).published
    st = store.status()
    assert (st["articles"], st["deleted"], st["references"]) == (len(TEXTS) - 2, 2, 2)
    code, out = cli(s, capsys, "article", str(GONE))
    assert code == 0 and "[DELETED]" in out.splitlines()[0]
    c = client_for(s)
    assert c.get("/status").json()["articles"]["deleted"] == 2
    assert c.get(f"/similar/{GONE}").status_code == 404

    # NLM brings both back in a later file, revised
    store.apply([record(GONE, version=2, n=3, title="Malaria vaccine booster doses in infants "
                        "(corrected)"), record(CITER, version=2, n=3)])
    art = store.get_article(GONE)
    assert art["is_deleted"] is False and art["deleted_at"] is None
    assert cited_by(engine, 1, GONE) == {1: 2, GONE: 1}
    assert refresh(s).published
    vectors, docs = indexed_ids(s)
    assert GONE in vectors and GONE in docs and CITER in vectors
    for mode in ("hybrid", "semantic", "lexical"):
        assert GONE in hits(s, mode=mode), mode
    assert GONE in similar(s, 1) and 1 in similar(s, GONE)
    st = store.status()
    assert (st["articles"], st["deleted"], st["references"]) == (len(TEXTS), 0, 4)
    body = c.get(f"/articles/{GONE}").json()
    assert body["is_deleted"] is False and body["title"].endswith("(corrected)")
    code, out = cli(s, capsys, "article", str(GONE))
    assert "[DELETED]" not in out


def test_a_deletion_in_the_file_of_its_record_of_a_pmid_never_stored_and_an_older_file_after(
    sqlite_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Real XML through ``ingest_files``, one item per transaction: a record and its
    DeleteCitation in one file, a deletion of a citing article, of a PMID never stored,
    then an older file revising a deleted article."""
    from ingest.files import ingest_files
    from tests.ingest.hostile import article, deletion, document

    s = sqlite_settings

    def xml(name: str, items: list[bytes]) -> Path:
        path = tmp_path / name
        path.write_bytes(gzip.compress(document(items)))
        return path

    first = xml("pubmed26n0001.xml.gz", [
        article(1, title="Malaria vaccine trial", abstract="Malaria vaccine in children."),
        article(2, title="Insulin pump therapy", abstract="Insulin infusion."),
        article(3, title="Malaria vaccine booster review", abstract="Boosters.", refs=["1"]),
    ])
    second = xml("pubmed26n0002.xml.gz", [
        article(4, title="Malaria vaccine booster infants", abstract="Infants.", refs=["1"]),
        deletion("4", "3", "999"),
    ])
    ingest_files(s, [first], workers=0, batch_size=1)
    engine = db.connect(s)
    assert cited_by(engine, 1) == {1: 1}
    got = ingest_files(s, [second], workers=0, batch_size=1)
    assert (got.inserted, got.deleted, got.unchanged) == (1, 2, 1)  # 4 in and out, 3 out
    store = Store(engine)
    for pmid in (3, 4):
        assert store.get_article(pmid)["is_deleted"] is True
    with pytest.raises(NotFoundError, match="only a deletion of it was met"):
        store.get_article(999)  # no record ever held it: not an article of the store
    assert cited_by(engine, 1) == {1: 0}  # neither deleted citer counts
    st = store.status()
    assert st["articles"] == 2 and st["references"] == 0
    assert refresh(s).published
    vectors, docs = indexed_ids(s)
    assert vectors == docs == {1, 2}
    assert set(hits(s, "malaria vaccine booster", mode="lexical")) == {1}
    with pytest.raises(NotFoundError):
        similar(s, 999)

    # an older file (last year's numbering) revising a deleted article: stays deleted
    older = xml("pubmed25n1400.xml.gz", [
        article(3, version="2", title="Malaria vaccine booster review v2", abstract="B."),
    ])
    assert ingest_files(s, [older], workers=0).updated == 0
    assert store.get_article(3)["is_deleted"] is True
    code, out = cli(s, capsys, "article", "3")
    assert code == 0 and "[DELETED]" in out
    with pytest.raises(NotFoundError, match="only a deletion"):  # `litpulse article`: exit 1
        cli(s, capsys, "article", "999")


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "reference"])
def test_in_corpus_citations_follow_a_citer_deleted_and_reinstated(
    sqlite_settings: Settings, bulk: bool
) -> None:
    engine = db.connect(sqlite_settings)
    store = Store(engine, bulk=bulk)
    store.apply([record(p) for p in TEXTS])
    assert cited_by(engine, 1, 3, GONE) == {1: 2, 3: 1, GONE: 1}
    store.apply([Deletion(CITER, src(2)), Deletion(11, src(2))])
    assert cited_by(engine, 1, 3, GONE) == {1: 0, 3: 0, GONE: 0}
    store.apply([record(CITER, version=2, n=3)])
    assert cited_by(engine, 1, 3, GONE) == {1: 1, 3: 0, GONE: 1}
    # a deletion and the record it deletes in one batch: the record never counted
    store.apply([record(11, version=2, n=4), Deletion(11, src(4))])
    assert cited_by(engine, 1, 3) == {1: 1, 3: 0}
    assert store.recount_all() == 0  # the deltas equal a recount from scratch


def test_a_rollback_to_a_version_still_holding_a_deleted_article_never_serves_it(
    sqlite_settings: Settings,
) -> None:
    from litpulse.pipeline.digest import run_digest
    from litpulse.pipeline.saved_searches import add_search
    from ranking.publish import rollback_index

    s = sqlite_settings
    search = add_search(s, name="booster", query=QUERY, min_score=0.0, owner="cli:test")
    engine = build(s)
    first = indexed_ids(s)
    Store(engine).apply([Deletion(GONE, src(2))])
    assert refresh(s).published
    back = rollback_index(s)
    assert indexed_ids(s) == first and GONE in first[0]  # the old version holds it
    for mode in ("hybrid", "semantic", "lexical"):
        assert GONE not in hits(s, mode=mode), mode
    assert GONE not in similar(s, 1)
    with pytest.raises(NotFoundError):
        similar(s, GONE)
    report = run_digest(s, embed=hash_embed)
    assert report.index_version == back["to"] and not report.failures
    from litpulse.pipeline.digest import matches_of

    matched = {m.pmid for m in matches_of(engine, search.id)}
    assert 1 in matched and GONE not in matched
    assert refresh(s).published
    assert GONE not in indexed_ids(s)[0]


def test_a_match_whose_article_is_deleted_later_is_neither_listed_nor_sent(
    sqlite_settings: Settings,
) -> None:
    from litpulse.pipeline.digest import feed_for, matches_of, run_digest
    from litpulse.pipeline.saved_searches import add_search, get_search

    s = sqlite_settings
    search = add_search(s, name="booster", query=QUERY, min_score=0.0, owner="cli:test")
    engine = build(s)
    run_digest(s, embed=hash_embed)
    assert GONE in {m.pmid for m in matches_of(engine, search.id)}
    Store(engine).apply([Deletion(GONE, src(2))])
    assert GONE not in {m.pmid for m in matches_of(engine, search.id, pending="email")}
    assert b"/pubmed.ncbi.nlm.nih.gov/8/" not in feed_for(s, search.id, self_url="http://x/f")
    before = get_search(s, search.id).matches
    Store(engine).apply([record(GONE, version=2, n=3, title="Malaria vaccine booster doses "
                                "in infants, revised")])
    assert get_search(s, search.id).matches == before + 1  # back with its article


# ------------------------------------------------------------------ retraction flags


def test_a_retracted_article_is_left_out_by_default_and_flagged_where_shown(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str], client_for: Any,
) -> None:
    s = sqlite_settings
    build(s)
    q = "malaria vaccine efficacy in toddlers"
    for mode in ("hybrid", "semantic", "lexical"):
        assert RETRACTED not in hits(s, q, mode=mode), mode
        assert RETRACTED in hits(s, q, mode=mode, include_retracted=True), mode
    assert RETRACTED not in similar(s, 1) and RETRACTED in similar(s, 1, include_retracted=True)
    c = client_for(s)
    params = {"q": q, "mode": "lexical", "include_retracted": "true"}
    body = c.get("/search", params=params).json()
    assert {h["pmid"]: h["retracted"] for h in body["results"]}[RETRACTED] is True
    assert all(h["retracted"] is (h["pmid"] == RETRACTED) for h in body["results"])
    sim = c.get("/similar/1", params={"include_retracted": "true", "k": 20}).json()
    assert {h["pmid"]: h["retracted"] for h in sim["results"]}[RETRACTED] is True
    ris = c.get("/export", params={**params, "format": "ris", "k": 1}).text
    bib = c.get("/export", params={**params, "format": "bibtex", "k": 1}).text
    csv_ = c.get("/export", params={**params, "format": "csv", "k": 1}).text
    assert "PMID:9" in ris and "N1  - Retracted article" in ris
    assert "@article{pmid9" in bib and "note = {Retracted article}" in bib
    # by name: the CSV's last column is its type since session 33a (retracted the one before)
    row = next(csv.DictReader(io.StringIO(csv_)))
    assert row["pmid"] == "9" and row["retracted"] == "true"
    assert c.get(f"/articles/{RETRACTED}").json()["is_retracted"] is True
    code, out = cli(s, capsys, "article", str(RETRACTED))
    assert "[RETRACTED]" in out.splitlines()[0]
    code, out = cli(s, capsys, "similar", "1", "--include-retracted")
    assert any(line.split()[1:2] == ["9"] and "[retracted]" in line for line in out.splitlines()
               if line[:1].isdigit())


def test_training_pairs_never_use_a_deleted_or_retracted_article(sqlite_settings: Settings) -> None:
    from ranking.lexical import open_lexical
    from retrain.feedback import record_feedback
    from retrain.pairs import mine_pairs

    s = sqlite_settings
    engine = build(s)
    for pmid, relevant in ((1, True), (GONE, True), (RETRACTED, True), (4, False)):
        record_feedback(s, query="malaria vaccine in children", pmid=pmid, relevant=relevant,
                        user="ana", engine=engine)
    Store(engine).apply([Deletion(GONE, src(2)), Deletion(CITER, src(2))])
    assert refresh(s).published
    lexical = open_lexical(s)
    assert lexical is not None
    pairs = mine_pairs(s, engine=engine, lexical=lexical.search, fresh_size=0, older_size=0,
                       distractors=0, holdout_buckets=10**9, record=False)
    assert pairs.counts["citation"] >= 1 and pairs.counts["feedback"] >= 1  # the controls
    banned = {GONE, RETRACTED, CITER}
    texts = [t for p in (GONE, RETRACTED, CITER) for t in TEXTS[p]]
    for p in pairs.pairs:
        assert p.pmid not in banned and p.positive_pmid not in banned, p
        for text in (p.anchor, p.positive, p.negative or ""):
            assert not any(t in text for t in texts), p
    held = pairs.heldout
    assert not banned & {i.pmid for i in (*held.fresh, *held.older, *held.distractors,
                                           *held.queries)}


# -------------------------------------------------------------------------- defects


def test_cli_search_table_marks_a_retracted_hit(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    s = sqlite_settings
    build(s)
    code, out = cli(s, capsys, "search", "malaria vaccine efficacy in toddlers", "--mode",
                    "lexical", "--include-retracted")
    assert code == 0
    rows = [line for line in out.splitlines() if line[:1].isdigit()]
    row = next(line for line in rows if line.split()[1] == str(RETRACTED))
    assert "retracted" in row.lower()


def test_digest_feed_and_email_flag_a_retracted_match(sqlite_settings: Settings) -> None:
    from litpulse.pipeline.digest import feed_for, matches_of, run_digest
    from litpulse.pipeline.digest_channels import email_message
    from litpulse.pipeline.saved_searches import add_search, get_search

    s = sqlite_settings
    search = add_search(s, name="toddlers", query="malaria vaccine efficacy in toddlers",
                        min_score=0.0, owner="cli:test",
                        filters=SearchFilters(include_retracted=True))
    engine = build(s)
    run_digest(s, embed=hash_embed)
    matches = matches_of(engine, search.id)
    assert RETRACTED in {m.pmid for m in matches}
    feed = feed_for(s, search.id, self_url="http://x/f").decode()
    entry = next(e for e in feed.split("<entry>") if f"/pubmed.ncbi.nlm.nih.gov/{RETRACTED}/" in e)
    text = email_message(s, get_search(s, search.id), matches, to=["a@example.org"]).get_content()
    block = next(b for b in text.split("\n\n") if f"/pubmed.ncbi.nlm.nih.gov/{RETRACTED}/" in b)
    assert "retract" in entry.lower()
    assert "retract" in block.lower()


def test_a_match_retracted_after_it_was_recorded_is_withheld_or_flagged(
    sqlite_settings: Settings,
) -> None:
    from litpulse.pipeline.digest import feed_for, matches_of, run_digest
    from litpulse.pipeline.digest_channels import email_message
    from litpulse.pipeline.saved_searches import add_search, get_search

    s = sqlite_settings
    search = add_search(s, name="booster", query=QUERY, min_score=0.0, owner="cli:test")
    engine = build(s)
    run_digest(s, embed=hash_embed)
    assert GONE in {m.pmid for m in matches_of(engine, search.id)}
    # the record comes back retracted (Retracted Publication) in a later file
    Store(engine).apply([record(GONE, version=2, n=2, retracted=True)])
    assert Store(engine).get_article(GONE)["is_retracted"] is True
    assert GONE not in hits(s)  # the search itself no longer shows it
    feed = feed_for(s, search.id, self_url="http://x/f").decode()
    entries = [e for e in feed.split("<entry>") if f"/pubmed.ncbi.nlm.nih.gov/{GONE}/" in e]
    pending = matches_of(engine, search.id, pending="email")
    text = email_message(s, get_search(s, search.id), pending, to=["a@example.org"]).get_content()
    blocks = [b for b in text.split("\n\n") if f"/pubmed.ncbi.nlm.nih.gov/{GONE}/" in b]
    hooks = [json.dumps(m.to_dict()) for m in pending if m.pmid == GONE]  # the webhook body
    # withheld (absent) or flagged: either is right; listed unflagged is not
    assert all("retract" in e.lower() for e in entries), entries
    assert all("retract" in b.lower() for b in blocks), blocks
    assert all("retract" in h.lower() for h in hooks), hooks


def test_similar_flags_a_retracted_source_article(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str], client_for: Any,
) -> None:
    s = sqlite_settings
    build(s)
    body = client_for(s).get(f"/similar/{RETRACTED}", params={"include_retracted": "true"})
    assert body.status_code == 200 and body.json()["results"]
    code, out = cli(s, capsys, "similar", str(RETRACTED), "--include-retracted")
    header = out.splitlines()[0]
    assert header.startswith(f"similar to PMID {RETRACTED}")
    assert body.json().get("retracted") is True
    assert "retracted" in header.lower()


def test_status_counts_only_articles_that_were_deleted(
    sqlite_settings: Settings, client_for: Any,
) -> None:
    s = sqlite_settings
    engine = build(s)
    store = Store(engine)
    assert store.apply([Deletion(GONE, src(2))]).deleted == 1
    counts = store.apply([Deletion(999_999, src(2))])
    assert (counts.deleted, counts.unchanged) == (0, 1)  # not an article of the corpus
    assert client_for(s).get("/status").json()["articles"]["deleted"] == 1
    assert store.status()["deleted"] == 1


def test_api_article_of_a_pmid_never_stored_is_not_found(
    sqlite_settings: Settings, client_for: Any,
) -> None:
    s = sqlite_settings
    engine = build(s)
    Store(engine).apply([Deletion(999_999, src(2))])
    c = client_for(s)
    assert c.get("/articles/999998").status_code == 404  # the control: never seen at all
    r = c.get("/articles/999999")
    assert r.status_code in (404, 410), (r.status_code, r.json().get("version"))


def test_api_article_of_a_withdrawn_article_is_gone(
    sqlite_settings: Settings, client_for: Any,
) -> None:
    s = sqlite_settings
    engine = build(s)
    Store(engine).apply([Deletion(GONE, src(2))])
    r = client_for(s).get(f"/articles/{GONE}")
    assert r.status_code in (404, 410), (r.status_code, r.json().get("title"))
    assert TEXTS[GONE][0] not in r.text
