"""Review of index refresh, publish and rollback: defects found (each test fails on the
code as reviewed and passes once the defect is fixed).

Vectors are synthetic as in ``test_index.py`` (articles and embeddings written straight
into the store), except where a real base model is the point.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update

from litpulse.core import db
from litpulse.core.errors import ConsistencyError
from litpulse.core.schema import index_versions, model_versions
from litpulse.core.settings import Settings
from ranking import index_files, index_status, lexical, publish, refresh
from ranking.models import published_index_row
from tests.ranking.test_index import (
    _activate,
    _embed,
    _state,
    add_articles,
    change_article,
    run_cli,
)


def _set_status(settings: Settings, model: str, status: str) -> None:
    with db.connect(settings).begin() as conn:
        conn.execute(
            update(model_versions).where(model_versions.c.id == model).values(status=status)
        )


def _statuses(settings: Settings) -> dict[str, str]:
    with db.connect(settings).connect() as conn:
        return dict(conn.execute(select(index_versions.c.id, index_versions.c.status)).all())


# ------------------------------------------------- partial index from a kept version


def test_a_reactivated_model_with_a_kept_version_never_publishes_a_partial_index(
    sqlite_settings: Settings,
) -> None:
    """m2 was active once (its version v2 is kept on disk), then rolled back to 'base';
    articles 11..20 arrive and are indexed on 'base'. m2 is promoted again with a deferred
    re-index: the index-refresh DAG's ``refresh_index(embed=False)`` meets m2 with only the
    vectors its shards wrote so far. ``_full`` refuses to publish such a partial index
    (test_refresh_after_a_deferred_promotion_never_publishes_a_partial_index), but here
    ``base_row`` finds the kept m2 version and ``_incremental`` publishes it updated with
    only the vectors there are: live articles the published index served vanish."""
    s = sqlite_settings
    engine = db.connect(s)
    first = list(range(1, 11))
    add_articles(engine, first, models=("base", "m2"))
    refresh.refresh_index(s, embed=False)  # v1 on base
    _activate(engine, "m2", s)
    assert refresh.refresh_index(s, embed=False).model_version == "m2"  # v2 on m2
    _set_status(s, "m2", "retired")  # `litpulse models rollback`: base again
    assert refresh.refresh_index(s, embed=False).model_version == "base"
    later = list(range(11, 21))
    add_articles(engine, later, models=("base",))
    v4 = refresh.refresh_index(s, embed=False)
    assert v4.size == 20 and v4.model_version == "base"

    _set_status(s, "m2", "active")  # promoted again, re-index deferred to the shards
    _embed(engine, later[:5], "m2")  # one shard of two done
    waited = refresh.refresh_index(s, embed=False)  # the index-refresh DAG's task

    model, vec_ids, lex_ids = _state(s)
    assert vec_ids == first + later, (
        f"published {model} index serves {len(vec_ids)} of 20 live articles"
    )
    assert lex_ids == first + later
    # the same refusal, in the same words, as a full build's (one rule)
    assert not waited.published and waited.id == v4.id
    assert "5 live articles it serves have no vector of model m2" in str(waited.reason)
    assert {p.name for p in index_files.indexes_dir(s).iterdir()} == {
        Path(r).name for r in (_row_paths(s))
    }  # nothing written aside

    _embed(engine, later[5:], "m2")  # the other shard done: the kept version is updated
    done = refresh.refresh_index(s, embed=False)
    assert done.published and done.model_version == "m2" and not done.rebuilt
    assert _state(s)[:2] == ("m2", first + later)


def _row_paths(settings: Settings) -> list[str]:
    with db.connect(settings).connect() as conn:
        return list(conn.execute(select(index_versions.c.path)).scalars())


# --------------------------------------------- a damaged published version blocks repair


def _truncate(path: Path, keep: int = 20) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize("rebuild", [True, False], ids=["rebuild", "refresh"])
def test_a_damaged_id_list_of_the_published_version_is_repaired_by_a_rebuild(
    sqlite_settings: Settings, rebuild: bool
) -> None:
    """``read_files`` failing on the base is caught ("cannot read index ...: rebuilding"),
    but ``_full`` then calls ``_would_drop``, which reads the published version's
    ``ids.npy`` unguarded: the refresh raises, and so does ``--rebuild``. Searches fail on
    the same file, so the index can never be healed by the tool meant to heal it."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)))
    v1 = refresh.refresh_index(s, embed=False)
    _truncate(Path(v1.path) / "ids.npy")

    rebuilt = refresh.refresh_index(s, rebuild=rebuild, embed=False)
    assert rebuilt.published and rebuilt.size == 10 and rebuilt.rebuilt
    assert rebuilt.id != v1.id
    idx = index_files.open_published(s)
    assert idx is not None and sorted(idx.ids.tolist()) == list(range(1, 11))
    assert index_status.check_consistency(s)["ok"]


def test_a_damaged_meta_file_of_the_published_version_is_rebuilt_by_a_refresh(
    sqlite_settings: Settings,
) -> None:
    """``refresh_index`` catches the unreadable base ("rebuilding") but still hands the
    same folder to ``plan_lexical`` as the lexical base, which parses its ``meta.json``
    outside any guard: the nightly refresh fails every night instead of rebuilding."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)))
    v1 = refresh.refresh_index(s, embed=False)
    _truncate(Path(v1.path) / "meta.json")

    report = refresh.refresh_index(s, embed=False)
    assert report.published and report.size == 10
    assert report.rebuilt and report.lexical_rebuilt  # nothing of the damaged base read
    assert report.lexical_size == 10
    assert index_status.check_consistency(s)["ok"]


def test_a_damaged_meta_file_of_the_published_version_never_blocks_a_rebuild_for_a_new_model(
    sqlite_settings: Settings,
) -> None:
    """The vectors are rebuilt for a newly active model (no base of its own): the lexical
    index then starts from the published version, whose ``meta.json`` is damaged. The
    lexical plan reads it under its guard, and builds from scratch."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)), models=("base", "m2"))
    v1 = refresh.refresh_index(s, embed=False)
    _truncate(Path(v1.path) / "meta.json")
    _activate(engine, "m2", s)

    report = refresh.refresh_index(s, embed=False)
    assert report.published and report.model_version == "m2" and report.size == 10
    assert report.lexical_rebuilt and report.lexical_size == 10
    assert index_status.check_consistency(s)["ok"]


def test_a_lexical_plan_never_fails_on_a_damaged_meta_file(sqlite_settings: Settings) -> None:
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 6)))
    v1 = refresh.refresh_index(s, embed=False)
    live = np.arange(1, 6, dtype=np.int64)
    for damaged in ("{", "[1, 2]", ""):
        (Path(v1.path) / "meta.json").write_text(damaged, encoding="utf-8")
        plan = lexical.plan_lexical(engine, v1.path, live)
        assert plan.base is None and plan.add is None, damaged
        assert plan.reason == "lexical index unreadable"


# ------------------------------------------------------------------------- rollback


def test_rollback_never_publishes_a_version_that_cannot_be_loaded(settings: Settings) -> None:
    s = settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)))
    v1 = refresh.refresh_index(s, embed=False)
    change_article(engine, 3)
    v2 = refresh.refresh_index(s, embed=False)
    assert v2.published and v2.id != v1.id
    _truncate(Path(v1.path) / "index.faiss", keep=64)  # bit rot in a kept version
    before = _statuses(s)

    with pytest.raises(ConsistencyError, match=f"index version {v1.id} cannot be re-published"):
        publish.rollback_index(s)
    # whatever is published must load: searches read it
    assert index_files.open_published(s) is not None
    assert published_index_row(engine).id == v2.id and _statuses(s) == before  # nothing changed


def _two_versions(s: Settings) -> tuple[str, str]:
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)))
    v1 = refresh.refresh_index(s, embed=False)
    change_article(engine, 3)
    v2 = refresh.refresh_index(s, embed=False)
    assert v2.published and v2.id != v1.id
    return v1.path, v2.id


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["ids-bytes", "lexical-ids", "lexical-stats", "meta"])
def test_rollback_checks_every_file_of_the_version_it_re_publishes(
    sqlite_settings: Settings, damage: str
) -> None:
    """Damage that still loads (one flipped byte of the id list: a wrong PMID) is caught by
    the SHA-256 recorded when the version was written; the lexical half is checked too (a
    version is rolled back with both halves)."""
    s = sqlite_settings
    old_path, current = _two_versions(s)
    folder = Path(old_path)
    if damage == "ids-bytes":
        _flip_last_byte(folder / "ids.npy")
        assert len(index_files.read_vector_ids(old_path)) == 10  # it still loads
    elif damage == "lexical-ids":
        _flip_last_byte(folder / lexical.IDS_FILE)
    elif damage == "lexical-stats":
        (folder / lexical.LEXICAL_DIR / lexical.STATS_FILE).unlink()
    else:
        _truncate(folder / "meta.json")
    before = _statuses(s)

    with pytest.raises(ConsistencyError, match="cannot be re-published"):
        publish.rollback_index(s)
    assert _statuses(s) == before and published_index_row(db.connect(s)).id == current


def test_rollback_of_a_version_written_before_checksums_were_recorded(
    sqlite_settings: Settings,
) -> None:
    """A version whose row records no SHA-256 (written by an older release) is checked by
    loading it: a sound one is re-published, a damaged one refused."""
    s = sqlite_settings
    engine = db.connect(s)
    old_path, current = _two_versions(s)
    with engine.begin() as conn:
        for row in conn.execute(select(index_versions.c.id, index_versions.c.details)).all():
            details = {k: v for k, v in (row.details or {}).items() if k != "files"}
            conn.execute(update(index_versions).where(index_versions.c.id == row.id)
                         .values(details=details))
    back = publish.rollback_index(s)
    assert back["from"] == current and Path(old_path).name == back["to"]
    idx = index_files.open_published(s)
    assert idx is not None and idx.id == back["to"]

    old_path2 = published_index_row(engine).path
    change_article(engine, 5)
    refresh.refresh_index(s, embed=False)
    with engine.begin() as conn:
        conn.execute(update(index_versions).where(index_versions.c.path == old_path2)
                     .values(details={}))
    _truncate(Path(old_path2) / "index.faiss", keep=64)
    with pytest.raises(ConsistencyError, match="cannot be loaded"):
        publish.rollback_index(s)


def test_the_cli_refuses_a_damaged_rollback_with_exit_status_2(
    sqlite_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from litpulse.app.cli import main

    s = sqlite_settings
    old_path, current = _two_versions(s)
    _truncate(Path(old_path) / "index.faiss", keep=64)
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    with pytest.raises(ConsistencyError):  # the command itself: the error, as it is
        run_cli(["index", "rollback"], s)
    assert main(["index", "rollback"]) == 2  # the CLI: an error, not "not found" (1)
    assert "cannot be re-published" in capsys.readouterr().err
    assert published_index_row(db.connect(s)).id == current


def test_rollback_never_publishes_a_version_of_another_base_model(
    sqlite_settings: Settings,
    tmp_path: Path,
) -> None:
    """``refresh_index`` refuses to build on a version of another base model
    (``_base_current``), but ``rollback_index`` only matches the model version id."""
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 6)))
    v_old = refresh.refresh_index(s, embed=False)  # vectors "of" the bundled model

    other_model = tmp_path / "another-model"  # same shape, another model
    shutil.copytree(s.model_path, other_model, symlinks=True, copy_function=os.symlink)
    config = json.loads((other_model / "config.json").read_text())
    (other_model / "config.json").unlink()
    (other_model / "config.json").write_text(json.dumps({**config, "fine_tuned_on": "x"}))
    other = s.replace(model=str(other_model))
    v_new = refresh.refresh_index(other, rebuild=True)  # every article embedded again
    assert v_new.published and v_new.embedded == 5

    before = _statuses(s)
    with pytest.raises(ConsistencyError, match="base model changed"):
        publish.rollback_index(other)  # refusing keeps queries and vectors of one model
    assert published_index_row(engine).id == v_new.id != v_old.id
    assert _statuses(s) == before
    # with the base model v_old was built with, it is the version to go back to
    assert publish.rollback_index(s)["to"] == v_old.id


def test_rollback_racing_a_model_switch_publishes_nothing(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A promotion switches the model without the index lease (see
    ``check_model_active``); ``publish`` re-checks the active model inside the
    transaction that flips the rows, ``rollback_index`` did not (SQLite and PostgreSQL)."""
    s = settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)), models=("base", "m2"))
    refresh.refresh_index(s, embed=False)
    change_article(engine, 4)
    v2 = refresh.refresh_index(s, embed=False)

    real = index_files.has_files
    switched: list[bool] = []

    def has_files(path: str) -> bool:  # the promotion commits while rollback looks
        if not switched:
            _activate(engine, "m2", s)
            switched.append(True)
        return real(path)

    monkeypatch.setattr(index_files, "has_files", has_files)
    before = _statuses(s)
    with pytest.raises(ConsistencyError, match="model m2 became active"):
        publish.rollback_index(s)
    assert switched
    # the switched-out model's older version must not become current: v2 stays
    assert published_index_row(engine).id == v2.id
    assert _statuses(s) == before
