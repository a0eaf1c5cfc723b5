"""Benchmark: plain ``SentenceTransformer.encode`` vs litpulse's embedding path.

Both run side by side in one process on the same realistic abstracts (from
``litpulse.app.demo.generate`` when available, else built-in long abstracts of ~250 words) and
the same model; the table gives docs/s, the speed-up and the cosine of each fast vector
to its plain fp32 vector (min and mean). Timing is never part of the test run.

Usage::

    python -m bench.embed --docs 256 [--batch 32] [--fast-batch 64] [--max-seq 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_WORDS = (
    "patients cohort randomised trial clinical outcome mortality receptor protein expression "
    "gene signalling pathway inflammation tumour cancer cells mice treatment therapy dose "
    "placebo significantly increased decreased associated risk factors analysis hospital "
    "infection virus antibody vaccine immune response chronic disease diabetes insulin "
    "cardiovascular heart failure stroke neurons cognitive imaging biomarkers sequencing "
    "(95% CI 1.2-2.4) p<0.001 hazard ratio odds meta-analysis longitudinal prospective"
).split()


def realistic_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` article texts (title + abstract) as litpulse embeds them."""
    from ranking.embed import article_text

    try:
        from ingest.parse import iter_items
        from ingest.records import Record
        from litpulse.app.demo.generate import generate_corpus

        texts: list[str] = []
        with tempfile.TemporaryDirectory() as tmp:
            manifest = generate_corpus(tmp, n_records=int(n * 1.2) + 10, seed=seed)
            for path in manifest.files:
                for item in iter_items(path):
                    if isinstance(item, Record) and item.abstract:
                        texts.append(article_text(item.title, item.abstract))
        if len(texts) >= n:
            return texts[:n]
    except ImportError:
        pass
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        title = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 18))).capitalize()
        body = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(180, 320)))
        out.append(article_text(title, body.capitalize() + "."))
    return out


def _time(fn: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """Wall seconds, CPU seconds (all threads of this process) and the result."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def _runner(encoder: Any, texts: list[str], settings: Any) -> Callable[[], np.ndarray]:
    from ranking.embed import embed_texts

    return lambda: embed_texts(encoder, texts, settings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=256, help="abstracts to embed")
    parser.add_argument("--batch", type=int, default=32, help="batch size of plain encode")
    parser.add_argument("--fast-batch", type=int, default=0,
                        help="batch size of the litpulse path (default: the setting)")
    parser.add_argument("--max-seq", type=int, default=256, help="max tokens")
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs")
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from litpulse.core.settings import Settings
    from litpulse.core.states import Precision
    from ranking.embed import ModelSpec, embed_texts, load_encoder, resolve_device

    texts = realistic_texts(args.docs)
    base = Settings.from_env({}, max_seq_length=args.max_seq)
    fast_batch = args.fast_batch or base.embed_batch_size
    device = resolve_device(base)
    plain = SentenceTransformer(base.model_path, device=device)
    plain.max_seq_length = args.max_seq
    tok = plain.tokenizer
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    over = sum(n > args.max_seq for n in lengths) / len(lengths)

    def run_plain() -> np.ndarray:
        return np.asarray(plain.encode(texts, batch_size=args.batch, convert_to_numpy=True,
                                       normalize_embeddings=True))

    paths: list[tuple[str, Callable[[], np.ndarray]]] = [("plain encode (fp32)", run_plain)]
    for precision in (Precision.FP32, Precision.AUTO):
        settings = base.replace(embed_precision=precision, embed_batch_size=fast_batch)
        encoder = load_encoder(ModelSpec(f"bench-{precision}", base.model_path), settings)
        embed_texts(encoder, texts[:16], settings)  # warm-up (and the precision probe)
        paths.append((f"litpulse embed_texts ({precision})", _runner(encoder, texts, settings)))
    plain.encode(texts[:16], batch_size=args.batch)  # warm-up
    # interleaved repeats, best of each: fair under a fluctuating machine load
    best = {label: float("inf") for label, _ in paths}
    cpu = {label: float("inf") for label, _ in paths}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for label, fn in paths:
            t, c, vectors[label] = _time(fn)
            best[label] = min(best[label], t)
            cpu[label] = min(cpu[label], c)
    ref = vectors["plain encode (fp32)"]
    t_plain = best["plain encode (fp32)"]
    c_plain = cpu["plain encode (fp32)"]

    print(f"\n{args.docs} abstracts, mean {np.mean(lengths):.0f} tokens, {over:.0%} over "
          f"{args.max_seq}; batch {args.batch} (plain), {fast_batch} (litpulse); "
          f"device {device}; torch threads "
          f"{torch.get_num_threads()}; bf16 native: "
          f"{bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}\n")
    print("| path | wall s | docs/s | × plain (wall) | CPU s | × plain (CPU) | min cosine "
          "| mean cosine |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, _ in paths:
        vecs = vectors[label]
        cos = np.sum(vecs * ref, axis=1) / np.linalg.norm(vecs, axis=1)
        print(f"| {label} | {best[label]:.2f} | {args.docs / best[label]:.1f} | "
              f"{t_plain / best[label]:.2f} | {cpu[label]:.2f} | {c_plain / cpu[label]:.2f} | "
              f"{cos.min():.5f} | {cos.mean():.5f} |")


if __name__ == "__main__":
    main()
