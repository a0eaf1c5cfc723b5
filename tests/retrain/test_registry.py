"""Model registry: registration, lineage, promotion, rollback and failure recovery."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import pytest

from litpulse.core.db import connect, mark_folder, store_id
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.settings import Settings
from litpulse.core.states import ModelEvent, ModelStatus
from retrain import registry
from tests.retrain.histories import adapter_folder


class Reindex:
    """Stands in for refresh_index: records the active model at each call."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, settings: Settings) -> dict[str, str]:
        active = registry.active_version(settings)
        self.calls.append(active.id if active else registry.BASE_ID)
        if self.fail:
            raise RuntimeError("index build failed")
        return {"model_version": self.calls[-1]}


def _register(settings: Settings, digest: str, parent: str | None = None) -> str:
    vid = registry.new_version_id(digest * 6)
    folder, sha = adapter_folder(settings, vid)  # there: a rollback may go back to it
    registry.register(
        settings, id=vid, adapter_path=folder, adapter_sha256=sha,
        parent_id=parent, window_start=None,
        window_end=dt.datetime(2024, 12, 1, tzinfo=dt.UTC),
        pair_counts={"title_abstract": 10}, options={"r": 8},
        metrics={"candidate": {"fresh": {"recall@10": 0.5}}},
    )
    time.sleep(0.01)
    return vid


def test_register_and_read_back(settings: Settings) -> None:
    vid = _register(settings, "a")
    assert vid.startswith("m-") and vid.endswith("-aaaaaa")
    m = registry.get_model(settings, vid)
    assert m.status == "candidate" and m.base_model == "all-MiniLM-L6-v2"
    assert m.pair_counts == {"title_abstract": 10}
    assert m.adapter_sha256 == adapter_folder(settings, vid)[1]
    assert [v.id for v in registry.list_models(settings)] == [vid]
    assert registry.active_version(settings) is None
    with pytest.raises(NotFoundError):
        registry.get_model(settings, "m-nope")
    with pytest.raises(ConfigError):
        registry.set_status(settings, vid, "active")


def test_statuses_are_enum_members(settings: Settings) -> None:
    assert registry.STATUSES == tuple(ModelStatus)
    vid = _register(settings, "c")
    assert registry.get_model(settings, vid).status is ModelStatus.CANDIDATE
    registry.promote(settings, vid, by="ann", reindex=Reindex())
    assert registry.get_model(settings, vid).status is ModelStatus.ACTIVE
    assert type(registry.get_model(settings, vid).to_dict()["status"]) is str
    assert registry.list_models(settings)[0].status is ModelStatus.ACTIVE
    done = registry.set_status(settings, _register(settings, "d"), ModelStatus.RETIRED)
    assert done.status is ModelStatus.RETIRED
    with pytest.raises(ConfigError, match="must be candidate, rejected or retired"):
        registry.set_status(settings, vid, "paused")


def test_promote_and_rollback_stack(settings: Settings) -> None:
    reindex = Reindex()
    a = _register(settings, "a")
    b = _register(settings, "b", parent=a)
    out = registry.promote(settings, a, by="alice", reindex=reindex)
    assert out["previous"] == "base" and out["model"]["status"] == "active"
    assert registry.get_model(settings, a).promoted_by == "alice"
    registry.promote(settings, b, by="gate", reindex=reindex)
    assert registry.get_model(settings, a).status == "retired"
    assert registry.active_version(settings).id == b  # type: ignore[union-attr]
    assert registry.get_model(settings, b).parent_id == a
    # the index is rebuilt for the newly active model each time
    assert reindex.calls == [a, b]

    back = registry.rollback(settings, by="bob", reindex=reindex)
    assert back == {"model": a, "rolled_back": b, "skipped": [], "index": {"model_version": a}}
    assert registry.get_model(settings, b).status == "rejected"
    assert registry.active_version(settings).id == a  # type: ignore[union-attr]
    # a second rollback goes one step further: the base model
    back = registry.rollback(settings, by="bob", reindex=reindex)
    assert back["model"] == "base"
    assert registry.active_version(settings) is None
    assert reindex.calls == [a, b, a, "base"]
    with pytest.raises(NotFoundError):
        registry.rollback(settings, by="bob", reindex=reindex)


def test_failed_reindex_restores_statuses(settings: Settings) -> None:
    a = _register(settings, "a")
    b = _register(settings, "b", parent=a)
    registry.promote(settings, a, by="alice", reindex=Reindex())
    with pytest.raises(RuntimeError):
        registry.promote(settings, b, by="gate", reindex=Reindex(fail=True))
    assert registry.active_version(settings).id == a  # type: ignore[union-attr]
    assert registry.get_model(settings, b).status == "candidate"
    with pytest.raises(RuntimeError):
        registry.rollback(settings, by="bob", reindex=Reindex(fail=True))
    assert registry.active_version(settings).id == a  # type: ignore[union-attr]


def test_promote_requires_who(settings: Settings) -> None:
    a = _register(settings, "a")
    with pytest.raises(ConfigError):
        registry.promote(settings, a, by="", reindex=Reindex())
    out = registry.promote(settings, a, by="x", reindex=Reindex())
    again = registry.promote(settings, a, by="x", reindex=Reindex())
    assert out["changed"] and not again["changed"]


def test_a_rollback_interrupted_between_its_steps_keeps_a_model_active(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback rejects the current version and re-activates the previous one; a crash
    (a database error, a kill) between the two used to leave nothing active (rejected in a
    transaction of its own), so the next refresh built an index for the base model, which
    neither the operator (who asked for version a) nor the gate chose. Review finding; now
    one transaction: the current version stays active."""
    a = _register(settings, "a")
    b = _register(settings, "b", parent=a)
    registry.promote(settings, a, by="alice", reindex=Reindex())
    registry.promote(settings, b, by="gate", reindex=Reindex())
    append = registry._append_event

    def crash_at_reactivation(conn: Any, version: str, event: Any, **kw: Any) -> None:
        if event == ModelEvent.REACTIVATED:
            raise RuntimeError("connection lost")  # or SIGKILL: the same state is left
        append(conn, version, event, **kw)

    monkeypatch.setattr(registry, "_append_event", crash_at_reactivation)
    with pytest.raises(RuntimeError):
        registry.rollback(settings, by="bob", reindex=Reindex())
    monkeypatch.undo()
    active = registry.active_version(settings)
    status = {v: registry.get_model(settings, v).status for v in (a, b)}
    assert active is not None and active.id == b, (
        f"active: {active.id if active else 'base'}; b is {status[b]}, a is {status[a]}")


# ------------------------------------------- adapter folders a killed retrain leaves behind


def _folder(path: Path, age_s: float, store: Settings | None = None) -> Path:
    """An adapter folder last written ``age_s`` seconds ago (by a retrain of ``store``:
    marked as the retrain marks it)."""
    path.mkdir(parents=True, exist_ok=True)
    if store is not None:
        mark_folder(path, store_id(connect(store)))
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_prune_removes_old_adapter_folders_no_version_names(settings: Settings) -> None:
    """A retrain killed while training leaves `adapters/.tmp-*`; one killed after the
    rename, while evaluating (before `register`), leaves `adapters/<version id>` with no
    row. Neither is ever read again; they pile up, one adapter per killed run."""
    adapters = settings.ensure_home() / "adapters"
    day = 24 * 3600.0
    vid = _register(settings, "a")
    named = _folder(adapters / vid, 3 * day, settings)  # its row names it (by folder name)
    killed_training = _folder(adapters / ".tmp-0123456789ab", 2 * day, settings)
    killed_evaluating = _folder(adapters / "m-20240101000000-abcdef", 2 * day, settings)
    young = _folder(adapters / ".tmp-ffffffffffff", 60, settings)  # may be being written
    unmarked = _folder(adapters / "m-20230101000000-000000", 9 * day)  # before the marks
    stray = adapters / "notes.txt"
    stray.write_text("kept: not a folder")

    removed = registry.prune_adapters(settings)
    assert sorted(removed) == sorted([str(killed_training), str(killed_evaluating)])
    assert named.is_dir() and young.is_dir() and stray.is_file() and unmarked.is_dir()
    assert not killed_training.exists() and not killed_evaluating.exists()
    assert registry.prune_adapters(settings) == []
    assert registry.prune_adapters(settings, max_age_s=0) == [str(young)]


def test_the_next_retrain_prunes_orphan_adapters(settings: Settings) -> None:
    from litpulse.pipeline.planning import reindex_now
    from retrain.run import retrain

    adapters = settings.ensure_home() / "adapters"
    orphan = _folder(adapters / ".tmp-0123456789ab", 2 * 24 * 3600.0, settings)
    report = retrain(settings, reindex=reindex_now, dry_run=True)
    assert report.status == "dry_run"
    assert orphan.exists()  # a dry run writes nothing, prunes nothing (session 32q, Q4)
    report = retrain(settings, reindex=reindex_now)  # nothing to train on: skipped
    assert report.status == "skipped"
    assert not orphan.exists()


def test_a_dry_run_against_another_store_keeps_the_adapters_of_this_home(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """The default home (`.litpulse`) holds the SQLite store and its adapters. The same
    home with LITPULSE_DATABASE_URL set to another store (trying PostgreSQL, a colleague's
    database) and `litpulse retrain --dry-run`, which should write nothing: the SQLite
    store's active adapter, two days old, is named by no row of the other store."""
    from litpulse.pipeline.planning import reindex_now
    from retrain.run import retrain

    adapters = sqlite_settings.ensure_home() / "adapters"
    vid = registry.new_version_id("c" * 36)
    live = _folder(adapters / vid, 2 * 24 * 3600.0, sqlite_settings)
    registry.register(
        sqlite_settings,
        id=vid,
        adapter_path=str(live),
        adapter_sha256="c" * 64,
        parent_id=None,
        window_start=None,
        window_end=dt.datetime(2024, 12, 1, tzinfo=dt.UTC),
        pair_counts={"title_abstract": 10},
        options={"r": 8},
        metrics={},
    )
    other = sqlite_settings.replace(database_url=f"sqlite:///{tmp_path / 'other.db'}")
    report = retrain(other, reindex=reindex_now, dry_run=True)
    assert report.status in ("dry_run", "skipped")
    assert live.is_dir(), "the adapter of the home's own store was removed"


# ------------------------------- hostile review: a promotion or rollback during a retrain


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_rollback_during_a_retrain_is_not_undone_by_its_candidate(
    sqlite_settings: Settings,
) -> None:
    """Version a is active (a person promoted it over the gate). While the next scheduled
    retrain trains (it continues a's adapter and will compare its candidate with a), the
    person finds a ranks badly and rolls it back: the base model is active. The retrain
    then promotes its candidate, a child of the rejected a, judged against a (not against
    the base model now active): the rollback is silently undone."""
    import dataclasses
    import random

    from bench.drift import insert_batch, make_drugs
    from litpulse.core.errors import LitpulseError
    from retrain.lora import LoraOptions
    from retrain.pairs import PairSet
    from retrain.run import retrain

    s = sqlite_settings.replace(max_seq_length=64, embed_batch_size=64, device="cpu")
    options = LoraOptions(max_steps=2, batch_size=16, max_seq_length=64, max_seconds=1e5)
    mine = {"fresh_size": 40, "distractors": 100, "holdout_buckets": 8}
    t0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    engine, drugs, reindex = connect(s), make_drugs(24), Reindex()
    insert_batch(engine, start_pmid=1000, n=200, start=dt.date(2024, 1, 1), days=180,
                 ingested=t0, drugs=drugs, seed=1)
    insert_batch(engine, start_pmid=5000, n=200, start=dt.date(2024, 7, 1), days=180,
                 ingested=t0 + dt.timedelta(days=180), new_share_from=0.2,
                 new_share_to=0.8, drugs=drugs, seed=2)

    def shuffled(ps: PairSet) -> PairSet:  # version a learns titles of random abstracts
        positives = [p.positive for p in ps.pairs]
        random.Random(5).shuffle(positives)
        return ps.replace(pairs=tuple(dataclasses.replace(p, positive=q)
                                      for p, q in zip(ps.pairs, positives, strict=True)))

    first = retrain(s, options=options, mine_kwargs=mine, pair_filter=shuffled,
                    reindex=reindex)
    a = first.version_id
    assert a is not None, first.reasons
    if first.status != "promoted":
        registry.promote(s, a, by="ann", reason="looks fine to me", reindex=reindex)
    assert registry.active_version(s).id == a  # type: ignore[union-attr]

    insert_batch(engine, start_pmid=9000, n=120, start=dt.date(2025, 1, 1), days=30,
                 ingested=t0 + dt.timedelta(days=210), new_share_from=0.6,
                 new_share_to=0.6, drugs=drugs, seed=3)
    done: dict[str, Any] = {}

    def person_rolls_back_meanwhile(ps: PairSet) -> PairSet:
        try:
            done["rollback"] = registry.rollback(s, by="ann", reason="a ranks badly",
                                                 reindex=reindex)
        except LitpulseError as exc:  # refused while a retrain runs: also correct
            done["refused"] = exc
        return ps

    second = retrain(s, options=options, mine_kwargs=mine,
                     pair_filter=person_rolls_back_meanwhile, reindex=reindex)
    if "refused" in done:
        return
    assert done["rollback"]["model"] == "base"
    active = registry.active_version(s)
    assert active is None, (
        f"{second.status}: {active.id} (parent {active.parent_id}, a={a}, which the "
        f"rollback rejected) is active, its gate compared with "
        f"{second.metrics['active']['model'] if second.metrics else '?'}; reasons "
        f"{second.reasons}")


def test_a_version_id_taken_in_the_same_second_gets_the_next_number(settings: Settings) -> None:
    """The same weights trained twice within one second (a rerun on the same data) made
    the same id, and the second round crashed renaming its folder onto the first's."""
    when = dt.datetime(2026, 12, 5, 12, 0, 0, tzinfo=dt.UTC)
    first = registry.free_version_id(settings, "abcdef" * 10, when)
    assert first == "m-20261205120000-abcdef"
    (settings.ensure_home() / "adapters" / first).mkdir(parents=True)
    assert registry.free_version_id(settings, "abcdef" * 10, when) == f"{first}-2"
    (settings.home / "adapters" / f"{first}-2").mkdir()
    assert registry.free_version_id(settings, "abcdef" * 10, when) == f"{first}-3"
