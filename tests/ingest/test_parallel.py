"""Parse worker processes: items in job and file order, errors and deaths surface, no hang."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.parallel import parse_ordered
from ingest.parse import source_ref_for
from ingest.records import Deletion, QuarantineEntry, SourceRef
from ingest.rows import PreparedRecord
from litpulse.app.demo.generate import generate_corpus
from litpulse.core.errors import ChecksumError, ParseError, WorkerError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("parallel")
    m = generate_corpus(folder, n_records=300, n_files=3, seed=3, revise_fraction=0.1,
                        delete_fraction=0.1, malformed_fraction=0.02)  # fmt: skip
    return list(m.files)


def key(item: object) -> tuple[object, ...]:
    if isinstance(item, PreparedRecord):
        return ("record", item.pmid, item.content_hash, item.source.location)
    if isinstance(item, Deletion):
        return ("deletion", item.pmid, item.source.location)
    assert isinstance(item, QuarantineEntry)
    return ("quarantine", item.digest, item.line)


def read_all(files: list[Path], workers: int, **kw: int) -> list[list[tuple[object, ...]]]:
    jobs = [(p, source_ref_for(p)) for p in files]
    out: list[list[tuple[object, ...]]] = []
    for index, items in parse_ordered(jobs, workers=workers, **kw):
        assert index == len(out)
        out.append([key(it) for it in items])
    return out


def parse_children() -> list[multiprocessing.Process]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("litpulse-parse")]


def test_any_number_of_workers_gives_the_same_items_in_order(files: list[Path]) -> None:
    here = read_all(files, 0)
    kinds = {k[0] for job in here for k in job}
    assert kinds == {"record", "deletion", "quarantine"}
    assert read_all(files, 1, chunk_items=7, queue_batches=1) == here
    assert read_all(files, 2) == here
    assert read_all(files[::-1], 3) == here[::-1]
    assert not parse_children()


def test_a_worker_error_is_raised_where_its_job_is_read(files: list[Path], tmp_path: Path) -> None:
    jobs = [(files[0], source_ref_for(files[0])), (tmp_path / "missing.xml", source_ref_for("x"))]
    got = []
    with pytest.raises(ParseError, match="missing.xml"):
        for _index, items in parse_ordered(jobs, workers=2):
            got.append(sum(1 for _ in items))
    assert len(got) == 1 and got[0] > 0  # the first file was read whole before
    assert not parse_children()


def test_a_killed_worker_raises_instead_of_hanging(files: list[Path]) -> None:
    jobs = [(p, source_ref_for(p)) for p in files]
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="died"):
        for _index, items in parse_ordered(jobs, workers=1, chunk_items=5, queue_batches=1):
            for n, _item in enumerate(items):
                if n == 0:
                    for proc in parse_children():
                        os.kill(proc.pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 20
    assert not parse_children()


def test_stopping_early_stops_the_workers(files: list[Path]) -> None:
    jobs = [(p, source_ref_for(p)) for p in files]
    parsed = parse_ordered(jobs, workers=2, chunk_items=5, queue_batches=1)
    _index, items = next(parsed)
    next(items)
    assert len(parse_children()) == 2
    parsed.close()
    assert not parse_children()


@pytest.mark.parametrize(
    ("chunk", "queued", "wait"),
    [(5, 1, 0.0), (20, 50, 3.0)],
    ids=["parsing", "done, output unread"],
)
def test_workers_exit_when_their_caller_is_killed(
    files: list[Path], chunk: int, queued: int, wait: float
) -> None:
    """Whether a worker is still parsing or has finished with its output unread."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "import multiprocessing as mp\n"
        "from ingest.parallel import parse_ordered\n"
        "from ingest.parse import source_ref_for\n"
        "paths = [Path(p) for p in sys.argv[1:]]\n"
        "parsed = parse_ordered([(p, source_ref_for(p)) for p in paths], workers=2,\n"
        f"                       chunk_items={chunk}, queue_batches={queued})\n"
        "_i, items = next(parsed)\n"
        "next(items)\n"
        f"time.sleep({wait})\n"
        "print(' '.join(str(p.pid) for p in mp.active_children()\n"
        "               if p.name.startswith('litpulse-parse')), flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, files)], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    assert not alive, f"parse workers {alive} outlived their killed caller"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_prepared_records_cross_the_queue_whole(files: list[Path], tmp_path: Path) -> None:
    """Prepared records travel as plain tuples and arrive as equal PreparedRecords."""
    jobs = [(p, source_ref_for(p)) for p in files]
    here = [list(items) for _i, items in parse_ordered(jobs, workers=0)]
    assert any(type(it) is PreparedRecord for job in here for it in job)
    for workers in (1, 2):  # with 2, the job ahead spills to a file
        got = [list(items) for _i, items in
               parse_ordered(jobs, workers=workers, chunk_items=7, spill_dir=tmp_path)]  # fmt: skip
        assert got == here
        assert [[type(it) for it in job] for job in got] == [
            [type(it) for it in job] for job in here
        ]
    assert not parse_children()


# ------------------------------------------------------------- lazy jobs, spilling


def test_lazy_jobs_and_spilling_give_the_same_items(files: list[Path], tmp_path: Path) -> None:
    here = read_all(files, 0)
    for workers in (1, 2, 3):
        lazy = ((p, source_ref_for(p)) for p in files)
        got = [[key(it) for it in items] for _i, items in
               parse_ordered(lazy, workers=workers, chunk_items=7, queue_batches=1,
                             spill_dir=tmp_path)]  # fmt: skip
        assert got == here, workers
    assert list(tmp_path.iterdir()) == []  # spill files removed
    assert not parse_children()


def test_lazy_jobs_are_taken_at_most_workers_ahead_and_their_error_surfaces(
    files: list[Path],
) -> None:
    taken: list[Path] = []

    def jobs() -> Iterator[tuple[Path, SourceRef]]:
        for p in [*files, files[0]]:
            if len(taken) == 3:
                raise ChecksumError("the fourth file is bad")
            taken.append(p)
            yield p, source_ref_for(p)

    parsed = parse_ordered(jobs(), workers=2, chunk_items=5, queue_batches=1)
    read = []
    with pytest.raises(ChecksumError, match="fourth"):
        for index, items in parsed:
            first = next(items)
            if index == 0:
                time.sleep(0.5)
                assert len(taken) == 2  # jobs 0 and 1 handed out, job 2 not yet
            read.append([key(first), *(key(it) for it in items)])
    assert read == read_all(files, 0)  # the jobs before the bad one, whole
    assert not parse_children()


def test_a_worker_ahead_of_its_caller_spills_instead_of_waiting(
    files: list[Path], tmp_path: Path
) -> None:
    jobs = [(p, source_ref_for(p)) for p in files[:2]]
    parsed = parse_ordered(jobs, workers=2, chunk_items=5, queue_batches=1, spill_dir=tmp_path)
    _index, items = next(parsed)
    first = [key(next(items))]
    deadline = time.monotonic() + 20
    spilled: list[Path] = []
    while not spilled and time.monotonic() < deadline:  # job 1 parsed on past the queue
        spilled = [p for p in tmp_path.rglob("job-1.pkl") if p.stat().st_size]
        time.sleep(0.05)
    assert spilled
    got = [first + [key(it) for it in items]]
    got += [[key(it) for it in items] for _i, items in parsed]
    assert got == read_all(files[:2], 0)
    assert list(tmp_path.iterdir()) == []
    assert not parse_children()
