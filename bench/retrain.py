"""Benchmark: LoRA vs full fine-tuning of the same encoder on the same pairs.

Each method runs in its own process (so peak RSS is its own) on the same mined pairs of
a drifted corpus (bench/drift.py: an emerging topic whose titles and abstracts
name invented drugs differently), for the same number of steps, and reports seconds
per step, trainable parameters, the size written to disk (adapter vs full model), peak
RSS, and recall@10 on the fresh and older held-out sets against the base model.

Usage::

    python -m bench.retrain --steps 30 --batch 32 --seq 128 [--threads 2] [--words 100]
        [--r 8] [--targets query,key,value,dense] [--top-layers 3] [--timing-steps 6]

Seconds per step come from a separate phase in which the methods' steps alternate on
the same batches in one process (fair on a machine whose load changes); the trainings
that produce the metrics run one after the other, each in its own process.

``--words`` pads every abstract with neutral sentences up to that many words, so the
sequence length is realistic (PubMed abstracts are ~250 words).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAD = (
    "The protocol was approved by the ethics committee. Baseline characteristics were "
    "balanced between groups. Missing data were handled by multiple imputation. Sensitivity "
    "analyses gave similar results. The funders had no role in the design of the study."
).split()


def _pad(text: str, words: int, seed: int) -> str:
    have = text.split()
    if len(have) >= words:
        return text
    r = random.Random(seed)
    start = r.randrange(len(PAD))
    extra = [PAD[(start + i) % len(PAD)] for i in range(words - len(have))]
    return text + " " + " ".join(extra)


def build_pairs(args: argparse.Namespace) -> tuple[list[Any], Any]:
    """Mine the pairs and held-out sets of a drifted corpus in a temporary store."""
    from bench.drift import insert_batch, make_drugs
    from litpulse.core import db
    from litpulse.core.settings import Settings
    from retrain.evaluate import HeldOut
    from retrain.pairs import mine_pairs

    home = Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    settings = Settings.from_env({}, home=home)
    engine = db.connect(settings)
    drugs = make_drugs(24)
    t0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    insert_batch(engine, start_pmid=1000, n=args.n_old, start=dt.date(2024, 1, 1), days=180,
                 ingested=t0, drugs=drugs, seed=1)
    insert_batch(engine, start_pmid=5000, n=args.n_new, start=dt.date(2024, 7, 1), days=180,
                 ingested=t0 + dt.timedelta(days=180), new_share_from=0.2, new_share_to=0.8,
                 drugs=drugs, seed=2)
    ps = mine_pairs(settings, max_pairs=args.steps * args.batch, fresh_size=args.fresh,
                    distractors=args.distractors, holdout_buckets=8)
    pairs = [dataclasses.replace(p, positive=_pad(p.positive, args.words, i))
             for i, p in enumerate(ps.pairs)]
    h = ps.heldout

    def pad_items(items: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(dataclasses.replace(x, doc=_pad(x.doc, args.words, x.pmid)) for x in items)

    held = HeldOut(pad_items(h.fresh), pad_items(h.older), pad_items(h.distractors))
    return pairs, held


def run_one(method: str, args: argparse.Namespace, pairs: list[Any], held: Any,
            queue: Any) -> None:
    """Train (or only evaluate, for ``base``) in this process; put a result row."""
    import torch

    from litpulse.core.settings import Settings
    from retrain.evaluate import encoder_embed, evaluate_encoder
    from retrain.lora import build_model, train_model

    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix=f"bench-{method}-"))
    settings = Settings.from_env({}, home=home, device=args.device, max_seq_length=args.seq)
    row: dict[str, Any] = {"method": method}
    if method == "base":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(settings.model_path, device=args.device)
        model.max_seq_length = args.seq
        model.save(str(home / "full"))
        row["disk_mb"] = sum(p.stat().st_size for p in (home / "full").rglob("*")
                             if p.is_file()) / 1e6
    else:
        lora = method.startswith("lora")
        options = _options(method, args)
        model, trainable = build_model(settings, options)
        stats = train_model(model, trainable, pairs, options, device=args.device,
                            seed=settings.seed)
        out = home / "out"
        if lora:
            trainable.save_pretrained(str(out))
        else:
            model.save(str(out))
        row.update(
            trainable=stats["trainable_params"],
            s_per_step=stats["seconds_per_step"],
            disk_mb=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6,
            loss=f"{stats['first_loss']:.2f}->{stats['last_loss']:.2f}",
        )
    model.max_seq_length = args.seq
    metrics = evaluate_encoder(encoder_embed(model, 64), held)
    row["fresh"] = metrics["fresh"]["recall@10"]
    row["older"] = metrics["older"]["recall@10"]
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(row)


def _options(method: str, args: argparse.Namespace) -> Any:
    from retrain.lora import LoraOptions

    lora = method.startswith("lora")
    return LoraOptions(
        method="lora" if lora else "full",
        r=args.r,
        alpha=2 * args.r,
        target_modules=tuple(args.targets.split(",")),
        top_layers=args.top_layers if method == "lora" else 0,
        batch_size=args.batch,
        max_steps=args.steps,
        epochs=1000,
        max_seq_length=args.seq,
        learning_rate=args.lr_lora if lora else args.lr_full,
        warmup_steps=min(5, args.steps // 4),
        max_seconds=1e9,
        max_memory_mb=1e9,
    )


def time_interleaved(methods: list[str], args: argparse.Namespace, pairs: list[Any],
                     queue: Any) -> None:
    """Median seconds per training step, the methods' steps alternating on the same batches.

    Alternating step by step in one process makes the comparison fair on a machine whose
    load changes (the sequential training runs above are not).
    """
    import statistics

    import torch

    from litpulse.core.settings import Settings
    from retrain.lora import build_model, contrastive_loss

    torch.set_num_threads(args.threads)
    settings = Settings.from_env({}, home=Path(tempfile.mkdtemp()), device=args.device)
    built = {}
    for m in methods:
        options = _options(m, args)
        model, trainable = build_model(settings, options)
        model.train()
        params = [p for p in trainable.parameters() if p.requires_grad]
        built[m] = (model, options, params, torch.optim.AdamW(params, lr=1e-9))
    rng = random.Random(0)
    order = sorted(range(len(pairs)), key=lambda _: rng.random())
    times: dict[str, list[float]] = {m: [] for m in methods}
    for step in range(args.timing_steps + 1):
        batch = [pairs[order[(step * args.batch + i) % len(pairs)]] for i in range(args.batch)]
        for m in methods:
            model, options, params, opt = built[m]
            t = time.perf_counter()
            contrastive_loss(model, batch, options, args.device).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step:  # the first round warms up
                times[m].append(time.perf_counter() - t)
    queue.put({m: statistics.median(v) for m, v in times.items()})


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--words", type=int, default=100, help="pad abstracts to this many words")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--targets", default="query,key,value,dense")
    ap.add_argument("--top-layers", type=int, default=3)
    ap.add_argument("--lr-lora", type=float, default=3e-3)
    ap.add_argument("--lr-full", type=float, default=5e-5)
    ap.add_argument("--n-old", type=int, default=300)
    ap.add_argument("--n-new", type=int, default=300)
    ap.add_argument("--fresh", type=int, default=60)
    ap.add_argument("--distractors", type=int, default=150)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timing-steps", type=int, default=6,
                    help="alternating steps per method for the s/step column (0: use the "
                         "sequential training runs)")
    ap.add_argument("--methods", default="base,full,lora",
                    help="base, full, lora (top layers only), lora-all (every layer)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    pairs, held = build_pairs(args)
    print(f"{len(pairs)} pairs; held out: fresh {len(held.fresh)}, older {len(held.older)}, "
          f"distractors {len(held.distractors)}; {args.steps} steps of {args.batch}, "
          f"{args.seq} tokens, {args.threads} threads", file=sys.stderr)
    ctx = mp.get_context("spawn")
    rows = []
    for method in args.methods.split(","):
        queue = ctx.Queue()
        t = time.perf_counter()
        proc = ctx.Process(target=run_one, args=(method, args, pairs, held, queue))
        proc.start()
        row = queue.get()
        proc.join()
        row["wall_s"] = time.perf_counter() - t
        rows.append(row)
        print(f"  {method} done in {row['wall_s']:.0f} s", file=sys.stderr)

    trained = [r["method"] for r in rows if r["method"] != "base"]
    if args.timing_steps and trained:
        queue = ctx.Queue()
        proc = ctx.Process(target=time_interleaved, args=(trained, args, pairs, queue))
        proc.start()
        medians = queue.get()
        proc.join()
        for r in rows:
            if r["method"] in medians:
                r["s_per_step_sequential"] = r["s_per_step"]
                r["s_per_step"] = medians[r["method"]]
        print("s/step: median of interleaved steps (sequential runs: "
              + ", ".join(f"{r['method']} {r['s_per_step_sequential']:.2f}"
                          for r in rows if "s_per_step_sequential" in r) + ")",
              file=sys.stderr)
    _report(rows)
    return 0


def _report(rows: list[dict[str, Any]]) -> None:
    """Print the comparison table and the goals of LoRA against full fine-tuning."""
    by = {r["method"]: r for r in rows}
    base = by.get("base", {})
    headers = ["method", "trainable", "s/step", "disk MB", "peak RSS MB", "fresh r@10",
               "older r@10", "fresh gain", "older change", "loss"]
    table = []
    for r in rows:
        gain = r["fresh"] - base["fresh"] if base else float("nan")
        change = r["older"] - base["older"] if base else float("nan")
        table.append([
            r["method"], f"{r.get('trainable', 0):,}", f"{r.get('s_per_step', 0):.2f}",
            f"{r['disk_mb']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['fresh']:.3f}",
            f"{r['older']:.3f}", f"{gain:+.3f}", f"{change:+.3f}", r.get("loss", ""),
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table, strict=True)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for line in table:
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
    if "full" in by and "lora" in by and base:
        f, lo = by["full"], by["lora"]
        speed = f["s_per_step"] / lo["s_per_step"] if lo["s_per_step"] else float("nan")
        share = lo["disk_mb"] / base["disk_mb"] * 100
        fg, lg = f["fresh"] - base["fresh"], lo["fresh"] - base["fresh"]
        print()
        print(f"LoRA speed-up per step: {speed:.2f}x (goal >= 1.5x)")
        print(f"adapter size: {share:.2f}% of the model (goal <= 1%)")
        print(f"fresh gain: LoRA {lg:+.3f} vs full {fg:+.3f} = "
              f"{(lg / fg * 100) if fg > 0 else float('nan'):.0f}% (goal >= 80%)")
        print(f"older change: LoRA {lo['older'] - base['older']:+.3f} vs full "
              f"{f['older'] - base['older']:+.3f} (goal: LoRA forgets less)")


if __name__ == "__main__":
    raise SystemExit(main())
