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

import pytest
from sqlalchemy import update

from litpulse.core import db
from litpulse.core.errors import ConsistencyError, NotFoundError
from litpulse.core.schema import model_versions
from litpulse.core.settings import Settings
from ranking import index_files, publish, refresh
from ranking.models import published_index_row
from tests.ranking.test_index import _activate, _embed, _state, add_articles, change_article


def _set_status(settings: Settings, model: str, status: str) -> None:
    with db.connect(settings).begin() as conn:
        conn.execute(
            update(model_versions).where(model_versions.c.id == model).values(status=status)
        )


# ------------------------------------------------- partial index from a kept version


@pytest.mark.xfail(
    strict=True,
    reason="incremental refresh from a kept version of a newly "
    "active model publishes a partial index (no _would_drop guard in "
    "_incremental)",
)
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
    refresh.refresh_index(s, embed=False)  # the index-refresh DAG's task

    model, vec_ids, _ = _state(s)
    assert vec_ids == first + later, (
        f"published {model} index serves {len(vec_ids)} of 20 live articles"
    )


# --------------------------------------------- a damaged published version blocks repair


def _truncate(path: Path, keep: int = 20) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.xfail(
    strict=True,
    reason="a truncated ids.npy of the published version makes "
    "every refresh, --rebuild included, crash in _would_drop instead of "
    "rebuilding",
)
def test_a_damaged_id_list_of_the_published_version_is_repaired_by_a_rebuild(
    sqlite_settings: Settings,
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

    rebuilt = refresh.refresh_index(s, rebuild=True, embed=False)
    assert rebuilt.published and rebuilt.size == 10
    idx = index_files.open_published(s)
    assert idx is not None and sorted(idx.ids.tolist()) == list(range(1, 11))


@pytest.mark.xfail(
    strict=True,
    reason="a damaged meta.json of the published version makes a "
    "plain refresh crash in plan_lexical after it decided to rebuild",
)
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


# ------------------------------------------------------------------------- rollback


@pytest.mark.xfail(
    strict=True,
    reason="rollback_index re-publishes a kept version whose files "
    "cannot be loaded (checks only that index.faiss exists; no checksum)",
)
def test_rollback_never_publishes_a_version_that_cannot_be_loaded(
    sqlite_settings: Settings,
) -> None:
    s = sqlite_settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)))
    v1 = refresh.refresh_index(s, embed=False)
    change_article(engine, 3)
    v2 = refresh.refresh_index(s, embed=False)
    assert v2.published and v2.id != v1.id
    _truncate(Path(v1.path) / "index.faiss", keep=64)  # bit rot in a kept version

    try:
        publish.rollback_index(s)
    except (NotFoundError, ConsistencyError):
        pass  # refusing is fine
    # whatever is published must load: searches read it
    assert index_files.open_published(s) is not None


@pytest.mark.xfail(
    strict=True,
    reason="rollback_index re-publishes a version built with "
    "another base model (LITPULSE_MODEL changed): queries are embedded with "
    "the new model against the old model's vectors",
)
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

    try:
        publish.rollback_index(other)
    except (NotFoundError, ConsistencyError):
        pass  # refusing is what keeps queries and vectors of one model
    assert published_index_row(engine).id == v_new.id != v_old.id


@pytest.mark.xfail(
    strict=True,
    reason="rollback_index flips the rows without "
    "check_model_active: racing a promotion it publishes the switched-out "
    "model's index as current",
)
def test_rollback_racing_a_model_switch_publishes_nothing(
    sqlite_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A promotion switches the model without the index lease (see
    ``check_model_active``); ``publish`` re-checks the active model inside the
    transaction that flips the rows, ``rollback_index`` does not."""
    s = sqlite_settings
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
    try:
        publish.rollback_index(s)
    except ConsistencyError:
        pass
    assert switched
    # the switched-out model's older version must not become current: v2 stays
    assert published_index_row(engine).id == v2.id
