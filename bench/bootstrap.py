"""Benchmark: ``litpulse bootstrap``'s load step with 0, 1, 2… parse workers, side by side.

Scaling groundwork for issue 12 ("PubMed at full size"). Generates ``--files`` baseline
files of ``--records-per-file`` records each (``litpulse.app.demo.generate``, with NLM's
``.md5`` sidecars, cached in ``--workdir``) as a local ``file://`` mirror of the PubMed
file server (``baseline/`` and an empty ``updatefiles/``), and runs
:func:`ingest.bootstrap.load_files` on it once per worker count, each in its own child on a
fresh store (SQLite; ``--databases sqlite postgresql`` adds a scratch PostgreSQL database,
where the table also counts the article rows updated; schema created before the clock
starts; the default prefetch of 2; the store's size on disk is measured after the load, less
that of the empty store, per article row, and projected to the full baseline):

* ``workers=0`` parses in the writer's process (no overlap at all);
* ``workers=1`` overlaps one file's parse with its store;
* ``workers=N`` parses the next N files while the writer stores the current one.

``--cite-window N`` lets citations reach N records back (default 4,000, a few files; the
baseline's reach decades, so pass the whole corpus to see the count updates of an article
cited from many later files). ``--counts deferred per-batch`` also runs each worker count
with the in-corpus citation counts kept batch by batch (``load_files(defer_counts=False)``)
beside the bootstrap's default, which recounts them once after the last file (see
:mod:`ingest.store`).

The table gives records/s on the wall clock and on CPU time (user + system of the child
and all its descendants: the forkserver and the parse workers), peak RSS of the whole
tree, the speed-up against ``workers=0`` and ``workers=1``, and the full baseline
(:data:`BASELINE_RECORDS` records) at the measured wall rate and projected on idle cores
(:func:`projected`: the writer's CPU is serial, the workers' CPU splits over them — what
another core buys once the machine is not shared). On a shared machine the wall clock
also measures the scheduler's share: more processes get more of it. Never pass/fail; the
load average is printed before and after.

    python -m bench.bootstrap --files 8 --records-per-file 2500 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ingest import PG_ADMIN_URL, TreeSampler, scratch_database
from bench.parse import peak_rss_kb, scratch_home

#: Records in NLM's annual baseline (about 1,300 files).
BASELINE_RECORDS = 38_000_000


def mirror(
    workdir: Path, files: int, per_file: int, seed: int, cite_window: int = 4000
) -> Path:
    """A ``file://`` mirror root with ``files`` generated baseline files (cached)."""
    from litpulse.app.demo.generate import generate_corpus

    wide = f"-w{cite_window}" if cite_window != 4000 else ""
    root = workdir / f"mirror-{files}x{per_file}-{seed}{wide}"
    base = root / "baseline"
    if len(list(base.glob("pubmed*.xml.gz.md5"))) != files:
        generate_corpus(base, n_records=files * per_file, n_files=files, seed=seed, md5=True,
                        cite_window=cite_window)  # fmt: skip
    (root / "updatefiles").mkdir(parents=True, exist_ok=True)
    return root


def _child(root: str, workers: int, counts: str = "deferred", url: str = "") -> None:
    from ingest.bootstrap import load_files
    from litpulse.core.db import connect
    from litpulse.core.settings import Settings

    home = scratch_home("litpulse-bench-boot-")
    settings = Settings.from_env(
        {}, home=home, database_url=url or f"sqlite:///{home}/bench.db",
        pubmed_files_url=f"file://{root}",
    )  # fmt: skip
    engine = connect(settings)  # tables first: not part of the load
    empty = _store_bytes(engine)
    sampler = TreeSampler(workers=workers > 0)
    t0, c0 = time.perf_counter(), time.process_time()
    report = load_files(settings, workers=workers, defer_counts=counts == "deferred")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tree_mb, descendants_cpu, _alone = sampler.stop()
    out = {
        "store_bytes": _store_bytes(engine) - empty,
        "articles": _articles(engine),
        "row_updates": _article_updates(engine),
        "n": report.counts.total,
        "files": len(report.applied),
        "wall": wall,
        "cpu": cpu + descendants_cpu,
        "writer_cpu": cpu,
        "parse_cpu": descendants_cpu,
        "tree_mb": max(tree_mb, peak_rss_kb() / 1024),
    }
    sys.stdout.write(json.dumps(out))


def _store_bytes(engine: Any) -> float:
    """Bytes the store takes on disk: the PostgreSQL database, or the SQLite file with its
    write-ahead log checkpointed into it."""
    from sqlalchemy import text

    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return float(conn.execute(text("SELECT pg_database_size(current_database())")).scalar())
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db = Path(str(engine.url.database))
    return float(sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists()))


def _articles(engine: Any) -> float:
    """Article rows stored (live and tombstones)."""
    from sqlalchemy import func, select

    from litpulse.core.schema import articles

    with engine.connect() as conn:
        return float(conn.execute(select(func.count()).select_from(articles)).scalar() or 0)


def _article_updates(engine: Any) -> float:
    """PostgreSQL: rows of ``articles`` updated during the load (each a new row version);
    NaN on SQLite, which does not count them."""
    if engine.dialect.name != "postgresql":
        return math.nan
    from sqlalchemy import text

    engine.dispose()  # a backend reports its table counts when it ends
    for _ in range(50):
        time.sleep(0.1)
        with engine.connect() as conn:
            n = conn.execute(
                text("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'articles'")
            ).scalar()
        if n:
            return float(n)
    return 0.0


def _run(
    root: Path, workers: int, counts: str, database: str, args: argparse.Namespace
) -> dict[str, float] | str:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        with scratch_database(database, args) as url:
            child = subprocess.run(
                [sys.executable, "-m", "bench.bootstrap", "--child", str(root), str(workers),
                 counts, url],
                capture_output=True, text=True, timeout=args.timeout, env=env,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"timed out after {args.timeout:.0f} s"
    except Exception as exc:  # noqa: BLE001 - no database server: a note in the table
        return f"no store: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    if child.returncode:
        return (child.stderr.strip().splitlines() or ["failed"])[-1]
    figures: dict[str, float] = json.loads(child.stdout.rsplit("\n", 1)[-1])
    return figures


def _count(n: float) -> str:
    return "—" if math.isnan(n) else f"{n:,.0f}"


def _hours(records: float, per_s: float) -> str:
    return f"{records / per_s / 3600:.1f} h"


def at_baseline(bytes_per_article: float) -> str:
    """The disk the full baseline (:data:`BASELINE_RECORDS` articles) takes at this rate."""
    return f"{bytes_per_article * BASELINE_RECORDS / 1e9:.0f} GB"


def _disk(r: dict[str, float]) -> str:
    """Store KiB per article and the full baseline projected from it."""
    if not r.get("articles"):
        return "— | —"
    per = r["store_bytes"] / r["articles"]
    return f"{per / 1024:.1f} | {at_baseline(per)}"


def projected(r: dict[str, float], workers: int) -> float:
    """Wall seconds per record with ``workers + 1`` idle cores: the writer is serial, the
    parse CPU splits over the workers (with 0 workers the writer does both)."""
    if workers == 0:
        return r["cpu"] / r["n"]
    return max(r["writer_cpu"], r["parse_cpu"] / workers) / r["n"]


def _table(results: dict[tuple[int, str, str], dict[str, float] | str]) -> str:
    rows = [
        "| parse workers, citation counts, store | files | records | wall s "
        "| CPU s: all / writer / parse workers | records/s (wall) | records/s (CPU) "
        "| peak RSS MiB (all) | article rows updated (PostgreSQL) | ÷ workers=0 (wall) "
        "| ÷ workers=1 (wall) "
        "| full baseline at the wall rate | … on idle cores (projected) "
        "| store KiB per article | full baseline's store on disk |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rate = {k: r["n"] / r["wall"] for k, r in results.items() if isinstance(r, dict)}
    for (w, counts, database), r in results.items():
        name = f"{w}, {counts}, {database}"
        if isinstance(r, str):
            rows.append(f"| {name} | — | — | — | — | — | — | — | — | — | — | — | — | — | {r} |")
            continue
        vs = [
            f"{rate[w, counts, database] / rate[b, counts, database]:.2f}×"
            if (b, counts, database) in rate
            else "—"
            for b in (0, 1)
        ]
        rows.append(
            f"| {name} | {r['files']:.0f} | {r['n']:.0f} | {r['wall']:.2f} "
            f"| {r['cpu']:.2f} / {r['writer_cpu']:.2f} / {r['parse_cpu']:.2f} "
            f"| {rate[w, counts, database]:,.0f} | {r['n'] / r['cpu']:,.0f} | {r['tree_mb']:.0f} "
            f"| {_count(r.get('row_updates', math.nan))} "
            f"| {vs[0]} | {vs[1]} | {_hours(BASELINE_RECORDS, rate[w, counts, database])} "
            f"| {_hours(BASELINE_RECORDS, 1 / projected(r, w))} on {w + 1} cores "
            f"| {_disk(r)} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the markdown table."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.bootstrap", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--records-per-file", type=int, default=2500)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--cite-window", type=int, default=4000,
        help="records back that citations reach (the whole corpus: as PubMed's baseline)",
    )
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "litpulse-bench")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument(
        "--counts", nargs="+", choices=("deferred", "per-batch"), default=["deferred"],
        help="in-corpus citation counts: recounted once at the end (the bootstrap's way), "
        "or kept batch by batch",
    )
    ap.add_argument(
        "--databases", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite"],
        help="stores to load (PostgreSQL: a scratch database on --pg-admin-url's server)",
    )
    ap.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    ap.add_argument("--child", nargs=4, metavar=("ROOT", "WORKERS", "COUNTS", "URL"),
                    help=argparse.SUPPRESS)  # fmt: skip
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), args.child[2], args.child[3])
        return 0

    args.workdir = args.workdir.resolve()
    root = mirror(args.workdir, args.files, args.records_per_file, args.seed, args.cite_window)
    gz_mb = sum(p.stat().st_size for p in (root / "baseline").glob("*.xml.gz")) / 2**20
    sys.stdout.write(
        f"mirror: file://{root} ({args.files} files × {args.records_per_file} records, "
        f"{gz_mb:.1f} MiB gz)\npython {sys.version.split()[0]}, {os.cpu_count()} CPUs "
        "(shared), load average (1/5/15 min) at start: "
        + "/".join(f"{x:.1f}" for x in os.getloadavg())
        + "\n\n"
    )
    results = {
        (w, c, d): _run(root, w, c, d, args)
        for d in args.databases for w in args.workers for c in args.counts
    }  # fmt: skip
    sys.stdout.write(_table(results))
    sys.stdout.write(f"\nload average {os.getloadavg()[0]:.1f} after the table\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
