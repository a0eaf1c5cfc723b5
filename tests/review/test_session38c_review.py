"""Review 38c: what the nightly knows of its own progress (two design decisions earlier
reviews left as strict xfails: 37h X5 and 35b X3).

X1 **(37h X5) The watermark is rebuilt from every succeeded run ever recorded.**
   ``planning.last_watermark`` (``litpulse status``, the nightly's planning,
   ``held_windows``) reads every succeeded E-utilities and update-file run of the store
   and chains their windows again on every call: one run more each night, for years.
   Reproduced: 40 nights recorded, the mark worked out once (the nightly before), one
   more night recorded through the run ledger: working the mark out again reads every
   row of ``ingest_runs`` again (41), where the runs since the last time (and the
   held or unfinished ones) are enough.
   **Fixed**: ``last_watermark`` keeps the chain (checkpoint ``watermark``/``chain``:
   its islands of windows that follow one another, where the first-started run begins,
   the highest run id read, the runs to read again: running, held for their check or
   withheld and not covered yet, an id not committed yet) and carries it on from the
   runs after the highest id read and those to read again: a run finishing, a release
   (a held window's reach only grows) are read there. What only a rebuild can take in
   makes one: none kept (an older store's first call), another format or
   ``LITPULSE_WINDOW_OVERLAP_DAYS``, a run started before the chain's first, a window
   withheld (``withhold_watermark`` drops the kept chain in its own transaction; a
   call that read the chain before checks its token again after reading the runs and
   keeps nothing over a newer one). ``rebuilt_watermark`` is today's rebuild, kept as
   the reference: windows from the same day now go the one reaching further first (the
   store's row order decided it before where a window reaches less than its start: one
   in the future). Measured: after 40 nights and one more through the run ledger, 1
   row of ``ingest_runs`` read (was 41); the random histories below (4 seeds x 45 steps
   a store: gaps, backfills, held, released and withheld windows, failed, killed and
   late-finishing runs, query-restricted runs, update files, raw rows started before
   every other, windows in the future) give the rebuild's mark after every step on
   both stores. 37h's X5 test passes (it works the mark out once first, the nightly
   before). 34g's G4 test rewrites a succeeded run back to running by hand: it deletes
   the kept chain with it (README: hand edits of ``ingest_runs`` need it deleted).
   On PostgreSQL a run whose insert commits after a later id was read and kept still
   moves the mark (its id is read again for a day); with that re-read disabled the
   window filling the gap is lost (verified: the mark stays at day 1 for day 5).
   (test_x1_the_mark_reads_the_runs_since_it_was_kept,
   test_x1_the_kept_mark_is_the_full_rebuilds_over_random_histories,
   test_x1_a_run_committed_after_a_later_id_still_moves_the_mark)

X3 **(the integrator, on X1) Keeping the chain made ``status`` wait behind a night's
   writer.** ``last_watermark`` writes the kept chain: on SQLite it waited the store's
   60 s busy timeout behind an ingest batch holding the write lock (reproduced: 61 s),
   on PostgreSQL behind a row lock on the checkpoint for as long as it was held (no
   lock timeout). **Fixed**: the write waits at most ``planning.KEEP_WAIT_MS`` (250 ms,
   ``db.short_lock_wait``), then is left to a later call; the mark is the same.
   (test_x3_the_mark_is_worked_out_while_a_writer_holds_the_store)

X2 **(35b X3) A new year's update files whose start is unknown are applied from the
   lowest number listed.** Across the year's turn, a mirror whose ``baseline/`` was
   pruned (the README allows pruning a ``file://`` mirror) lists ``pubmed27n0050``..;
   where 2027's update files begin is known only from 2027's baseline listing (its last
   number + 1), so the lowest listed number was taken and the files missing between
   (the end of 2026's, 2027's first) skipped silently. Reproduced twice: with the new
   year's baseline never seen (the run must be held, naming what is missing and
   ``--accept-gaps``), and with a store that saw the new year's baseline listing (last
   number 47) before it was pruned (``pubmed27n0048``..``0049`` must hold the run).
   **Fixed** (the decision: never skip silently): ``updatefiles._first_gap`` gives a
   year later than the store's first, whose start neither its baseline listing, nor a
   baseline of it the store saw listed, nor a file of it the store applied tells, as an
   unknown start (``(year, 0, lowest - 1)``): its files are held, the run fails with
   ``IncompleteSourceError`` naming the year, its first listed file, the last file
   applied before, and the two ways on (restore ``baseline/``, or ``--accept-gaps``
   once, which takes the lowest listed number as before). ``note_listed`` records each
   annual baseline's last number it sees listed (checkpoints scope
   ``updatefiles-baselines``: ``known_baselines``), read by ``apply_updates`` and the
   bootstrap's plan, so a mirror pruning the new year's baseline after the store saw it
   keeps that year's start. NCBI's server (it always lists the baseline) is unchanged:
   ``test_a_deletion_in_next_years_update_file_wins_over_last_years_file`` now lists
   the 2026 baseline as NCBI does (it relied on the old rule). 35b's X3 test passes.
   (test_x2_a_new_year_of_unknown_start_is_held,
   test_x2_a_new_year_whose_baseline_the_store_saw_keeps_its_start)
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from ingest.runs import PENDING_CHECK, IngestCounts, RunLedger
from ingest.updatefiles import apply_updates
from litpulse.core import db
from litpulse.core.errors import IncompleteSourceError
from litpulse.core.schema import checkpoints, ingest_runs
from litpulse.core.settings import Settings
from litpulse.pipeline import planning
from tests.emulator import Emulator
from tests.ingest.test_updatefiles_gaps import _applied, _configure
from tests.review.test_session35b_review import _prune, _publish
from tests.review.test_session37h_review import _statements

DAY0 = dt.datetime(2025, 1, 1, 5, tzinfo=dt.UTC)


def _night(i: int) -> dict[str, Any]:
    start, end = DAY0 + dt.timedelta(days=i), DAY0 + dt.timedelta(days=i + 1)
    return {"source": "eutils", "target": f"{start:%Y-%m-%d}..{end:%Y-%m-%d}",
            "window_start": start, "window_end": end, "status": "succeeded",
            "details": {"listed": 20}, "started_at": end + dt.timedelta(hours=1),
            "finished_at": end + dt.timedelta(hours=2)}  # fmt: skip


def _rows_read(engine: Engine, seen: list[tuple[str, Any]]) -> int:
    """The rows of ``ingest_runs`` the SELECTs of ``seen`` return, run again."""
    read = 0
    with engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        for stmt, params in seen:
            if stmt.lstrip().upper().startswith("SELECT") and "FROM ingest_runs" in stmt:
                cur.execute(stmt, params)
                read += len(cur.fetchall())
        cur.close()
    return read


def test_x1_the_mark_reads_the_runs_since_it_was_kept(settings: Settings) -> None:
    engine = db.connect(settings)
    with engine.begin() as conn:
        conn.execute(insert(ingest_runs), [_night(i) for i in range(40)])
    assert planning.last_watermark(settings, engine) == DAY0 + dt.timedelta(days=40)
    # one more night, through the run ledger
    ledger = RunLedger(engine)
    run = ledger.start_run("eutils", window_start=DAY0 + dt.timedelta(days=40),
                           window_end=DAY0 + dt.timedelta(days=41))
    ledger.finish_run(run, IngestCounts())
    with _statements(engine) as seen:
        mark = planning.last_watermark(settings, engine)
        held = planning.held_windows_past(mark, engine)
    assert mark == DAY0 + dt.timedelta(days=41) and held == []
    assert _rows_read(engine, seen) <= 3


def test_x2_a_new_year_of_unknown_start_is_held(emu: Emulator, settings: Settings) -> None:
    s = _configure(emu, settings)
    _publish(emu, "updatefiles", [100])
    apply_updates(s, workers=0)
    _prune(emu, "updatefiles", "baseline")
    _publish(emu, "updatefiles", range(50, 53), year=27)
    with pytest.raises(IncompleteSourceError) as err:
        apply_updates(s, workers=0)
    message = str(err.value)
    assert _applied(s) == ["pubmed26n0100.xml.gz"]
    # what is not known, why, and the two ways on
    assert "2027" in message and "pubmed27n0050.xml.gz" in message, message
    assert "baseline/" in message and "--accept-gaps" in message, message
    assert "pubmed26n0100.xml.gz" in message, message  # the last file of 2026 applied
    # --accept-gaps: the lowest listed number taken, as before
    apply_updates(s, workers=0, accept_gaps=True)
    assert _applied(s)[-1] == "pubmed27n0052.xml.gz"
    # the year is known now (files of it applied): the next files follow on
    _publish(emu, "updatefiles", [53], year=27)
    apply_updates(s, workers=0)
    assert _applied(s)[-1] == "pubmed27n0053.xml.gz"


def test_x2_a_new_year_whose_baseline_the_store_saw_keeps_its_start(
    emu: Emulator, settings: Settings
) -> None:
    s = _configure(emu, settings)
    _publish(emu, "updatefiles", [100])
    apply_updates(s, workers=0)
    # December: the new year's baseline is listed (not applied: update files only)
    _publish(emu, "baseline", [47], year=27)
    apply_updates(s, workers=0)
    # the mirror prunes it; 2027's first two update files are missing
    _prune(emu, "baseline")
    _publish(emu, "updatefiles", range(50, 53), year=27)
    with pytest.raises(IncompleteSourceError) as err:
        apply_updates(s, workers=0)
    assert _applied(s) == ["pubmed26n0100.xml.gz"]
    assert "pubmed27n0048.xml.gz" in str(err.value), err.value
    assert "pubmed27n0049.xml.gz" in str(err.value), err.value
    # they come: everything is applied
    _publish(emu, "updatefiles", [48, 49], year=27)
    apply_updates(s, workers=0)
    assert _applied(s)[-1] == "pubmed27n0052.xml.gz"


def _history(settings: Settings, seed: int, steps: int) -> int:
    """A random history of runs written through the run ledger, the nightly's
    ``withhold_watermark``/``release_watermark`` and raw inserts (an older store's rows):
    nights one after another, days skipped (gaps), backfills of earlier windows, windows
    held for their check then released or withheld, failed, killed (left running) and
    late-finishing runs, query-restricted runs, update-file runs (applied, none, some
    left), runs started before every other and future windows. After each step the kept
    chain's mark must be the full rebuild's; returns the steps whose mark moved."""
    rnd = random.Random(seed)
    engine = db.connect(settings)
    ledger = RunLedger(engine)
    day = DAY0
    running: list[int] = []
    windows: list[tuple[dt.datetime, dt.datetime]] = []
    moved, last = 0, None
    for _ in range(steps):
        op = rnd.random()
        if op < 0.45:  # a night, sometimes past a skipped day, sometimes a backfill
            if rnd.random() < 0.15:
                day += dt.timedelta(days=rnd.randint(1, 3))
            start = day
            if rnd.random() < 0.15 and windows:
                start = rnd.choice(windows)[0] - dt.timedelta(days=rnd.randint(0, 4))
            else:
                day += dt.timedelta(days=1)
            end = start + dt.timedelta(days=rnd.choice([1, 1, 1, 2]), hours=rnd.choice([0, 3]))
            run = ledger.start_run("eutils", window_start=start, window_end=end)
            windows.append((start, end))
            details: dict[str, Any] = {"listed": 1, "query": None}
            kind = rnd.random()
            if kind < 0.3:
                details["watermark"] = PENDING_CHECK
            elif kind < 0.36:
                details["query"] = "cancer[mh]"
            if kind > 0.93:
                running.append(run)  # killed, or still running
            else:
                ledger.finish_run(run, IngestCounts(), details=details,
                                  status="failed" if kind > 0.88 else "succeeded")
        elif op < 0.55 and windows:
            planning.release_watermark(engine, rnd.choice(windows))
        elif op < 0.6 and windows:
            planning.withhold_watermark(engine, rnd.choice(windows), DAY0, "iCite failed")
        elif op < 0.68 and running:  # a run left running finishes late
            ledger.finish_run(running.pop(rnd.randrange(len(running))), IngestCounts(),
                              details={"listed": 1})
        elif op < 0.8 and seed % 2:  # update files (reaching the day before: every
            # other history, as they hold the mark at yesterday)
            files = rnd.choice([[], ["pubmed26n0001.xml.gz"], ["pubmed26n0002.xml.gz"]])
            details = {"files": files, "update_files": len(files)}
            if files and rnd.random() < 0.2:
                details["left"] = 1
            run = ledger.start_run("updatefiles")
            ledger.finish_run(run, IngestCounts(), details=details)
        else:  # raw rows: an older store's, started at any time (before every other one)
            start = DAY0 + dt.timedelta(days=rnd.randint(-30, 60))
            end = start + dt.timedelta(days=rnd.randint(1, 3))
            started = rnd.choice([end + dt.timedelta(hours=1), DAY0 - dt.timedelta(days=40),
                                  start - dt.timedelta(days=10)])  # the last: a future window
            with engine.begin() as conn:
                conn.execute(insert(ingest_runs).values(
                    source="eutils", target="raw", window_start=start, window_end=end,
                    status=rnd.choice(["succeeded", "succeeded", "failed"]), details={},
                    started_at=started, finished_at=started))  # fmt: skip
            windows.append((start, end))
        kept = planning.last_watermark(settings, engine)
        assert kept == planning.rebuilt_watermark(settings, engine), (seed, op)
        moved += kept != last
        last = kept
    return moved


def test_x1_the_kept_mark_is_the_full_rebuilds_over_random_histories(
    settings: Settings,
) -> None:
    moved = 0
    for seed in range(4):
        with db.connect(settings).begin() as conn:  # a new store
            conn.execute(ingest_runs.delete())
            conn.execute(checkpoints.delete())
        moved += _history(settings, seed, 45)
    assert moved > 15  # the histories move the mark (not one held still)


def _window_row(days: tuple[int, int], started: dt.datetime) -> dict[str, Any]:
    start, end = (DAY0 + dt.timedelta(days=d) for d in days)
    return {"source": "eutils", "target": "w", "window_start": start, "window_end": end,
            "status": "succeeded", "details": {}, "started_at": started,
            "finished_at": started}  # fmt: skip


def test_x1_a_run_committed_after_a_later_id_still_moves_the_mark(settings: Settings) -> None:
    """PostgreSQL hands out ids as rows are inserted, not as they commit: a run whose
    insert commits after a later id was read and kept is read still (an id missing among
    those read is read again), so the window filling the gap moves the mark."""
    if settings.effective_database_url.startswith("sqlite"):
        pytest.skip("SQLite writes one transaction at a time: ids commit in order")
    engine = db.connect(settings)
    t0 = DAY0 + dt.timedelta(days=30)
    with engine.begin() as conn:
        conn.execute(insert(ingest_runs).values(_window_row((0, 1), t0)))
    with engine.connect() as slow:
        slow.begin()
        hour = dt.timedelta(hours=1)
        slow.execute(insert(ingest_runs).values(_window_row((1, 4), t0 + 2 * hour)))
        with engine.begin() as conn:  # a later id, committed first
            conn.execute(insert(ingest_runs).values(_window_row((4, 5), t0 + hour)))
        assert planning.last_watermark(settings, engine) == DAY0 + dt.timedelta(days=1)
        slow.commit()
    assert planning.last_watermark(settings, engine) == DAY0 + dt.timedelta(days=5)
    assert planning.rebuilt_watermark(settings, engine) == DAY0 + dt.timedelta(days=5)


def test_x3_the_mark_is_worked_out_while_a_writer_holds_the_store(settings: Settings) -> None:
    """(integrator) X1 made ``last_watermark`` a writer (it keeps the chain): ``litpulse
    status`` and ``GET /status`` must not wait behind a night's writer for it (SQLite's
    60 s busy timeout, a PostgreSQL row lock with no timeout at all). Held: the write
    waits a moment, then is left to the next call; the mark is the same."""
    import time

    from sqlalchemy import select

    engine = db.connect(settings)
    with engine.begin() as conn:
        conn.execute(insert(ingest_runs), [_night(i) for i in range(5)])
    assert planning.last_watermark(settings, engine) == DAY0 + dt.timedelta(days=5)
    ledger = RunLedger(engine)
    run = ledger.start_run("eutils", window_start=DAY0 + dt.timedelta(days=5),
                           window_end=DAY0 + dt.timedelta(days=6))
    ledger.finish_run(run, IngestCounts())
    with engine.connect() as holder:
        if engine.dialect.name == "sqlite":
            holder.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, as a batch holds it
        else:
            holder.begin()
            holder.execute(select(checkpoints).where(
                checkpoints.c.scope == planning.KEPT_CHAIN[0]).with_for_update())  # fmt: skip
        t0 = time.monotonic()
        mark = planning.last_watermark(settings, engine)
        took = time.monotonic() - t0
        holder.rollback()
    assert mark == DAY0 + dt.timedelta(days=6)
    assert took < 5, f"the mark waited {took:.1f} s behind a writer"
    assert planning.last_watermark(settings, engine) == DAY0 + dt.timedelta(days=6)
