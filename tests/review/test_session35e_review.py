"""Review 35e: the store and the data directory out of step, as operations leave them.

Reviewed, on SQLite and PostgreSQL: a store restored from last night's backup (a real
``pg_dump``/``pg_restore``; the SQLite file copied back) while the data directory is newer
(index versions published since, some pruned); a data directory moved (``LITPULSE_HOME``
changed, the store with it); a model version's adapter folder gone from the data directory.
Index vectors are synthetic (``tests.ranking.test_index.add_articles``): no encoder runs but
where a query's embedding is the point.

Findings:

X1 — A store restored from a backup names as published an index version whose files
   were pruned since (more than ``KEEP_VERSIONS`` publications after the backup): every
   search (CLI ``litpulse search``, ``GET /search``) and ``litpulse index check`` fail with
   "index files are missing in …" and nothing says what repairs it (``litpulse index
   refresh`` rebuilds it from the stored vectors). Reproduced: restore, search.
   **Fixed**: loading the published version (``ranking.index_files._load``) fails with a
   ``ConsistencyError`` naming the version, what is wrong and ``litpulse index refresh``;
   ``index check`` says the same. The refresh repairs it: searches then find only stored
   articles, and every stored article (``index check`` is clean).

X2 — In that state ``litpulse status`` and ``GET /status`` report that index as the one
   published, with its vectors, as if searches were served: nothing tells the operator
   that every search fails. Reproduced: restore, ``litpulse status --json``, ``GET /status``.
   **Fixed** (with X6): ``ranking.index_status.serving_problem``, one rule read by ``litpulse
   status`` (``index.problem``; "index problem" in its text), ``litpulse index status`` and
   ``GET /status`` (``index.problem``): the published version's files missing, or its model
   unknown to the store, or its adapter unable to serve, each with the command that repairs it.

X3 — The refresh that repairs it reports its rebuild as "model changed (base -> base)":
   no model changed, the published version's files were missing. Reproduced: restore,
   ``refresh_index``, its ``reason``. (X1, X2 and X3 share one restore, one test.)
   **Fixed**: ``ranking.refresh._rebuild_reason`` says the published version's files are
   missing when it is of the active model.

X4 — A data directory moved to another path (``LITPULSE_HOME`` changed, the store moved
   with it: the SQLite file inside, or the same PostgreSQL) keeps every index version and
   the active model's adapter, but the store names them by their old absolute paths:
   searches fail (X1's error), the next refresh rebuilds the whole index from scratch (hours
   at PubMed's size) and leaves ``litpulse index rollback`` nothing to roll back to, and the
   active fine-tuned model cannot be loaded (searches refused, ``litpulse retrain`` refuses
   to continue it): only a model rollback (losing the fine-tuned model) or editing the
   database by hand gets out. Reproduced: two refreshes, an active model with its adapter
   in ``<home>/adapters``, the folder moved, a refresh, a rollback, the active model's spec.
   **Fixed**: the store's rows are pointed at the folders of the same names in the data
   directory used now, when the folders they name are gone and those are this store's and
   hold what was recorded (``ranking.index_files.relocate_versions``: ``meta.json`` names
   the version; ``ranking.embed.relocate_adapters``: the registered SHA-256), by the
   writers before they rely on them: every refresh (the nightly's, ``litpulse index
   refresh``), ``index rollback``, ``models promote`` and ``rollback`` (whose rollback,
   read not tested, passed over the moved versions as missing, rejecting them) and a
   retrain. Until one runs, searches and both statuses name ``litpulse index refresh``
   (X1, X2); nothing is rebuilt.

X5 — A search whose model version's adapter folder is missing (a data directory restored
   older than the store, or lost) is answered ``400 Bad Request`` — the client's fault —
   with "adapter folder … is missing" and no command; it is the server's state, a 503 that
   names what repairs it (restore the folder, or ``litpulse models rollback``).
   Reproduced: ``GET /search`` with an active version whose adapter folder is gone.
   The same ``ConfigError`` reaches the digest's ``except ConfigError`` around a saved
   search's query (``litpulse/pipeline/digest.py``, read, not tested), which tells it as
   that query being refused. **Fixed**: an adapter that cannot serve is a
   ``ConsistencyError`` (``ranking.embed._apply_adapter``: 503 over HTTP, the digest's
   "tried again next time"), naming the repair: restore it, or ``litpulse models rollback``.

X6 — ``litpulse status`` and ``GET /status`` say nothing when the adapter of the published
   index's model is missing (X5's state): every search is refused while the status shows
   the model and index as serving. Reproduced: the adapter folder removed, both statuses.
   **Fixed** with X2 (``ranking.embed.adapter_refusal``: the search's refusal and the status
   say the same words).
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import insert

from litpulse.core import db
from litpulse.core.checksums import file_sha256
from litpulse.core.errors import ConsistencyError
from litpulse.core.schema import model_versions
from litpulse.core.settings import Settings
from ranking import embed as em
from ranking import index_files, index_status, publish, refresh
from ranking.index_store import live_ids
from tests.ranking.test_index import add_articles
from tests.retrain.histories import fake_adapter

# ------------------------------------------------------------------ backup and restore


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def backup(settings: Settings, dest: Path) -> Path:
    """Last night's backup of the store: ``pg_dump -Fc``, or SQLite's online backup."""
    if settings.database_url:
        subprocess.run(["pg_dump", "-Fc", "-f", str(dest), "-d", _libpq(settings.database_url)],
                       check=True)  # fmt: skip
        return dest
    src = sqlite3.connect(settings.home / "litpulse.db")
    out = sqlite3.connect(dest)
    try:
        src.backup(out)
    finally:
        src.close()
        out.close()
    return dest


def restore(settings: Settings, dump: Path) -> None:
    """The store put back from ``dump`` (the data directory left as it is)."""
    db.dispose_engines()
    if settings.database_url:
        subprocess.run(["pg_restore", "--clean", "--if-exists", "--single-transaction",
                        "--no-owner", "-d", _libpq(settings.database_url), str(dump)],
                       check=True, capture_output=True)  # fmt: skip
        return
    for suffix in ("-wal", "-shm"):
        (settings.home / f"litpulse.db{suffix}").unlink(missing_ok=True)
    shutil.copyfile(dump, settings.home / "litpulse.db")


def restored_after_newer_publishes(settings: Settings, tmp_path: Path) -> str:
    """Articles 1..10 indexed, the store backed up, then 40 more articles over
    ``KEEP_VERSIONS + 1`` refreshes (the backed-up version's files pruned), the store
    restored. Returns the version the restored store names as published."""
    add_articles(db.connect(settings), list(range(1, 11)))
    first = refresh.refresh_index(settings, embed=False)
    dump = backup(settings, tmp_path / "store.dump")
    for n in range(publish.KEEP_VERSIONS + 1):
        add_articles(db.connect(settings), list(range(11 + 10 * n, 21 + 10 * n)))
        refresh.refresh_index(settings, embed=False)
    assert not index_files.has_files(first.path)  # pruned since the backup
    restore(settings, dump)
    return first.id


# ------------------------------------------------------------------------ X1, X2, X3


def _status_problem(settings: Settings, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """``(index.problem of litpulse status --json, GET /status's)``."""
    import json

    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app
    from litpulse.app.cli import main

    assert main(["status", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["index"]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = client.get("/status").json()["index"]
    assert cli["version"] == api["version"]
    return cli.get("problem") or "", api.get("problem") or ""


def test_x1_x2_x3_a_restored_store_says_its_index_cannot_be_served_and_what_repairs_it(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One restore for the three (each was seen failing alone before its fix)."""
    from litpulse.app.cli import main
    from ranking.search import search

    named = restored_after_newer_publishes(env, tmp_path)
    # X1: the search's refusal, and index check, name the version and the command
    with pytest.raises(ConsistencyError, match=named) as caught:
        search(env, "title 3", k=5, mode="lexical")
    assert "litpulse index refresh" in str(caught.value)
    problems = index_status.check_consistency(env)["problems"]
    assert any("litpulse index refresh" in p for p in problems), problems
    # X2: both statuses say so
    for problem in _status_problem(env, capsys):
        assert named in problem and "litpulse index refresh" in problem, problem
    assert main(["status"]) == 0
    assert "litpulse index refresh" in capsys.readouterr().out
    # X3: the refresh it names says why it rebuilt
    report = refresh.refresh_index(env, embed=False)
    assert report.published and report.rebuilt
    assert named in (report.reason or "") and "missing" in (report.reason or ""), report
    # repaired: the store and the index agree, the statuses are clear
    assert index_status.check_consistency(env)["ok"]
    found = {h.pmid for h in search(env, "title", k=50, mode="lexical")}
    assert found and found <= set(live_ids(db.connect(env)).tolist())
    assert _status_problem(env, capsys) == ("", "")


# ------------------------------------------------------------------------------- X4


def _adapter(settings: Settings, model: str) -> str:
    """An active version ``model`` whose adapter lives in ``<home>/adapters`` (marked by
    this store, as a retrain leaves it)."""
    folder = settings.ensure_home() / "adapters" / model
    fake_adapter(folder, b"lora weights")
    db.mark_folder(folder, db.store_id(db.connect(settings)))
    now = db.utcnow()
    with db.connect(settings).begin() as conn:
        conn.execute(insert(model_versions).values(
            id=model, base_model="all-MiniLM-L6-v2", adapter_path=str(folder),
            adapter_sha256=file_sha256(folder / em.ADAPTER_WEIGHTS), status="active",
            created_at=now, promoted_at=now))  # fmt: skip
    return str(folder)


def test_x4_a_moved_data_directory_keeps_its_indexes_and_adapters(
    settings: Settings, tmp_path: Path
) -> None:
    from ranking.search import search

    _adapter(settings, "m-1")
    add_articles(db.connect(settings), list(range(1, 11)), models=("m-1",))
    refresh.refresh_index(settings, embed=False)
    add_articles(db.connect(settings), list(range(11, 16)), models=("m-1",))
    second = refresh.refresh_index(settings, embed=False)

    db.dispose_engines()
    moved = tmp_path / "moved"
    shutil.move(settings.home, moved)
    s = Settings.from_env({}, home=moved, database_url=settings.database_url)
    index_files._CACHE.clear()

    with pytest.raises(ConsistencyError, match="litpulse index refresh"):
        search(s, "title", k=5, mode="lexical")  # what repairs it is named
    report = refresh.refresh_index(s, embed=False)
    assert not report.rebuilt and report.size == 15, report
    spec = em.active_model(s)
    assert spec.adapter_path is not None and spec.adapter_path.startswith(str(moved)), spec
    assert em.adapter_problem(spec.adapter_path, spec.adapter_sha256) is None
    assert {h.pmid for h in search(s, "title", k=50, mode="lexical")} == set(range(1, 16))
    out = publish.rollback_index(s)
    assert out["from"] == second.id, out
    assert index_status.check_consistency(s)["missing"] == 5  # the first version, served


# ------------------------------------------------------------------------------- X5


def test_x5_a_search_whose_adapter_is_gone_is_a_503_naming_the_repair(
    settings: Settings, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    folder = _adapter(settings, "m-1")
    add_articles(db.connect(settings), list(range(1, 6)), models=("m-1",))
    refresh.refresh_index(settings, embed=False)
    shutil.rmtree(folder)  # the data directory restored from before the retrain
    em.clear_cache()
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            got = client.get("/search", params={"q": "title"})
    finally:
        em.clear_cache()
    assert got.status_code == 503, got.text
    assert "litpulse models rollback" in got.json()["detail"]


# ------------------------------------------------------------------------------- X6


def test_x6_status_says_the_adapter_of_the_served_model_is_missing(
    env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _adapter(env, "m-1")
    add_articles(db.connect(env), list(range(1, 6)), models=("m-1",))
    refresh.refresh_index(env, embed=False)
    assert _status_problem(env, capsys) == ("", "")
    shutil.rmtree(folder)
    for problem in _status_problem(env, capsys):
        assert "m-1" in problem and "litpulse models rollback" in problem, problem
