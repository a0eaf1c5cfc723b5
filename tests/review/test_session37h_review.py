"""Hostile review (session 37h): ``litpulse status`` and ``GET /status`` at PubMed's size
(issue #12: 38 million articles, a run recorded every night for years).

Attacked, on SQLite and PostgreSQL, through the real entry points (``litpulse status``
through the CLI's ``main``, ``GET /status`` through the application), counting what one
call reads rather than timing it: the statements it sends (caught on the engine), how
often it works out the nightly watermark, and the plans of its statements (SQLite
``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN``) for whole-table scans of ``articles`` and
``references``.

Held (no test kept): the latest runs ``status`` lists are read with a ``LIMIT``
(``--runs``); the owed and given-up PMIDs, the untold alerts and the open quarantine are
counted over ``missing_pmids`` and ``quarantine`` only (small tables, emptied as they are
resolved); the published index row is one indexed read.

Defects (each a strict xfail asserting the right behaviour until fixed):

X1 **``litpulse status`` works out the watermark twice.** ``_nightly`` calls
   ``planning.last_watermark`` and then ``planning.held_windows``, which calls it again:
   two passes over every succeeded E-utilities and update-file run ever recorded, each
   growing by one run a night.
   **Fixed**: ``_nightly`` works it out once and hands it to ``held_windows`` (its new
   ``mark`` argument; without it, ``held_windows`` reads it itself as before).
   (test_x1_status_works_out_the_watermark_once)

X2 **The watermark reads the whole ``details`` JSON of every E-utilities run ever
   recorded.** ``last_watermark`` selects ``ingest_runs.details`` for every run it looks
   at, though an E-utilities window needs only its ``details.watermark`` (read already as
   its own column); only an update-file run needs its details (the files it applied).
   Review 37d measured 1,500 runs of ~1 KB: 0.37 s of a 0.75 s status on PostgreSQL.
   **Fixed**: ``last_watermark`` selects ``details`` only of the runs without a window
   (update files: ``CASE WHEN window_end IS NULL THEN details END``); an E-utilities run
   gives its window, start and ``details.watermark`` alone. Still one row per recorded
   run (a few scalars each): bounded in bytes, not yet in the number of runs (X5).
   (test_x2_the_watermark_reads_no_eutils_runs_details)

X3 **Every ``status`` counts ``articles`` and ``references`` in full.**
   ``ingest.store.store_counts`` (behind ``litpulse status`` and ``GET /status``, which
   the web page and monitoring poll) answers ``count(*)`` with filters over the whole of
   ``articles`` and counts ``references`` whole: a sequential scan of both on
   PostgreSQL, a full scan on SQLite, seconds to minutes at 38M articles and their
   references. Exact cheap counts need counters maintained in the transaction of every
   writer (ingest's bulk paths, tombstones, deletes, the iCite fetch, upgrades of older
   stores) or PostgreSQL's estimate labelled as such.
   Not fixed: counters kept by every writer (the COPY and bulk upsert paths, tombstones,
   deletes, the iCite fetch and recount, an older store's backfill at open) could not be
   made and tested on both stores in this review's time, and an estimate would change
   the meaning of ``status``'s exact fields.
   **Fixed by review 38b** (its X1, X2): the counts are kept by the database (triggers
   on both tables, ``store_counts``), the dates read by index; and by review 39b (its
   X1) for ``litpulse status``'s ``pending_embeddings``, on PostgreSQL a strict xfail
   until then (an anti-join of every live article with ``embeddings``): the database
   keeps the current vectors of each model version too (``embedding_counts``).
   (test_x3_status_scans_neither_articles_nor_references)

X4 **Every ``GET /status`` sorts every run ever recorded and counts the whole
   quarantine.** Its ``last_ingest`` (the newest succeeded run) is ``ORDER BY finished_at
   DESC NULLS LAST LIMIT 1`` over ``ingest_runs`` with no index to follow (a scan and a
   sort of every run, one more each night and each iCite step), and ``quarantined`` (the
   open entries) is ``count(*) WHERE resolved_at IS NULL`` with no index on
   ``resolved_at``: a scan of every entry ever quarantined, resolved ones included (review
   37d wrote 100,000), on every poll of the page and monitoring.
   **Fixed**: two indexes, ``ix_ingest_runs_status_finished`` (status, finished_at) and
   ``ix_quarantine_resolved``, made on an older store at its next open by
   ``db.add_missing_indexes``; ``last_ingest`` asks for a finished succeeded run
   newest first (``finished_at IS NOT NULL``, so no ``NULLS LAST`` that the index cannot
   give on PostgreSQL): a walk down the index. Verified with the PostgreSQL store's two
   indexes dropped and the old code, then the new code making them again.
   (test_x4_status_finds_the_last_run_and_open_quarantine_by_index)

X5 **``litpulse status`` still reads every succeeded run ever recorded to work out the
   watermark.** After X1 and X2 it does so once, and reads a few scalars of each
   E-utilities run, but ``last_watermark`` rebuilds the chain of windows from all of them
   on every call (a scan of ``ingest_runs`` and per-row Python: ~70 ms at 1,500 runs
   here on either store, one run more each night). Bounding it needs the watermark kept
   where the runs are written (every writer of ``ingest_runs``: run start and finish,
   ``withhold_watermark``, ``release_watermark``, a bootstrap's completion) or an
   incremental chain, which must never move the mark past a gap: not attempted here.
   **Fixed** by review 38c (its X1): the chain is kept (a checkpoint) and carried on from
   the runs recorded since and those left open; the test works the mark out once first
   (the nightly before), as an older store's first call reads every run.
   (test_x5_status_reads_a_bounded_number_of_runs_for_the_watermark: counts the rows of
   ``ingest_runs`` its statements return)
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.engine import Engine

from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.schema import ingest_runs
from litpulse.core.settings import Settings
from litpulse.pipeline import planning
from tests.ranking.test_index import add_articles

NIGHTS = 40


def _nights(engine: Engine, n: int = NIGHTS) -> dt.datetime:
    """``n`` succeeded E-utilities windows one after another (one a night), each with a
    ~2 KB ``details``; returns the end of the last."""
    day0 = dt.datetime(2025, 1, 1, 5, tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        start, end = day0 + dt.timedelta(days=i), day0 + dt.timedelta(days=i + 1)
        rows.append({
            "source": "eutils", "target": f"{start:%Y-%m-%d}..{end:%Y-%m-%d}",
            "window_start": start, "window_end": end, "status": "succeeded",
            "details": {"listed": 20, "notes": "x" * 2000},
            "started_at": end + dt.timedelta(hours=1),
            "finished_at": end + dt.timedelta(hours=2),
        })  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(ingest_runs), rows)
    return day0 + dt.timedelta(days=n)


@contextmanager
def _statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements sent on ``engine`` meanwhile, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def _cli_status(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    monkeypatch.setenv("LITPULSE_HOME", str(settings.home))
    monkeypatch.setenv("LITPULSE_DATABASE_URL", settings.effective_database_url)
    assert main(["status", "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_x1_status_works_out_the_watermark_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = db.connect(settings)
    end = _nights(engine)
    calls = []
    real = planning.last_watermark

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(planning, "last_watermark", counted)
    st = _cli_status(settings, monkeypatch, capsys)
    assert st["watermark"] is not None and st["watermark"] <= end.isoformat()
    assert st["held_windows"] == []
    assert len(calls) == 1


#: the whole ``ingest_runs.details`` column selected (not one field of it extracted)
_WHOLE_DETAILS = re.compile(
    r"(?<!JSON_EXTRACT\()ingest_runs\.details(?!\s*->)(?=\s*(,|FROM|AS\b|$))", re.I)


def test_x2_the_watermark_reads_no_eutils_runs_details(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = db.connect(settings)
    _nights(engine)
    with _statements(engine) as seen:
        mark = planning.last_watermark(settings, engine)
    assert mark is not None
    whole = [s for s, _ in seen if "ingest_runs" in s and _WHOLE_DETAILS.search(s)]
    assert whole == [], whole
    # the status too (its last runs are read with a LIMIT: bounded)
    with _statements(engine) as seen:
        _cli_status(settings, monkeypatch, capsys)
    whole = [s for s, _ in seen if "ingest_runs" in s and _WHOLE_DETAILS.search(s)
             and not re.search(r"\bLIMIT\b", s, re.I)]
    assert whole == [], whole


def _scans(engine: Engine, statements: list[tuple[str, Any]]) -> list[str]:
    """The plan lines of ``statements`` (the SELECTs) that read ``articles`` or
    ``references`` whole."""
    bad = []
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        for stmt, _ in statements:
            if not stmt.lstrip().upper().startswith("SELECT") or not re.search(
                    r"\b(articles|references)\b", stmt):
                continue
            # the plan of the statement with its parameters as NULL (the shape is enough)
            raw = conn.connection.dbapi_connection
            cur = raw.cursor()  # type: ignore[union-attr]
            n = stmt.count("?") if sqlite else len(re.findall(r"%\(\w+\)s|%s", stmt))
            if sqlite:
                cur.execute("EXPLAIN QUERY PLAN " + stmt, [None] * n)
                lines = [str(r[-1]) for r in cur.fetchall()]
                bad += [ln for ln in lines
                        if re.match(r"SCAN (articles|references)\b", ln)]
            else:
                names = re.findall(r"%\((\w+)\)s", stmt)
                params: Any = dict.fromkeys(names) if names else [None] * n
                cur.execute("EXPLAIN " + stmt, params)
                lines = []  # each plan node with its detail lines (its Index Cond)
                for r in cur.fetchall():
                    if lines and not re.match(r"\s*->", r[0]) and ":" in r[0]:
                        lines[-1] += " " + r[0].strip()
                    else:
                        lines.append(str(r[0]))
                bad += [ln for ln in lines
                        if re.search(r"Seq Scan on (articles|\"?references\"?)\b", ln)
                        or re.search(r"Index Only Scan .* on (articles|\"?references\"?)\b", ln)
                        and "Index Cond" not in ln]
            cur.close()
    return bad


def test_x3_status_scans_neither_articles_nor_references(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    engine = db.connect(settings)
    add_articles(engine, list(range(1, 201)))
    with _statements(engine) as seen:
        st = _cli_status(settings, monkeypatch, capsys)
        with TestClient(create_app(settings)) as client:
            api = client.get("/status").json()
    assert st["articles"] == 200 and api["articles"]["live"] == 200
    assert _scans(engine, seen) == []


def _plans(
    engine: Engine, statements: list[tuple[str, Any]], tables: tuple[str, ...]
) -> list[str]:
    """The plan lines of ``statements`` (the SELECTs naming one of ``tables``, planned with
    the parameters they were sent with) that scan one of ``tables`` whole or sort.
    PostgreSQL plans with ``enable_seqscan`` off: a sequential scan chosen then means
    there is no index to use (tiny test tables are scanned by choice)."""
    bad = []
    sqlite = engine.dialect.name == "sqlite"
    names = "|".join(tables)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        cur = raw.cursor()  # type: ignore[union-attr]
        if not sqlite:
            cur.execute("SET enable_seqscan = off")
        for stmt, params in statements:
            if not stmt.lstrip().upper().startswith("SELECT") or not re.search(
                    rf"FROM \"?({names})\b", stmt):
                continue
            if sqlite:
                cur.execute("EXPLAIN QUERY PLAN " + stmt, params)
                lines = [str(r[-1]) for r in cur.fetchall()]
                bad += [f"{ln}: {stmt[:90]}" for ln in lines
                        if re.match(rf"SCAN ({names})\b", ln) or "TEMP B-TREE" in ln]
            else:
                cur.execute("EXPLAIN " + stmt, params)
                lines = [str(r[0]) for r in cur.fetchall()]
                bad += [f"{ln.strip()}: {stmt[:90]}" for ln in lines
                        if re.search(rf"Seq Scan on ({names})\b", ln)
                        or re.match(r"\s*(->\s*)?Sort\b", ln)]
        if not sqlite:
            cur.execute("RESET enable_seqscan")
        cur.close()
    return bad


def test_x4_status_finds_the_last_run_and_open_quarantine_by_index(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    engine = db.connect(settings)
    end = _nights(engine, 5)
    with _statements(engine) as seen, TestClient(create_app(settings)) as client:
        st = client.get("/status").json()
    assert st["last_ingest"]["finished_at"] == (end + dt.timedelta(hours=2)).isoformat()
    assert st["quarantined"] == 0
    assert _plans(engine, seen, ("ingest_runs", "quarantine")) == []


def test_x5_status_reads_a_bounded_number_of_runs_for_the_watermark(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = db.connect(settings)
    end = _nights(engine, NIGHTS - 1)
    # the nightly before worked the mark out (an older store's first call reads every run
    # and keeps the chain: review 38c X1); then the last night's run
    planning.last_watermark(settings, engine)
    start, end = end, end + dt.timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(insert(ingest_runs).values(
            source="eutils", target="last night", window_start=start, window_end=end,
            status="succeeded", details={"listed": 20}, started_at=end,
            finished_at=end))  # fmt: skip
    with _statements(engine) as seen:
        st = _cli_status(settings, monkeypatch, capsys)
    assert st["watermark"] == end.isoformat()
    # the rows of ingest_runs the call read: each of its statements on the table run again
    read = 0
    with engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        for stmt, params in seen:
            if stmt.lstrip().upper().startswith("SELECT") and "FROM ingest_runs" in stmt:
                cur.execute(stmt, params)
                read += len(cur.fetchall())
        cur.close()
    # its latest runs (--runs, 5) and a few more, not one row per night ever recorded
    assert read <= 10, f"{read} rows of ingest_runs read for {NIGHTS} nights"
