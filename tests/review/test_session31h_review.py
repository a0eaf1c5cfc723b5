"""Hostile review (session 31h) of the expert-name upgrade: ``db.compose_expert_names`` (run
from ``_upgrade`` at each open of a store until its checkpoint is written) and
``retrain.feedback.clean_expert(new=)``.

H1 was a strict xfail; fixed in the same session, now a plain test: ``compose_expert_names``
takes its turn (a PostgreSQL advisory lock, SQLite's write lock) and reads the checkpoint
again inside it, and a row is never its own twin.

H1  Two processes opening an older PostgreSQL store at once (the API and the nightly
    after an upgrade, a case ``_upgrade``'s docstring names) delete the experts'
    judgements they were meant to keep. Both find no checkpoint and both compose. The
    second reads the rows of the decomposed (NFD) name, then the first commits (each row
    now composed, NFC); for each stale row the second looks up the "twin" under the
    composed name and finds the row *itself* (same id, same ``created_at``), so
    ``twin.created_at >= row.created_at`` holds and it deletes it. Every judgement of the
    expert is gone from ``feedback`` (the log keeps them; ``trainable_feedback`` and the
    next retrain lose them), with no error: both log "composed 2 expert name(s)". In a
    scratch run with two threads, 3,000 judgements of one expert (NFD, a mixed form and
    NFC twins) ended as 1 row; the same with one opener kept all 3,000. SQLite serialises
    the two (the second's write is refused, caught, logged) and held.
    Reproduce: judgements under ``Jose\\u0301 Garci\\u0301a``; engine B runs
    ``compose_expert_names`` and, at its first twin lookup, engine A runs it to the end
    (deterministic stand-in for the race); ``feedback`` is empty afterwards.
    At fault: ``litpulse.core.db.compose_expert_names`` (the twin lookup does not exclude
    ``row.id``, and the rows were read before another opener's commit; no lock keeps two
    openers apart).
    Fix: serialise the pass (PostgreSQL: ``pg_advisory_xact_lock`` on a fixed key, or
    ``SELECT ... FOR UPDATE`` of the checkpoint row inserted first, then re-check the
    checkpoint inside the transaction), and exclude ``f.id != row.id`` from the twin
    lookup; update/delete ``WHERE id = ... AND user = <the stale name>`` so a stale row
    changes nothing.

Attacks that held (scratch scripts, or read): a read-only PostgreSQL opener
(``default_transaction_read_only``) warns "left to a writer", returns 0 and writes no
checkpoint; a writer opening later composes and merges (run). Three forms of one name
(NFD, a mixed form, NFC) in one opener: one judgement per (query, pmid) stands, the newest
(run, SQLite and PostgreSQL). NULL names cannot occur (the four columns are NOT NULL);
an empty name is skipped. ``cli:`` owners of saved searches are informational only (the
digest sends them to the shared list by prefix): composing them is harmless (read). The
checkpoint is written on a fresh store too, so later opens cost one SELECT (read; test
below, SQLite). Cost: one SELECT and one UPDATE/DELETE per judgement of a decomposed name, in one
transaction: 20,000 judgements of one NFD expert took 3.8 s on SQLite, 7.1 s on local
PostgreSQL (scratch) — about 20-35 s for 100,000 of one expert, which the per-hour limit
makes unlikely; not reported. The per-hour limit counts ``feedback_log`` by the composed
name after the pass (both forms composed: read).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, event, func, insert, select

from litpulse.core import db
from litpulse.core.schema import checkpoints, feedback
from litpulse.core.settings import Settings
from tests.conftest import fresh_postgres_database

NFD = "Jose\u0301 Garci\u0301a"
NFC = "Jos\u00e9 Garc\u00eda"


def _older_store(engine: Any, n: int) -> None:
    """``n`` judgements of one expert stored decomposed, and no checkpoint: an older store."""
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(insert(feedback), [
            {"query": "gout", "pmid": i, "relevant": True, "user": NFD, "created_at": now}
            for i in range(1, n + 1)
        ])  # fmt: skip
        c = checkpoints.c
        conn.execute(delete(checkpoints).where(
            c.scope == db.EXPERT_NAMES_CHECKPOINT[0], c.key == db.EXPERT_NAMES_CHECKPOINT[1]))


@pytest.mark.postgres
def test_h1_two_openers_at_once_keep_every_judgement() -> None:
    """The second opener has read the NFD rows when the first starts composing: the first
    waits for it (``compose_expert_names`` takes its turn), then finds the work done."""
    import threading

    with fresh_postgres_database("litpulse_review_h1") as url:
        s = Settings.from_env({}, home=Path(tempfile.mkdtemp()) / "home", database_url=url)
        owner = db.connect(s)
        _older_store(owner, 5)
        first, second = create_engine(url), create_engine(url)
        fired: list[threading.Thread] = []
        got: list[int] = []

        def _first_opens_meanwhile(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
            # the second opener has read the NFD rows; the first opener starts now and is
            # given 3 s to run to its commit (without turns it did, and the second then
            # took each composed row for its own twin and deleted it)
            twin_lookup = statement.lstrip().startswith("SELECT feedback.id, feedback.created_at")
            if not fired and twin_lookup:
                t = threading.Thread(target=lambda: got.append(db.compose_expert_names(first)))
                fired.append(t)
                t.start()
                t.join(3.0)

        event.listen(second, "before_cursor_execute", _first_opens_meanwhile)
        try:
            db.compose_expert_names(second)
            assert len(fired) == 1
            fired[0].join(30.0)
            assert got == [0], got  # it waited its turn and found the names composed
            with owner.connect() as conn:
                standing = conn.execute(
                    select(feedback.c.user, func.count()).group_by(feedback.c.user)).all()
        finally:
            first.dispose()
            second.dispose()
            db._ENGINES.pop(url, None)
            owner.dispose()
    assert standing == [(NFC, 5)], standing


def test_a_fresh_store_writes_the_checkpoint_so_later_opens_cost_one_select(
    sqlite_settings: Settings,
) -> None:
    engine = db.connect(sqlite_settings)  # a fresh store (the shared PostgreSQL one is truncated)
    c = checkpoints.c
    with engine.connect() as conn:
        row = conn.execute(select(c.status).where(
            c.scope == db.EXPERT_NAMES_CHECKPOINT[0], c.key == db.EXPERT_NAMES_CHECKPOINT[1]
        )).first()  # fmt: skip
    assert row is not None and row.status == "done"
    seen: list[str] = []

    def _count(conn: Any, cursor: Any, statement: str, *a: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", _count)
    try:
        assert db.compose_expert_names(engine) == 0
    finally:
        event.remove(engine, "before_cursor_execute", _count)
    assert len(seen) == 1, seen


def test_three_forms_of_one_name_leave_the_newest_judgement(settings: Settings) -> None:
    engine = db.connect(settings)
    now = dt.datetime.now(dt.UTC)
    mixed = "Jos\u00e9 Garci\u0301a"
    with engine.begin() as conn:
        conn.execute(insert(feedback), [
            {"query": "gout", "pmid": 7, "relevant": True, "user": NFD,
             "created_at": now - dt.timedelta(minutes=1)},
            {"query": "gout", "pmid": 7, "relevant": False, "user": mixed, "created_at": now},
            {"query": "gout", "pmid": 7, "relevant": True, "user": NFC,
             "created_at": now - dt.timedelta(minutes=2)},
        ])  # fmt: skip
        c = checkpoints.c
        conn.execute(delete(checkpoints).where(
            c.scope == db.EXPERT_NAMES_CHECKPOINT[0], c.key == db.EXPERT_NAMES_CHECKPOINT[1]))
    assert db.compose_expert_names(engine) == 2
    with engine.connect() as conn:
        rows = conn.execute(select(feedback.c.user, feedback.c.relevant)
                            .where(feedback.c.pmid == 7)).all()  # fmt: skip
    assert rows == [(NFC, False)], rows
