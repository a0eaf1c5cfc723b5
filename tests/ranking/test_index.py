"""The FAISS index manager: refresh adds/removes, rebuilds, atomic publish, rollback, checks.

Vectors are synthetic (no model is loaded): articles and their embeddings are written
straight into the store, with matching text hashes, so nothing is pending to embed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, insert, select, update

from litpulse.app.cli import index as cli_index
from litpulse.core import db
from litpulse.core.errors import ConsistencyError, NotFoundError
from litpulse.core.schema import articles, embeddings, index_versions, model_versions
from litpulse.core.settings import Settings
from ranking import faiss_ops, index_files, lexical, publish, refresh
from ranking import index_status as ix_status
from ranking.embed import vector_to_bytes
from ranking.models import published_index_row
from ranking.search import NoIndexError, run_search

D = 16


def _vec(pmid: int, model: str = "base", salt: int = 0) -> np.ndarray:
    rng = np.random.default_rng(pmid * 7919 + sum(map(ord, model)) + salt * 104729)
    v = rng.standard_normal(D).astype(np.float32)
    return v / np.linalg.norm(v)


def add_articles(engine: Engine, pmids: list[int], *, models: tuple[str, ...] = ("base",),
                 deleted: bool = False) -> None:
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(insert(articles), [
            {"pmid": p, "version": 1, "source_kind": "test", "source_location": "t",
             "title": f"title {p}", "abstract": f"abstract {p}", "text_hash": f"h{p}",
             "is_deleted": deleted, "best_date": dt.date(2024, 1, 1) + dt.timedelta(days=p % 300),
             "ingested_at": now, "updated_at": now}
            for p in pmids
        ])
        for model in models:
            conn.execute(insert(embeddings), [
                {"pmid": p, "model_version": model, "text_hash": f"h{p}",
                 "vector": vector_to_bytes(_vec(p, model)), "created_at": now}
                for p in pmids
            ])


def delete_article(engine: Engine, pmid: int) -> None:
    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == pmid)
                     .values(is_deleted=True, deleted_at=db.utcnow()))


def change_article(
    engine: Engine, pmid: int, salt: int = 1, title: str | None = None
) -> np.ndarray:
    """A revised text (a new ``title`` if given), already re-embedded (as embed_pending
    would have done)."""
    vec = _vec(pmid, salt=salt)
    revised: dict[str, object] = {"text_hash": f"h{pmid}v{salt}", "updated_at": db.utcnow()}
    if title is not None:
        revised["title"] = title
    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == pmid).values(**revised))
        conn.execute(update(embeddings).where(embeddings.c.pmid == pmid)
                     .values(text_hash=f"h{pmid}v{salt}", vector=vector_to_bytes(vec),
                             created_at=db.utcnow()))
    return vec


def run_cli(argv: list[str], settings: Settings) -> int:
    """Run `litpulse index ...` through its own parser (other commands not needed)."""
    parser = argparse.ArgumentParser(prog="litpulse")
    cli_index.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args, settings))


def top1(idx: index_files.PublishedIndex, vec: np.ndarray) -> tuple[float, int]:
    scores, pmids = idx.search(vec[None, :], 1)
    return float(scores[0, 0]), int(pmids[0, 0])


def test_flat_refresh_adds_changes_and_removes(settings: Settings, engine: Engine) -> None:
    add_articles(engine, list(range(1, 21)))
    first = refresh.refresh_index(settings)
    assert first.rebuilt and first.kind == "flat" and first.size == 20 and first.published
    assert first.reason == "no index for this model version"

    idx = index_files.open_published(settings)
    assert idx is not None and idx.id == first.id and idx.model_version == "base"
    assert top1(idx, _vec(7)) == (pytest.approx(1.0, abs=1e-5), 7)

    add_articles(engine, [101, 102])
    delete_article(engine, 3)
    new7 = change_article(engine, 7)
    second = refresh.refresh_index(settings)
    assert not second.rebuilt and second.published
    assert second.added == 3  # 101, 102 and the re-embedded 7
    assert second.removed == 2  # 3 (deleted) and the old vector of 7
    assert second.size == 21

    idx2 = index_files.open_published(settings)
    assert idx2 is not None and idx2.id == second.id
    assert 3 not in set(idx2.ids.tolist()) and {101, 102} <= set(idx2.ids.tolist())
    assert top1(idx2, new7) == (pytest.approx(1.0, abs=1e-5), 7)
    assert top1(idx2, _vec(3))[1] != 3
    # stored vectors of many PMIDs at once; unknown ones (3: deleted, 999: never) left out
    found, vectors = idx2.vectors_of([101, 3, 7, 999, 102])
    assert found.tolist() == [101, 7, 102] and vectors.dtype == np.float32
    for pmid, vec in zip(found.tolist(), vectors, strict=True):
        np.testing.assert_allclose(vec, idx2.reconstruct(pmid), atol=1e-6)
    assert idx2.vectors_of([])[0].size == 0 and idx2.vectors_of([3])[0].size == 0
    scores, pmids = idx2.search(np.stack([_vec(101), _vec(102)]), 50)
    assert pmids.shape == (2, 50) and (pmids[:, 21:] == -1).all()
    assert np.isneginf(scores[:, 21:]).all()

    third = refresh.refresh_index(settings)
    assert not third.published and third.id == second.id and third.added == third.removed == 0
    assert ix_status.check_consistency(settings)["ok"]


def test_search_rejects_bad_queries(sqlite_settings: Settings) -> None:
    add_articles(db.connect(sqlite_settings), [1, 2])
    refresh.refresh_index(sqlite_settings)
    idx = index_files.open_published(sqlite_settings)
    assert idx is not None
    with pytest.raises(TypeError):
        idx.search(np.zeros((1, D + 1), dtype=np.float32), 3)
    with pytest.raises(TypeError):
        idx.search(np.zeros((1, D), dtype=np.int64), 3)


@pytest.mark.parametrize("how", ["file moved", "folder moved", "unreadable"])
def test_a_lexical_index_that_failed_to_open_is_opened_again(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, how: str,
) -> None:
    """A version's lexical index that cannot be opened for a moment (its files being
    replaced, a read failing) leaves search semantic only for that moment: the failure is
    not kept for the version, the next open tries again; an index opened is kept."""
    add_articles(engine, [1, 2, 3])
    published = refresh.refresh_index(settings)
    index_files._CACHE.clear()
    lexical._CACHE.clear()
    folder = Path(published.path) / lexical.LEXICAL_DIR
    meta = folder / "meta.json"
    moved = {"file moved": meta, "folder moved": folder}.get(how)
    real = lexical.LexicalIndex.open
    fail = [True]

    def unreadable(path: str | Path, bm25: lexical.Bm25 | None = None) -> lexical.LexicalIndex:
        if fail[0]:
            raise PermissionError(13, "Permission denied", str(meta))
        return real(path, bm25)

    if moved is not None:  # as a copy replacing it does, for a moment
        moved.rename(moved.with_suffix(".away"))
    else:
        monkeypatch.setattr(lexical.LexicalIndex, "open", unreadable)
    with caplog.at_level("WARNING", logger="ranking.index_files"):
        first = index_files.open_published(settings)
        assert first is not None and first.id == published.id and first.lexical is None
        assert index_files.open_published(settings) is not None  # still failing
        with pytest.raises(NoIndexError, match="cannot be opened now.*try again shortly"):
            run_search(settings, "title 2", mode="lexical")  # not "run index refresh"
    # said once, not at every search while it fails the same way
    assert len([r for r in caplog.records if "cannot be opened" in r.getMessage()]) == 1
    if moved is not None:
        moved.with_suffix(".away").rename(moved)
    fail[0] = False

    again = index_files.open_published(settings)
    assert again is not None and again.id == published.id and again.lexical is not None
    assert [p for p, _ in again.lexical.search("title 2", 1)] == [2]
    assert top1(again, _vec(3)) == (pytest.approx(1.0, abs=1e-5), 3)  # the vectors too
    assert index_files.open_published(settings) is again  # a success is kept
    assert [h.pmid for h in run_search(settings, "title 2", k=1, mode="lexical").hits] == [2]


def test_rebuild_on_model_change_and_on_request(settings: Settings, engine: Engine) -> None:
    add_articles(engine, list(range(1, 11)), models=("base", "m2"))
    base = refresh.refresh_index(settings)
    assert base.model_version == "base"
    with engine.begin() as conn:
        conn.execute(insert(model_versions).values(
            id="m2", base_model=settings.model_path, adapter_path=None, status="active",
            created_at=db.utcnow(), promoted_at=db.utcnow()))
    report = refresh.refresh_index(settings)
    assert report.rebuilt and report.model_version == "m2" and report.size == 10
    assert report.reason is not None and "model changed" in report.reason
    idx = index_files.open_published(settings)
    assert idx is not None and idx.model_version == "m2"
    assert top1(idx, _vec(4, "m2"))[1] == 4

    forced = refresh.refresh_index(settings, rebuild=True)
    assert forced.rebuilt and forced.reason == "asked" and forced.published


def test_ivf_build_incremental_and_drift(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.replace(exact_index_max=300, ivf_nprobe=64)
    engine = db.connect(settings)
    add_articles(engine, list(range(1, 301)))
    flat = refresh.refresh_index(settings)
    assert flat.kind == "flat"

    add_articles(engine, list(range(301, 501)))  # crosses the threshold
    ivf = refresh.refresh_index(settings)
    assert ivf.kind == "ivf" and ivf.rebuilt and "threshold" in (ivf.reason or "")
    idx = index_files.open_published(settings)
    assert idx is not None and idx.details["trained_size"] == 500
    assert idx.details["nlist"] == faiss_ops.nlist_for(500)
    hits = sum(top1(idx, _vec(p))[1] == p for p in range(1, 501, 7))
    assert hits == len(range(1, 501, 7))  # nprobe covers every list: exact

    add_articles(engine, list(range(501, 601)))
    delete_article(engine, 10)
    inc = refresh.refresh_index(settings)
    assert inc.kind == "ivf" and not inc.rebuilt and inc.added == 100 and inc.removed == 1
    idx = index_files.open_published(settings)
    assert idx is not None and idx.size == 599
    assert top1(idx, _vec(555))[1] == 555 and 10 not in set(idx.ids.tolist())
    assert ix_status.check_consistency(settings)["ok"]

    add_articles(engine, list(range(601, 1101)))  # 1099 > 2 x 500 trained
    drift = refresh.refresh_index(settings)
    assert drift.rebuilt and "trained on 500" in (drift.reason or "")


def test_ivf_lists_of_8_bit_codes(sqlite_settings: Settings) -> None:
    """LITPULSE_IVF_CODEC=sq8: a quarter of the bytes per vector; a nightly refresh still
    adds only what changed (a stored code is compared with the new vector's code, not
    with the float32 vector it approximates), and a change of the codec rebuilds."""
    settings = sqlite_settings.replace(exact_index_max=300, ivf_nprobe=64, ivf_codec="sq8")
    engine = db.connect(settings)
    add_articles(engine, list(range(1, 501)))
    built = refresh.refresh_index(settings)
    assert built.kind == "ivf" and built.rebuilt
    idx = index_files.open_published(settings)
    assert idx is not None and idx.details["codec"] == "sq8"
    assert faiss_ops.index_codec(idx.index) == "sq8"
    hits = sum(top1(idx, _vec(p))[1] == p for p in range(1, 501, 7))
    assert hits == len(range(1, 501, 7))

    add_articles(engine, list(range(501, 601)))  # the 500 before are in the slack window
    change_article(engine, 20, salt=1)
    inc = refresh.refresh_index(settings)
    assert not inc.rebuilt and inc.added == 101 and inc.removed == 1
    idx = index_files.open_published(settings)
    assert idx is not None and top1(idx, _vec(20, salt=1))[1] == 20
    assert ix_status.check_consistency(settings)["ok"]

    check = ix_status.check_consistency(settings.replace(ivf_codec="flat"))
    assert not check["ok"] and any("codec sq8" in p for p in check["problems"])
    flat = refresh.refresh_index(settings.replace(ivf_codec="flat"))
    assert flat.rebuilt and "codec" in (flat.reason or "")
    assert ix_status.check_consistency(settings.replace(ivf_codec="flat"))["ok"]
    idx = index_files.open_published(settings)
    assert idx is not None and faiss_ops.index_codec(idx.index) == "flat"


def test_sq8_codes_take_a_quarter_of_the_bytes_and_keep_the_neighbours() -> None:
    import faiss

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 4000)] + 0.5 * rng.standard_normal((4000, 64))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(4000, dtype=np.int64) * 7
    flat = faiss_ops.build_index(vectors, ids, kind="ivf", nprobe=1000)
    sq8 = faiss_ops.build_index(vectors, ids, kind="ivf", nprobe=1000, codec="sq8")
    assert faiss_ops.index_codec(flat) == "flat" and faiss_ops.index_codec(sq8) == "sq8"
    size = {name: len(faiss.serialize_index(ix)) for name, ix in (("flat", flat), ("sq8", sq8))}
    assert size["sq8"] < 0.35 * size["flat"]
    queries = vectors[:200] + 0.1 * rng.standard_normal((200, 64)).astype(np.float32)
    _, truth = flat.search(queries, 10)  # every list probed: exact
    _, found = sq8.search(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.9
    assert faiss_ops.same_vectors(sq8, ids[:50], vectors[:50]).all()
    moved = vectors[:50] + 0.05 * rng.standard_normal((50, 64)).astype(np.float32)
    assert not faiss_ops.same_vectors(sq8, ids[:50], moved).any()
    with pytest.raises(ValueError, match="codec"):
        faiss_ops.build_index(vectors, ids, kind="ivf", codec="pq")


def test_live_pmids_are_listed_and_counted_without_reading_the_table(
    sqlite_settings: Settings,
) -> None:
    """Every refresh lists the live PMIDs (``live_ids``) and ``litpulse status`` /
    ``index status`` count them (now from the kept counts). In a SQLite store (one
    file, ~5 KB a row, 200 GB at full size) a walk over the table reads all of it; the
    is_deleted index (PMID = rowid) answered both from a few hundred MB. Measured on
    20,000 rows: 28 ms against 1 ms warm for the count."""
    from sqlalchemy import event

    from ranking.index_store import live_ids

    engine = db.connect(sqlite_settings)
    add_articles(engine, list(range(1, 201)))
    delete_article(engine, 7)
    seen: list[str] = []

    def grab(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "is_deleted" in statement and "FROM articles" in statement and "JOIN" not in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", grab)
    try:
        assert len(live_ids(engine)) == 199
        assert ix_status.index_status(sqlite_settings)["live_articles"] == 199
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    # the listing reads the is_deleted index; the count is the database's kept one
    # (store_counts: 38b), reading neither (a walk of the table is what is refused)
    assert seen, seen
    with engine.connect() as conn:
        for sql in seen:
            args = (0,) * sql.count("?")
            plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, args)]
            table_walk = [p for p in plan if p.startswith("SCAN articles") and "INDEX" not in p]
            assert not table_walk, (sql, plan)


def test_atomic_publish_keeps_old_versions_and_rolls_back(settings: Settings,
                                                          engine: Engine) -> None:
    add_articles(engine, list(range(1, 31)))
    v1 = refresh.refresh_index(settings)
    old = index_files.open_published(settings)
    assert old is not None

    delete_article(engine, 5)
    add_articles(engine, [500])
    v2 = refresh.refresh_index(settings)
    new = index_files.open_published(settings)
    assert new is not None and new.id == v2.id != old.id
    # a search holding the old object still runs on the old version
    assert top1(old, _vec(5))[1] == 5 and top1(old, _vec(500))[1] != 500
    assert top1(new, _vec(500))[1] == 500 and top1(new, _vec(5))[1] != 5
    assert (Path(v1.path) / "index.faiss").exists() and (Path(v2.path) / "meta.json").exists()
    assert not list((settings.home / "indexes").glob(".tmp-*"))

    back = publish.rollback_index(settings)
    assert back == {"from": v2.id, "to": v1.id, "model_version": "base"}
    rolled = index_files.open_published(settings)
    assert rolled is not None and rolled.id == v1.id and top1(rolled, _vec(5))[1] == 5
    status = ix_status.index_status(settings)
    assert status["published"] == v1.id
    assert {v["id"]: v["status"] for v in status["versions"]}[v2.id] == "rolled_back"
    with pytest.raises(NotFoundError):
        publish.rollback_index(settings)

    # the next refresh starts from the re-published version and catches up
    v3 = refresh.refresh_index(settings)
    assert not v3.rebuilt and v3.added == 1 and v3.removed == 1
    assert ix_status.check_consistency(settings)["ok"]


def test_only_the_newest_versions_stay_on_disk(sqlite_settings: Settings) -> None:
    engine = db.connect(sqlite_settings)
    reports = []
    for n in range(5):
        add_articles(engine, [1000 + n])
        reports.append(refresh.refresh_index(sqlite_settings))
    kept = sorted(p.name for p in (sqlite_settings.home / "indexes").iterdir())
    assert kept == sorted(r.id for r in reports[-publish.KEEP_VERSIONS:])
    with engine.connect() as conn:
        rows = conn.execute(index_versions.select()).all()
    assert sorted(r.id for r in rows) == kept
    assert [r.status for r in rows].count("published") == 1


def test_consistency_check_detects_mismatches(settings: Settings, engine: Engine,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert ix_status.check_consistency(settings)["problems"] == ["no index is published"]
    add_articles(engine, list(range(1, 11)))
    refresh.refresh_index(settings)
    assert ix_status.check_consistency(settings)["ok"]

    delete_article(engine, 2)
    add_articles(engine, [77])
    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == 4).values(text_hash="new"))
    report = ix_status.check_consistency(settings)
    assert not report["ok"]
    assert report["extra"] == 1 and report["extra_sample"] == [2]
    assert report["missing"] == 1 and report["missing_sample"] == [77]
    assert report["stale"] == 1

    assert run_cli(["index", "check", "--json"], settings) == 1
    assert '"ok": false' in capsys.readouterr().out


def test_lease_prevents_concurrent_publish(settings: Settings, engine: Engine) -> None:
    add_articles(engine, [1, 2, 3])
    lease = db.acquire_lease(engine, publish.LEASE_NAME, holder="someone-else")
    assert lease is not None
    with pytest.raises(publish.IndexBusyError) as err:
        refresh.refresh_index(settings)
    assert err.value.retryable
    assert index_files.open_published(settings) is None
    lease.release()
    assert refresh.refresh_index(settings).size == 3


def test_cli_refresh_status_check_rollback(sqlite_settings: Settings,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    s = sqlite_settings
    add_articles(db.connect(s), [1, 2, 3])
    assert run_cli(["index", "refresh", "--json"], s) == 0
    assert '"size": 3' in capsys.readouterr().out
    add_articles(db.connect(s), [4])
    assert run_cli(["index", "refresh"], s) == 0
    assert run_cli(["index", "status"], s) == 0
    out = capsys.readouterr().out
    assert "flat" in out and "base" in out and "retired" in out
    assert run_cli(["index", "check"], s) == 0
    assert run_cli(["index", "rollback"], s) == 0
    assert "rolled back" in capsys.readouterr().out
    assert run_cli(["index", "check"], s) == 1


def test_update_index_helpers() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1000, 1200, dtype=np.int64)
    for kind, codec in (("flat", "flat"), ("ivf", "flat"), ("ivf", "sq8")):
        index = faiss_ops.build_index(vectors, ids, kind=kind, nprobe=1000, codec=codec)
        removed = faiss_ops.update_index(index, add_vectors=vectors[:5], add_ids=ids[:5] + 10_000,
                                  remove_ids=ids[:5])
        assert removed == 5 and index.ntotal == 200
        assert sorted(faiss_ops.index_ids(index).tolist()) == sorted(
            ids[5:].tolist() + (ids[:5] + 10_000).tolist())
    with pytest.raises(TypeError):
        faiss_ops.build_index(vectors, ids[:3], kind="flat")
    assert os.path.basename(faiss_ops.__file__) == "faiss_ops.py"


@pytest.mark.gpu
def test_gpu_search_matches_cpu(sqlite_settings: Settings) -> None:
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("FAISS sees no GPU")
    settings = sqlite_settings.replace(exact_index_max=300)
    engine = db.connect(settings)
    add_articles(engine, list(range(1, 1001)))
    refresh.refresh_index(settings)
    gpu_idx = index_files.open_published(settings)
    assert gpu_idx is not None and gpu_idx.on_gpu
    assert top1(gpu_idx, _vec(42))[1] == 42


# ------------------------------------------------------- hostile review of the search side
# crashes, races and operators against the index; vectors are synthetic, as above

ROOT = Path(__file__).resolve().parents[2]


def _activate(engine: Engine, model: str, settings: Settings) -> None:
    """Make ``model`` the active version (as a promotion's status switch does)."""
    now = db.utcnow()
    with engine.begin() as conn:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.status == "active")
            .values(status="retired")
        )
        conn.execute(
            insert(model_versions).values(
                id=model,
                base_model=settings.model_path,
                adapter_path=None,
                status="active",
                created_at=now,
                promoted_at=now,
            )
        )


def _embed(engine: Engine, pmids: list[int], model: str) -> None:
    """Vectors of ``model`` for ``pmids`` (as embed_pending or one shard would write)."""
    now = db.utcnow()
    with engine.begin() as conn:
        hashes = dict(
            conn.execute(
                select(articles.c.pmid, articles.c.text_hash).where(articles.c.pmid.in_(pmids))
            ).all()
        )
        conn.execute(
            insert(embeddings),
            [
                {
                    "pmid": p,
                    "model_version": model,
                    "text_hash": hashes[p],
                    "vector": vector_to_bytes(_vec(p, model)),
                    "created_at": now,
                }
                for p in pmids
            ],
        )


def _state(settings: Settings) -> tuple[str, list[int], list[int]]:
    """(model, vector PMIDs, lexical PMIDs) of the published version."""
    pub = index_files.open_published(settings)
    assert pub is not None
    return (
        pub.model_version,
        sorted(pub.ids.tolist()),
        sorted(lexical.read_ids(pub.path).tolist()),
    )


# ------------------------------------------------------------ finding: partial index


def test_refresh_after_a_deferred_promotion_never_publishes_a_partial_index(
    settings: Settings, engine: Engine
) -> None:
    """The index-refresh DAG checks `reindex_pending` once, in its first task; a retrain
    DAG promoting (with `defer_reindex`) while `embed_pending` runs leaves its
    `refresh_index(embed=False)` task facing an active model with only the vectors the
    litpulse_reindex shards have written so far. `_full` builds from those alone."""
    live = list(range(1, 21))
    add_articles(engine, live)
    v1 = refresh.refresh_index(settings, embed=False)
    assert v1.size == 20

    _activate(engine, "m2", settings)  # promote(..., reindex=defer_reindex)
    _embed(engine, live[:5], "m2")  # litpulse_reindex: one shard of four done
    kept = refresh.refresh_index(settings, embed=False)  # the index-refresh DAG's task

    model, vec_ids, lex_ids = _state(settings)
    # searches must never lose live articles: keep the old version, or refuse
    assert vec_ids == live, f"published {model} index holds {len(vec_ids)} of 20 articles"
    assert not kept.published and kept.id == v1.id and "15 live articles" in str(kept.reason)
    _embed(engine, live[5:], "m2")  # the other shards done
    done = refresh.refresh_index(settings, embed=False)
    assert done.published and done.model_version == "m2"
    assert _state(settings)[:2] == ("m2", live)


# --------------------------------------------------------- finding: base model change


def test_a_changed_base_model_is_noticed(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """Index and embeddings of model version 'base' were made with the bundled model. An
    operator sets LITPULSE_MODEL to another sentence-transformers model of the same size:
    queries were then embedded with it (encode_query resolves 'base' to settings.model_path)
    while the stored vectors stayed 'current' (keyed by PMID, 'base' and text hash), the
    refresh published nothing new and `index check` said all was well (review finding).
    Now the check says so, a refresh refuses, and a rebuild embeds every article again."""
    add_articles(engine, list(range(1, 11)))
    refresh.refresh_index(settings, embed=False)
    assert ix_status.check_consistency(settings)["ok"]

    other_model = tmp_path / "another-384d-model"  # the same shape, another model
    shutil.copytree(settings.model_path, other_model, symlinks=True,
                    copy_function=os.symlink)  # fmt: skip
    config = json.loads((other_model / "config.json").read_text())
    (other_model / "config.json").unlink()
    (other_model / "config.json").write_text(json.dumps({**config, "fine_tuned_on": "x"}))
    other = settings.replace(model=str(other_model))

    report = ix_status.check_consistency(other)
    assert not report["ok"] and any("base model changed" in p for p in report["problems"])
    with pytest.raises(ConsistencyError, match="--rebuild"):
        refresh.refresh_index(other)
    rebuilt = refresh.refresh_index(other, rebuild=True)
    assert rebuilt.published and rebuilt.embedded == 10  # every article embedded again
    assert ix_status.check_consistency(other)["ok"]


# ------------------------------------------------------------- finding: orphans


def test_a_version_folder_without_a_row_is_pruned(sqlite_settings: Settings) -> None:
    """SIGKILL between `os.replace(tmp, final)` and the transaction that inserts the row
    (or in `_prune` between the row's delete and the rmtree) leaves a full index version
    (vectors and lexical: tens of GB for PubMed) under indexes/ that no row names;
    `_prune` only removes rows' folders and `.tmp-*`. Every such crash leaks one."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, [1, 2, 3])
    first = refresh.refresh_index(s, embed=False)
    # a whole version as the publisher leaves it (marked for its store), and one of
    # another store using the same data directory (kept: that store's rows name it)
    orphans = {}
    for name, store in (("ix-20260101-000000-dead00", db.store_id(engine)),
                        ("ix-20260101-000000-0the12", "another-store")):  # fmt: skip
        orphan = orphans[name] = index_files.indexes_dir(s) / name
        shutil.copytree(first.path, orphan)
        meta = json.loads((orphan / "meta.json").read_text(encoding="utf-8"))
        (orphan / "meta.json").write_text(json.dumps({**meta, "id": name}))
        db.mark_folder(orphan, store)
        old = os.path.getmtime(orphan) - 2 * publish.TMP_MAX_AGE_S
        os.utime(orphan, (old, old))
    for n in range(publish.KEEP_VERSIONS + 1):
        add_articles(engine, [100 + n])
        refresh.refresh_index(s, embed=False)
    kept = {p.name for p in index_files.indexes_dir(s).iterdir()}
    with engine.connect() as conn:
        rows = set(conn.execute(select(index_versions.c.id)).scalars())
    assert first.id not in kept
    assert kept == rows | {"ix-20260101-000000-0the12"}, f"without a row: {sorted(kept - rows)}"


def test_a_build_folder_of_another_store_is_not_pruned(sqlite_settings: Settings) -> None:
    """Two stores sharing one data directory: one's prune removes its own crashed builds
    (``.tmp-*`` older than an hour), never the other's build in progress (a lexical index
    of the whole baseline writes for hours inside its folder's subfolder, so the folder's
    own time does not move)."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, [1, 2, 3])
    refresh.refresh_index(s, embed=False)
    folders = {}
    for name, store in ((".tmp-mine-crashed", db.store_id(engine)),
                        (".tmp-theirs-building", "another-store")):  # fmt: skip
        folder = folders[store] = index_files.indexes_dir(s) / name
        folder.mkdir()
        db.mark_folder(folder, store)
        old = os.path.getmtime(folder) - 2 * publish.TMP_MAX_AGE_S
        os.utime(folder, (old, old))
    add_articles(engine, [4])
    refresh.refresh_index(s, embed=False)  # publishes, then prunes
    assert not folders[db.store_id(engine)].exists()
    assert folders["another-store"].exists()


# ------------------------------------------------- SIGKILL of a refresh, then a rerun

_KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from litpulse.core.settings import Settings
    from ranking import index_files, lexical, publish, refresh

    point, home = sys.argv[1], Path(sys.argv[2])
    settings = Settings.from_env({}, home=home)

    def die(*_a, **_k):
        os.kill(os.getpid(), signal.SIGKILL)

    def after(obj, name):
        real = getattr(obj, name)
        def wrapped(*a, **k):
            out = real(*a, **k)
            die()
            return out
        setattr(obj, name, wrapped)

    if point == "lexical":  # inside the lexical write, after tantivy committed
        after(lexical._Stats, "write")
    elif point == "faiss":  # the FAISS file half written
        import faiss
        faiss.write_index = die
    elif point == "renamed":  # folder in place, no row yet
        from litpulse.core import checksums
        real_fsync = checksums.fsync_dir
        def fsync_then_die(path):
            real_fsync(path)
            if Path(path).name == "indexes":  # the root, right after os.replace(tmp, final)
                die()
        checksums.fsync_dir = fsync_then_die
    elif point == "committed":  # row flipped, before pruning
        publish._prune = die
    refresh.refresh_index(settings, embed=False)
""")


@pytest.mark.parametrize("point", ["lexical", "faiss", "renamed", "committed"])
def test_a_killed_refresh_then_a_rerun_ends_as_an_uninterrupted_one(
    sqlite_settings: Settings, point: str
) -> None:
    """SIGKILL of a refresh at each write phase: searches in between see the old version
    or the new one whole (both halves, one PMID list), and the next refresh ends with
    what an uninterrupted refresh publishes (both halves equal to the live articles, the
    check clean). Folders a killed run leaves are counted, not judged, here (see the
    orphan finding above)."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)))
    v1 = refresh.refresh_index(s, embed=False)
    add_articles(engine, [50, 51])
    delete_article(engine, 3)
    change_article(engine, 4, title="zebrafish heart regeneration")
    db.dispose_engines()
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, point, str(s.home)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    index_files._CACHE.clear()
    lexical._CACHE.clear()
    engine = db.connect(s)

    pub = index_files.open_published(s)
    assert pub is not None
    between = _state(s)
    assert between[1] == between[2]  # whichever version, its halves agree
    if point == "committed":
        assert pub.id != v1.id and 3 not in between[1]
    else:
        assert pub.id == v1.id and 3 in between[1]

    lease = db.acquire_lease(engine, publish.LEASE_NAME)  # taken over on this host
    assert lease is not None
    lease.release()
    refresh.refresh_index(s, embed=False)
    live = sorted(int(p) for p in np.asarray([r for r in range(1, 11) if r != 3] + [50, 51]))
    model, vec_ids, lex_ids = _state(s)
    assert vec_ids == live and lex_ids == live
    assert ix_status.check_consistency(s)["ok"]
    after = index_files.open_published(s)
    assert after is not None and top1(after, _vec(4, salt=1))[1] == 4
    assert after.lexical is not None and [p for p, _ in after.lexical.search("zebrafish", 3)] == [4]


# ------------------------------------------------- incremental cases found sound


def test_delete_and_undelete_between_two_refreshes_reach_both_halves(
    settings: Settings, engine: Engine
) -> None:
    """Deleted then lifted by a newer record (MeSH-only change, same text: no new
    vector) inside one refresh window; and deleted in one window, undeleted in the next."""
    add_articles(engine, [1, 2, 3, 4])
    refresh.refresh_index(settings, embed=False)
    later = db.utcnow() + dt.timedelta(seconds=1)
    with engine.begin() as conn:  # 2: deleted, then back with a new MeSH heading
        conn.execute(
            update(articles)
            .where(articles.c.pmid == 2)
            .values(is_deleted=False, mesh=[{"descriptor": "Adalimumab"}], updated_at=later)
        )
    delete_article(engine, 3)
    refresh.refresh_index(settings, embed=False)
    pub = index_files.open_published(settings)
    assert pub is not None and pub.lexical is not None
    assert [p for p, _ in pub.lexical.search("adalimumab", 3)] == [2]
    assert _state(settings)[1:] == ([1, 2, 4], [1, 2, 4])

    with engine.begin() as conn:  # 3 comes back (same text: its kept vector is current)
        conn.execute(
            update(articles)
            .where(articles.c.pmid == 3)
            .values(is_deleted=False, updated_at=db.utcnow())
        )
    refresh.refresh_index(settings, embed=False)
    assert _state(settings)[1:] == ([1, 2, 3, 4], [1, 2, 3, 4])
    assert ix_status.check_consistency(settings)["ok"]


def test_a_revision_committed_during_a_refresh_is_taken_by_the_next(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingest that commits a revision (text and vector) after the refresh planned both
    halves: this refresh publishes the old content, the next one the new."""
    add_articles(engine, [1, 2, 3])
    refresh.refresh_index(settings, embed=False)
    add_articles(engine, [9])
    real = lexical.LexicalPlan.write

    def racing(self: lexical.LexicalPlan, folder: Path) -> dict[str, object]:
        change_article(engine, 2, title="zebrafish regeneration")
        return real(self, folder)

    monkeypatch.setattr(lexical.LexicalPlan, "write", racing)
    refresh.refresh_index(settings, embed=False)
    monkeypatch.undo()
    assert not ix_status.check_consistency(settings)["ok"]
    refresh.refresh_index(settings, embed=False)
    pub = index_files.open_published(settings)
    assert pub is not None and pub.lexical is not None
    assert top1(pub, _vec(2, salt=1))[1] == 2
    assert [p for p, _ in pub.lexical.search("zebrafish", 3)] == [2]
    assert ix_status.check_consistency(settings)["ok"]


def test_a_model_switched_while_the_files_are_written_gets_no_index(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion or rollback switches the model under no index lease (the retrain DAG's
    deferred one). A refresh that built for the model switched out meanwhile publishes
    nothing, and leaves no folder behind: the new model's re-index publishes."""
    add_articles(engine, [1, 2, 3], models=("base", "m2"))
    before = refresh.refresh_index(settings, embed=False)
    add_articles(engine, [9], models=("base", "m2"))
    real = lexical.LexicalPlan.write

    def racing(self: lexical.LexicalPlan, folder: Path) -> dict[str, object]:
        _activate(engine, "m2", settings)  # promote(..., reindex=defer_reindex)
        return real(self, folder)

    monkeypatch.setattr(lexical.LexicalPlan, "write", racing)
    with pytest.raises(ConsistencyError, match="model m2 became active"):
        refresh.refresh_index(settings, embed=False)
    monkeypatch.undo()
    row = published_index_row(engine)
    assert row.id == before.id and row.model_version == "base"
    folders = {p.name for p in index_files.indexes_dir(settings).iterdir()}
    assert folders == {Path(before.path).name}, folders
    done = refresh.refresh_index(settings, embed=False)  # the re-index for m2
    assert done.published and done.model_version == "m2" and done.size == 4


# ------------------------------------------- finding: the check shares the watermark


def test_a_revision_written_by_a_lagging_host_reaches_the_next_refresh(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows used to be stamped with the writing host's clock: a revision written by a host
    whose clock lags more than WATERMARK_SLACK_S behind the one that wrote the newest row
    before the last refresh (two Airflow workers, a `litpulse ingest` from another machine
    against the shared PostgreSQL) was no candidate of the next refresh, and `index check`,
    reading the same watermark, agreed (review finding). Rows are now stamped with the
    database's clock, whatever host writes them."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite lives on one host: there is one clock")
    from ingest.store import Store
    from litpulse.core import timeutil
    from tests.ingest.test_store import make_record, src

    store = Store(engine)
    store.apply([make_record(p, source=src(0)) for p in (1, 2, 3)])
    _embed(engine, [1, 2, 3], "base")
    refresh.refresh_index(settings, embed=False)
    lag = dt.timedelta(seconds=lexical.WATERMARK_SLACK_S + 600)
    lagging = timeutil.utcnow() - lag
    for module in ("ingest.store", "litpulse.core.db", "litpulse.core.timeutil"):
        monkeypatch.setattr(f"{module}.utcnow", lambda: lagging, raising=False)
    store.apply([make_record(2, version=2, source=src(1, minutes=5), title="Adalimumab trial")])
    monkeypatch.undo()
    with engine.connect() as conn:
        stamped = conn.execute(select(articles.c.updated_at).where(articles.c.pmid == 2)).scalar()
    assert stamped > timeutil.utcnow() - dt.timedelta(seconds=60)  # the server's clock
    refresh.refresh_index(settings, embed=False)
    pub = index_files.open_published(settings)
    assert pub is not None and pub.lexical is not None
    assert [p for p, _ in pub.lexical.search("adalimumab", 3)] == [2]
    assert ix_status.check_consistency(settings)["lexical_stale"] == 0



# ------------------------------------------------ review (rev-index): the findings


def _fine_tuned_copy(src: str, dst: Path, *, seed: int = 1, config_note: str | None = None) -> Path:
    """A copy of the model folder ``src`` whose weights differ (the word embeddings moved,
    as a fine-tuning run moves them) while every file keeps its size and every config
    stays as it was — what saving a fine-tuned model of the same architecture gives.
    ``config_note``: also mark ``config.json`` (a model the fingerprint can tell apart)."""
    import struct

    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        header_len = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(header_len))
        lo, hi = header["embeddings.word_embeddings.weight"]["data_offsets"]
        start = 8 + header_len + lo
        fh.seek(start)
        table = np.frombuffer(fh.read(hi - lo), dtype="<f4").copy()
        rng = np.random.default_rng(seed)
        table += rng.standard_normal(table.shape).astype(np.float32) * float(table.std())
        fh.seek(start)
        fh.write(table.astype("<f4").tobytes())
    assert weights.stat().st_size == size
    if config_note is not None:
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**config, "fine_tuned_on": config_note}))
    return dst


def test_a_fine_tuned_base_model_of_the_same_shape_is_noticed(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """The index of model version 'base' was built with the bundled model. The operator
    points LITPULSE_MODEL at a fine-tuned MiniLM (same config, same tokenizer, same tensor
    shapes: the same file sizes). Queries are now embedded with it, the stored vectors are
    of the old one: the check must say so and a refresh must refuse (as it does when a
    config file differs, test_a_changed_base_model_is_noticed)."""
    from ranking.embed import encode_query

    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)))
    refresh.refresh_index(s, embed=False)
    assert ix_status.check_consistency(s)["ok"]

    tuned = s.replace(model=str(_fine_tuned_copy(s.model_path, tmp_path / "tuned-minilm")))
    # precondition: it is another model (a query gets another vector)
    q_old = encode_query(s, "base", "statins and dementia risk")
    q_new = encode_query(tuned, "base", "statins and dementia risk")
    assert float(q_old[0] @ q_new[0]) < 0.95

    report = ix_status.check_consistency(tuned)
    assert not report["ok"] and any("base model changed" in p for p in report["problems"])
    with pytest.raises(ConsistencyError, match="--rebuild"):
        refresh.refresh_index(tuned)


def test_vectors_embedded_under_another_base_model_never_reach_the_index(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """The nightly index-refresh DAG runs `embed_pending` as its own task, then
    `refresh_index(embed=False)`. With LITPULSE_MODEL pointing at another model, the
    refresh refuses (the base model changed) — but the embed task already wrote that
    model's vectors under model version 'base' with current text hashes. The operator sets
    LITPULSE_MODEL back; the next refresh takes those vectors as current and publishes an
    index mixing two models, and `index check` says all is well."""
    from ranking.embed import (
        active_model,
        article_text,
        embed_pending,
        embed_texts,
        load_encoder,
    )

    s = sqlite_settings
    engine = db.connect(s)
    texts = {1: "Statin therapy and the risk of dementia in older adults.",
             2: "CRISPR-Cas9 editing raises fetal haemoglobin in sickle cell disease.",
             3: "Gut microbiome composition predicts response to checkpoint inhibitors."}

    def add(pmid: int) -> None:
        now = db.utcnow()
        with engine.begin() as conn:
            conn.execute(insert(articles).values(
                pmid=pmid, version=1, source_kind="test", source_location="t",
                title=texts[pmid], abstract="", text_hash=f"t{pmid}", is_deleted=False,
                best_date=dt.date(2024, 5, 1), ingested_at=now, updated_at=now))

    add(1)
    add(2)
    refresh.refresh_index(s)  # embeds with the bundled model and publishes
    other = s.replace(model=str(_fine_tuned_copy(s.model_path, tmp_path / "other",
                                                 config_note="x")))
    add(3)
    try:  # the DAG's embed_pending task, under the other model
        embed_pending(other)
    except ConsistencyError:
        pass  # refusing is a fix too
    with pytest.raises(ConsistencyError):  # its refresh_index task refuses (sound)
        refresh.refresh_index(other, embed=False)

    refresh.refresh_index(s)  # LITPULSE_MODEL set back; the next night's refresh
    pub = index_files.open_published(s)
    assert pub is not None and 3 in pub.ids.tolist()
    encoder = load_encoder(active_model(s, engine), s)
    want = embed_texts(encoder, [article_text(texts[3], "")], s)[0]
    got = pub.reconstruct(3)
    assert float(got @ want) > 0.99, "PMID 3's vector in the index is of the other model"


def _spanish_ivf(s: Settings) -> tuple[Engine, index_files.PublishedIndex, list[int]]:
    """5,000 articles in an IVF index (128 lists), five of them in Spanish."""
    engine = db.connect(s)
    add_articles(engine, list(range(1, 5001)))
    spanish = [101, 1202, 2303, 3404, 4505]
    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid.in_(spanish)).values(language="spa"))
    assert refresh.refresh_index(s, embed=False).kind == "ivf"
    pub = index_files.open_published(s)
    assert pub is not None
    return engine, pub, spanish


def test_a_selective_filter_on_an_ivf_index_finds_every_passing_article(
    sqlite_settings: Settings,
) -> None:
    """5,000 articles (IVF above exact_index_max; default nprobe 16 of 128 lists), five of
    them in Spanish. Fewer than k pass the filter, so the candidate list widens to the
    whole index and every Spanish article must come back."""
    from ranking.search import SearchFilters, run_search

    s = sqlite_settings.replace(exact_index_max=1000)
    engine, pub, spanish = _spanish_ivf(s)
    query = _vec(7)
    res = run_search(s, "anything", k=10, filters=SearchFilters(language="spa"),
                     engine=engine, index=pub, embed=lambda _t: query[None, :],
                     mode="semantic")
    assert sorted(h.pmid for h in res.hits) == spanish


def test_similar_articles_of_a_deleted_article_is_not_found(
    settings: Settings, engine: Engine
) -> None:
    from ranking.similar import similar_articles

    add_articles(engine, list(range(1, 21)))
    refresh.refresh_index(settings, embed=False)
    assert similar_articles(settings, 5, k=3, engine=engine).hits  # live: served
    delete_article(engine, 5)  # DeleteCitation applied by tonight's ingest
    with pytest.raises(NotFoundError):
        similar_articles(settings, 5, k=3, engine=engine)


@pytest.mark.parametrize("mode", ["semantic", "hybrid"])
def test_pages_of_a_selective_filter_on_an_ivf_index_list_every_passing_article(
    sqlite_settings: Settings, mode: str
) -> None:
    """Pages, and hybrid mode, too: every Spanish article on the first page, the rest
    honestly empty (``has_more`` False), a deleted one never."""
    from ranking.search import SearchFilters, run_search

    s = sqlite_settings.replace(exact_index_max=1000)
    engine, pub, spanish = _spanish_ivf(s)
    delete_article(engine, 2303)  # tombstoned: its vector stays until the next refresh
    live = [p for p in spanish if p != 2303]
    query = _vec(7)

    def page(offset: int) -> tuple[list[int], bool]:
        res = run_search(s, "anything", k=3, filters=SearchFilters(language="spa"),
                         engine=engine, index=pub, embed=lambda _t: query[None, :],
                         mode=mode, offset=offset)
        return [h.pmid for h in res.hits], res.has_more

    first, more = page(0)
    second, last = page(3)
    assert more and not last
    assert sorted(first + second) == live


def test_similar_articles_on_an_ivf_index_whose_probed_lists_run_dry(
    sqlite_settings: Settings,
) -> None:
    """One list probed (~40 vectors) and 60 neighbours asked: the exact 60 nearest."""
    from ranking.similar import similar_articles

    s = sqlite_settings.replace(exact_index_max=1000, ivf_nprobe=1)
    engine = db.connect(s)
    add_articles(engine, list(range(1, 5001)))
    refresh.refresh_index(s, embed=False)
    pub = index_files.open_published(s)
    assert pub is not None and pub.kind == "ivf"
    src = pub.reconstruct(42)
    want = sorted((p for p in range(1, 5001) if p != 42),
                  key=lambda p: (-float(pub.reconstruct(p) @ src), p))[:60]
    res = similar_articles(s, 42, k=60, engine=engine, index=pub)
    assert [h.pmid for h in res.hits] == want


def test_a_gpu_index_searches_more_neighbours_than_its_limit_on_the_cpu() -> None:
    """FAISS-GPU answers at most GPU_MAX_K neighbours: longer lists come from the CPU copy."""
    vectors = np.stack([_vec(p) for p in range(1, 3001)])
    cpu = faiss_ops.build_index(vectors, np.arange(1, 3001), kind="flat")
    asked: list[int] = []

    class Gpu:
        def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            asked.append(k)
            if k > 2048:  # FAISS-GPU's GPU_MAX_SELECTION_K
                raise RuntimeError("k > GPU_MAX_SELECTION_K")
            return cpu.search(q, k)  # type: ignore[no-any-return]

    pub = index_files.PublishedIndex(
        id="v", model_version="base", kind="ivf", size=3000, path="", ids=np.arange(1, 3001),
        index=cpu, _gpu=Gpu())
    assert pub.search(_vec(7)[None, :], 10)[1].shape == (1, 10)
    scores, pmids = pub.search(_vec(7)[None, :], 2500)
    assert asked == [10] and int((pmids >= 0).sum()) == 2500


def test_a_kept_version_of_another_base_model_is_not_updated_in_place(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """'base' is active; its index is built with the bundled model. A model version m2 is
    promoted and re-indexed; then LITPULSE_MODEL changes (the m2 index is rebuilt with the
    new base model); then m2 is rolled back. The rollback's re-index finds the kept 'base'
    version and updates it in place: its vectors are of the old base model, queries are
    embedded with the new one, and the new version's meta says the new base model. It
    must refuse (as a refresh does when the published version is the stale one) or embed
    every article again."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)), models=("base", "m2"))
    v_base = refresh.refresh_index(s, embed=False)
    other_model = tmp_path / "another-model"
    shutil.copytree(s.model_path, other_model, symlinks=True, copy_function=os.symlink)
    config = json.loads((other_model / "config.json").read_text())
    (other_model / "config.json").unlink()
    (other_model / "config.json").write_text(json.dumps({**config, "fine_tuned_on": "x"}))
    other = s.replace(model=str(other_model))

    _activate(engine, "m2", other)  # promoted, with the new base model
    v_m2 = refresh.refresh_index(other, embed=False)
    assert v_m2.published and v_m2.model_version == "m2"
    with engine.begin() as conn:  # `litpulse models rollback`: m2 rejected, 'base' again
        conn.execute(update(model_versions).where(model_versions.c.id == "m2")
                     .values(status="rejected"))
    assert refresh.index_store.base_row(engine, "base").id == v_base.id  # kept, old model

    try:
        report = refresh.refresh_index(other)  # the rollback's reindex step (reindex_now)
    except ConsistencyError as exc:  # refusing, as for a stale published version
        assert "base model changed" in str(exc)
    else:  # or embedding every article again with the model queries are embedded with
        assert report.rebuilt and report.embedded == 10, report
