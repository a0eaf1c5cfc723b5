"""LoRA fine-tuning of the sentence encoder on mined pairs (contrastive, in-batch negatives).

The adapter is a peft ``LoraConfig`` wrapped around the SentenceTransformer's underlying
transformer (``model[0].auto_model``) with :func:`peft.get_peft_model`; transformers'
own ``add_adapter`` is not used (transformers 5.24 refuses peft 0.21). Training is a
plain torch loop so that its time and memory can be bounded. ``max_seconds`` is a
*budget*: one measured step plans how many steps fit in it (so the learning-rate schedule
runs its whole course), a fifth of the way in the steps measured so far plan again (a
machine busy during the one measured step had planned too few: the plan only grows), and
the loop stops when the budget is spent whatever the plan said.
:class:`~litpulse.core.errors.BudgetError` is raised *before* any weight changes when a
single step does not fit the budget or the memory exceeds ``max_memory_mb``.

The loss is MultipleNegativesRankingLoss (cosine similarity × ``scale``, cross-entropy
against the in-batch positives), with each pair's hard negative (BM25's or an expert's)
appended as an extra column; a column holding the same text as a row's own positive
(another anchor of the same article in the batch) is masked for that row. A mined hard
negative is *positive-aware* (NV-Retriever's TopK-PercPos, with the model being trained as
its own teacher): it is masked for a step while the model scores it at least
``false_negative_ratio`` (95 %) of the row's positive, as a lexical near miss that scores
like the positive is more often another right answer than a wrong one.

Example:
    >>> opts = LoraOptions(r=8, max_seconds=60)
    >>> opts.target_modules
    ('query', 'key', 'value', 'dense')
    >>> LoraOptions(r=0)
    Traceback (most recent call last):
    ...
    litpulse.core.errors.ConfigError: `r` must be positive, got 0
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
import resource
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litpulse.core.checksums import file_sha256
from litpulse.core.errors import BudgetError, ConfigError, StorageError
from litpulse.core.settings import Settings, _opt
from litpulse.core.states import Device
from ranking.embed import ADAPTER_WEIGHTS, query_text, quiet_model_loading, resolve_device

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from retrain.pairs import Pair

__all__ = [
    "LoraOptions",
    "TrainResult",
    "ADAPTER_WEIGHTS",
    "build_model",
    "train",
    "train_model",
    "contrastive_loss",
    "file_sha256",
]

logger = logging.getLogger(__name__)

#: File name peft writes the adapter weights to.


@dataclass(frozen=True)
class LoraOptions:
    """Options of one LoRA fine-tune; each field carries its help text."""

    r: int = _opt(8, "LoRA rank.")
    alpha: int = _opt(16, "LoRA alpha (the update is scaled by alpha / r).")
    dropout: float = _opt(0.0, "Dropout on the LoRA input, within [0, 1).")
    target_modules: tuple[str, ...] = _opt(
        ("query", "key", "value", "dense"),
        "Names of the linear modules that get an adapter (BERT: query, key, value, and "
        "dense = attention output and both feed-forward projections).",
    )
    top_layers: int = _opt(
        2,
        "Adapt only the top N transformer layers (0 = all). Lower layers stay frozen and "
        "backpropagation stops above them, which is most of the speed-up on a CPU.",
    )
    method: str = _opt("lora", "lora, or full (full fine-tuning; for benchmarks only).")
    epochs: int = _opt(1, "Most passes over the pairs (the budget usually ends it first).")
    batch_size: int = _opt(32, "Pairs per step; the other positives are the in-batch negatives.")
    learning_rate: float = _opt(3e-3, "AdamW learning rate (peak, after warm-up).")
    warmup_steps: int = _opt(5, "Linear warm-up steps.")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    scale: float = _opt(20.0, "Inverse temperature of the contrastive loss (MNRL's scale).")
    false_negative_ratio: float = _opt(
        0.95,
        "A hard negative the model scores at least this share of the row's positive (cosine) "
        "is taken for another right answer and masked in that step (0 = never masked).",
    )
    max_seq_length: int = _opt(128, "Longest training input, in tokens.")
    sort_by_length: bool = _opt(
        True, "Group pairs of similar length into a batch to cut padding."
    )
    max_steps: int = _opt(
        5000, "Most optimizer steps (a cap; the time budget decides how many fit)."
    )
    max_seconds: float = _opt(
        60.0,
        "Time budget of the training, in seconds (LITPULSE_RETRAIN_BUDGET_S): the steps "
        "are planned to fit it from a measured step, and training stops when it is spent.",
    )
    max_memory_mb: float = _opt(8192.0, "Memory budget (peak RSS, or CUDA memory), in MiB.")
    threads: int = _opt(0, "Torch CPU threads (0 = torch's default).")
    precision: str = _opt(
        "auto",
        "Arithmetic of the forward pass: auto (bf16 autocast where the hardware does bf16 "
        "natively, as embedding does; the adapter's weights stay fp32), fp32 or bf16.",
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # NaN passes every comparison below
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"`{field.name}` must be a finite number, got {value!r}")
        for name in (
            "r alpha epochs batch_size learning_rate max_seq_length max_steps "
            "max_seconds max_memory_mb scale"
        ).split():
            if getattr(self, name) <= 0:
                raise ConfigError(f"`{name}` must be positive, got {getattr(self, name)!r}")
        for name in ("top_layers", "warmup_steps", "weight_decay", "threads",
                     "false_negative_ratio"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"`dropout` must be within [0, 1), got {self.dropout!r}")
        if self.batch_size < 2:
            raise ConfigError("`batch_size` must be at least 2 (in-batch negatives)")
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        else:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules or not all(
            isinstance(m, str) and m for m in self.target_modules
        ):
            raise ConfigError("`target_modules` must name at least one module")
        if self.method not in ("lora", "full"):
            raise ConfigError(f"`method` must be lora or full, got {self.method!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"`precision` must be auto, fp32 or bf16, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoraOptions:
        """Options from a mapping; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown LoRA option(s): {', '.join(unknown)}")
        values = dict(data)
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)

    def replace(self, **changes: Any) -> LoraOptions:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainResult:
    """What one training run did and produced."""

    output_dir: str
    weights_file: str
    sha256: str
    size_bytes: int
    method: str
    device: str
    steps: int
    pairs: int
    seconds: float
    seconds_per_step: float
    budget_seconds: float
    planned_steps: int
    precision: str
    estimated_seconds: float
    estimated_memory_mb: float
    peak_memory_mb: float
    trainable_params: int
    total_params: int
    first_loss: float
    last_loss: float
    stopped_early: bool
    continued_from: str | None
    #: The plan of the one measured step, before the plan grew (``planned_steps``).
    first_planned_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- helpers


def _rss_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _rss_now_mb() -> float:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / (1024 * 1024)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return _rss_peak_mb()


def _num_layers(auto_model: Any) -> int:
    config = auto_model.config
    return int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layers", 0) or 0)


def build_model(
    settings: Settings,
    options: LoraOptions,
    *,
    init_adapter: str | None = None,
    base_model: str | None = None,
) -> tuple[SentenceTransformer, Any]:
    """The encoder prepared for training: returns ``(model, trainable_module)``.

    With ``options.method == "lora"`` the transformer is wrapped in a peft model: a new
    adapter from ``options``, or ``init_adapter`` loaded as trainable (its own rank and
    targets are kept). With ``"full"`` every weight trains.
    """
    from sentence_transformers import SentenceTransformer

    quiet_model_loading()
    device = resolve_device(settings)
    model = SentenceTransformer(base_model or settings.model_path, device=device)
    model.max_seq_length = options.max_seq_length
    first: Any = model[0]
    auto_model = first.auto_model
    if options.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, model
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter:
        peft_model = PeftModel.from_pretrained(auto_model, init_adapter, is_trainable=True)
    else:
        layers = None
        n = _num_layers(auto_model)
        if options.top_layers and n and options.top_layers < n:
            layers = list(range(n - options.top_layers, n))
        config = LoraConfig(
            r=options.r,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=list(options.target_modules),
            layers_to_transform=layers,
            bias="none",
        )
        try:
            peft_model = get_peft_model(auto_model, config)
        except ValueError as exc:
            raise ConfigError(f"`target_modules` do not fit the model: {exc}") from exc
    first.model = peft_model
    model.to(device)
    return model, peft_model


# ----------------------------------------------------------------------------- training


def _epoch_batches(
    n: int, lengths: Sequence[int], options: LoraOptions, rng: random.Random
) -> list[list[int]]:
    """Indexes of the pairs of each step of one epoch (shuffled; similar lengths together)."""
    order = list(range(n))
    rng.shuffle(order)
    bs = options.batch_size
    if options.sort_by_length:
        # sort inside chunks of a few batches: little padding, batches still mixed
        chunk = bs * 8
        sorted_order: list[int] = []
        for start in range(0, len(order), chunk):
            sorted_order.extend(sorted(order[start : start + chunk], key=lambda i: lengths[i]))
        order = sorted_order
    batches = [order[s : s + bs] for s in range(0, len(order), bs)]
    batches = [b for b in batches if len(b) >= 2]
    rng.shuffle(batches)
    return batches


def _schedule(
    n: int, lengths: Sequence[int], options: LoraOptions, seed: int, steps: int
) -> Iterator[list[int]]:
    """The batches of ``steps`` steps, epoch after epoch, deterministic by seed."""
    rng = random.Random(seed)
    done = 0
    while done < steps:
        for batch in _epoch_batches(n, lengths, options, rng):
            if done >= steps:
                return
            yield batch
            done += 1


def autocast_dtype(options: LoraOptions, device: str) -> Any:
    """The autocast dtype of training's forward pass, or ``None`` for fp32.

    ``auto`` takes bf16 where it is native: CUDA devices that support it, CPUs with
    AVX512-BF16/AMX (about twice the steps per second of fp32 there, so more of the
    budget goes to learning).
    """
    import torch

    if options.precision == "fp32":
        return None
    if options.precision == "bf16":
        return torch.bfloat16
    if device.startswith(Device.CUDA):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else None


def contrastive_loss(
    model: Any, batch: Sequence[Pair], options: LoraOptions, device: str, dtype: Any = None
) -> Any:
    """The in-batch contrastive loss (MNRL) of one batch of pairs, ready for ``backward()``.

    Each anchor must pick its own positive among every positive and hard negative of
    the batch; scores are cosine similarities times ``options.scale``. Other columns with
    the text of a row's positive are no negatives of it and are masked out, and so is a
    row's own hard negative while it scores ``options.false_negative_ratio`` of the
    positive or more (:func:`_false_negative_mask`). With ``dtype`` the encoder runs under
    autocast to it (the loss is computed in fp32).
    """
    import torch
    import torch.nn.functional as F

    anchors = [query_text(p.anchor) for p in batch]  # embedded as searches embed them
    docs = [p.positive for p in batch]
    neg_rows = [i for i, p in enumerate(batch) if p.negative]
    docs += [batch[i].negative or "" for i in neg_rows]

    device_type = Device.CUDA if device.startswith(Device.CUDA) else Device.CPU

    def embed(texts: list[str]) -> Any:
        features = model.preprocess(texts)
        features = {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(features)["sentence_embedding"]
        return F.normalize(out.float(), dim=-1)

    a = embed(anchors)
    d = embed(docs)
    cosine = a @ d.T
    mask = _duplicate_mask(docs, len(batch), cosine.device)
    if neg_rows and options.false_negative_ratio > 0:
        mask |= _false_negative_mask(cosine.detach(), neg_rows, options.false_negative_ratio)
    scores = (cosine * options.scale).masked_fill(mask, float("-inf"))
    labels = torch.arange(len(batch), device=scores.device)
    return F.cross_entropy(scores, labels)


def _false_negative_mask(cosine: Any, neg_rows: Sequence[int], ratio: float) -> Any:
    """``cosine``-shaped booleans: the hard negative of row ``neg_rows[k]`` (column
    ``rows + k``) when it scores at least ``ratio`` times that row's positive."""
    import torch

    rows = cosine.shape[0]
    mask = torch.zeros_like(cosine, dtype=torch.bool)
    r = torch.as_tensor(list(neg_rows), device=cosine.device)
    c = torch.arange(rows, rows + len(neg_rows), device=cosine.device)
    mask[r, c] = cosine[r, c] >= ratio * cosine[r, r]
    return mask


def _duplicate_mask(docs: Sequence[str], rows: int, device: Any) -> Any:
    """``(rows, len(docs))`` booleans: column ``j`` repeats row ``i``'s positive, ``j != i``."""
    import torch

    mask = torch.zeros((rows, len(docs)), dtype=torch.bool)
    first: dict[str, list[int]] = {}
    for j, text in enumerate(docs):
        first.setdefault(text, []).append(j)
    for i in range(rows):
        for j in first[docs[i]]:
            if j != i:
                mask[i, j] = True
    return mask.to(device)


def train_model(
    model: Any,
    trainable: Any,
    pairs: Sequence[Pair],
    options: LoraOptions,
    *,
    device: str,
    seed: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the training loop on a prepared model; returns its statistics.

    The budget ``options.max_seconds`` runs from this call: one step is measured first
    (forward and backward, no update) and the steps that fit in what is left of the
    budget are planned (at most ``max_steps`` and ``epochs`` passes), so the learning
    rate decays over the whole plan; the loop stops when the budget is spent in any case.

    Raises:
        BudgetError: A single step does not fit in the budget, or the peak memory
            exceeds ``max_memory_mb`` (raised before any weight changes).
    """
    import torch

    started = time.perf_counter()
    if len(pairs) < 2:
        raise ConfigError("`pairs` must hold at least two training pairs")
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(seed)
    lengths = _token_lengths(model, pairs, options)
    first_epoch = _epoch_batches(len(pairs), lengths, options, random.Random(seed))
    cap = min(options.max_steps, options.epochs * len(first_epoch))
    batches = _schedule(len(pairs), lengths, options, seed, cap)
    params = [p for p in trainable.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    padded = [len(b) * max(lengths[i] for i in b) for b in first_epoch]
    probe_batch = next(batches)
    dtype = autocast_dtype(options, device)

    model.train()
    cuda = device.startswith(Device.CUDA)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)  # the training card's, not the current
    from tqdm.auto import tqdm

    # the bar starts before the measured step, so its rate and ETA count every second
    with tqdm(desc="train", unit="step", disable=not progress) as bar:
        probe = _probe_step(
            model, pairs, probe_batch, options, device,
            cap=cap, n_trainable=n_trainable, lengths=lengths,
            mean_padded=sum(padded) / len(padded), started=started, dtype=dtype,
        )
        bar.total = probe.steps
        bar.refresh()
        losses, stopped_early, planned = _optimise(
            model, pairs, itertools.chain([probe_batch], batches), params, options, device,
            probe=probe, cap=cap, bar=bar, started=started, dtype=dtype,
        )
    seconds = time.perf_counter() - started
    model.eval()
    peak = torch.cuda.max_memory_allocated(device) / (1024 * 1024) if cuda else _rss_peak_mb()
    head = losses[: max(1, min(5, len(losses)))]
    tail = losses[-max(1, min(5, len(losses))) :]
    return {
        "steps": len(losses),
        "seconds": seconds,
        "seconds_per_step": seconds / max(1, len(losses)),
        "budget_seconds": options.max_seconds,
        "planned_steps": planned,
        "first_planned_steps": probe.steps,
        "precision": "bf16" if dtype is not None else "fp32",
        "estimated_seconds": probe.estimated_seconds,
        "estimated_memory_mb": probe.memory_mb,
        "peak_memory_mb": peak,
        "trainable_params": n_trainable,
        "total_params": sum(p.numel() for p in model.parameters()),
        "first_loss": sum(head) / len(head),
        "last_loss": sum(tail) / len(tail),
        "stopped_early": stopped_early,
    }


def _token_lengths(model: Any, pairs: Sequence[Pair], options: LoraOptions) -> list[int]:
    """Tokens of each pair's positive, truncated as training truncates them."""
    encoded = model.tokenizer(
        [p.positive for p in pairs], truncation=True, max_length=options.max_seq_length
    )
    return [len(ids) for ids in encoded["input_ids"]]


def _synchronize(device: str) -> None:
    """Wait for the kernels queued on a CUDA ``device`` (a no-op on the CPU): CUDA calls
    return before their kernels finish, so a clock read without it misses their time."""
    if device.startswith(Device.CUDA):
        import torch

        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class _Probe:
    """The measured first step: its loss (gradients kept), the planned steps and estimates."""

    loss: Any
    seconds: float
    steps: int
    estimated_seconds: float
    memory_mb: float


def _probe_step(
    model: Any,
    pairs: Sequence[Pair],
    probe_batch: Sequence[int],
    options: LoraOptions,
    device: str,
    *,
    cap: int,
    n_trainable: int,
    lengths: Sequence[int],
    mean_padded: float,
    started: float,
    dtype: Any,
) -> _Probe:
    """Measure one step (nothing updated), plan the steps that fit the budget, check memory.

    Raises:
        BudgetError: Not even one step fits in ``max_seconds``, or the memory exceeds
            ``max_memory_mb``.
    """
    import torch

    # warm-up step on two pairs (allocators, kernels, autograd) so that the probe
    # measures a steady step; its gradients are dropped
    contrastive_loss(model, [pairs[0], pairs[1]], options, device, dtype).backward()
    model.zero_grad(set_to_none=True)
    _synchronize(device)  # the warm-up's kernels done before the clock starts

    t0 = time.perf_counter()
    loss = contrastive_loss(model, [pairs[i] for i in probe_batch], options, device, dtype)
    loss.backward()
    _synchronize(device)  # the backward pass still queued on the GPU is part of the step
    probe_s = time.perf_counter() - t0
    opt_state_mb = 2 * n_trainable * 4 / (1024 * 1024)  # AdamW: two fp32 moments
    if device.startswith(Device.CUDA):
        mem_mb = torch.cuda.max_memory_allocated(device) / (1024 * 1024) + opt_state_mb
    else:
        mem_mb = max(_rss_now_mb(), 0.0) + opt_state_mb
    probe_padded = len(probe_batch) * max(lengths[i] for i in probe_batch)
    step_s = probe_s * mean_padded / max(probe_padded, 1) * 1.1
    left = options.max_seconds - (time.perf_counter() - started)
    if left < 0:
        raise BudgetError(
            f"one training step takes longer than the budget: the warm-up and the first "
            f"step took {options.max_seconds - left:.1f} s, over max_seconds="
            f"{options.max_seconds:g}: raise LITPULSE_RETRAIN_BUDGET_S or lower batch_size "
            "or max_seq_length"
        )
    steps = max(1, min(cap, 1 + int(left / max(step_s, 1e-9))))
    est_s = options.max_seconds - left + (steps - 1) * step_s
    logger.info(
        "training %d steps of %d pairs on %s in %s (%.2f s/step measured; budget %.0f s): "
        "about %.0f s, %.0f MiB (%d trainable parameters)",
        steps, options.batch_size, device, dtype or "fp32", step_s, options.max_seconds,
        est_s, mem_mb, n_trainable,
    )
    if mem_mb > options.max_memory_mb:
        raise BudgetError(
            f"training would need about {mem_mb:.0f} MiB, over max_memory_mb="
            f"{options.max_memory_mb:.0f}: lower batch_size or max_seq_length"
        )
    return _Probe(loss=loss, seconds=probe_s, steps=steps, estimated_seconds=est_s,
                  memory_mb=mem_mb)


def _optimise(
    model: Any,
    pairs: Sequence[Pair],
    batches: Iterator[Sequence[int]],
    params: list[Any],
    options: LoraOptions,
    device: str,
    *,
    probe: _Probe,
    cap: int,
    bar: Any,
    started: float,
    dtype: Any,
) -> tuple[list[float], bool, int]:
    """The optimizer loop (AdamW, warm-up then linear decay to 10 %) over the planned steps.

    The first batch is the probe's, whose gradients are already there. The plan is
    ``probe.steps``; after a fifth of it (at least 3 steps, or all but the last of a
    shorter plan) the mean of the steps since the first plans again, and the plan grows
    (up to ``cap``) when at least 20 % more steps fit in what is left of the budget: the
    one measured step may have met a busy machine. It never shrinks (the budget stops the
    loop in any case).

    Returns:
        The loss of every step, whether the budget stopped it before the plan's end, and
        the steps planned in the end.
    """
    import torch

    steps = probe.steps
    replan_at = max(2, min(max(3, steps // 5), steps - 1))  # a step measured after the first
    first_done = 0.0
    optimizer = torch.optim.AdamW(
        params, lr=options.learning_rate, weight_decay=options.weight_decay
    )

    warm = min(options.warmup_steps, max(0, steps // 4))  # of the first plan: a grown
    # plan must not send a step already past the warm-up back into it

    def lr_at(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, 1.0 - (step - warm) / max(1, steps - warm)) * 0.9 + 0.1

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses: list[float] = []
    stopped_early = False
    for step, batch_idx in enumerate(batches):
        if step >= steps:
            break
        if step > 0:
            loss = contrastive_loss(
                model, [pairs[i] for i in batch_idx], options, device, dtype
            )
            loss.backward()
        else:
            loss = probe.loss
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        now = time.perf_counter()
        if step == 0:
            first_done = now
        elif step + 1 == replan_at and step + 1 < steps:
            per_step = (now - first_done) / step * 1.1
            grown = _grown_plan(steps, step + 1, per_step,
                                options.max_seconds - (now - started), cap)  # fmt: skip
            if grown > steps:
                logger.info("training plan %d -> %d steps: %.2f s/step measured over %d steps",
                            steps, grown, per_step, step)  # fmt: skip
                steps = grown
                bar.total = steps
                bar.refresh()
        if step + 1 < steps and now - started > options.max_seconds:
            logger.info("training stopped at step %d of %d: the %.0f s budget is spent",
                        step + 1, steps, options.max_seconds)
            stopped_early = True
            break
    return losses, stopped_early, steps


def _grown_plan(steps: int, done: int, per_step: float, left: float, cap: int) -> int:
    """The plan of ``steps`` after ``done`` of them, each now taking ``per_step`` seconds
    with ``left`` seconds of the budget left: grown (to at most ``cap``) when at least
    20 % more steps fit, else unchanged (it never shrinks)."""
    fit = min(cap, done + int(left / max(per_step, 1e-9)))
    return fit if fit >= 1.2 * steps else steps


def _save(model: Any, trainable: Any, out: Path, options: LoraOptions) -> Path:
    """Save the trained weights into ``out`` (created); returns their weights file.

    Raises:
        StorageError: They could not be written (the disk full, an I/O error):
            safetensors raises its own ``SafetensorError``, torch a ``RuntimeError``.
    """
    from safetensors import SafetensorError

    try:
        out.mkdir(parents=True, exist_ok=True)
        if options.method == "full":
            model.save(str(out))
            return next(iter(sorted(out.glob("*.safetensors"))), None) or out / "model.safetensors"
        trainable.save_pretrained(str(out))
        return out / ADAPTER_WEIGHTS
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise StorageError(
            f"the trained {options.method} weights could not be written in {out} ({exc}); "
            "free space, then train again"
        ) from exc


def train(
    settings: Settings,
    pairs: Sequence[Pair],
    options: LoraOptions,
    out_dir: str | Path,
    *,
    init_adapter: str | None = None,
    progress: bool = False,
) -> TrainResult:
    """Fine-tune the encoder on ``pairs`` and save the adapter to ``out_dir``.

    Args:
        settings: Base model, device and seed come from here.
        pairs: Training pairs (anchor, positive, optional hard negative).
        options: LoRA and budget options.
        out_dir: Folder for the adapter (peft ``save_pretrained``); created.
        init_adapter: Continue training this adapter (incremental); ``None`` starts a
            fresh adapter on the base model.
        progress: Show a tqdm bar (steps, s/step, ETA and the loss) on stderr.

    Raises:
        BudgetError: One step does not fit ``max_seconds``, or the memory exceeds
            ``max_memory_mb``.
        StorageError: The trained weights could not be written (the disk full).
    """
    import torch

    device = resolve_device(settings)
    torch.manual_seed(settings.seed)  # a new adapter's random initial weights too
    model, trainable = build_model(settings, options, init_adapter=init_adapter)
    stats = train_model(
        model, trainable, pairs, options, device=device, seed=settings.seed, progress=progress
    )
    out = Path(out_dir)
    weights = _save(model, trainable, out, options)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    result = TrainResult(
        output_dir=str(out),
        weights_file=str(weights),
        sha256=file_sha256(weights),
        size_bytes=size,
        method=options.method,
        device=device,
        pairs=len(pairs),
        continued_from=init_adapter,
        **stats,
    )
    logger.info(
        "trained %d steps in %.1f s (loss %.3f -> %.3f); adapter %s",
        result.steps, result.seconds, result.first_loss, result.last_loss, out,
    )
    return result
