"""Benchmark: ``GET /search`` latency end to end vs its bare parts, side by side.

Setup: a corpus of ``--articles`` records from :func:`litpulse.app.demo.generate.generate_corpus`
in a temporary home, ingested with :func:`ingest.files.ingest_files`, embedded and
indexed with :func:`ranking.refresh.refresh_index` (the bundled model, the default
settings). Queries: titles of stored articles mixed with short keyword queries from the
generator's topics, each query used once where the pool allows. For every query, in
the same run and interleaved (fair under a fluctuating machine load):

* (a) query embedding alone: :func:`ranking.embed.encode_query` (torch's default
  threads), and (a1) the same with one thread (``LITPULSE_QUERY_THREADS``' default);
  the query-vector cache is off on every path, so each query is embedded afresh;
* (b) index search alone: ``open_published(...).search`` with that vector;
* for each mode (``hybrid``, the default, ``semantic`` and ``lexical``; their order
  rotates from query to query):

  * (c) :func:`ranking.search.run_search` in-process (the first page, ``offset=0``, as
    the endpoint asks for it) (embedding, indexes, database, fusion,
    re-rank, explanations, details);
  * (d) ``GET /search?mode=…`` through a real uvicorn server on 127.0.0.1 (in a thread of
    this process), with a keep-alive ``httpx`` client: HTTP, validation, JSON included.

The table gives p50/p99/mean ms and each path against the anchor (a) + (b); the goal
``/search`` p99 ≤ 50 ms (hybrid) is printed beside it. ``--profile N`` then runs ``N``
hybrid queries in-process under cProfile (warm model, published index open) and prints
the functions taking the most time. Timing is never part of the test run.

Usage::

    python -m bench.api --articles 5000 [--queries 200] [--warmup 20] [--k 10]
        [--home DIR --keep] [--profile 100]

``--keep`` keeps the temporary home; ``--home DIR`` reuses such a home (or builds one
there when it holds no published index), so that runs compare on the same store.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The goal for the HTTP endpoint (ms, p99).
GOAL_P99_MS = 50.0


def make_queries(settings: Any, n: int, seed: int = 0) -> list[str]:
    """``n`` varied queries: stored titles (about 60 %) and 1–3 topic keywords."""
    from sqlalchemy import select

    from litpulse.app.demo.generate import TOPICS
    from litpulse.core import db
    from litpulse.core.schema import articles

    rng = random.Random(seed)
    with db.connect(settings).connect() as conn:
        titles = [
            r[0]
            for r in conn.execute(
                select(articles.c.title).where(
                    articles.c.is_deleted.is_(False), articles.c.title.is_not(None)
                )
            )
            if r[0]
        ]
    rng.shuffle(titles)
    terms = [t for topic in TOPICS for t in topic.terms]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        if titles and rng.random() < 0.6:
            q = titles.pop()[:300]
        else:
            q = " ".join(rng.sample(terms, rng.randint(1, 3)))
            if q in seen and rng.random() < 0.9:  # mostly unique; repeats once the pool runs dry
                continue
        seen.add(q)
        out.append(q)
    return out


def build_store(settings: Any, n_articles: int, tmp: Path) -> tuple[Any, float, float]:
    """Generate, ingest, embed and index; returns (index report, ingest s, index s)."""
    from ingest.files import ingest_files
    from litpulse.app.demo.generate import generate_corpus
    from ranking.refresh import refresh_index

    manifest = generate_corpus(tmp / "corpus", n_records=n_articles, n_files=1, seed=7)
    t0 = time.perf_counter()
    ingest_files(settings, list(manifest.files))
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = refresh_index(settings)
    return report, t_ingest, time.perf_counter() - t0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(settings: Any) -> tuple[Any, threading.Thread, str]:
    """A uvicorn server of :func:`litpulse.app.api.create_app` in a daemon thread."""
    import uvicorn

    from litpulse.app.api import create_app

    port = _free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000, out


MODES = ("hybrid", "semantic", "lexical")


def run_paths(
    settings: Any, queries: list[str], warmup: int, k: int, base_url: str
) -> dict[str, np.ndarray]:
    """Per-query ms of each path, interleaved query by query (modes in rotating order)."""
    import httpx

    from ranking.embed import encode_query
    from ranking.index_files import open_published
    from ranking.search import run_search

    index = open_published(settings)
    if index is None:
        raise RuntimeError("no published index")

    # torch's default threads for (a), one thread (the product's default) for (a1)
    default_threads = settings.replace(query_threads=0)
    one_thread = settings.replace(query_threads=1)
    one = "(a1) encode_query, 1 torch thread"
    labels = ["(a) encode_query", one, "(b) index.search"]
    for mode in MODES:
        labels += [f"(c) run_search() in-process, {mode}", f"(d) GET /search (uvicorn), {mode}"]
    times = {label: np.empty(len(queries) - warmup) for label in labels}
    with httpx.Client(base_url=base_url, timeout=30.0) as client:  # keep-alive pool
        for i, q in enumerate(queries):
            got: dict[str, float] = {}
            got["(a) encode_query"], vec = _timed(
                lambda q=q: encode_query(default_threads, index.model_version, q)
            )
            got[one], _ = _timed(lambda q=q: encode_query(one_thread, index.model_version, q))
            got["(b) index.search"], _ = _timed(
                lambda vec=vec: index.search(vec, settings.rerank_candidates)
            )
            for j in range(len(MODES)):
                mode = MODES[(i + j) % len(MODES)]
                t_c, hits = _timed(
                    lambda q=q, mode=mode: run_search(settings, q, k=k, mode=mode, offset=0).hits
                )
                t_d, resp = _timed(
                    lambda q=q, mode=mode: client.get(
                        "/search", params={"q": q, "k": k, "mode": mode}
                    )
                )
                if resp.status_code != 200:
                    raise RuntimeError(f"/search answered {resp.status_code}: {resp.text[:200]}")
                if [h["pmid"] for h in resp.json()["results"]] != [h.pmid for h in hits]:
                    raise RuntimeError(f"/search and run_search() disagree on {q!r} ({mode})")
                got[f"(c) run_search() in-process, {mode}"] = t_c
                got[f"(d) GET /search (uvicorn), {mode}"] = t_d
            if i >= warmup:
                for label in labels:
                    times[label][i - warmup] = got[label]
    return times


def profile(settings: Any, queries: list[str], k: int, top: int = 25) -> str:
    """cProfile of hybrid :func:`ranking.search.run_search` over ``queries`` (warm)."""
    from ranking.search import run_search

    for q in queries[:5]:  # warm: model, indexes, caches
        run_search(settings, q, k=k)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for q in queries:
        run_search(settings, q, k=k)
    prof.disable()
    wall = (time.perf_counter() - t0) * 1000 / max(len(queries), 1)
    out = io.StringIO()
    out.write(f"cProfile of {len(queries)} hybrid queries: {wall:.1f} ms per query (profiled)\n")
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--articles", type=int, default=5000, help="generated articles")
    parser.add_argument("--queries", type=int, default=200, help="timed queries")
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries first")
    parser.add_argument("--k", type=int, default=10, help="hits per query")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="reuse this folder (built there when it holds no index)",
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="then profile this many hybrid queries in-process"
    )
    args = parser.parse_args(argv)

    import faiss
    import torch

    from litpulse.app.api import prepare_to_serve
    from litpulse.core.settings import Settings
    from ranking.index_files import open_published

    tmp = args.home or Path(tempfile.mkdtemp(prefix="litpulse-bench-api-"))
    tmp.mkdir(parents=True, exist_ok=True)
    server = thread = None
    built = ""
    try:
        # the bench is one client asking as fast as it can: no per-client rate limit
        # ... and no query-vector cache: (c) and (d) ask the same query one after the other
        settings = Settings.from_env(
            {}, home=tmp / "home", api_rate_per_second=10000.0, api_rate_burst=100000,
            query_cache_size=0,
        )
        settings.ensure_home()
        index = open_published(settings)
        if index is None:
            report, t_ingest, t_index = build_store(settings, args.articles, tmp)
            built = f"ingest {t_ingest:.1f} s; embed + index {t_index:.1f} s; "
            index = open_published(settings)
            assert index is not None, report
        else:
            built = "store reused; "
        queries = make_queries(settings, args.warmup + args.queries)
        prepare_to_serve(settings)  # as `litpulse serve` does before it answers
        server, thread, base_url = start_server(settings)
        times = run_paths(settings, queries, args.warmup, args.k, base_url)
        profiled = profile(settings, queries[: args.profile], args.k) if args.profile else ""
    finally:
        if server is not None:
            server.should_exit = True
            if thread is not None:
                thread.join(timeout=10)
        if args.keep or args.home:
            print(f"home kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    mean_len = np.mean([len(q.split()) for q in queries])
    print(
        f"\n{index.size} articles ({built}{index.kind} index, lexical "
        f"{'yes' if index.lexical is not None else 'no'}); "
        f"{args.queries} queries after {args.warmup} warm-up, "
        f"mean {mean_len:.1f} words, k={args.k}, "
        f"{settings.rerank_candidates} candidates; torch threads {torch.get_num_threads()}, "
        f"faiss threads {faiss.omp_get_max_threads()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    anchor = times["(a) encode_query"] + times["(b) index.search"]
    a50, a99 = np.percentile(anchor, 50), np.percentile(anchor, 99)
    print("| path | p50 ms | p99 ms | mean ms | p50 × (a)+(b) | p99 × (a)+(b) |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = list(times.items()) + [("anchor (a)+(b), per query", anchor)]
    for label, t in rows:
        p50, p99 = np.percentile(t, 50), np.percentile(t, 99)
        print(
            f"| {label} | {p50:.2f} | {p99:.2f} | {t.mean():.2f} | {p50 / a50:.2f} | "
            f"{p99 / a99:.2f} |"
        )
    http = times["(d) GET /search (uvicorn), hybrid"]
    inproc = times["(c) run_search() in-process, hybrid"]
    p99 = np.percentile(http, 99)
    verdict = "met" if p99 <= GOAL_P99_MS else "NOT met"
    print(
        f"\nGoal: hybrid /search p99 ≤ {GOAL_P99_MS:.0f} ms — measured {p99:.2f} ms: "
        f"**{verdict}** (HTTP overhead over run_search(): p50 "
        f"{np.percentile(http, 50) - np.percentile(inproc, 50):+.2f} ms, "
        f"p99 {p99 - np.percentile(inproc, 99):+.2f} ms)"
    )
    if profiled:
        print("\n" + profiled)


if __name__ == "__main__":
    main()
