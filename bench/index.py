"""Benchmark: nightly index refresh vs full rebuild, and ANN latency/recall vs exact search.

Vectors: a small set of real all-MiniLM-L6-v2 vectors (titles from ``litpulse.app.demo.generate``,
or built-in texts), then synthetic vectors drawn around them in two levels (topic →
sub-topic → article, Gaussian noise, re-normalised) up to each size. For each size N:

* rebuild: :func:`ranking.faiss_ops.build_index` on all N + ADD vectors (IVF training
  included), vs refresh: :func:`ranking.faiss_ops.update_index` adding ADD vectors (and
  removing 1 % deleted) to the index of N — both also with the publish write (+fsync);
* single-query latency p50/p99 and recall@10 against exact search, per nprobe.

Usage::

    python -m bench.index --sizes 100000,1000000 --add 30000 [--queries 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def real_vectors(n: int) -> np.ndarray:
    """``n`` real vectors of the bundled model (article titles: fast on a CPU)."""
    from bench.embed import realistic_texts
    from litpulse.core.settings import Settings
    from ranking.embed import active_model, embed_texts, load_encoder

    settings = Settings.from_env({})
    texts = [t.split("\n", 1)[0] for t in realistic_texts(n)]
    encoder = load_encoder(active_model(settings), settings)
    return embed_texts(encoder, texts, settings)


def synthetic(seeds: np.ndarray, n: int, rng: np.random.Generator, *, topic_noise: float,
              article_noise: float) -> np.ndarray:
    """``n`` normalised vectors around ``seeds``: sub-topics, then articles around them."""
    d = seeds.shape[1]
    n_sub = max(1, n // 20)
    subs = seeds[rng.integers(0, len(seeds), n_sub)]
    subs = subs + rng.standard_normal(subs.shape, dtype=np.float32) * (topic_noise / d**0.5)
    subs /= np.linalg.norm(subs, axis=1, keepdims=True)
    out = np.empty((n, d), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        block = subs[rng.integers(0, n_sub, m)]
        block += rng.standard_normal((m, d), dtype=np.float32) * (article_noise / d**0.5)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def _write(index: Any, folder: str) -> float:
    import faiss

    t0 = time.perf_counter()
    path = os.path.join(folder, "index.faiss")
    faiss.write_index(index, path)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    t = time.perf_counter() - t0
    os.remove(path)
    return t


def bench_size(n: int, add: int, seeds: np.ndarray, args: argparse.Namespace) -> None:
    import faiss

    from litpulse.core.settings import Settings
    from ranking.faiss_ops import build_index, choose_kind, nlist_for, update_index

    settings = Settings.from_env({})
    rng = np.random.default_rng(n)
    kw = {"topic_noise": args.topic_noise, "article_noise": args.article_noise}
    base = synthetic(seeds, n, rng, **kw)
    extra = synthetic(seeds, add, rng, **kw)
    queries = synthetic(seeds, args.queries, rng, **kw)
    ids = np.arange(1, n + 1, dtype=np.int64) * 3
    extra_ids = np.arange(n + 1, n + add + 1, dtype=np.int64) * 3
    deleted = rng.choice(ids, max(1, add // 100), replace=False)
    kind = choose_kind(n + add, settings)
    tmp = tempfile.mkdtemp(prefix="litpulse-bench-")
    try:
        # the index of last night
        index = build_index(base, ids, kind=kind, nprobe=settings.ivf_nprobe, seed=1)
        # refresh: add tonight's vectors, drop the deleted ones
        t0 = time.perf_counter()
        update_index(index, add_vectors=extra, add_ids=extra_ids, remove_ids=deleted)
        t_refresh = time.perf_counter() - t0
        w_refresh = _write(index, tmp)
        # rebuild from scratch on the same final content
        keep = ~np.isin(ids, deleted)
        all_vecs = np.concatenate([base[keep], extra])
        all_ids = np.concatenate([ids[keep], extra_ids])
        del base
        t0 = time.perf_counter()
        rebuilt = build_index(all_vecs, all_ids, kind=kind, nprobe=settings.ivf_nprobe, seed=1)
        t_rebuild = time.perf_counter() - t0
        w_rebuild = _write(rebuilt, tmp)
        del rebuilt

        print(f"\n### N = {n:,} (+{add:,} added, {len(deleted):,} deleted; {kind}, "
              f"nlist {nlist_for(n + add) if kind == 'ivf' else '-'})\n")
        print("| operation | index work s | + write/fsync s | total s |")
        print("|---|---:|---:|---:|")
        print(f"| full rebuild | {t_rebuild:.2f} | {w_rebuild:.2f} | "
              f"{t_rebuild + w_rebuild:.2f} |")
        print(f"| nightly refresh | {t_refresh:.2f} | {w_refresh:.2f} | "
              f"{t_refresh + w_refresh:.2f} |")
        print(f"| **rebuild / refresh** | **{t_rebuild / t_refresh:.0f}×** | | "
              f"**{(t_rebuild + w_rebuild) / (t_refresh + w_refresh):.0f}×** |")

        sq8, t_sq8 = None, 0.0
        if kind == "ivf":  # the same lists holding 8-bit codes (LITPULSE_IVF_CODEC=sq8)
            t0 = time.perf_counter()
            sq8 = build_index(all_vecs, all_ids, kind=kind, nprobe=settings.ivf_nprobe,
                              seed=1, codec="sq8")  # fmt: skip
            t_sq8 = time.perf_counter() - t0
        exact = faiss.IndexFlatIP(all_vecs.shape[1])
        exact.add(all_vecs)
        _, truth_pos = exact.search(queries, 10)
        truth = all_ids[truth_pos]
        lat_exact = _lat_cells(exact, queries[: min(100, len(queries))])
        del exact, all_vecs
        print("\n| search | nprobe | p50 ms (1 thread) | p99 ms (1 thread) | "
              "p50 ms (all threads) | p99 ms (all threads) | recall@10 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print(f"| exact (flat) | - | {lat_exact} | 1.000 |")
        if kind == "ivf":
            for nprobe in args.nprobes:
                index.nprobe = nprobe
                _, found = index.search(queries, 10)
                recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth,
                                                                           strict=True)])
                mark = " (setting)" if nprobe == settings.ivf_nprobe else ""
                print(f"| IVF{mark} | {nprobe} | {_lat_cells(index, queries)} | "
                      f"{recall:.3f} |")
            for nprobe in args.nprobes:
                assert sq8 is not None
                sq8.nprobe = nprobe
                _, found = sq8.search(queries, 10)
                recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth,
                                                                           strict=True)])
                print(f"| IVF, 8-bit codes (`LITPULSE_IVF_CODEC=sq8`) | {nprobe} | "
                      f"{_lat_cells(sq8, queries)} | {recall:.3f} |")
            assert sq8 is not None
            per = {name: faiss.extract_index_ivf(ix).code_size + 8
                   for name, ix in (("flat", index), ("sq8", sq8))}  # fmt: skip
            print(f"\nbytes per vector in the lists (code + id): flat {per['flat']}, sq8 "
                  f"{per['sq8']} ({per['sq8'] / per['flat']:.0%}); sq8 full build "
                  f"{t_sq8:.2f} s (flat {t_rebuild:.2f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _latencies(index: Any, queries: np.ndarray, threads: int) -> np.ndarray:
    """Per-query milliseconds, one query per call, with ``threads`` OpenMP threads."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        index.search(queries[:5], 10)
        out = np.empty(len(queries))
        for i in range(len(queries)):
            t0 = time.perf_counter()
            index.search(queries[i : i + 1], 10)
            out[i] = (time.perf_counter() - t0) * 1000
    finally:
        faiss.omp_set_num_threads(before)
    return out


def _lat_cells(index: Any, queries: np.ndarray) -> str:
    import faiss

    one = _latencies(index, queries, 1)
    every = _latencies(index, queries, faiss.omp_get_max_threads())
    return (f"{np.percentile(one, 50):.2f} | {np.percentile(one, 99):.2f} | "
            f"{np.percentile(every, 50):.2f} | {np.percentile(every, 99):.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated N")
    parser.add_argument("--add", type=int, default=30000, help="vectors added per refresh")
    parser.add_argument("--queries", type=int, default=1000, help="queries for latency/recall")
    parser.add_argument("--real", type=int, default=1000, help="real model vectors as seeds")
    parser.add_argument("--topic-noise", type=float, default=0.8)
    parser.add_argument("--article-noise", type=float, default=0.5)
    parser.add_argument("--nprobes", default="8,16,32,64", help="comma-separated nprobe values")
    args = parser.parse_args(argv)
    args.nprobes = [int(x) for x in args.nprobes.split(",")]

    import faiss

    t0 = time.perf_counter()
    seeds = real_vectors(args.real)
    print(f"{len(seeds)} real seed vectors in {time.perf_counter() - t0:.1f} s; faiss "
          f"{faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    for n in (int(x) for x in args.sizes.split(",")):
        bench_size(n, args.add, seeds, args)


if __name__ == "__main__":
    main()
