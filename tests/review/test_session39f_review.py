"""Session 39f: a hostile review of this session's first fixes (39b, 39c, 39d).

X1 (39d X2): two hosts on one store (an Airflow worker and an API host, one PostgreSQL)
hold the same base model at different paths (their own ``LITPULSE_MODEL``). 39d's
relocation rewrote the shared ``model_versions.base_model`` to the path of the host whose
refresh saw the recorded folder gone: from then on the other host's searches were refused
("base model folder ... is missing") although its own copy of the same model was there,
until its own next refresh flipped the row back (and broke the first host's). A host now
finds its copy itself when the recorded folder is not on it, by the same fingerprint check.

X2 (39b's review, PostgreSQL): an embedding chunk beside a rebuild's delete of the same
model version's vectors (``index refresh --rebuild`` while a shard embeds): the chunk's
upsert of stale vectors and the delete lock the same rows in opposite orders, and
PostgreSQL rolls one back (deadlock detected; reproduced with concurrent writers in 2 of
~40 chunks). Every other writer runs such a transaction again (``db.retry_conflicts``);
``embed_pending``'s chunk did not: the run failed with the vectors it had encoded.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from litpulse.core import db
from litpulse.core.settings import Settings
from ranking.embed import active_model, embed_pending, load_encoder, model_spec
from ranking.refresh import refresh_index
from retrain.lora import TrainResult
from tests.review import test_session39d_review as review39d
from tests.review.test_session39d_review import _corpus, _served_fine_tuned, _stored, _tiny

# 39d's module fixtures: the tiny encoder, and one real adapter of it trained once
tiny_model = review39d.tiny_model
trained = review39d.trained


def test_x1_two_hosts_with_their_own_model_path_both_serve_the_fine_tuned_version(
    settings: Settings, tiny_model: str, trained: TrainResult, tmp_path: Path
) -> None:
    path_a = tmp_path / "host-a"
    s_a, vid = _served_fine_tuned(settings, tiny_model, trained, path_a)
    path_b = tmp_path / "host-b"
    shutil.copytree(path_a, path_b)  # host B's copy of the same model
    s_b = _tiny(settings, str(path_b / "encoder"))
    aside_a, aside_b = tmp_path / "aside-a", tmp_path / "aside-b"

    shutil.move(str(path_a), str(aside_a))  # host B: host A's path is not there
    assert refresh_index(s_b).embedded == 0  # B's refresh: B serves with its copy
    load_encoder(active_model(s_b), s_b, cache=False)
    shutil.move(str(aside_a), str(path_a))
    shutil.move(str(path_b), str(aside_b))  # host A: host B's path is not there

    spec = active_model(s_a)  # a search on host A (no refresh in between)
    assert spec.id == vid and spec.base_model == s_a.model_path
    assert model_spec(s_a, vid).base_model == s_a.model_path
    load_encoder(spec, s_a, cache=False)
    assert _stored(s_a, vid) == 30


def test_x2_an_embedding_chunk_rolled_back_by_a_deadlock_runs_again(
    settings: Settings, tiny_model: str, caplog: pytest.LogCaptureFixture
) -> None:
    if not settings.database_url:
        pytest.skip("PostgreSQL's row locks (SQLite has one writer at a time)")
    s = _tiny(settings, tiny_model)
    _corpus(s)
    engine = db.connect(s)
    assert embed_pending(s) == 30
    # the chunk is the one rolled back: it looks for a deadlock 1 s into its wait (a check
    # PostgreSQL makes once), the delete only after 4 s (the database's setting is put back
    # at the end: the test database is the session's, other tests' too)
    with engine.connect() as conn:
        name = conn.execute(text("SELECT current_database()")).scalar()
        conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET deadlock_timeout = '1s'")
        conn.commit()
    engine.dispose()  # the chunk's connections are made anew, with it
    waits = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    try:
        for _ in range(3):  # a try where the delete is the one rolled back proves nothing
            with engine.begin() as conn:  # two stale vectors: a chunk updates 1000, then 1001
                conn.exec_driver_sql(
                    "UPDATE embeddings SET text_hash = 'old' WHERE pmid IN (1000, 1001)"
                )
            out: list[object] = []

            def embed(out: list[object] = out) -> None:
                try:
                    out.append(embed_pending(s))
                except BaseException as exc:  # noqa: BLE001 - asserted below
                    out.append(exc)

            t = threading.Thread(target=embed)
            with engine.connect() as rebuild:  # a rebuild's delete, in the other order
                rebuild.exec_driver_sql("SET deadlock_timeout = '4s'")
                rebuild.exec_driver_sql("DELETE FROM embeddings WHERE pmid = 1001")
                t.start()
                deadline = time.monotonic() + 20
                with engine.connect() as look:
                    while not look.execute(text(waits)).scalar() and time.monotonic() < deadline:
                        time.sleep(0.02)
                try:
                    rebuild.exec_driver_sql("DELETE FROM embeddings WHERE pmid = 1000")
                except OperationalError as exc:
                    assert db.conflict_rolled_back(exc)
                    rebuild.rollback()
                    t.join(30)
                    continue
                rebuild.commit()
            t.join(30)
            break
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" RESET deadlock_timeout')
            conn.commit()
    assert not t.is_alive() and out == [2], out
    assert "rolled back by the database (deadlock detected)" in caplog.text  # it was met
    assert _stored(s, "base") == 30
