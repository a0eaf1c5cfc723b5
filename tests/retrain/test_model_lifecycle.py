"""The model lifecycle under a hurried team (found by a hostile review): the gate at its
margin, two promotions at once, base models, changed adapter weights, the held-out set."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from litpulse.core.settings import Settings, default_model_path
from litpulse.core.states import ModelStatus
from retrain import registry
from retrain.evaluate import gate
from tests.retrain.histories import adapter_folder


def _register(settings: Settings, digest: str, *, adapter_path: str | None = None,
              sha: str | None = None) -> str:
    vid = registry.new_version_id(digest * 6)
    if adapter_path is None:  # there: a rollback may go back to it
        adapter_path, written = adapter_folder(settings, vid)
        sha = sha or written
    registry.register(
        settings, id=vid, adapter_path=adapter_path,
        adapter_sha256=sha or digest * 64, parent_id=None, window_start=None,
        window_end=dt.datetime(2024, 12, 1, tzinfo=dt.UTC),
        pair_counts={"title_abstract": 10}, options={"r": 8},
        metrics={"candidate": {"fresh": {"recall@10": 0.5}}},
    )
    time.sleep(0.01)
    return vid


def _metrics(fresh: float, older: float, n: int = 200) -> dict[str, dict[str, float]]:
    return {"fresh": {"recall@10": fresh, "queries": n},
            "older": {"recall@10": older, "queries": n}}


# ------------------------------------------------------------------------------- gate


def test_a_fresh_gain_equal_to_the_margin_passes_the_gate(sqlite_settings: Settings) -> None:
    s = sqlite_settings
    assert s.gate_fresh_margin == 0.005
    # active finds 2 of 200 fresh articles, the candidate 3: gain = 1/200 = margin
    decision = gate(s, _metrics(round(3 / 200, 6), 0.5), _metrics(round(2 / 200, 6), 0.5))
    assert decision.passed, decision.reasons


# --------------------------------------------------------------------------- registry


def test_two_promotions_at_once_leave_one_active_model(settings: Settings) -> None:
    if not settings.effective_database_url.startswith("postgresql"):
        pytest.skip("the race needs concurrent writers (PostgreSQL)")
    a, b = _register(settings, "a"), _register(settings, "b")
    barrier = threading.Barrier(2, timeout=5)
    original = registry._append_event

    def slow_append(conn: Any, id: str, event: Any, **kw: Any) -> None:
        original(conn, id, event, **kw)
        if str(event) == "promoted":  # both switches done, neither committed
            barrier.wait()

    errors: list[BaseException] = []

    def run(vid: str) -> None:
        try:
            registry.promote(settings, vid, by="x", reindex=lambda _s: None)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    registry._append_event = slow_append  # type: ignore[assignment]
    try:
        threads = [threading.Thread(target=run, args=(v,)) for v in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    finally:
        registry._append_event = original  # type: ignore[assignment]
    active = [m.id for m in registry.list_models(settings) if m.status == ModelStatus.ACTIVE]
    assert len(active) <= 1, f"two active model versions: {active}"


def test_a_version_keeps_the_base_model_it_was_trained_on(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    from ranking.embed import model_spec

    s = sqlite_settings
    vid = _register(s, "a")
    assert registry.get_model(s, vid).base_model == "all-MiniLM-L6-v2"
    other = tmp_path / "other-model"
    other.mkdir()
    moved = s.replace(model=str(other))  # LITPULSE_MODEL set to another base model later
    assert model_spec(moved, vid).base_model == default_model_path()


# ---------------------------------------------------------------------------- adapters


def test_an_adapter_whose_weights_changed_is_refused(
    sqlite_settings: Settings, tmp_path: Path, tiny_model: str
) -> None:
    from ranking.embed import load_encoder, model_spec
    from retrain.lora import LoraOptions, train
    from retrain.pairs import Pair

    s = sqlite_settings.replace(model=tiny_model, max_seq_length=32, device="cpu")
    pairs = [Pair(f"Zorvex trial {i}", f"quatesmab cohort {i}", "title_abstract", i)
             for i in range(8)]
    opts = LoraOptions(max_steps=1, batch_size=4, max_seq_length=32, warmup_steps=0,
                       precision="fp32")
    folder = s.ensure_home() / "adapters" / "a"
    result = train(s, pairs, opts, folder)
    vid = _register(s, "a", adapter_path=str(folder), sha=result.sha256)
    weights = Path(result.weights_file)
    data = bytearray(weights.read_bytes())
    for i in range(1, 65):  # tensor bytes at the end of the file, header kept valid
        data[-i] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(Exception, match="(?i)sha|checksum|corrupt|changed"):
        load_encoder(model_spec(s, vid), s, cache=False)


# ------------------------------------------------------------------------------ pairs


def test_the_older_heldout_set_never_holds_articles_an_earlier_round_trained_on(
    sqlite_settings: Settings,
) -> None:
    from bench.drift import insert_batch, make_drugs
    from litpulse.core.db import connect
    from retrain.pairs import mine_pairs

    s = sqlite_settings
    engine = connect(s)
    t0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    drugs = make_drugs(12)
    insert_batch(engine, start_pmid=1000, n=120, start=dt.date(2024, 1, 1), days=180,
                 ingested=t0, drugs=drugs, seed=1)
    first = mine_pairs(s, since=None, fresh_size=20, distractors=20, anchors=False)
    trained = {p.pmid for p in first.pairs} | {
        p.positive_pmid for p in first.pairs if p.positive_pmid is not None}
    insert_batch(engine, start_pmid=5000, n=120, start=dt.date(2024, 7, 1), days=180,
                 ingested=t0 + dt.timedelta(days=180), drugs=drugs, seed=2)
    same = mine_pairs(s, since=first.window_end, fresh_size=20, distractors=20, anchors=False)
    assert not {i.pmid for i in same.heldout.older} & trained  # same seed: sound
    reseeded = mine_pairs(s.replace(seed=s.seed + 1), since=first.window_end, fresh_size=20,
                          distractors=20, anchors=False)
    leaked = {i.pmid for i in reseeded.heldout.older} & trained
    assert not leaked, f"{len(leaked)} older held-out articles were trained on"


def test_a_trained_adapter_reaches_the_disk_before_its_name(
    sqlite_settings: Settings, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter folder is renamed from its temporary name to its version id, and then
    registered: a crash after that rename must not leave a registered folder whose files
    never reached the disk (a rename is written before the data of files written just
    before it). Every file of the adapter and the folder itself are fsynced before the
    rename, the parent folder after it (the OS calls observed as they happen)."""
    import os
    import types

    from retrain.lora import LoraOptions
    from retrain.pairs import Pair
    from retrain.run import _train_candidate

    s = sqlite_settings.replace(model=tiny_model, max_seq_length=32, device="cpu")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def moved(real: Any) -> Any:
        def move(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            events.append(("rename", str(src)))
            real(src, dst, *a, **k)
        return move

    pairs = types.SimpleNamespace(pairs=[
        Pair(f"Zorvex trial {i}", f"quatesmab cohort {i}", "title_abstract", i)
        for i in range(8)])  # fmt: skip
    opts = LoraOptions(max_steps=1, batch_size=4, max_seq_length=32, warmup_steps=0,
                       precision="fp32")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", moved(real_replace))
    monkeypatch.setattr(os, "rename", moved(real_rename))
    _vid, final, _stats = _train_candidate(s, pairs, opts, init_adapter=None,  # type: ignore[arg-type]
                                           progress=False)  # fmt: skip
    monkeypatch.undo()
    renames = [i for i, (kind, path) in enumerate(events)
               if kind == "rename" and Path(path).name.startswith(".tmp-")]  # fmt: skip
    assert len(renames) == 1, events
    tmp = events[renames[0]][1]
    before = {path for kind, path in events[:renames[0]] if kind == "fsync"}
    files = [p for p in final.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert str(Path(tmp) / p.relative_to(final)) in before, (p, events)
    assert tmp in before
    assert ("fsync", str(final.parent)) in events[renames[0]:]
