"""The FAISS index manager: refresh adds/removes, rebuilds, atomic publish, rollback, checks.

Vectors are synthetic (no model is loaded): articles and their embeddings are written
straight into the store, with matching text hashes, so nothing is pending to embed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, insert, update

from litpulse.app.cli import index as cli_index
from litpulse.core import db
from litpulse.core.errors import NotFoundError
from litpulse.core.schema import articles, embeddings, index_versions, model_versions
from litpulse.core.settings import Settings
from ranking import faiss_ops, index_files, publish, refresh
from ranking import index_status as ix_status
from ranking.embed import vector_to_bytes

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


def change_article(engine: Engine, pmid: int, salt: int = 1) -> np.ndarray:
    """A revised text, already re-embedded (as embed_pending would have done)."""
    vec = _vec(pmid, salt=salt)
    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == pmid)
                     .values(text_hash=f"h{pmid}v{salt}"))
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
    for kind in ("flat", "ivf"):
        index = faiss_ops.build_index(vectors, ids, kind=kind, nprobe=1000)
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
