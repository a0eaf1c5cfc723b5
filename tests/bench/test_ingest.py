"""``bench.ingest``'s summary of repeated runs: each round's ratio to the anchor of that round."""

from __future__ import annotations

import time
from pathlib import Path

from bench import ingest as bench


def test_each_round_is_paired_with_the_anchor_run_of_the_same_round() -> None:
    runs: dict[str, list[dict[str, float] | str]] = {
        "postgresql-w2": [{"n": 20_000, "wall": 4.0}, {"n": 20_000, "wall": 4.0}, "failed"],
        bench.ANCHOR: [{"n": 20_000, "wall": 8.0}, {"n": 20_000, "wall": 10.0},
                       {"n": 20_000, "wall": 9.0}],  # fmt: skip
        "sqlite-w2": [{"n": 20_000, "wall": 5.0}, {"n": 20_000, "wall": 4.0},
                      {"n": 20_000, "wall": 3.0}],  # fmt: skip
    }
    lines = bench._paired(runs).splitlines()
    # a path twice as fast as the anchor in round 1 and 2.5x in round 2 (the anchor slowed):
    # paired round by round, not against one median run; a failed round is left out
    assert lines[1] == f"- {bench.LABELS['postgresql-w2']}: 2.00, 2.50 (2.25×)"
    assert lines[2] == f"- {bench.LABELS['sqlite-w2']}: 1.60, 2.50, 3.00 (2.50×)"


def test_one_round_or_no_anchor_gives_no_summary() -> None:
    one: dict[str, list[dict[str, float] | str]] = {
        bench.ANCHOR: [{"n": 1, "wall": 1.0}], "sqlite": [{"n": 1, "wall": 1.0}],
    }  # fmt: skip
    assert bench._paired(one) == ""
    assert bench._paired({"sqlite": [{"n": 1, "wall": 1.0}, {"n": 1, "wall": 1.0}]}) == ""


def _articles(n: int) -> bytes:
    body = b"".join(
        b"<PubmedArticle><MedlineCitation Status='MEDLINE'><PMID Version='1'>%d</PMID>"
        b"<Article><ArticleTitle>Title %d</ArticleTitle></Article></MedlineCitation>"
        b"</PubmedArticle>" % (i, i)
        for i in range(1, n + 1)
    )
    return b"<PubmedArticleSet>" + body + b"</PubmedArticleSet>"


def _spin(seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:  # the writer busy, on a core of its own
        pass


def _stretch_alone(path: str) -> tuple[int, float, float | None, float]:
    """One sampled parse, in a process of its own (see the test): (articles read, the
    workers' CPU s, the sampler's stretch alone, the seconds from the last article read
    to the sampler's stop)."""
    import subprocess
    import sys

    from ingest.parallel import parse_ordered
    from ingest.parse import source_ref_for

    sampler = bench.TreeSampler()
    time.sleep(1.1)  # past the sampler's start-up walks: it must still find the workers
    n = 0
    read = 0.0
    for _index, items in parse_ordered([(Path(path), source_ref_for(Path(path)))], workers=2,
                                       stripe=True):  # fmt: skip
        n += sum(1 for _ in items)
        read = time.monotonic()
        _spin(0.5)  # the job read: its workers wait, alive and idle
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a busy child
    try:
        _spin(0.5)
    finally:
        child.kill()
        child.wait()
    end = time.monotonic()
    _mb, workers_cpu, alone = sampler.stop()
    return n, workers_cpu, alone, end - read


def test_the_sampler_times_how_long_the_store_went_on_after_the_parse(tmp_path: Path) -> None:
    """The "store alone at the end" column: from the last reading at which a parse worker
    was busy to the end. Workers alive but idle do not count, nor do the writer's own CPU
    and its other children; workers started after the first tree walks are still seen.

    Measured in a fresh interpreter, as the bench runs: the sampler counts every
    grandchild of its process, and a test process holds what earlier tests left (a
    forkserver's idle workers, server threads competing for the GIL) — in CI one such
    run read 0.58 s for a stretch of 1 s."""
    import json
    import subprocess
    import sys

    path = tmp_path / "pubmed26n0001.xml"
    path.write_bytes(_articles(30_000))
    code = (
        "import json, sys\n"
        "from tests.bench.test_ingest import _stretch_alone\n"
        "print(json.dumps(_stretch_alone(sys.argv[1])))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=repo, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    n, workers_cpu, alone, stretch = json.loads(done.stdout.splitlines()[-1])
    assert n == 30_000 and workers_cpu > 0
    # the parse's end is at most the last article read; the sampler sees it at its next
    # reading, EVERY_S later (twice that on a loaded machine); idle workers or the busy
    # child counted as parsing would leave 0.5 s or nothing
    assert stretch >= 1.0
    assert alone is not None and stretch - 2 * bench.TreeSampler.EVERY_S <= alone < 6


def test_no_parse_workers_no_stretch_alone() -> None:
    sampler = bench.TreeSampler()
    time.sleep(0.3)
    assert sampler.stop()[2] is None


def test_idle_core_seconds_count_what_no_process_used() -> None:
    """The "cores idle" column: /proc/stat's idle time over all cores, in seconds. Over a
    second, idle is at most every core's second, and with a child spinning, at most what
    the child left of them (its own CPU in the same second, read from its /proc entry)."""
    import os
    import subprocess
    import sys

    import psutil

    def uptime_idle() -> float:  # the kernel's other count of it: idle only, no iowait
        return float(Path("/proc/uptime").read_text().split()[1])

    cores = os.cpu_count() or 1
    t0, before, up0 = time.monotonic(), bench.idle_core_seconds(), uptime_idle()
    time.sleep(1.0)
    quiet, up1, wall = bench.idle_core_seconds(), uptime_idle(), time.monotonic() - t0
    assert before is not None and quiet is not None
    assert 0 <= quiet - before <= cores * wall * 1.05  # 0: other processes used every core
    assert up1 - up0 - 0.05 <= quiet - before <= up1 - up0 + 0.25  # the same seconds

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # started and spinning
        proc = psutil.Process(child.pid)
        t0, before, c0 = time.monotonic(), bench.idle_core_seconds(), sum(proc.cpu_times()[:2])
        time.sleep(1.0)
        after, c1 = bench.idle_core_seconds(), sum(proc.cpu_times()[:2])
        wall = time.monotonic() - t0
    finally:
        child.kill()
        child.wait()
    assert before is not None and after is not None
    spun = c1 - c0
    assert spun > 0.1  # it did run (beside whatever else the cores run)
    assert 0 <= after - before <= cores * wall * 1.05 - spun + 0.05


def test_the_table_shows_the_idle_cores_of_a_run() -> None:
    row = {"n": 21_000, "wall": 3.0, "cpu": 3.5, "rss_mb": 150, "tree_mb": 280,
           "writer_cpu": 0.7, "workers_cpu": 2.8, "idle": 0.62, "cores": 2.0}  # fmt: skip
    table = bench._table({"postgresql-w2": row, bench.ANCHOR: {
        "n": 20_000, "wall": 6.0, "cpu": 6.0, "rss_mb": 58, "tree_mb": 58}})
    header, _rule, ours, anchor = table.splitlines()
    assert header.endswith("| cores idle s of wall × cores |")
    assert ours.endswith("| 0.62 of 6.00 |")
    assert anchor.endswith("| — |")
    assert len({line.count("|") for line in (header, ours, anchor)}) == 1


def test_a_before_row_runs_the_code_of_the_before_checkout(tmp_path: Path) -> None:
    """``--before DIR``: the child of a ``NAME@before`` row imports ``bench.ingest`` (and
    with it ``ingest`` and ``litpulse``) from DIR, whatever the working directory is (run
    from this checkout, ``python -m`` would put it first on the path)."""
    import argparse
    import os

    other = tmp_path / "before"
    (other / "bench").mkdir(parents=True)
    (other / "bench" / "__init__.py").write_text("")
    (other / "bench" / "ingest.py").write_text(
        "import json, sys\nsys.stdout.write(json.dumps({'n': 1, 'wall': 1.0, 'other': 7.0}))\n"
    )
    args = argparse.Namespace(before=str(other), workdir=tmp_path, timeout=60.0,
                              pg_admin_url="")  # fmt: skip
    here = Path(bench.__file__).resolve().parents[1]
    cwd = os.getcwd()
    os.chdir(here)  # as `python -m bench.ingest` is run: from this checkout
    try:
        got = bench._run_path("sqlite" + bench.BEFORE, tmp_path / "corpus.xml", args)
    finally:
        os.chdir(cwd)
    assert got == {"n": 1, "wall": 1.0, "other": 7.0}
