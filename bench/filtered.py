"""Benchmark: filtered semantic search past an IVF index's probed lists (the exact fallback).

:func:`ranking.search.nearest` asks the vector index for the ``n`` nearest vectors; an IVF
index searches only the ``nprobe`` lists nearest the query (about ``nprobe × N / nlist``
vectors). A search whose filters pass few articles widens its candidate list until enough
pass, and once ``n`` exceeds what the probed lists hold, every article passing the filters
is scored exactly against its stored vector instead (:func:`ranking.search._exact_neighbours`:
one ``SELECT`` of the passing PMIDs, their vectors reconstructed in chunks). That path's
cost grows with the passing articles, not with ``n``: this measures it.

For each size N: a SQLite store of N minimal article rows whose ``best_date`` spreads them
evenly over 100 years (a date filter of Y years passes Y % of them), an IVF index of N
random unit vectors (:func:`ranking.faiss_ops.build_index`, the settings' nlist rule and
codec), one query vector; for each filter share and ``n``, the median wall time of
``nearest`` over ``--repeat`` calls, whether it fell back, and the exact path's time per
passing article. The anchor is ``nearest`` answered by the index itself (``n`` within the
probed lists). The last column projects the fallback to PubMed's size (38 M articles): at
that N a filter share ``f`` falls back when a block of ``rerank_candidates`` results needs
more than the probed lists hold (``n ≈ candidates / f``).

    python -m bench.filtered --sizes 1000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: The filter shares measured, in per mille (days of the 1,000 the store's dates span).
SHARES = (1, 10, 50, 200)
#: PubMed's size, for the projection.
PUBMED = 38_000_000
#: Vector dimension (all-MiniLM-L6-v2's).
DIM = 384


def build_store(n: int, home: Path) -> tuple[Any, dt.date]:
    """A SQLite store of ``n`` live article rows, 0.1 % of them on each of 1,000 days."""
    from sqlalchemy import insert

    from litpulse.core import db
    from litpulse.core.schema import articles
    from litpulse.core.settings import Settings

    settings = Settings.from_env({}, home=home, database_url=f"sqlite:///{home}/store.db")
    engine = db.connect(settings)
    now, base = db.utcnow(), dt.date(1926, 1, 1)
    with engine.begin() as conn:
        for start in range(1, n + 1, 100_000):
            conn.execute(insert(articles), [
                {"pmid": p, "version": 1, "source_kind": "bench", "source_location": "bench",
                 "title": "t", "text_hash": "h", "is_deleted": False,
                 "best_date": base + dt.timedelta(days=p % 1000),
                 "ingested_at": now, "updated_at": now}
                for p in range(start, min(n + 1, start + 100_000))
            ])  # fmt: skip
    return engine, base


def build_published(n: int, home: Path, seed: int) -> tuple[Any, Any]:
    """An IVF :class:`ranking.index_files.PublishedIndex` of ``n`` random unit vectors
    (PMIDs 1..n), and one query vector."""
    import numpy as np

    from litpulse.core.settings import Settings
    from ranking.faiss_ops import build_index
    from ranking.index_files import PublishedIndex

    settings = Settings.from_env({}, home=home)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    index = build_index(vectors, ids, kind="ivf", d=DIM, nprobe=settings.ivf_nprobe, seed=seed,
                        codec=settings.ivf_codec)  # fmt: skip
    del vectors
    query = rng.standard_normal((1, DIM), dtype=np.float32)
    query /= np.linalg.norm(query)
    published = PublishedIndex(id="bench", model_version="base", kind="ivf", size=n,
                               path=str(home), ids=ids, index=index)  # fmt: skip
    return published, query


def probed(n: int, nlist: int, nprobe: int) -> int:
    """About how many vectors the ``nprobe`` nearest of ``nlist`` lists hold."""
    return max(1, round(nprobe * n / nlist))


def bench_size(n: int, args: argparse.Namespace) -> list[str]:
    """The table rows of one size."""
    from litpulse.core.settings import Settings
    from ranking import search as rs

    settings = Settings.from_env({})
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="litpulse-bench-filtered-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        engine, base = build_store(n, home)
        published, query = build_published(n, home, args.seed)
        nlist, nprobe = int(published.index.nlist), settings.ivf_nprobe
        reach = probed(n, nlist, nprobe)
        print(f"N = {n:,}: store and IVF (nlist {nlist}, nprobe {nprobe}, ~{reach:,} vectors "
              f"probed) built in {time.perf_counter() - t0:.0f} s", flush=True)
        big_reach = probed(PUBMED, _nlist(PUBMED), nprobe)
        measured: list[tuple[int, int, int, int, str, float]] = []
        for share in SHARES:
            filters = rs.SearchFilters(since=base, until=base + dt.timedelta(days=share - 1))
            conds = filters.clauses()
            passing = n * share // 1000
            for want in (settings.rerank_candidates, 2 * reach):
                times: list[float] = []
                pairs: list[tuple[int, float]] = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    pairs, _complete = rs.nearest(engine, published, query, want, conds)
                    times.append(time.perf_counter() - t)
                path = "exact" if want > reach else "IVF"
                measured.append((share, passing, want, len(pairs), path,
                                 1e3 * statistics.median(times)))  # fmt: skip
        # the exact path's cost: a fixed part and a part per passing article (a line through
        # the exact rows, fitted by least squares), projected to PubMed's size
        exact = [(m[1], m[5]) for m in measured if m[4] == "exact"]
        slope, fixed = _line(exact)
        for share, passing, want, answered, path, ms in measured:
            per = projected = "—"
            if path == "exact":
                per = f"{1e3 * ms / max(passing, 1):.1f}"
                projected = _projected(fixed, slope, share, settings.rerank_candidates,
                                       big_reach)  # fmt: skip
            rows.append(f"| {n:,} | {share / 10:g} % | {passing:,} | {want:,} | {answered:,} "
                        f"| {path} | {ms:.1f} | {per} | {projected} |")
        print(f"N = {n:,}: the exact path costs {fixed:.1f} ms + {1e3 * slope:.2f} µs per "
              "passing article", flush=True)
        engine.dispose()
    return rows


def _line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Slope (ms per passing article) and intercept (ms) of a least-squares line."""
    if len(points) < 2:
        x, y = points[0] if points else (1, 0.0)
        return y / max(x, 1), 0.0
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0
    return max(slope, 0.0), max(my - slope * mx, 0.0)


def _projected(fixed: float, slope: float, share: int, block: int, reach: int) -> str:
    """The fallback's cost (``fixed`` ms + ``slope`` ms per passing article) for a filter
    passing ``share`` per mille of PubMed, and when it comes: the ``i``-th block of a
    search's list needs ``i * block`` passing articles, so about ``i * block / share``
    candidates; it falls back once that exceeds ``reach`` (the vectors the probed lists
    hold). Pages go to :data:`ranking.search.MAX_OFFSET`."""
    from ranking.search import MAX_OFFSET

    passing = PUBMED * share / 1000
    cost = f"{1e-3 * (fixed + slope * passing):.1f} s over {passing:,.0f} passing"
    if block * 1000 / share > reach:
        return cost + ", from the first page"
    deepest = -(-(MAX_OFFSET + block) // block)
    if deepest * block * 1000 / share > reach:
        return cost + ", on deep pages"
    return "never falls back"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000000", help="comma-separated article counts")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if any(s < 1000 for s in sizes) or args.repeat < 1:
        parser.error("sizes must be >= 1000 and --repeat >= 1")
    print(f"load average at start: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print("| N | filter passes | passing articles | n asked | answered | path "
          "| nearest ms (median) | µs per passing article | projected at 38 M |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    lines: list[str] = []
    for n in sizes:
        lines.extend(bench_size(n, args))
    print("\n".join(lines))
    print()
    print(f"PubMed's size: nlist {_nlist(PUBMED)}, so an IVF search probes about "
          f"{probed(PUBMED, _nlist(PUBMED), _nprobe()):,} vectors")
    return 0


def _nlist(n: int) -> int:
    from ranking.faiss_ops import nlist_for

    return int(nlist_for(n))


def _nprobe() -> int:
    from litpulse.core.settings import Settings

    return Settings.from_env({}).ivf_nprobe


if __name__ == "__main__":
    raise SystemExit(main())
