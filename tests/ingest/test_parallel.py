"""Parse worker processes: items in job and file order, errors and deaths surface, no hang."""

from __future__ import annotations

import gzip
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import ingest.parse as parse_mod
from ingest.parallel import FileIdentity, parse_ordered
from ingest.parse import ParseLimits, iter_items, iter_units, source_ref_for
from ingest.records import Deletion, Item, QuarantineEntry, SourceRef
from ingest.rows import PreparedRecord, prepare_item
from litpulse.app.demo.generate import generate_corpus
from litpulse.core.errors import ChecksumError, FileChangedError, ParseError, WorkerError
from tests.ingest.hostile import article, corpus, deletion, document

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


def read_all(files: list[Path], workers: int, **kw: Any) -> list[list[tuple[object, ...]]]:
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
    ("chunk", "queued", "wait", "n_files"),
    [(5, 1, 0.0, 3), (20, 50, 3.0, 3), (5, 1, 0.0, 1)],
    ids=["parsing", "done, output unread", "one file split over both"],
)
def test_workers_exit_when_their_caller_is_killed(
    files: list[Path], chunk: int, queued: int, wait: float, n_files: int
) -> None:
    """Whether a worker is still parsing or has finished with its output unread."""
    files = files[:n_files]
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
    except (FileNotFoundError, ProcessLookupError):  # gone (ESRCH: gone while read)
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
    """Up to ``workers`` jobs beyond the one read are handed out (with one worker, the next
    file is parsed while the caller stores the current one), no more."""
    taken: list[Path] = []

    def jobs() -> Iterator[tuple[Path, SourceRef]]:
        for p in [*files, files[0], files[1]]:
            if len(taken) == 4:
                raise ChecksumError("the fifth file is bad")
            taken.append(p)
            yield p, source_ref_for(p)

    parsed = parse_ordered(jobs(), workers=2, chunk_items=5, queue_batches=1)
    read = []
    with pytest.raises(ChecksumError, match="fifth"):
        for index, items in parsed:
            first = next(items)
            if index == 0:
                time.sleep(0.5)
                assert len(taken) == 3  # jobs 0, 1 and 2 handed out, job 3 not yet
            read.append([key(first), *(key(it) for it in items)])
    assert read == read_all([*files, files[0]], 0)  # the jobs before the bad one, whole
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


# ------------------------------------------------------------- one file, several parsers


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files whose every oddity must come out of a striped parse as from a whole one."""
    folder = tmp_path_factory.mktemp("striped")
    m = generate_corpus(folder / "gen", n_records=1500, n_files=1, seed=5, revise_fraction=0.1,
                        delete_fraction=0.1, malformed_fraction=0.03)  # fmt: skip
    (generated,) = m.files
    n = 700
    bad = {i: article(i, title="<sup>x") for i in range(7, n, 45)}  # batches fail, re-parsed
    bad[100] = b"<<< junk >>> &&& \n" + article(100)
    bad[200] = article(200).replace(b"</PubmedArticle>", b"")  # no end tag
    bad[300] = article(300, title="y" * 400_000)  # over the record cap of LIMITS
    bad[400] = deletion("5", "6") + article(400)
    broken = document(corpus(n, bad))
    packed = gzip.compress(document(corpus(n)))
    out = {
        "generated": generated,
        "broken": folder / "broken.xml",
        "truncated": folder / "truncated.xml.gz",
        "cut-plain": folder / "cut.xml",
        "not-a-set": folder / "other.xml",
        "empty-set": folder / "empty.xml",
    }
    out["broken"].write_bytes(broken)
    out["truncated"].write_bytes(packed[: len(packed) * 9 // 10])
    out["cut-plain"].write_bytes(broken[: len(broken) * 2 // 3])
    out["not-a-set"].write_bytes(b"<Other>" + b"".join(corpus(30)) + b"</Other>")
    out["empty-set"].write_bytes(document([]))
    return out


LIMITS = ParseLimits(max_record_bytes=200_000)


def striped(path: Path, ref: SourceRef, parts: int) -> list[Item]:
    """The items of ``path`` read unit by unit from ``parts`` stripes, as a caller would."""
    units: dict[int, list[Item]] = {}
    totals = set()
    for part in range(parts):
        for u, items in iter_units(path, part=part, parts=parts, source_ref=ref, limits=LIMITS):
            if items is None:
                totals.add(u)
                continue
            assert u % parts == part and u not in units
            units[u] = list(items)
    (total,) = totals  # every stripe agrees on the number of units
    assert sorted(units) == list(range(total))
    return [item for u in range(total) for item in units[u]]


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_stripes_read_in_unit_order_are_the_whole_file(
    odd_files: dict[str, Path], parts: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parse_mod, "BATCH_BYTES", 1 << 14)  # many units
    for name, path in odd_files.items():
        ref = source_ref_for(path)
        whole = list(iter_items(path, source_ref=ref, limits=LIMITS, threaded=False))
        assert striped(path, ref, parts) == whole, name
    broken = odd_files["broken"]
    kinds = {type(it).__name__ for it in striped(broken, source_ref_for(broken), parts)}
    assert kinds == {"Record", "Deletion", "QuarantineEntry"}


def test_a_stripe_outside_the_parts_is_refused(odd_files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="part"):
        next(iter_units(odd_files["broken"], part=2, parts=2))


def read_striped(paths: list[Path], workers: int, **kw: Any) -> list[list[tuple[object, ...]]]:
    jobs = [(p, source_ref_for(p)) for p in paths]
    out: list[list[tuple[object, ...]]] = []
    for index, items in parse_ordered(jobs, workers=workers, limits=LIMITS, **kw):
        assert index == len(out)
        out.append([key(it) for it in items])
    return out


@pytest.mark.parametrize("workers", [2, 3])
def test_one_file_parsed_by_several_workers_gives_the_items_of_one(
    odd_files: dict[str, Path], workers: int
) -> None:
    paths = list(odd_files.values())
    here = read_striped(paths, 0)
    assert sum(map(len, here)) > 2000
    for path, want in zip(paths, here, strict=True):  # one file: striped by default
        assert read_striped([path], workers, chunk_items=7, queue_batches=1) == [want], path
    assert read_striped(paths, workers, stripe=True) == here
    assert not parse_children()


def test_striped_lazy_jobs_and_spilling_give_the_same_items(
    odd_files: dict[str, Path], files: list[Path], tmp_path: Path
) -> None:
    paths = [odd_files["generated"], *files, odd_files["truncated"]]
    here = read_striped(paths, 0)
    lazy = ((p, source_ref_for(p)) for p in paths)
    got = [[key(it) for it in items] for _i, items in
           parse_ordered(lazy, workers=2, limits=LIMITS, chunk_items=7, queue_batches=1,
                         spill_dir=tmp_path, stripe=True)]  # fmt: skip
    assert got == here
    # a sequence: the files one worker each, the last one (fewer left than workers) striped
    assert read_striped(paths, 2, chunk_items=7, spill_dir=tmp_path) == here
    assert list(tmp_path.iterdir()) == []
    assert not parse_children()


def test_a_striped_file_that_cannot_be_read_raises_where_it_is_read(
    files: list[Path], tmp_path: Path
) -> None:
    jobs = [(files[0], source_ref_for(files[0])), (tmp_path / "missing.xml", source_ref_for("x"))]
    got = []
    with pytest.raises(ParseError, match="missing.xml"):
        for _index, items in parse_ordered(jobs, workers=2, stripe=True):
            got.append(sum(1 for _ in items))
    assert got == [len(read_all(files[:1], 0)[0])]
    assert not parse_children()


def test_a_striped_worker_error_mid_file_is_raised_in_order(odd_files: dict[str, Path]) -> None:
    """A worker whose unit raises: every item of the units before, then its error."""
    path = odd_files["generated"]
    want = read_all([path], 0)[0]
    jobs = [(path, source_ref_for(path))]
    got: list[tuple[object, ...]] = []
    with pytest.raises(RuntimeError, match="unit 5 of part 1"):
        for _index, items in parse_ordered(jobs, workers=2, units=failing_units, chunk_items=3):
            got.extend(key(it) for it in items)
    units = list(iter_units(path, part=0, parts=1))
    assert len(units) > 8
    assert got == want[: len(got)] and len(got) > 0
    assert not parse_children()


def failing_units(
    path: BinaryIO, *, source_ref: SourceRef, limits: Any, part: int, parts: int
) -> Iterator[Any]:
    """A unit parser (by name, so workers import it) whose unit 5 raises."""
    for u, items in iter_units(path, part=part, parts=parts, source_ref=source_ref,
                               limits=limits):  # fmt: skip
        if u == 5 and items is not None:
            raise RuntimeError(f"unit 5 of part {part}")
        yield u, items


def test_a_striped_worker_killed_mid_file_raises_instead_of_hanging(
    odd_files: dict[str, Path],
) -> None:
    path = odd_files["generated"]
    jobs = [(path, source_ref_for(path))]
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="died"):
        for _index, items in parse_ordered(jobs, workers=2, chunk_items=5, queue_batches=1):
            for n, _item in enumerate(items):
                if n == 0:
                    children = parse_children()
                    assert len(children) == 2
                    os.kill(children[1].pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 20
    assert not parse_children()


def test_a_striped_file_stops_its_workers_when_the_caller_stops(
    odd_files: dict[str, Path],
) -> None:
    path = odd_files["generated"]
    parsed = parse_ordered([(path, source_ref_for(path))], workers=2, chunk_items=5,
                           queue_batches=1)  # fmt: skip
    _index, items = next(parsed)
    next(items)
    assert len(parse_children()) == 2
    parsed.close()
    assert not parse_children()


def test_one_worker_parses_the_next_lazy_job_while_the_caller_reads(
    files: list[Path], tmp_path: Path
) -> None:
    """With one worker, the next file is parsed (spilled) before the caller reaches it."""
    lazy = ((p, source_ref_for(p)) for p in files)
    parsed = parse_ordered(lazy, workers=1, chunk_items=5, spill_dir=tmp_path)
    _index, items = next(parsed)
    got = [[key(it) for it in items]]  # job 0 read whole; the caller is not at job 1 yet
    deadline = time.monotonic() + 20
    spilled: list[Path] = []
    while not spilled and time.monotonic() < deadline:
        spilled = [p for p in tmp_path.rglob("job-1.pkl") if p.stat().st_size]
        time.sleep(0.05)
    assert spilled
    got += [[key(it) for it in items] for _i, items in parsed]
    assert got == read_all(files, 0)
    assert list(tmp_path.iterdir()) == []
    assert not parse_children()


def test_a_striped_worker_failing_after_its_last_unit_raises_when_next_needed(
    files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Part 1 fails once its units of the first file are sent: its error is raised where
    the caller next needs that worker (the end of the file, or the next file), never a
    hang or a protocol error, and every item before it is the right one."""
    jobs = [(p, source_ref_for(p)) for p in files]
    want = [k for job in read_all(files, 0) for k in job]
    got: list[tuple[object, ...]] = []
    with pytest.raises(RuntimeError, match="after the units of part 1"):
        for _index, items in parse_ordered(jobs, workers=2, stripe=True, units=failing_at_end):
            got.extend(key(it) for it in items)
    assert got == want[: len(got)]
    assert len(got) >= len(read_all(files[:1], 0)[0])  # the first file whole
    assert not parse_children()
    # the log names the file the worker failed on, not the one the caller was reading
    failed = [r.getMessage() for r in caplog.records if "parse worker failed" in r.getMessage()]
    assert failed and all(files[0].name in m for m in failed), failed


def failing_at_end(
    path: BinaryIO, *, source_ref: SourceRef, limits: Any, part: int, parts: int
) -> Iterator[Any]:
    """A unit parser (by name) whose part 1 raises after its units of the first file (the
    job's open file: its ``name`` is the path)."""
    for u, items in iter_units(path, part=part, parts=parts, source_ref=source_ref,
                               limits=limits):  # fmt: skip
        if items is None and part == 1 and path.name.endswith("0001.xml.gz"):
            raise RuntimeError("after the units of part 1")
        yield u, items


# ----------------------------------------------- hostile review: striped jobs, late errors

@pytest.fixture(scope="module")
def one_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A document that is not a ``PubmedArticleSet``: one unit, read by part 0."""
    path = tmp_path_factory.mktemp("one-unit") / "other.xml"
    path.write_bytes(b"<Other>" + b"".join(corpus(5)) + b"</Other>")
    return path


@pytest.fixture(scope="module")
def many_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A document of many units (over a megabyte: BATCH_BYTES is 128 KiB)."""
    path = tmp_path_factory.mktemp("many-units") / "big.xml"
    bad = {i: article(i, abstract="z" * 3000) for i in range(1, 600)}
    path.write_bytes(document(corpus(600, bad)))
    return path


def test_a_striped_job_some_worker_has_no_unit_of_while_spilling_reads_on(
    many_units: Path, one_unit: Path, tmp_path: Path
) -> None:
    """Three workers stripe every job; job 1 has one unit (worker 0's; worker 1 sends its
    end), so worker 2 has nothing of it. Started while the caller still reads job 0, it
    opens a spill file anyway and announces it on its queue: job 2's reader then finds
    a message of job 1 there."""
    paths = [many_units, one_unit, many_units]
    want = [[key(it) for it in items] for _i, items in
            parse_ordered([(p, source_ref_for(p)) for p in paths], workers=0)]  # fmt: skip
    assert len(want[0]) > 500
    jobs = ((p, source_ref_for(p)) for p in paths)  # lazy
    got: list[list[tuple[object, ...]]] = []
    for index, items in parse_ordered(jobs, workers=3, stripe=True, spill_dir=tmp_path,
                                      chunk_items=5, queue_batches=1):  # fmt: skip
        first = next(items, None)
        if index == 0:
            time.sleep(1.5)  # the workers run ahead into job 1 and spill it
        got.append(([key(first)] if first is not None else [])
                   + [key(it) for it in items])  # fmt: skip
    assert got == want
    assert not parse_children()


# --------------------------------------------------- the recount racing another writer


@pytest.fixture(scope="module")
def even_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated file (named ``…0001.xml.gz``) of an even number of units: part 0 of
    two sends its end."""
    from ingest.parse import iter_units
    from litpulse.app.demo.generate import generate_corpus

    folder = tmp_path_factory.mktemp("even")
    for n in range(300, 600, 30):
        (path,) = generate_corpus(folder / str(n), n_records=n, n_files=1, seed=3).files
        total = next(u for u, items in iter_units(path, part=0, parts=1) if items is None)
        if total % 2 == 0 and total > 4:
            return path
    raise AssertionError("no file of an even number of units")


def test_a_worker_error_after_its_last_unit_of_the_last_file_is_not_dropped(
    even_units: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One file split over two workers (``ingest --files`` of one file, an update file):
    part 1 fails once its units are sent, part 0 sends the end. The error is raised at
    the end of the stream (it was dropped: neither raised nor logged)."""
    jobs = [(even_units, source_ref_for(even_units))]
    with pytest.raises(RuntimeError, match="after the units of part 1"):
        for _index, items in parse_ordered(jobs, workers=2, units=failing_at_end):
            for _item in items:
                pass
    assert not parse_children()


# ----------------------------------------------- a file that is not its recorded version


@pytest.mark.parametrize(
    ("workers", "stripe"), [(0, None), (1, None), (2, True)], ids=["here", "one", "striped"]
)
def test_a_job_whose_file_is_not_the_recorded_version_raises_after_the_jobs_before(
    files: list[Path], tmp_path: Path, workers: int, stripe: bool | None
) -> None:
    """A lazy job carrying the identity its caller recorded, the file touched since: its
    error is raised where it is read, after every item of the jobs before, never its items."""
    copy = tmp_path / "copy.xml.gz"
    copy.write_bytes(files[1].read_bytes())
    recorded = FileIdentity.read(copy)
    assert recorded is not None
    os.utime(copy, ns=(recorded.mtime_ns, recorded.mtime_ns + 1_000_000))
    jobs = iter([(files[0], source_ref_for(files[0]), None),
                 (copy, source_ref_for(copy), recorded)])  # fmt: skip
    got: list[list[tuple[object, ...]]] = []
    with pytest.raises(FileChangedError, match="copy.xml.gz.*modified"):
        for _index, items in parse_ordered(jobs, workers=workers, stripe=stripe,
                                           spill_dir=tmp_path, chunk_items=7):  # fmt: skip
            got.append([])
            got[-1].extend(key(it) for it in items)
    assert got == [*read_all(files[:1], 0), []]
    assert not parse_children()


# ------------------------------------------- an item that cannot be sent is an error, not a gap


class _Unsendable:
    """An item no pickle can send (it holds a lambda)."""

    def __init__(self) -> None:
        self.f = lambda: 0


def unsendable_at_300(path: BinaryIO, *, source_ref: SourceRef, limits: Any) -> Iterator[Any]:
    """A parser (by name, so workers import it) whose 300th item cannot be pickled."""
    for n, item in enumerate(iter_items(path, source_ref=source_ref, limits=limits)):
        yield _Unsendable() if n == 299 else item


def test_a_chunk_that_cannot_be_sent_fails_the_job_instead_of_vanishing(tmp_path: Path) -> None:
    # the worker used to hand its chunks to the queue's feeder thread, which pickles them:
    # a chunk that failed to pickle was dropped there (a traceback on stderr) and the job
    # ended as if complete, 250 items short
    (path,) = generate_corpus(tmp_path, n_records=600, n_files=1, seed=4).files
    whole = [key(prepare_item(i)) for i in iter_items(path)]
    got: list[tuple[object, ...]] = []
    with pytest.raises(Exception, match="pickle|lambda"):
        for _index, items in parse_ordered([(path, source_ref_for(path))], workers=1,
                                           parse=unsendable_at_300):  # fmt: skip
            got.extend(key(i) for i in items)
    assert got == whole[: len(got)] and len(got) < 300  # nothing after a gap, only before it


# ------------------------------------ review6: a worker killed while its chunk is in the pipe


def big_chunk_then_killed(path: BinaryIO, *, source_ref: SourceRef, limits: Any) -> Iterator[Any]:
    """A parser (by name, so workers import it) whose first item makes an 8 MB chunk, after
    which its worker is killed (as by the OOM killer) while the queue's feeder thread is
    still writing that chunk into the pipe (the caller is busy, the pipe holds 64 KB)."""
    yield QuarantineEntry(reason="big", raw_xml="x" * (8 << 20), source=source_ref)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
    yield from iter_items(path, source_ref=source_ref, limits=limits)  # pragma: no cover


_KILLED_CALLER = """
import sys, time
from pathlib import Path
from ingest.parallel import parse_ordered
from ingest.parse import source_ref_for
from tests.ingest.test_parallel import big_chunk_then_killed
path = Path(sys.argv[1])
try:
    for _index, items in parse_ordered([(path, source_ref_for(path))], workers=1,
                                       chunk_items=1, parse=big_chunk_then_killed):
        time.sleep(1.5)  # storing a batch: the worker's feeder blocks mid-write meanwhile
        for _item in items:
            pass
except Exception as exc:
    print(type(exc).__name__)
"""


def test_a_worker_killed_while_its_chunk_is_in_the_pipe_raises_instead_of_hanging(
    tmp_path: Path,
) -> None:
    (path,) = generate_corpus(tmp_path, n_records=20, n_files=1, seed=4).files
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    try:
        done = subprocess.run([sys.executable, "-c", _KILLED_CALLER, str(path)], env=env,
                              cwd=REPO, capture_output=True, text=True, timeout=20)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the caller hung after its worker was killed mid-chunk")
    assert done.stdout.split() == ["WorkerError"], done.stderr
