"""The retrain lifecycle over many nights, as a data engineer runs it (hostile review):
rejected rounds, rollbacks past a damaged version, a changed base model, a second retrain
at once, a retrain SIGKILLed half-way and re-run, and what piles up on disk.

Every test trains the tiny random encoder of ``tests/tiny_encoder.py`` for one step (about
a second a round). Tests marked ``xfail(strict=True)`` pin a defect of the current code:
each fails for the reason it names (``pytest --runxfail`` shows it) and must be turned
into a plain test when the defect is fixed.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bench.drift import insert_batch, make_drugs
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.db import acquire_lease
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from litpulse.core.states import ModelStatus
from litpulse.pipeline.planning import reindex_now, retrain_due
from ranking.refresh import refresh_index
from retrain import registry
from retrain.lora import LoraOptions
from retrain.run import LEASE, retrain

T0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
DAY = 24 * 3600.0
#: One training step: the point of these tests is the lifecycle, not the learning.
OPTS = LoraOptions(max_steps=1, batch_size=8, max_seq_length=32, warmup_steps=0,
                   precision="fp32", max_seconds=1e5)
MINE = {"fresh_size": 10, "distractors": 20, "holdout_buckets": 4, "anchors": False}
DRUGS = make_drugs(12)


def _tiny(settings: Settings, tiny_model: str, **changes: object) -> Settings:
    return settings.replace(model=tiny_model, max_seq_length=32, device="cpu", **changes)


def _night(engine: Engine, night: int, n: int = 60) -> None:
    """The articles a night brings (night 0: the first 120, half a year of literature)."""
    if night == 0:
        insert_batch(engine, start_pmid=1000, n=120, start=dt.date(2024, 1, 1), days=180,
                     ingested=T0, drugs=DRUGS, seed=1)
        return
    insert_batch(engine, start_pmid=1000 + 1000 * night, n=n,
                 start=dt.date(2024, 7, 1) + dt.timedelta(days=30 * night), days=30,
                 ingested=T0 + dt.timedelta(days=30 * night), drugs=DRUGS, seed=night + 1)


def _round(s: Settings, **kw: object) -> object:
    return retrain(s, options=OPTS, mine_kwargs=MINE, reindex=reindex_now, **kw)


def _two_promoted_versions(s: Settings) -> tuple[str, str]:
    """Base index, then version a (promoted by hand) and its child b (promoted by hand)."""
    engine = db.connect(s)
    _night(engine, 0)
    refresh_index(s)
    a = _round(s).version_id  # type: ignore[attr-defined]
    assert a is not None
    registry.promote(s, a, by="ann", reindex=reindex_now)
    _night(engine, 1)
    second = _round(s)
    b = second.version_id  # type: ignore[attr-defined]
    assert b is not None and second.parent_id == a  # type: ignore[attr-defined]
    if registry.active_version(s).id != b:  # type: ignore[union-attr]
        registry.promote(s, b, by="ann", reindex=reindex_now)
    return a, b


def _cli_env(monkeypatch: pytest.MonkeyPatch, s: Settings) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    monkeypatch.setenv("LITPULSE_MODEL", str(s.model))
    monkeypatch.setenv("LITPULSE_MAX_SEQ_LENGTH", str(s.max_seq_length))
    monkeypatch.setenv("LITPULSE_DEVICE", "cpu")
    if s.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", s.database_url)


# ------------------------------------------------------------------- two retrains at once


# litpulse/app/cli/models.py:340 run_retrain (and retrain/run.py:221): a `litpulse retrain`
# started while another retrain holds the `retrain` lease prints "status: skipped" and
# exits 0, as if it had run; every other lease refusal of the CLI (nightly, index refresh,
# models promote/rollback, bootstrap) exits 75 (EX_TEMPFAIL) naming the holder (README,
# "Concurrency"), so a cron job or an operator's script cannot tell "nothing done, try
# again" from "ran".
def test_a_second_retrain_while_one_runs_exits_busy(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _cli_env(monkeypatch, settings)
    engine = db.connect(settings)
    _night(engine, 0)
    lease = acquire_lease(engine, LEASE, holder="airflow-worker-7:4242")
    assert lease is not None
    try:
        rc = main(["retrain", "--steps", "1"])
    finally:
        lease.release()
    captured = capsys.readouterr()
    assert rc == 75, (rc, captured.out, captured.err)
    assert "airflow-worker-7" in captured.err


# ---------------------------------------------------------------------- a rejected round


# litpulse/pipeline/planning.py:264 retrain_due and retrain/run.py:333 _early_stop count
# the new articles since the *active* version's window end. A round the gate rejected
# moves nothing, so with no article arriving after it the next night finds the retrain
# due again and trains the same data into one more rejected candidate (another adapter
# folder, report and row), night after night. LITPULSE_RETRAIN_MIN_NEW_ARTICLES promises
# "fewest new articles since the last training" (README, settings table).
def test_a_rejected_round_is_not_retrained_without_new_articles(
    settings: Settings, tiny_model: str
) -> None:
    s = _tiny(settings, tiny_model, gate_fresh_margin=0.9, retrain_min_new_articles=50)
    _night(db.connect(s), 0)
    first = _round(s, min_new_articles=s.retrain_min_new_articles)
    assert first.status == "rejected", first.reasons  # type: ignore[attr-defined]
    due = retrain_due(s)
    again = _round(s, min_new_articles=s.retrain_min_new_articles)
    rejected = [m.id for m in registry.list_models(s) if m.status == ModelStatus.REJECTED]
    assert not due.due, due.reason
    assert again.status == "skipped", (again.status, rejected)  # type: ignore[attr-defined]


# retrain/registry.py:470 prune_adapters keeps every folder a row names, and a rejected
# candidate's row is kept forever; no `litpulse models` action removes a version or its
# adapter (litpulse/app/cli/models.py:28 register). Every rejected night adds an adapter
# folder and a reports/<id> folder that nothing ever takes away: after four rejected
# nights, the oldest rejected candidate's adapter, days old and superseded three times, is
# still on disk, and the operator has no command to list or remove it.
def test_old_rejected_candidates_can_be_removed(
    sqlite_settings: Settings, tiny_model: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from litpulse.app.cli import build_parser

    s = _tiny(sqlite_settings, tiny_model, gate_fresh_margin=0.9)
    engine = db.connect(s)
    ids = []
    for night in range(4):
        _night(engine, night, n=30)
        report = _round(s)
        assert report.status == "rejected", report.reasons  # type: ignore[attr-defined]
        ids.append(report.version_id)  # type: ignore[attr-defined]
    adapters = s.home / "adapters"
    then = time.time() - 3 * DAY
    for folder in adapters.iterdir():  # four nights and then some: all days old
        os.utime(folder, (then, then))
    _night(engine, 4, n=30)
    _round(s)
    oldest = adapters / ids[0]
    parser = build_parser()
    sub = next(a for a in parser._actions if getattr(a, "choices", None))
    models_actions = next(a for a in sub.choices["models"]._actions
                          if getattr(a, "choices", None)).choices
    removal = {"prune", "delete", "remove", "gc", "clean", "purge"} & set(models_actions)
    assert not oldest.exists() or removal, (
        f"{len(list(adapters.iterdir()))} adapter folders after 5 rejected nights; "
        f"`litpulse models` offers only {sorted(models_actions)}")
    # fixed: rejected candidates older than LITPULSE_KEEP_REJECTED_DAYS go at each retrain
    # (here 30 days: none yet), and `litpulse models prune --older-than DAYS` takes them
    # now; their rows and history stay, versions that served are never taken
    assert oldest.exists()
    assert registry.prune_rejected(s, older_than_days=2, dry_run=True) == []  # ids, not mtimes
    assert "prune" in models_actions
    _cli_env(monkeypatch, s)
    capsys.readouterr()
    assert main(["models", "prune", "--older-than", "0", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert all(f"would remove the adapter and report of {i}" in listed for i in ids), listed
    assert oldest.exists()
    pruned = registry.prune_rejected(s, older_than_days=0)
    assert set(ids) <= set(pruned)
    assert not any((adapters / i).exists() or (s.home / "reports" / i).exists() for i in ids)
    assert {m.id for m in registry.list_models(s)} >= set(ids)
    assert registry.prune_rejected(s, older_than_days=0) == []  # once
    assert registry.get_model(s, ids[0]).events[-1]["event"] == "pruned"
    with pytest.raises(ConfigError, match="pruned as an old rejected version"):
        registry.promote(s, ids[0], by="ann", reindex=reindex_now)  # refused before any switch
    assert registry.get_model(s, ids[0]).status == ModelStatus.REJECTED


# ------------------------------------------------------------- a damaged or moved model


# retrain/registry.py:419 rollback (its target from _previous_active, :486) and
# litpulse/app/cli/models.py:331: version a's adapter folder was deleted by hand; b, its
# child, is active and ranks badly. `litpulse models rollback` switches to a, fails to load
# it, switches back and exits 2 ("adapter folder ... is missing", no way out named);
# `--further` does the same, so b can never be rolled back (not even to the base model).
def test_a_rollback_gets_past_a_version_whose_adapter_was_deleted(
    settings: Settings, tiny_model: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = _tiny(settings, tiny_model)
    a, b = _two_promoted_versions(s)
    shutil.rmtree(registry.get_model(s, a).adapter_path)  # type: ignore[arg-type]
    _cli_env(monkeypatch, s)
    first = main(["models", "rollback", "--by", "ann", "--reason", "b ranks badly"])
    out, err = capsys.readouterr()
    # fixed: the rollback passes over a (named, with the reason, and rejected) to the base
    assert first == 0, (out, err)
    assert registry.active_version(s) is None
    assert f"passed over {a}" in out and "is missing" in out, out
    assert registry.get_model(s, a).status == ModelStatus.REJECTED
    assert registry.get_model(s, b).status == ModelStatus.REJECTED


# retrain/run.py:351 _init_adapter: a retrain whose active adapter folder is gone fails with
# "retrain with from_base=True" - a Python keyword, not the command's `--from-base` flag,
# on the CLI (exit 2) where the operator reads it.
def test_a_retrain_without_the_active_adapter_names_the_cli_flag(
    sqlite_settings: Settings, tiny_model: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = _tiny(sqlite_settings, tiny_model)
    _, b = _two_promoted_versions(s)
    shutil.rmtree(registry.get_model(s, b).adapter_path)  # type: ignore[arg-type]
    _night(db.connect(s), 2)
    _cli_env(monkeypatch, s)
    rc = main(["retrain", "--steps", "1", "--batch-size", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and "is missing" in err, (rc, err)
    assert "--from-base" in err, err


# retrain/run.py:351 _init_adapter and :137 _embedder (evaluate_versions): a retrain
# continues the active adapter and evaluates the active model from `adapter_path` alone,
# never checking the adapter_sha256 the row records - which search and every index build
# refuse to load (ranking/embed.py _apply_adapter). Weights changed on disk (a bad copy, a
# restore from the wrong backup) are fine-tuned further, the gate judges the candidate
# against them, and a child of them is registered (and promoted when it passes).
def test_a_retrain_refuses_an_active_adapter_whose_weights_changed(
    sqlite_settings: Settings, tiny_model: str
) -> None:
    s = _tiny(sqlite_settings, tiny_model)
    _, b = _two_promoted_versions(s)
    weights = Path(registry.get_model(s, b).adapter_path) / "adapter_model.safetensors"  # type: ignore[arg-type]
    data = bytearray(weights.read_bytes())
    for i in range(1, 65):  # tensor bytes at the end, the header kept valid
        data[-i] ^= 0x01
    weights.write_bytes(bytes(data))
    _night(db.connect(s), 2)
    with pytest.raises(Exception, match="(?i)sha|checksum|changed|corrupt"):
        report = _round(s)
        pytest.fail(f"trained {report.version_id} from the changed weights of {b}: "  # type: ignore[attr-defined]
                    f"{report.status}")  # type: ignore[attr-defined]


# retrain/run.py:253-267 _retrain: the round continues the active version's adapter on
# `settings.model_path` (LITPULSE_MODEL now) and registers the candidate under the new base
# model, whatever base the active version was trained on (its row records it, and
# ranking.embed.model_spec serves it on that base). After LITPULSE_MODEL changed, index
# refresh refuses until `--rebuild`; the retrain instead grafts the old base's adapter onto
# the new base (evaluating "active" as that graft, which nothing serves) and records a
# lineage that mixes two base models.
def test_a_changed_base_model_is_not_continued_from_the_old_adapter(
    sqlite_settings: Settings, tiny_model: str, tmp_path: Path
) -> None:
    from litpulse.core.errors import ConfigError
    from tests.tiny_encoder import build_tiny_encoder

    s = _tiny(sqlite_settings, tiny_model)
    _, b = _two_promoted_versions(s)
    other = build_tiny_encoder(tmp_path / "other-base", seed=7)  # same shapes, new weights
    moved = s.replace(model=other)
    _night(db.connect(moved), 2)
    try:
        report = _round(moved)
    except ConfigError:
        return  # refused: also correct
    cand = registry.get_model(moved, report.version_id)  # type: ignore[attr-defined,arg-type]
    parent = registry.get_model(moved, b)
    assert cand.parent_id is None or cand.base_model == parent.base_model, (
        f"{cand.id} (base {cand.base_model}) continues {b} (base {parent.base_model})")


# ------------------------------------------------- a retrain killed half-way, then re-run


# Holds (pinned): `litpulse retrain` SIGKILLed while training leaves only its `.tmp-*`
# folder (no row, nothing a load picks up); re-run at once, the next retrain takes the
# dead holder's lease over and runs to a decision; the half-written folder stays until
# prune_adapters' 24 h (retrain/registry.py:447), never registered.
def test_a_retrain_killed_while_training_is_rerun_cleanly(
    sqlite_settings: Settings, tiny_model: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = _tiny(sqlite_settings, tiny_model)
    engine = db.connect(s)
    _night(engine, 0)
    refresh_index(s)
    _cli_env(monkeypatch, s)
    adapters = s.home / "adapters"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "litpulse", "retrain", "--steps", "100000",
         "--batch-size", "8", "--max-seconds", "120", "--json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            adapters.is_dir() and any(p.name.startswith(".tmp-") for p in adapters.iterdir())
        ):
            assert proc.poll() is None, "the retrain ended before it trained"
            time.sleep(0.1)
        time.sleep(1.0)  # well into training
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    left = [p.name for p in adapters.iterdir()]
    assert left and all(n.startswith(".tmp-") for n in left), left
    assert registry.list_models(s) == []
    capsys.readouterr()
    assert main(["retrain", "--steps", "1", "--batch-size", "8", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"status": "promoted"' in out or '"status": "rejected"' in out, out
    (version,) = registry.list_models(s)
    assert not version.adapter_path.split("/")[-1].startswith(".tmp-")  # type: ignore[union-attr]
    assert {p.name for p in adapters.iterdir()} == {*left, version.id}


# ------------------------------------------------ records of held-back articles (carried)


# retrain/pairs.py _save_untrained: every mining (a dry run too, a round that stopped after
# mining) recorded what its window held back, keyed by its window end, and nothing removed
# them; only the record of a version's window end is ever read (the round continuing it).
def test_held_back_records_are_kept_only_for_versions_a_round_may_continue(
    sqlite_settings: Settings, tiny_model: str
) -> None:
    from sqlalchemy import insert, select

    from litpulse.core.schema import checkpoints
    from litpulse.core.timeutil import iso, utcnow
    from retrain.pairs import UNTRAINED_SCOPE

    s = _tiny(sqlite_settings, tiny_model)
    engine = db.connect(s)
    _night(engine, 0)
    refresh_index(s)

    def keys() -> set[str]:
        with engine.connect() as conn:
            return set(conn.execute(select(checkpoints.c.key)
                                    .where(checkpoints.c.scope == UNTRAINED_SCOPE)).scalars())

    dry = _round(s, dry_run=True)
    assert dry.status == "dry_run" and keys() == set()  # a dry run writes nothing
    first = _round(s)
    version = registry.get_model(s, first.version_id)  # type: ignore[attr-defined]
    assert keys() == {iso(version.window_end)}
    stray = "2020-01-01T00:00:00+00:00"  # as a round that stopped after mining leaves one
    with engine.begin() as conn:
        conn.execute(insert(checkpoints).values(scope=UNTRAINED_SCOPE, key=stray, status="done",
                                                value={"articles": [1]}, updated_at=utcnow()))
    _night(engine, 1)
    second = _round(s)
    ends = {iso(m.window_end) for m in registry.list_models(s)}
    assert stray not in keys() and keys() <= ends, (keys(), ends, second.status)  # type: ignore[attr-defined]
    assert iso(version.window_end) in keys()
