"""LoRA options, the budget check, saving, loading and continuing an adapter."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from litpulse.core.errors import BudgetError, ConfigError
from litpulse.core.settings import Settings
from retrain.lora import ADAPTER_WEIGHTS, LoraOptions, TrainResult, file_sha256, train
from retrain.pairs import Pair

PAIRS = [
    Pair(f"Zorvex trial {i}", f"quatesmab given to patients, cohort {i}", "title_abstract", i)
    for i in range(8)
] + [Pair("statins and dementia", "statin use and dementia risk", "feedback", 99,
          negative="influenza vaccine uptake")]

TINY = LoraOptions(
    max_steps=2, batch_size=4, max_seq_length=32, warmup_steps=0, precision="fp32"
)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("r", 0, "`r` must be positive"),
        ("alpha", -1, "`alpha` must be positive"),
        ("dropout", 1.0, "`dropout` must be within"),
        ("batch_size", 1, "`batch_size` must be at least 2"),
        ("target_modules", (), "`target_modules`"),
        ("method", "qlora", "`method`"),
        ("max_seconds", 0, "`max_seconds` must be positive"),
        ("top_layers", -1, "`top_layers` must be >= 0"),
    ],
)
def test_options_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoraOptions(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["max_seconds", "learning_rate", "max_memory_mb", "scale",
                                   "weight_decay", "false_negative_ratio", "dropout"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_options_refuse_a_value_that_is_not_finite(field: str, value: float) -> None:
    """NaN passed every ``<= 0`` / ``< 0`` check (a NaN ``max_seconds`` trained with no
    budget at all); an infinity is no budget either."""
    with pytest.raises(ConfigError, match=f"`{field}` must be a finite number"):
        LoraOptions(**{field: value})  # type: ignore[arg-type]


def test_options_round_trip() -> None:
    opts = LoraOptions(r=4, target_modules=("query", "key", "value"))
    assert LoraOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    with pytest.raises(ConfigError, match="unknown LoRA option"):
        LoraOptions.from_dict({"rank": 4})


def _pairs(n: int) -> list[Pair]:
    return [Pair(f"trial {i} of drug {i % 7}", f"drug number {i % 7} given to cohort {i}",
                 "title_abstract", i) for i in range(n)]


class _StepClock:
    """The loop's clock, advanced by each forward pass as a machine would take it: the
    budget logic is judged on time it is told, not on what a shared CI core gives (a
    fresh-clone CI measured one step of the tiny model at 3.6 s once, and the plan
    rightly held one step). ``costs(call)`` is the seconds of the ``call``-th forward
    pass (0: the warm-up, 1: the measured step, 2 on: the steps after it)."""

    def __init__(self, costs: Callable[[int], float]) -> None:
        self.now = 1000.0
        self.calls = 0
        self.costs = costs

    def perf_counter(self) -> float:
        return self.now

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import retrain.lora as lora

        real = lora.contrastive_loss

        def timed(*args: Any, **kwargs: Any) -> Any:
            loss = real(*args, **kwargs)
            self.now += self.costs(self.calls)
            self.calls += 1
            return loss

        monkeypatch.setattr(lora, "contrastive_loss", timed)
        monkeypatch.setattr(lora, "time", SimpleNamespace(perf_counter=self.perf_counter))


def _budget_run(
    s: Settings, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    costs: Callable[[int], float],
) -> TrainResult:
    _StepClock(costs).install(monkeypatch)
    opts = TINY.replace(max_steps=10**6, epochs=10**6, max_seconds=10.0, batch_size=8)
    return train(s.replace(model=tiny_model, device="cpu"), _pairs(64), opts, tmp_path / "a")


def test_the_budget_sizes_and_stops_training(
    sqlite_settings: Settings, tiny_model: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No fixed step count: the steps that fit the budget run, then training stops."""
    result = _budget_run(sqlite_settings, tiny_model, tmp_path, monkeypatch, lambda _: 0.2)
    assert result.budget_seconds == 10.0
    # planned from the measured step (0.2 s, padded to the mean batch, 10 % margin) to
    # fill the 9.6 s left after the warm-up and the measured step; all of it ran
    assert 25 < result.first_planned_steps == result.planned_steps == result.steps < 60
    assert not result.stopped_early
    assert 0.8 * 10.0 <= result.seconds <= 10.0
    assert Path(result.weights_file).exists()


def test_the_budget_stops_training_whatever_the_plan(
    sqlite_settings: Settings, tiny_model: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The steps after the measured one take five times as long: the plan (~90 steps)
    does not fit, and the budget stops the loop at its first step past 10 s."""
    result = _budget_run(sqlite_settings, tiny_model, tmp_path, monkeypatch,
                         lambda call: 0.1 if call < 2 else 0.5)
    assert result.stopped_early
    assert result.steps < result.planned_steps
    assert result.steps == 21  # 0.2 s, step 0 (the measured one), 20 of 0.5 s: 10.2 s
    assert 10.0 < result.seconds <= 10.0 + 0.5
    assert Path(result.weights_file).exists()


def test_a_plan_made_while_the_machine_was_busy_grows(
    sqlite_settings: Settings, tiny_model: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The warm-up and the measured step met a busy machine (1 s each: 8 steps planned);
    the steps after take 0.1 s: a fifth of the way in, the plan grows to fill the budget."""
    result = _budget_run(sqlite_settings, tiny_model, tmp_path, monkeypatch,
                         lambda call: 1.0 if call < 2 else 0.1)
    assert result.first_planned_steps < 10
    assert result.planned_steps > 5 * result.first_planned_steps
    assert result.steps == result.planned_steps and not result.stopped_early
    assert 0.8 * 10.0 <= result.seconds <= 10.0


def test_a_plan_made_on_a_busy_machine_grows_from_the_steps_measured_since() -> None:
    """The budget was planned from one measured step only: a fresh-clone CI run that
    shared the cores measured it slow and trained 2.5 s of a 10 s budget. A fifth of the
    way in, the steps measured since plan again (here: the one step said 0.12 s, 80 steps
    in 10 s; the 16 since took 0.011 s each, with 8 s left)."""
    from retrain.lora import _grown_plan

    assert _grown_plan(80, 16, 0.011, 8.0, 10**6) == 16 + int(8.0 / 0.011)
    assert _grown_plan(80, 16, 0.011, 8.0, 200) == 200  # never past max_steps / epochs
    assert _grown_plan(80, 16, 0.105, 8.0, 10**6) == 80  # 92 fit: less than 20 % more
    assert _grown_plan(80, 16, 0.5, 8.0, 10**6) == 80  # never shrinks (the budget stops it)


def test_budget_errors_come_before_training(
    sqlite_settings: Settings, tiny_model: str, tmp_path: Path
) -> None:
    s = sqlite_settings.replace(model=tiny_model, device="cpu")
    with pytest.raises(BudgetError, match="one training step takes longer than the budget"):
        train(s, PAIRS, TINY.replace(max_seconds=1e-6), tmp_path / "a")
    with pytest.raises(BudgetError, match="max_memory_mb"):
        train(s, PAIRS, TINY.replace(max_memory_mb=1.0), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_training_progress_shows_steps_rate_and_loss(
    sqlite_settings: Settings, tiny_model: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = sqlite_settings.replace(model=tiny_model, device="cpu")
    result = train(s, _pairs(40), TINY.replace(max_steps=6, batch_size=4), tmp_path / "a",
                   progress=True)
    err = capsys.readouterr().err
    assert result.steps == 6
    assert re.search(r"train: 100%.*6/6 \[[0-9:]+<[0-9:]+, +[0-9.]+(step/s|s/step)", err), err
    assert re.search(r"loss=[0-9]+\.[0-9]{3}", err)


def test_train_save_load_and_continue(sqlite_settings: Settings, tmp_path: Path) -> None:
    from ranking.embed import ModelSpec, embed_texts, load_encoder

    s = sqlite_settings.replace(max_seq_length=32, device="cpu")
    first = train(s, PAIRS, TINY, tmp_path / "a")
    weights = Path(first.weights_file)
    assert weights.name == ADAPTER_WEIGHTS and weights.exists()
    assert first.sha256 == file_sha256(weights)
    assert first.steps == 2 and first.method == "lora"
    assert 0 < first.trainable_params < first.total_params / 100
    assert first.size_bytes < 1_000_000
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"query", "key", "value", "dense"}
    assert config["layers_to_transform"] == [4, 5]  # top_layers=2 of six

    # the ranking side loads the adapter and embeds with it
    tuned = load_encoder(ModelSpec("t", s.model_path, str(tmp_path / "a")), s, cache=False)
    base = load_encoder(ModelSpec("base", s.model_path, None), s, cache=False)
    texts = ["Zorvex trial 1"]
    v_tuned, v_base = embed_texts(tuned, texts, s), embed_texts(base, texts, s)
    assert v_tuned.shape == v_base.shape == (1, 384)
    assert not np.allclose(v_tuned, v_base, atol=1e-6)

    # incremental: continue the same adapter (its own shape is kept)
    second = train(s, PAIRS, TINY.replace(r=16), tmp_path / "b",
                   init_adapter=str(tmp_path / "a"))
    assert second.continued_from == str(tmp_path / "a")
    assert second.trainable_params == first.trainable_params
    assert second.sha256 != first.sha256


def test_same_positive_twice_in_a_batch_is_no_negative(sqlite_settings: Settings) -> None:
    from retrain.lora import build_model, contrastive_loss

    s = sqlite_settings.replace(max_seq_length=32, device="cpu")
    model, _ = build_model(s, TINY)
    article = "Zorvex lowered the relapse rate in older adults."
    # two anchors of one article: each other's positive is their own, not a negative
    same = [Pair("zorvex relapse", article, "keywords", 1),
            Pair("Relapse in older adults", article, "sentence", 1)]
    loss = contrastive_loss(model, same, TINY, "cpu").detach()
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    # a hard negative (a near miss) is a real column: the loss is above zero
    near = "Zorvex lowered the relapse rate in children."
    hard = [Pair(p.anchor, p.positive, p.kind, 1, negative=near) for p in same]
    assert float(contrastive_loss(model, hard, TINY, "cpu").detach()) > 1e-3


def test_a_hard_negative_scoring_like_the_positive_is_masked(sqlite_settings: Settings) -> None:
    """Positive-aware hard negatives: a near copy of the positive is another right answer
    (masked while it scores >= 95 % of the positive); a plainly worse one stays a column."""
    import torch

    from retrain.lora import _false_negative_mask, build_model, contrastive_loss

    cosine = torch.tensor([[0.50, 0.10, 0.49, 0.20], [0.30, 0.60, 0.00, 0.40]])
    # row 0's negative is column 2 (0.49 >= 0.95 * 0.50), row 1's column 3 (0.40 < 0.57)
    assert _false_negative_mask(cosine, [0, 1], 0.95).tolist() == [
        [False, False, True, False], [False, False, False, False]]

    s = sqlite_settings.replace(max_seq_length=32, device="cpu")
    model, _ = build_model(s, TINY)
    anchors = ("zorvex relapse in older adults", "influenza vaccine uptake in children")
    docs = ("Zorvex lowered the relapse rate in older adults.",
            "Vaccine uptake among children rose after reminders.")
    plain = [Pair(a, d, "sentence", i) for i, (a, d) in enumerate(zip(anchors, docs,
                                                                      strict=True))]
    near = [dataclasses.replace(p, negative=p.positive + " ") for p in plain]
    loss = {
        name: float(
            contrastive_loss(model, batch, TINY.replace(false_negative_ratio=r), "cpu").detach()
        )
        for name, batch, r in (("plain", plain, 0.95), ("masked", near, 0.95),
                               ("unmasked", near, 0.0))
    }
    assert loss["masked"] == pytest.approx(loss["plain"], abs=1e-5)
    assert loss["unmasked"] > loss["plain"] + 0.1



def test_same_seed_same_pairs_same_adapter(sqlite_settings: Settings, tmp_path: Path) -> None:
    """A retrain is reproducible: the new adapter's random initial weights come from the
    seed too, not from whatever the process drew before (two bench runs of one setup
    trained different models: first losses 1.005 and 0.995)."""
    import torch

    s = sqlite_settings.replace(max_seq_length=32, device="cpu")
    first = train(s, PAIRS, TINY, tmp_path / "a")
    torch.rand(7)  # the process's random state moves on between the two runs
    second = train(s, PAIRS, TINY, tmp_path / "b")
    assert second.sha256 == first.sha256
    other = train(s.replace(seed=s.seed + 1), PAIRS, TINY, tmp_path / "c")
    assert other.sha256 != first.sha256


def test_anchors_are_embedded_as_searches_embed_queries(sqlite_settings: Settings) -> None:
    """A training anchor goes through :func:`ranking.embed.query_text` like a search does:
    an expert's ``statins and dementia?`` trains the query that search embeds."""
    import torch

    from retrain.lora import build_model, contrastive_loss

    s = sqlite_settings.replace(max_seq_length=32, device="cpu")
    model, _ = build_model(s, TINY)
    model.eval()
    docs = ["statin use and dementia risk", "influenza vaccine uptake in adults"]
    asked = [Pair("statins and dementia?", docs[0], "feedback", 1),
             Pair("Influenza vaccines.", docs[1], "feedback", 2)]
    bare = [Pair("statins and dementia", docs[0], "feedback", 1),
            Pair("Influenza vaccines", docs[1], "feedback", 2)]
    with torch.no_grad():
        a = float(contrastive_loss(model, asked, TINY, "cpu").detach())
        b = float(contrastive_loss(model, bare, TINY, "cpu").detach())
        glued = [Pair(p.anchor + " ?x", p.positive, p.kind, p.pmid) for p in bare]
        c = float(contrastive_loss(model, glued, TINY, "cpu").detach())
    assert a == pytest.approx(b, abs=1e-6)
    assert abs(c - b) > 1e-6  # the loss does see the anchor's text
