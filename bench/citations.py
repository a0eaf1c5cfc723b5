"""Benchmark: citations at baseline scale — the iCite snapshot loader vs the API refresh.

Side by side in one run, each path in its own subprocess on a fresh store (peak RSS is
that child's ``VmHWM``, :func:`bench.parse.peak_rss_kb`):

* ``snapshot → SQLite`` / ``snapshot → PostgreSQL`` — :func:`ingest.icite_snapshot.load_snapshot`
  of a generated ``icite_metadata.csv`` of ``--rows`` rows in the real 25-column layout
  (titles, authors, ``cited_by``/``references`` lists of ~25 PMIDs each: ~1 KB a row, as
  the real ~40 GB / ~40M rows), into a store that holds every ``--stored-every``-th PMID
  (inserted before the clock starts). Rows/s counts every row read.
* ``API refresh → SQLite`` — :func:`ingest.citations.refresh_citations` for ``--api-pmids``
  stored PMIDs against a loopback iCite stand-in (:func:`_icite_server`, iCite's
  ``{"meta", "links", "data"}`` answer) with the real client:
  200 PMIDs a request, the process-wide limit of 3 requests/s (10 with an NCBI key).
  Rows/s counts PMIDs refreshed.

The last column projects 38M PMIDs at the measured rate. Never pass/fail; the machine is
shared, so the load average is printed.

    python -m bench.citations --rows 200000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.ingest import PG_ADMIN_URL, scratch_database
from bench.parse import peak_rss_kb, scratch_home

PATHS = ("snapshot-sqlite", "snapshot-postgresql", "api-sqlite")
LABELS = {
    "snapshot-sqlite": "snapshot load → SQLite",
    "snapshot-postgresql": "snapshot load → PostgreSQL",
    "api-sqlite": "API refresh (loopback iCite stand-in, 3 req/s × 200) → SQLite",
}
BASELINE = 38_000_000
FIRST = 10_000_000
HEADER = (
    "pmid,doi,title,authors,year,journal,is_research_article,citation_count,"
    "field_citation_rate,expected_citations_per_year,citations_per_year,"
    "relative_citation_ratio,nih_percentile,human,animal,molecular_cellular,x_coord,"
    "y_coord,apt,is_clinical,cited_by_clin,cited_by,references,provisional,last_modified"
)


def snapshot_csv(workdir: Path, rows: int, seed: int = 1) -> Path:
    """A generated snapshot CSV of ``rows`` rows (cached in ``workdir``)."""
    path = workdir / f"icite_metadata-{rows}-{seed}.csv"
    if path.exists():
        return path
    rnd = random.Random(seed)
    tmp = path.with_suffix(".part")
    with tmp.open("w") as f:
        f.write(HEADER + "\n")
        for i in range(rows):
            pmid = FIRST + i
            year = rnd.randint(1970, 2025)
            cc = rnd.randint(0, 300)
            links = [
                " ".join(str(rnd.randint(FIRST, FIRST + rows)) for _ in range(25)) for _ in range(2)
            ]
            f.write(
                f'{pmid},10.1000/b{pmid},"Finding {pmid}: a study, in a model of disease",'
                f'"Smith J, Doe A, Roe B",{year},J Biol Chem,True,{cc},3.1,2.2,'
                f"{cc / max(1, 2026 - year):.4f},{rnd.uniform(0, 5):.4f},{rnd.uniform(0, 99):.1f},"
                f"0.5,0.25,0.25,0.0,0.433,0.3,False,,{links[0]},{links[1]},"
                f"{'True' if year >= 2024 else 'False'},2026-05-01\n"
            )
    tmp.rename(path)
    return path


# --------------------------------------------------------------------------- children


def _seed(settings: Any, pmids: list[int]) -> None:
    """Minimal live article rows for ``pmids`` (bulk insert, before the clock starts)."""
    from sqlalchemy import insert

    from litpulse.core.db import connect
    from litpulse.core.schema import articles
    from litpulse.core.timeutil import utcnow

    now = utcnow()
    engine = connect(settings)
    for start in range(0, len(pmids), 20_000):
        rows = [
            {"pmid": p, "version": 1, "source_kind": "generated", "source_location": "bench",
             "title": f"Article {p}", "ingested_at": now, "updated_at": now}
            for p in pmids[start : start + 20_000]
        ]  # fmt: skip
        with engine.begin() as conn:
            conn.execute(insert(articles), rows)


def _child(name: str, csv_path: str, url: str, stored_every: int, api_pmids: int) -> None:
    from litpulse.core.settings import Settings

    home = scratch_home("litpulse-bench-home-")
    settings = Settings.from_env({}, home=home, database_url=url)
    if name.startswith("snapshot"):
        from ingest.icite_snapshot import load_snapshot

        rows = sum(1 for _ in open(csv_path, "rb")) - 1
        _seed(settings, list(range(FIRST, FIRST + rows, stored_every)))
        t0, c0 = time.perf_counter(), time.process_time()
        counts = load_snapshot(settings, csv_path)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n, updated = counts.rows, counts.updated
    else:
        import dataclasses

        from ingest.citations import refresh_citations

        pmids = list(range(FIRST, FIRST + api_pmids))
        _seed(settings, pmids)
        with _icite_server() as url:
            s = dataclasses.replace(settings, icite_url=url)
            t0, c0 = time.perf_counter(), time.process_time()
            counts_api = refresh_citations(s, pmids=pmids)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = updated = counts_api.updated
    out = {"n": n, "updated": updated, "wall": wall, "cpu": cpu, "rss_mb": peak_rss_kb() / 1024}
    sys.stdout.write(json.dumps(out))


@contextlib.contextmanager
def _icite_server() -> Iterator[str]:
    """A loopback stand-in for iCite's ``/api/pubs?pmids=…`` (benchmarks never import the
    tests' emulator): every asked PMID gets a row in iCite's JSON shape."""
    import http.server
    import threading
    import urllib.parse

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            pmids = [int(p) for p in query.get("pmids", [""])[0].split(",") if p.isdigit()]
            data = [
                {"pmid": p, "year": 2024, "title": f"Finding {p}", "is_research_article": "Yes",
                 "relative_citation_ratio": 1.2, "citation_count": p % 300,
                 "citations_per_year": 1.5, "provisional": "No"}
                for p in pmids
            ]  # fmt: skip
            body = json.dumps({"meta": {}, "links": {}, "data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- parent


def _run_path(name: str, csv_path: Path, args: argparse.Namespace) -> dict[str, float] | str:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    kind = "postgresql" if name.endswith("postgresql") else name
    try:
        with scratch_database(kind, args) as url:
            child = subprocess.run(
                [sys.executable, "-m", "bench.citations", "--child", name, str(csv_path), url,
                 str(args.stored_every), str(args.api_pmids)],
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


def _table(results: dict[str, dict[str, float] | str]) -> str:
    api = results.get("api-sqlite")
    rows = [
        "| path | rows | articles updated | wall s | CPU s | rows/s (wall) | peak RSS MiB "
        "| ÷ API refresh | 38M PMIDs at this rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        if isinstance(r, str):
            rows.append(f"| {LABELS[name]} | — | — | — | — | — | — | {r} | |")
            continue
        rate = r["n"] / r["wall"]
        ratio = "—"
        if isinstance(api, dict) and name != "api-sqlite":
            ratio = f"{rate / (api['n'] / api['wall']):.0f}×"
        hours = BASELINE / rate / 3600
        rows.append(
            f"| {LABELS[name]} | {r['n']:,.0f} | {r['updated']:,.0f} | {r['wall']:.2f} "
            f"| {r['cpu']:.2f} | {rate:,.0f} | {r['rss_mb']:.0f} | {ratio} "
            f"| {hours:.1f} h |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the generated CSV")
    ap.add_argument("--stored-every", type=int, default=2, help="the store holds every Nth PMID")
    ap.add_argument("--api-pmids", type=int, default=4000, help="PMIDs for the API path")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "litpulse-bench")
    ap.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    csv_path = snapshot_csv(args.workdir, args.rows)
    size_mb = csv_path.stat().st_size / 1e6
    print(f"snapshot CSV: {args.rows:,} rows, {size_mb:.0f} MB ({csv_path}); the store holds "
          f"every {args.stored_every}th PMID; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    results = {name: _run_path(name, csv_path, args) for name in args.paths}
    print(_table(results))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
