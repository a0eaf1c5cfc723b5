"""Benchmark: whole-file ingest (parse + store) on SQLite and PostgreSQL vs pubmed_parser.

Measurement groundwork for issue 12 ("PubMed at full size"). Generates one corpus file of
``--records`` records (``litpulse.app.demo.generate``, cached in ``--workdir``) and runs
each path in its own subprocess, side by side in one run, so the peak RSS (the child's
``VmHWM``; ``ru_maxrss`` where /proc is missing, see :func:`bench.parse.peak_rss_kb`)
belongs to that path alone:

* ``sqlite`` — :func:`ingest.files.ingest_files` into a fresh SQLite file in the workdir
  (the real path: one parse worker process preparing records, the writer deciding and
  bulk-writing, links, cited-by deltas, run ledger).
* ``postgresql`` — the same into a fresh PostgreSQL database created for the run and
  dropped after it (``--pg-admin-url``; skipped with a note when the server is absent).
* ``pubmed_parser`` — ``parse_medline_xml`` (defaults) on the same file: parse alone,
  the anchor every ratio is taken against.
* ``sqlite-w2``, ``postgresql-w2`` — the same with 2 parse workers splitting the one
  file (:func:`ingest.parse.iter_units`: each parses every other batch), side by side
  with the 1-worker rows.
* ``sqlite-w0`` — SQLite with the parse in the writer's process (``workers=0``): what
  overlapping parse and store gains.
* ``scale-w1``, ``scale-w2``, ``scale-w2s`` — the scaling rows: the same number of
  records generated as 4 files, with 1 and 2 parse workers (each file parsed by one of
  them), and 2 workers splitting every file.
* ``--before PATH`` runs each chosen path also with the code of another checkout (its
  ``ingest``, ``litpulse`` and ``bench.ingest`` child), interleaved with this one's: a
  before/after table from one run.

Schema creation happens before the clock starts; the ingest itself is timed. The table
gives records/s on the wall clock and on CPU time (user + system of the child and its
parse workers, also shown apart: with a free core per process the wall time is the
busiest process's CPU time, and a column gives the anchor's per-record CPU over it;
a PostgreSQL server's own CPU is not in the CPU s columns), the CPU µs per record of
the parse workers, the writer and, for PostgreSQL on this machine, the server (the
database's backends and the WAL writer, checkpointer and background writer, read from
/proc: load-independent, unlike the wall clock), peak RSS of the writer and of all its
processes together (sampled every 100 ms), and ours ÷ anchor. With ``--profile`` (on by
default) a further child runs the SQLite ingest with the parse in-process
(``workers=0``, so cProfile sees parse, prepare and store) and the top functions by
cumulative and by self time are printed, each tagged parse or store, with the parse/store
split and a breakdown of the store's phases. Never pass/fail; the machine is shared, so
the load average is printed, and ``--repeat N`` runs the paths N times interleaved and
shows each one's run of median wall time, and under the table each path's ratio to the
anchor round by round (against the anchor's run of the same round) with their median.

    python -m bench.ingest --records 20000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.parse import corpus_file, peak_rss_kb, scratch_home

PATHS = ("sqlite", "sqlite-w2", "postgresql", "postgresql-w2", "pubmed_parser", "sqlite-w0",
         "scale-w1", "scale-w2", "scale-w2s")  # fmt: skip
LABELS = {
    "sqlite": "litpulse ingest_files → SQLite (parse + store, 1 parse worker)",
    "sqlite-w2": "litpulse ingest_files → SQLite, the file split over 2 parse workers",
    "postgresql": "litpulse ingest_files → PostgreSQL (parse + store, 1 parse worker)",
    "postgresql-w2": "litpulse ingest_files → PostgreSQL, the file split over 2 parse workers",
    "pubmed_parser": "pubmed_parser.parse_medline_xml (parse only, anchor)",
    "sqlite-w0": "litpulse ingest_files → SQLite, parsed in the writer (0 workers)",
    "scale-w1": "scaling: the same records as 4 files → SQLite, 1 parse worker",
    "scale-w2": "scaling: the same records as 4 files → SQLite, 2 parse workers",
    "scale-w2s": "scaling: the same records as 4 files → SQLite, 2 workers splitting each file",
}
#: The suffix of a path run with the ``--before`` checkout's code (``postgresql-w2@before``).
BEFORE = "@before"
#: Parse workers of each path (``ingest_files(workers=…)``).
WORKERS = {"sqlite": 1, "sqlite-w2": 2, "postgresql": 1, "postgresql-w2": 2, "sqlite-w0": 0,
           "scale-w1": 1, "scale-w2": 2, "scale-w2s": 2, "profile": 0}  # fmt: skip
#: Paths whose every file is split over the workers (``ingest_files(stripe=True)``); one
#: file alone is split anyway (``stripe=None``, the default).
STRIPED = {"scale-w2s"}
#: Paths that ingest the corpus split into :data:`SCALE_FILES` files.
SCALE_FILES = 4
ANCHOR = "pubmed_parser"
#: The default ``--pg-admin-url`` of the benchmarks: where :func:`scratch_database` makes
#: its PostgreSQL databases.
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

#: Where a profiled function's time belongs, by its file (first match wins).
_PARSE_FILES = (
    "/ingest/parse.py", "/ingest/boundaries.py", "/ingest/fields.py", "/ingest/dates.py",
    "/ingest/records.py", "lxml", "gzip.py", "zlib", "_compression.py",
)  # fmt: skip
#: Drivers (function → file suffix) whose cumulative time is parse and store together.
_BOTH = {
    "_ingest": "/bench/ingest.py",
    "ingest_files": "/ingest/files.py",
    "apply": "/ingest/store.py",
}
#: The main thread waiting for the parser's libxml2 helper thread (cProfile sees only the
#: main thread: libxml2's own time shows here, as waits on its queue).
_WAITS = ("/queue.py", "/threading.py")
#: Store phases shown in the breakdown: (label, file suffix, function name).
_PHASES = (
    ("parse: iter_items (generator, all resumes)", "/ingest/parse.py", "iter_items"),
    ("store: Store._apply_batch (one per batch)", "/ingest/store.py", "_apply_batch"),
    ("  read states (SELECT … IN)", "/ingest/store.py", "_read_states"),
    ("prepare (one JSON, hash, row, terms; a parse worker's job)", "/ingest/rows.py", "prepare"),
    ("json.dumps, all callers", "json/__init__.py", "dumps"),
    ("  plan_batch (decide)", "/ingest/rules.py", "plan_batch"),
    ("    article_row (the row tuple of a prepared record)", "/ingest/rows.py", "article_row"),
    ("  bulk_insert (new articles: COPY / executemany)", "/litpulse/core/db.py", "bulk_insert"),
    ("  bulk_upsert (stored articles: COPY / executemany)", "/litpulse/core/db.py", "bulk_upsert"),
    ("    _bound_rows (bind conversions, column by column)", "/litpulse/core/db.py", "_bound_rows"),
    ("  upsert (quarantine)", "/litpulse/core/db.py", "upsert"),
    ("  replace_links (terms, references, cited-by)", "/ingest/links.py", "replace_links"),
    ("    recompute_cited_by (new live PMIDs)", "/ingest/links.py", "recompute_cited_by"),
    ("    _update_cited_by (one statement per batch)", "/ingest/links.py", "_update_cited_by"),
    ("sqlite3 executemany", "~", "<method 'executemany' of 'sqlite3.Cursor' objects>"),
    ("sqlite3 execute", "~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
    ("sqlite3 commit (per batch)", "~", "<method 'commit' of 'sqlite3.Connection' objects>"),
)


# --------------------------------------------------------------------------- children


class TreeSampler:
    """Peak RSS (this process and its descendants together) and the descendants' CPU.

    The parse workers are children of the forkserver, a child of this process: the tree
    is walked at each reading during the first :attr:`FIND_S`, then every :attr:`FIND_S`
    (psutil reads every process of the machine for it), and the processes found are read
    every :attr:`EVERY_S` (their own ``/proc`` entries); the last CPU times of each are
    kept. The sampler runs in the measured process, so its own CPU counts as the
    writer's: walking the tree every 50 ms took ~5 % of a core, this ~2 %.

    It also notes the last reading at which a parse worker (a grandchild: the forkserver's
    child) had used more CPU than at the reading before, once a later reading finds it still
    there (a worker's exit, freeing its memory, uses CPU too: a fresh-interpreter test read
    0.59 s for a 1 s stretch when that counted): :meth:`stop` gives how long the
    writer (and the database server) went on alone after the parse was done, to within
    :attr:`EVERY_S` — the stretch where one of two cores has nothing to do. A lower bound:
    a worker whose last chunks wait in its queue stays alive until the writer reads them
    and uses a little CPU then (its feeder thread writes them, then it exits), so the
    stretch can be counted from the writer's last read instead of the parse's end (a
    PostgreSQL split run showed 0.1 s here where ``/proc/stat`` had a core idle for
    0.65 s); :func:`idle_core_seconds` over the run is the direct measure. With
    ``workers`` (parse workers will come) the tree is walked at every reading until one is
    seen: workers started late whose whole parse falls between two walks would be missed.
    """

    #: Seconds between two readings of the known processes.
    EVERY_S = 0.1
    #: Seconds between two walks of the process tree.
    FIND_S = 1.0

    def __init__(self, *, workers: bool = True) -> None:
        import threading

        import psutil

        self.workers = workers
        self.me = psutil.Process()
        self.peak = 0
        self.cpu: dict[int, float] = {}
        self.parsing: float | None = None  # monotonic time a parse worker was last busy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        known: list[psutil.Process] = []
        rose: dict[int, float] = {}  # pid → a reading at which that worker's CPU rose
        start = found = time.monotonic()
        while True:
            now = time.monotonic()
            # start-up, and until the first parse worker is seen: each time
            looking = self.workers and self.parsing is None
            if now - start < self.FIND_S or now - found >= self.FIND_S or looking:
                with contextlib.suppress(psutil.Error):
                    known = self.me.children(recursive=True)
                found = now
            total = self.me.memory_info().rss
            for child in known:
                try:
                    alive = child.status() != psutil.STATUS_ZOMBIE
                    total += child.memory_info().rss
                    t = child.cpu_times()
                    used = t.user + t.system
                    worker = child.ppid() != self.me.pid
                except psutil.Error:
                    alive = False
                if not alive:  # its last rise was its exit (os._exit frees its memory)
                    rose.pop(child.pid, None)
                    continue
                if child.pid in rose:  # still there: that rise was work
                    self.parsing = max(self.parsing or 0.0, rose.pop(child.pid))
                if used > self.cpu.get(child.pid, 0.0) and worker:
                    rose[child.pid] = now
                self.cpu[child.pid] = used
            self.peak = max(self.peak, total)
            if self._stop.wait(self.EVERY_S):
                return

    def stop(self) -> tuple[float, float, float | None]:
        """(peak RSS MiB of the tree, CPU s of the descendants, seconds from the last
        reading with a busy parse worker to now: ``None`` without parse workers)."""
        end = time.monotonic()
        self._stop.set()
        self._thread.join()
        alone = None if self.parsing is None else max(0.0, end - self.parsing)
        return self.peak / 2**20, sum(self.cpu.values()), alone


def idle_core_seconds() -> float | None:
    """Seconds of CPU the whole machine has left idle since boot, summed over its cores
    (``idle`` + ``iowait`` of ``/proc/stat``); ``None`` without ``/proc``. The difference
    over a run is how much of wall × cores nothing used: the overlap the run lost (other
    processes of the machine make it smaller, never larger)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 6:
        return None
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def _ingest(
    paths: list[str], url: str, workers: int, stripe: bool | None = None
) -> dict[str, float]:
    """Ingest ``paths`` into ``url``: records stored, wall s, CPU s, tree RSS of the ingest."""
    from ingest.files import ingest_files
    from litpulse.core.db import connect
    from litpulse.core.settings import Settings

    home = scratch_home("litpulse-bench-home-")
    settings = Settings.from_env({}, home=home, database_url=url)
    engine = connect(settings)  # tables first: not part of the ingest
    server0 = _server_cpu(engine)
    sampler = TreeSampler(workers=workers > 0)
    idle0 = idle_core_seconds()
    t0, c0 = time.perf_counter(), time.process_time()
    counts = ingest_files(settings, paths, workers=workers, stripe=stripe)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    idle1 = idle_core_seconds()
    tree_mb, workers_cpu, alone = sampler.stop()
    out = {"n": counts.inserted + counts.updated, "wall": wall, "cpu": cpu + workers_cpu,
           "writer_cpu": cpu, "workers_cpu": workers_cpu, "tree_mb": tree_mb}  # fmt: skip
    if alone is not None:
        out["alone"] = alone
    if idle0 is not None and idle1 is not None:
        out["idle"] = idle1 - idle0
        out["cores"] = float(os.cpu_count() or 1)
    if server0 is not None:
        server1 = _server_cpu(engine) or {}
        out["server_cpu"] = sum(t - server0.get(pid, 0.0) for pid, t in server1.items())
    return out


def _server_cpu(engine: Any) -> dict[int, float] | None:
    """CPU s of each process of a local PostgreSQL server that works for the ingest: the
    client backends of this database and the WAL writer, checkpointer and background
    writer (server-wide, shared with whatever else runs: taken around the ingest).
    ``None`` for SQLite or a server whose processes are not readable here.
    """
    import psutil

    if engine.dialect.name != "postgresql":
        return None
    from sqlalchemy import text

    with engine.connect() as conn:
        pids = conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE (datname = current_database() AND "
            "backend_type = 'client backend') OR "
            "backend_type IN ('walwriter', 'checkpointer', 'background writer')"
        )).scalars().all()  # fmt: skip
    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return None
        out[pid] = t.user + t.system
    return out


def _parse_only(path: str) -> tuple[int, float, float]:
    import pubmed_parser as pp

    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(1 for _d in pp.parse_medline_xml(path))
    return n, time.perf_counter() - t0, time.process_time() - c0


def _child(name: str, path: str, url: str) -> None:
    paths = path.split(os.pathsep)
    if name == "profile":
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        out = _ingest(paths, url, WORKERS[name])
        prof.disable()
        prof.dump_stats(str(Path(paths[0]).with_name("ingest.prof")))
    elif name == ANCHOR:
        n, wall, cpu = _parse_only(path)
        out = {"n": n, "wall": wall, "cpu": cpu}
    else:
        out = _ingest(paths, url, WORKERS[name], True if name in STRIPED else None)
    out["rss_mb"] = peak_rss_kb() / 1024
    out.setdefault("tree_mb", out["rss_mb"])
    sys.stdout.write(json.dumps(out))


# --------------------------------------------------------------------------- parent


@contextlib.contextmanager
def scratch_database(name: str, args: argparse.Namespace) -> Iterator[str]:
    """A fresh, empty store for one child: its URL; removed afterwards.

    PostgreSQL: a new database on the server of ``--pg-admin-url``, dropped (``FORCE``)
    after the child. SQLite: a file in the workdir, deleted with its WAL afterwards.
    """
    from sqlalchemy import create_engine, text

    if not name.startswith("postgresql"):
        db_file = args.workdir / f"ingest-{name}.db"
        doomed = [Path(f"{db_file}{suffix}") for suffix in ("", "-wal", "-shm")]
        for f in doomed:
            f.unlink(missing_ok=True)
        try:
            yield f"sqlite:///{db_file}"
        finally:
            for f in doomed:
                f.unlink(missing_ok=True)
        return
    db = f"litpulse_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db}"'))
        yield f"{args.pg_admin_url.rsplit('/', 1)[0]}/{db}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def _run_path(name: str, path: Path | str, args: argparse.Namespace) -> dict[str, float] | str:
    """Run one path in a child on a fresh store: its figures, or why there are none.

    ``NAME@before`` runs path ``NAME`` with the code of the ``--before`` checkout (its own
    ``bench.ingest`` child, its ``ingest`` and ``litpulse``)."""
    root = Path(__file__).resolve().parents[1]
    name, at_before = name.removesuffix(BEFORE), name.endswith(BEFORE)
    if at_before:
        root = Path(args.before).resolve()
    env = dict(os.environ, PYTHONPATH=str(root))
    try:
        with scratch_database(name, args) as url:
            # -P: the working directory is not put first on sys.path, so PYTHONPATH decides
            # whose code runs (run from this checkout, a before row ran this code)
            child = subprocess.run(
                [sys.executable, "-P", "-m", "bench.ingest", "--child", name, str(path), url],
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
    anchor = results.get(ANCHOR)
    rows = [
        "| path | records | wall s | CPU s | records/s (wall) | records/s (CPU) "
        "| peak RSS MiB (writer / all processes) | ours ÷ anchor (wall) | ours ÷ anchor (CPU) "
        "| CPU s writer / parse workers | anchor ÷ busiest process (CPU) "
        "| CPU µs per record: worker / writer / server | store alone at the end s "
        "| cores idle s of wall × cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        if isinstance(r, str):
            rows.append(f"| {LABELS[name]} | — | — | — | — | — | — | {r} | | | | | | |")
            continue
        alone = f"{r['alone']:.1f}" if "alone" in r else "—"
        idle = f"{r['idle']:.2f} of {r['wall'] * r['cores']:.2f}" if "idle" in r else "—"
        split = busiest = per_record = "—"
        if "writer_cpu" in r:
            server = f"{1e6 * r['server_cpu'] / r['n']:.0f}" if "server_cpu" in r else "—"
            per_record = (
                f"{1e6 * r['workers_cpu'] / r['n']:.0f} / "
                f"{1e6 * r['writer_cpu'] / r['n']:.0f} / {server}"
            )
            split = f"{r['writer_cpu']:.2f} / {r['workers_cpu']:.2f}"
            if isinstance(anchor, dict) and name != ANCHOR:
                # wall time with a free core per process: the busiest one's CPU time
                top = max(r["writer_cpu"], r["workers_cpu"]) / r["n"]
                busiest = f"{(anchor['cpu'] / anchor['n']) / top:.2f}×"
        ratio_wall = ratio_cpu = "—"
        if isinstance(anchor, dict) and name != ANCHOR:
            ratio_wall = f"{(r['n'] / r['wall']) / (anchor['n'] / anchor['wall']):.2f}×"
            ratio_cpu = f"{(r['n'] / r['cpu']) / (anchor['n'] / anchor['cpu']):.2f}×"
        rows.append(
            f"| {LABELS[name]} | {r['n']:.0f} | {r['wall']:.2f} | {r['cpu']:.2f} "
            f"| {r['n'] / r['wall']:,.0f} | {r['n'] / r['cpu']:,.0f} "
            f"| {r['rss_mb']:.0f} / {r['tree_mb']:.0f} "
            f"| {ratio_wall} | {ratio_cpu} | {split} | {busiest} | {per_record} | {alone} "
            f"| {idle} |"
        )
    return "\n".join(rows) + "\n"


def _group(key: tuple[str, int, str]) -> str:
    """``parse``, ``store``, or ``both`` (the drivers whose cumulative time holds both)."""
    filename, _line, func = key
    if func in _BOTH and filename.endswith(_BOTH[func]):
        return "both"
    if func == "_batches" and filename.endswith("/ingest/store.py"):
        return "parse"  # pulls the items: its cumulative time is the parser's
    if filename.endswith(_WAITS) or (filename == "~" and "'_thread.lock'" in func):
        return "parse (wait)"
    return "parse" if any(part in filename for part in _PARSE_FILES) else "store"


def _profile_report(prof_file: Path, top: int) -> str:
    """Top functions by cumulative and self time, the parse/store split, store phases."""
    st = pstats.Stats(str(prof_file))
    raw: dict[tuple[str, int, str], Any] = st.stats  # type: ignore[attr-defined]
    total = max(float(st.total_tt), 1e-9)  # type: ignore[attr-defined]
    here = str(Path(__file__).resolve().parents[1])

    def where(key: tuple[str, int, str]) -> str:
        filename, line, func = key
        short = filename.replace(here + "/", "").split("site-packages/")[-1]
        return func if filename == "~" else f"{short}:{line} {func}"

    out: list[str] = [f"profile (cProfile, SQLite ingest): {total:.2f} s profiled\n"]
    for title, col in (("cumulative", 3), ("self (tottime)", 2)):
        keyed = sorted(raw.items(), key=lambda kv: kv[1][col], reverse=True)[:top]
        out += [
            f"\ntop {top} by {title}:\n",
            "| group | function | calls | self s | cumulative s | % of total |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for key, (_cc, nc, tt, ct, _callers) in keyed:
            out.append(
                f"| {_group(key)} | `{where(key)}` | {nc} | {tt:.2f} | {ct:.2f} "
                f"| {100 * (ct if col == 3 else tt) / total:.0f}% |"
            )
    by_group: dict[str, float] = {}
    for k, v in raw.items():
        by_group[_group(k)] = by_group.get(_group(k), 0.0) + v[2]
    shares = ", ".join(
        f"{g} {t:.2f} s ({100 * t / total:.0f}%)"
        for g, t in sorted(by_group.items(), key=lambda gt: -gt[1])
    )
    out.append(
        f"\nself time by group (main thread only; libxml2 runs in the parser's helper "
        f"thread and shows as 'parse (wait)'): {shares}\n"
    )
    out += ["\nphases (cumulative; nested rows are part of the row above):\n",
            "| phase | calls | cumulative s | % of total |", "|---|---:|---:|---:|"]  # fmt: skip
    for label, suffix, func in _PHASES:
        hits = [v for k, v in raw.items() if k[2] == func and k[0].endswith(suffix)]
        if hits:
            calls, cum = sum(v[1] for v in hits), sum(v[3] for v in hits)
            out.append(f"| {label} | {calls} | {cum:.2f} | {100 * cum / total:.0f}% |")
    return "\n".join(out) + "\n"


def _median(runs: list[dict[str, float] | str]) -> dict[str, float] | str:
    """The run of median wall time (the upper middle of an even number); a failure if all
    failed."""
    done = sorted((r for r in runs if not isinstance(r, str)), key=lambda r: r["wall"])
    return done[len(done) // 2] if done else runs[-1]


def _paired(runs: dict[str, list[dict[str, float] | str]]) -> str:
    """Each path's wall ratio to the anchor *round by round* (each against the anchor's run
    of the same round, which ran minutes apart at most), and their median: on a machine
    whose speed drifts, a steadier figure than the ratio of two median runs. Empty without
    the anchor or with one round."""
    anchors = runs.get(ANCHOR, [])
    if len(anchors) < 2:
        return ""
    out = ["ours ÷ anchor (wall), round by round (median):"]
    for name, got in runs.items():
        if name == ANCHOR:
            continue
        ratios = [
            (r["n"] / r["wall"]) / (a["n"] / a["wall"])
            for r, a in zip(got, anchors, strict=True)
            if isinstance(r, dict) and isinstance(a, dict)
        ]
        if ratios:
            each = ", ".join(f"{x:.2f}" for x in ratios)
            out.append(f"- {LABELS[name]}: {each} ({statistics.median(ratios):.2f}×)")
    return "\n".join(out) + "\n" if len(out) > 1 else ""


def _split_corpus(workdir: Path, records: int, seed: int) -> str:
    """The same number of records as :data:`SCALE_FILES` files (``os.pathsep``-joined)."""
    from litpulse.app.demo.generate import generate_corpus

    out = workdir / f"corpus-{records}-{seed}-x{SCALE_FILES}"
    files = sorted(out.glob("pubmed26n*.xml.gz"))
    if len(files) != SCALE_FILES:
        files = list(generate_corpus(out, n_records=records, n_files=SCALE_FILES, seed=seed).files)
    return os.pathsep.join(str(f) for f in files)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the markdown table (and the profile)."""
    ap = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "litpulse-bench")
    ap.add_argument("--only", nargs="*", choices=PATHS, default=list(PATHS))
    ap.add_argument(
        "--profile", action=argparse.BooleanOptionalAction, default=True,
        help="also profile the SQLite ingest with cProfile (default on)",
    )  # fmt: skip
    ap.add_argument("--top", type=int, default=15, help="functions per profile table")
    ap.add_argument(
        "--repeat", type=int, default=1,
        help="run the paths this many times, interleaved; each row is the median run",
    )  # fmt: skip
    ap.add_argument(
        "--before", type=Path, default=None,
        help="another checkout (e.g. main): each path also runs with its code, interleaved, "
        "as a 'before' row",
    )  # fmt: skip
    ap.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--child", nargs=3, metavar=("PATH", "FILE", "URL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = corpus_file(args.workdir, args.records, args.seed)
    gz_mb = path.stat().st_size / 2**20
    load = os.getloadavg()
    sys.stdout.write(f"corpus: {path} ({args.records} records, {gz_mb:.1f} MiB gz)\n")
    sys.stdout.write(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (shared), ")
    sys.stdout.write("load average (1/5/15 min) at start: " + "/".join(f"{x:.1f}" for x in load))
    split = _split_corpus(args.workdir, args.records, args.seed)
    names = list(args.only)
    if args.before is not None:
        for name in args.only:
            if name != ANCHOR:
                LABELS[name + BEFORE] = f"{LABELS[name]} — at {args.before} (before)"
                names.insert(names.index(name) + 1, name + BEFORE)
    runs: dict[str, list[dict[str, float] | str]] = {name: [] for name in names}
    for _round in range(args.repeat):  # interleaved: a change of load hits every path
        for name in names:
            runs[name].append(_run_path(name, split if name.startswith("scale") else path, args))
    results = {name: _median(got) for name, got in runs.items()}
    sys.stdout.write("\n\n")
    if args.repeat > 1:
        sys.stdout.write(f"each row: the run of median wall time of {args.repeat}, interleaved\n\n")
    sys.stdout.write(_table(results))
    paired = _paired(runs)
    if paired:
        sys.stdout.write(f"\n{paired}")
    sys.stdout.write(f"\nload average {os.getloadavg()[0]:.1f} after the table\n")

    if args.profile:
        prof_file = path.with_name("ingest.prof")
        prof_file.unlink(missing_ok=True)
        r = _run_path("profile", path, args)
        if isinstance(r, str):
            sys.stdout.write(f"\nprofile failed: {r}\n")
        else:
            sys.stdout.write(
                f"\n{_profile_report(prof_file, args.top)}"
                f"\n(profiled run: {r['n'] / r['wall']:,.0f} records/s wall; cProfile overhead "
                f"included)\nload average {os.getloadavg()[0]:.1f} at the end\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
