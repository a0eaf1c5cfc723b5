"""Hostile review (session 32n) of the nightly pipeline's orchestration and its operator
surface: ``litpulse/pipeline/nightly.py`` (``run_nightly``, its steps, lease and
watermark hand-off), ``planning.py`` (``last_watermark``, ``withhold_watermark``,
``release_watermark``), ``dag_support.py``, the CLI ``litpulse nightly`` / ``status`` /
``quarantine`` / ``missing`` and the DAG files under ``dags/`` as thin callers.

Every test drives the real code: the CLI's ``main()`` in-process (the same entry point as
the ``litpulse`` script) and :func:`run_nightly` / :func:`ingest_eutils_window` against the
tests' loopback NCBI emulator, on SQLite and PostgreSQL where a store matters; the
embedding steps use the tests' tiny encoder. Each defect was a strict xfail asserting the
correct behaviour; both were fixed in the same session and are plain tests now: N1
``run_nightly`` refuses ``--since``/``--until`` for a source other than ``eutils``; N2 the
CLI's ``_when`` answers a time off the calendar in UTC as a usage error, and
``run_nightly`` refuses, before its lease, a window whose searched days fall off it.

Defects:

N1 ``litpulse nightly --since/--until`` are silently ignored unless the source is
   ``eutils``: ``litpulse nightly --files pubmed26n0001.xml.gz --since 2024-01-02 --until
   2024-01-03`` (or ``--source updatefiles --since …``) ingests, embeds and publishes as if
   no window had been given, prints its summary table and exits 0. No run records the
   window, the table shows no ``window`` line, and nothing tells the operator that the
   days they named were not ingested (an operator backfilling "those two days from the
   update files" believes it done; the watermark is whatever the files moved it to).
   ``run_nightly`` refuses ``--files`` with another source ("--files only applies to
   source 'files'") but not the reverse; ``_window`` is only called for ``eutils``. At
   fault: ``litpulse/pipeline/nightly.py`` ``run_nightly`` (argument checks) and
   ``litpulse/app/cli/nightly.py``. Fix: ``ConfigError("--since/--until only apply to
   source 'eutils', not 'files'")`` before the lease is taken (exit 2, nothing run or
   recorded), as for ``--files``.
   (test_nightly_refuses_a_window_its_source_does_not_ingest)
N2 ``litpulse nightly`` ends in a Python traceback (exit 1, ``OverflowError: date value
   out of range``) on a date at the calendar's edge instead of a usage error: ``--since
   0001-01-01T00:00+01:00`` fails inside the argparse type (``_when`` → ``as_utc`` →
   ``astimezone``: argparse turns only ``ValueError``/``TypeError`` into a usage error), and
   ``--since 0001-01-01 --until 0001-01-03`` passes the checks, takes the ``nightly``
   lease and fails in the ingest step (``ingest.dates.searched_days`` subtracts the
   overlap day). The README promises "the CLI never ends in a traceback on what a user
   types" and "a number out of range with 2". (A cousin of the known ``demo generate
   --start 0001-01-01``, in the operator's own command, after a lease is taken.) At
   fault: ``litpulse/app/cli/nightly.py`` ``_when`` and ``run_nightly``/``_window``. Fix:
   ``_when`` catches ``OverflowError`` (an ``ArgumentTypeError``), and ``_window`` refuses
   a start whose searched days (``LITPULSE_WINDOW_OVERLAP_DAYS`` before it) fall before
   year 1 with a ``ConfigError`` naming the earliest start it takes.
   (test_nightly_since_at_the_calendars_edge_is_a_usage_error,
   test_nightly_window_at_the_calendars_edge_is_a_clear_error)

Guards (right today, must stay right after a fix): a window whose end is not after its
start, and ``--files`` with ``--source eutils``, exit 2 having recorded nothing and left no
lease behind (SQLite and PostgreSQL); a second nightly while a live process holds the
``nightly`` lease exits 75 naming it, records nothing; consecutive DAG-style UTC-day
windows across both 2024 US DST switches (PubMed's days begin at midnight in Bethesda, 04:00
or 05:00 UTC) chain without a spurious gap: the watermark is the last window's end, and
a window that fails its data-quality check holds the watermark at its start until a rerun
passes.

Also examined and found sound (not kept as tests, or covered elsewhere): a nightly killed
(SIGKILL) mid-ingest resumes from its EFetch checkpoints and a killed citations/quality
step leaves the window ``pending`` so the rerun searches and checks it again
(``tests/litpulse/pipeline/test_nightly*.py``); a dead local lease holder is taken over at
once; the retry policy fails non-retryable errors at once and caps ``Retry-After``;
``reach_back`` names the backfill; ``release_watermark`` leaves a window withheld by a
failed step withheld; the exit codes of a busy store (75), an unreachable database (75),
an iCite/E-utilities outage (75), a failed data-quality check (2); ``quarantine --raw`` of
invalid UTF-8 (escaped, never a traceback); ``--file`` filters with ``%`` and ``_``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from litpulse.app.cli import main
from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
from litpulse.core import db
from litpulse.core.errors import DataQualityError
from litpulse.core.schema import articles, ingest_runs, locks
from litpulse.core.settings import Settings
from litpulse.pipeline.nightly import LEASE_NAME, check_window, ingest_eutils_window
from litpulse.pipeline.planning import last_watermark
from tests.emulator import Emulator, running_emulator
from tests.tiny_encoder import build_tiny_encoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-32n"), max_seq_length=32)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    yield from running_emulator()


def _at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _count(settings: Settings, table: object, *where: object) -> int:
    with db.connect(settings).connect() as conn:
        n = conn.execute(select(func.count()).select_from(table).where(*where)).scalar()
    return int(n or 0)


@pytest.fixture
def cli_env(env: Settings, tiny: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The ``env`` store (SQLite and PostgreSQL) as the CLI finds it, with the tiny encoder
    and no reachable NCBI (nothing here may call it)."""
    monkeypatch.setenv("LITPULSE_MODEL", tiny)
    monkeypatch.setenv("LITPULSE_MAX_SEQ_LENGTH", "32")
    monkeypatch.setenv("LITPULSE_EUTILS_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("LITPULSE_ICITE_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("LITPULSE_MAX_RETRIES", "0")
    return env


def _update_file(folder: Path) -> Path:
    day = dt.date(2024, 1, 2)
    path = folder / "pubmed26n0001.xml.gz"
    path.write_bytes(gz(pubmed_set([article_xml(pmid, edat=day) for pmid in (41, 42)])))
    return path


# ----------------------------------------------------------------------------- N1


def test_nightly_refuses_a_window_its_source_does_not_ingest(
    cli_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _update_file(tmp_path)
    code = main(["nightly", "--files", str(path), "--since", "2024-01-02",
                 "--until", "2024-01-03", "--no-retrain", "--no-citations"])
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}: the window 2024-01-02..2024-01-03 was silently ignored"
    assert "--since" in err and "eutils" in err, err
    assert _count(cli_env, ingest_runs) == 0  # refused before anything ran
    assert _count(cli_env, articles) == 0


# ----------------------------------------------------------------------------- N2


def test_nightly_since_at_the_calendars_edge_is_a_usage_error(
    cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        main(["nightly", "--since", "0001-01-01T00:00+01:00", "--no-retrain"])
    assert exit_.value.code == 2
    assert "0001-01-01" in capsys.readouterr().err


def test_nightly_window_at_the_calendars_edge_is_a_clear_error(
    cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["nightly", "--since", "0001-01-01", "--until", "0001-01-03", "--no-retrain"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("litpulse: error:"), err
    assert _count(cli_env, ingest_runs) == 0
    assert _count(cli_env, locks, locks.c.name == LEASE_NAME) == 0


# ---------------------------------------------------------------------------- guards


@pytest.mark.parametrize("args", [
    ["--since", "2024-01-03", "--until", "2024-01-03"],
    ["--source", "eutils", "--files", "PATH"],
], ids=["empty-window", "files-with-eutils"])
def test_nightly_bad_arguments_exit_2_and_record_nothing(
    cli_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    path = _update_file(tmp_path)
    argv = ["nightly", "--no-retrain", *[str(path) if a == "PATH" else a for a in args]]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("litpulse: error:"), err
    assert _count(cli_env, ingest_runs) == 0
    assert _count(cli_env, locks) == 0


def test_a_second_nightly_exits_75_naming_the_holder(
    cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = db.connect(cli_env)
    lease = db.acquire_lease(engine, LEASE_NAME, ttl_s=60)
    assert lease is not None
    with lease:
        code = main(["nightly", "--since", "2024-01-02", "--until", "2024-01-03"])
        err = capsys.readouterr().err
    assert code == 75, err
    assert lease.holder in err and "another nightly run is in progress" in err
    assert _count(cli_env, ingest_runs) == 0


@pytest.mark.parametrize("first", [dt.date(2024, 3, 9), dt.date(2024, 11, 2)],
                         ids=["spring-forward", "fall-back"])
def test_daily_windows_across_dst_chain_the_watermark(
    sqlite_settings: Settings, emulator: Emulator, first: dt.date
) -> None:
    s = emulator.configure(sqlite_settings, requests_per_second=10)
    days = [first + dt.timedelta(days=i) for i in range(3)]  # Sat, Sun (the switch), Mon
    for n, day in enumerate(days):
        emulator.add_article(7000 + n, edat=day)
    for day in days:  # the DAG's windows: one UTC day each, checked, then released
        window = (_at(day), _at(day + dt.timedelta(days=1)))
        counts = ingest_eutils_window(s, *window).to_dict()
        check_window(s, counts, window)
    assert last_watermark(s) == _at(days[-1] + dt.timedelta(days=1))

    # the next weekday comes back empty: its check fails, the watermark stays at its start
    nxt = days[-1] + dt.timedelta(days=1)
    while nxt.weekday() >= 5:
        nxt += dt.timedelta(days=1)
    gap = (_at(days[-1] + dt.timedelta(days=1)), _at(nxt + dt.timedelta(days=1)))
    counts = ingest_eutils_window(s, *gap).to_dict()
    with pytest.raises(DataQualityError):
        check_window(s, counts, gap)
    assert last_watermark(s) == gap[0]
    # the weekday's records arrive; the rerun passes and moves the watermark on
    emulator.add_article(7100, edat=nxt)
    counts = ingest_eutils_window(s, *gap).to_dict()
    check_window(s, counts, gap)
    assert last_watermark(s) == gap[1]
    assert _count(s, articles) == len(days) + 1
