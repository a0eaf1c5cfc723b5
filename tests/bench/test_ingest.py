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


def test_the_sampler_times_how_long_the_store_went_on_after_the_parse(tmp_path: Path) -> None:
    """The "store alone at the end" column: from the last reading at which a parse worker
    was busy to the end. Workers alive but idle do not count, nor do the writer's own CPU
    and its other children; workers started after the first tree walks are still seen."""
    import subprocess
    import sys

    from ingest.parallel import parse_ordered
    from ingest.parse import source_ref_for

    path = tmp_path / "pubmed26n0001.xml"
    path.write_bytes(_articles(30_000))
    sampler = bench.TreeSampler()
    time.sleep(1.1)  # past the sampler's start-up walks: it must still find the workers
    n = 0
    for _index, items in parse_ordered([(path, source_ref_for(path))], workers=2, stripe=True):
        n += sum(1 for _ in items)
        _spin(0.5)  # the job read: its workers wait, alive and idle
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a busy child
    try:
        _spin(0.5)
    finally:
        child.kill()
        child.wait()
    _mb, workers_cpu, alone = sampler.stop()
    assert n == 30_000 and workers_cpu > 0
    assert alone is not None and 1.0 - bench.TreeSampler.EVERY_S <= alone < 6


def test_no_parse_workers_no_stretch_alone() -> None:
    sampler = bench.TreeSampler()
    time.sleep(0.3)
    assert sampler.stop()[2] is None
