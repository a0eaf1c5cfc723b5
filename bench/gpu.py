"""Benchmark: the GPU paths beside the CPU, in one short run (issue #12's GPU figures).

One command for the day a GPU host is lent (minutes of device time, all tries together),
measuring what the README projects for the full baseline, each GPU row beside its CPU
anchor in the same run:

* **embedding** — :func:`ranking.embed.embed_texts` of ``--docs`` generated abstracts with
  the bundled all-MiniLM-L6-v2 on the GPU (``LITPULSE_EMBED_PRECISION`` auto: a half type
  kept only at cosine ≥ 0.99) against fp32 on the CPU (a sample of ``--cpu-docs``);
  documents/s, the minimum cosine of the GPU's vectors to the CPU's on that sample, and
  the hours 38 M documents take at that rate.
* **FAISS** — :func:`ranking.faiss_ops.build_index` of ``--vectors`` random unit vectors
  as IVF lists trained and filled on the GPU (``use_gpu=True``) and on the CPU; then
  1,000 queries searched on the GPU copy (:func:`ranking.faiss_ops.to_gpu`) and on the
  CPU index (nprobe 16), and recall@10 of each against exact search.
* **LoRA** — :func:`retrain.lora.train` of ``--steps`` steps (batch 32, 256 tokens) on the
  GPU against ``--cpu-steps`` on the CPU: seconds per step.

Without a CUDA device it says so and exits 0; ``--cpu`` runs the same code with the CPU
in place of the GPU (small sizes: what the test does). Never pass/fail.

    python -m bench.gpu                       # on the GPU host
    python -m bench.gpu --cpu --docs 16 --cpu-docs 8 --vectors 5000 --steps 2 --cpu-steps 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Documents of the full annual baseline the projections are made for.
BASELINE_DOCS = 38_000_000


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


#: The scratch home of this run's settings (set by :func:`main`, removed at its end).
_HOME: list[str] = []


def _settings(device: str) -> Any:
    from litpulse.core.settings import Settings

    if not _HOME:
        _HOME.append(tempfile.mkdtemp(prefix="bench-gpu-"))
    return Settings.from_env({}, home=_HOME[0]).replace(device=device)


def _places(device: str) -> tuple[str, ...]:
    """The CPU anchor, then ``device`` (once, where ``device`` is the CPU)."""
    return ("cpu",) if device == "cpu" else ("cpu", device)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def embedding_rows(device: str, docs: int, cpu_docs: int) -> list[list[str]]:
    """Documents/s on ``device`` against fp32 on the CPU, and their agreement."""
    from bench.embed import realistic_texts
    from ranking.embed import ModelSpec, clear_cache, embed_texts, load_encoder

    texts = realistic_texts(max(docs, cpu_docs))
    rows = []
    cpu = _settings("cpu").replace(embed_precision="fp32")
    encoder = load_encoder(ModelSpec("base", cpu.model_path, None), cpu)
    sample = texts[:cpu_docs]
    t = time.perf_counter()
    reference = embed_texts(encoder, sample, cpu)
    cpu_rate = len(sample) / (time.perf_counter() - t)
    rows.append(["embedding, CPU fp32 (anchor)", f"{cpu_rate:,.1f} docs/s", "1.00×",
                 "1.00000", f"{BASELINE_DOCS / cpu_rate / 3600:,.1f} h"])
    clear_cache()
    settings = _settings(device)
    encoder = load_encoder(ModelSpec("base", settings.model_path, None), settings)
    embed_texts(encoder, texts[: min(64, len(texts))], settings)  # warm-up (kernels, autotune)
    _sync(device)
    t = time.perf_counter()
    vectors = embed_texts(encoder, texts[:docs], settings)
    _sync(device)
    rate = docs / (time.perf_counter() - t)
    cos = np.sum(vectors[: len(sample)] * reference, axis=1).min()
    rows.append([f"embedding, {device} ({settings.embed_precision})", f"{rate:,.1f} docs/s",
                 f"{rate / cpu_rate:,.2f}×", f"{cos:.5f}",
                 f"{BASELINE_DOCS / rate / 3600:,.1f} h"])
    clear_cache()
    return rows


def faiss_rows(device: str, n: int, queries: int = 1000) -> list[list[str]]:
    """IVF build and search on ``device`` against the CPU, with recall@10."""
    import faiss

    from ranking.faiss_ops import build_index, faiss_device, to_gpu

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    q = vectors[rng.choice(n, size=min(queries, n), replace=False)]
    q = q + 0.05 * rng.standard_normal(q.shape).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(384)
    exact.add(vectors)
    _, truth = exact.search(q, 10)
    truth_ids = ids[truth]

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth_ids,
                                                                         strict=True)]))

    rows = []
    timings = {}
    on_gpu = faiss_device(_settings(device).replace(use_gpu="yes"))
    if device == "cuda" and on_gpu["device"] != "gpu":  # why, as `litpulse status` says
        return [["FAISS IVF on the GPU", "—", "—", "—", on_gpu["why"]]]
    for where in _places(device):
        t = time.perf_counter()
        index = build_index(vectors, ids, kind="ivf", nprobe=16, use_gpu=where == "cuda")
        built = time.perf_counter() - t
        searcher, positions = index, None
        if where == "cuda":
            searcher, positions, _res = to_gpu(index, "ivf", 16)
        searcher.search(q[:10], 10)  # warm-up
        t = time.perf_counter()
        _, found = searcher.search(q, 10)
        searched = time.perf_counter() - t
        if positions is not None:
            found = positions[found]
        timings[where] = (built, searched)
        label = "CPU (anchor)" if where == "cpu" else where
        rows.append([f"FAISS IVF, {n:,} vectors, {label}", f"build {built:,.1f} s",
                     f"{timings['cpu'][0] / built:,.2f}× build",
                     f"{len(q) / searched:,.0f} queries/s "
                     f"({timings['cpu'][1] / searched:,.2f}×)",
                     f"recall@10 {recall(found):.3f}"])
    return rows


def lora_rows(
    device: str, steps: int, cpu_steps: int, batch: int = 32, tokens: int = 256
) -> list[list[str]]:
    """Seconds per LoRA step on ``device`` against the CPU (``batch`` pairs of up to
    ``tokens`` tokens a step)."""
    from bench.embed import realistic_texts
    from retrain.lora import LoraOptions, train
    from retrain.pairs import Pair

    texts = realistic_texts(batch * max(steps, cpu_steps))
    pairs = [Pair(t.split("\n", 1)[0], t.split("\n", 1)[-1], "title_abstract", i)
             for i, t in enumerate(texts)]
    rows = []
    per_step = {}
    for where in _places(device):
        n = cpu_steps if where == "cpu" else steps
        settings = _settings(where)
        options = LoraOptions(max_steps=n, batch_size=batch, max_seq_length=tokens,
                              warmup_steps=0, max_seconds=3600)
        with tempfile.TemporaryDirectory() as out:
            result = train(settings, pairs[: batch * n], options, out)
        per_step[where] = result.seconds_per_step
        label = "CPU (anchor)" if where == "cpu" else where
        rows.append([f"LoRA r=8, batch {batch}, {tokens} tokens, {label}",
                     f"{result.seconds_per_step:,.3f} s/step",
                     f"{per_step['cpu'] / result.seconds_per_step:,.2f}×",
                     f"{result.steps} steps ({result.precision})",
                     f"peak {result.peak_memory_mb:,.0f} MB"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=8192, help="documents embedded on the GPU")
    ap.add_argument("--cpu-docs", type=int, default=256, help="the CPU anchor's sample")
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=20, help="LoRA steps on the GPU")
    ap.add_argument("--cpu-steps", type=int, default=3, help="LoRA steps on the CPU")
    ap.add_argument("--lora-batch", type=int, default=32, help="pairs a LoRA step")
    ap.add_argument("--lora-tokens", type=int, default=256, help="tokens a text, at most")
    ap.add_argument("--cpu", action="store_true",
                    help="run the GPU rows on the CPU (no CUDA device needed)")
    ap.add_argument("--only", nargs="*", choices=("embedding", "faiss", "lora"),
                    default=["embedding", "faiss", "lora"])
    args = ap.parse_args(argv)
    if args.cpu:
        device = "cpu"
    elif cuda_available():
        device = "cuda"
    else:
        print("no CUDA device: nothing to measure (run on a GPU host, or pass --cpu to run "
              "the same code on the CPU)")
        return 0
    rows: list[list[str]] = []
    try:
        if "embedding" in args.only:
            rows += embedding_rows(device, args.docs, args.cpu_docs)
        if "faiss" in args.only:
            rows += faiss_rows(device, args.vectors)
        if "lora" in args.only:
            rows += lora_rows(device, args.steps, args.cpu_steps, args.lora_batch,
                              args.lora_tokens)
    finally:
        while _HOME:
            shutil.rmtree(_HOME.pop(), ignore_errors=True)
    if device == "cuda":
        import torch

        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| path | rate | × CPU anchor | check | projection / note |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
