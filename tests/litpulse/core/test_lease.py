"""Database leases: heartbeat, reclaiming a dead holder's lease, stopping when it is lost.

A killed ``index refresh`` used to block every refresh for 6 hours (issue 9): the lease
was only freed by its expiry. Now a lease is renewed by a heartbeat thread with a short
TTL, a holder on this host whose process is gone is taken over at once, and a process
that lost its lease raises :class:`LeaseLostError` before its next write.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update

from litpulse.core import db
from litpulse.core.errors import LeaseLostError
from litpulse.core.schema import embeddings, index_versions, locks
from litpulse.core.settings import Settings

REPO = Path(__file__).resolve().parents[3]
ELSEWHERE = "elsewhere.invalid"

#: Takes a lease, prints its holder, then sleeps until killed.
HOLD = """
import sys, time
from litpulse.core import db
from litpulse.core.settings import Settings
lease = db.acquire_lease(db.connect(Settings.from_env()), sys.argv[1])
print(lease.holder if lease is not None else "", flush=True)
time.sleep(600)
"""


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITPULSE_")}
    env["PYTHONPATH"] = str(REPO)
    env["LITPULSE_HOME"] = str(settings.home)
    if settings.database_url:
        env["LITPULSE_DATABASE_URL"] = settings.database_url
    return env


def _holder_process(settings: Settings, name: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, name],
        env=_env(settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    holder = proc.stdout.readline().strip()
    assert holder, "the holder process did not get the lease"
    return proc, holder


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _row(engine: Engine, name: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(locks).where(locks.c.name == name)).first()


def _put(engine: Engine, name: str, holder: str, expires_in_s: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(locks).values(
                name=name,
                holder=holder,
                expires_at=db.utcnow() + dt.timedelta(seconds=expires_in_s),
            )
        )


def _take_over(engine: Engine, name: str, thief: str) -> None:
    """What another process's takeover does to the row."""
    with engine.begin() as conn:
        n = conn.execute(
            update(locks)
            .where(locks.c.name == name)
            .values(holder=thief, expires_at=db.utcnow() + dt.timedelta(minutes=2))
        ).rowcount
    assert n == 1


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# ------------------------------------------------------------------- a killed holder


def test_killed_index_refresh_holder_is_reclaimed_at_once(
    settings: Settings, engine: Engine
) -> None:
    from ranking import index_files, publish, refresh
    from tests.ranking.test_index import add_articles

    add_articles(engine, [1, 2, 3])
    proc, holder = _holder_process(settings, publish.LEASE_NAME)
    try:
        with pytest.raises(publish.IndexBusyError):  # alive: it holds the lease
            refresh.refresh_index(settings)
    finally:
        _kill(proc)
    assert _row(engine, publish.LEASE_NAME).holder == holder  # the dead holder's row is still there
    t0 = time.monotonic()
    report = refresh.refresh_index(settings)  # no 6-hour wait: its process is gone
    assert time.monotonic() - t0 < 30
    assert report.size == 3 and index_files.open_published(settings) is not None
    assert _row(engine, publish.LEASE_NAME) is None  # released after the publish


def test_dead_pid_and_reused_pid_are_told_apart(settings: Settings, engine: Engine) -> None:
    """The holder string records the process start, so a PID reused by another process
    does not keep a dead holder's lease alive, and a live holder is never taken over."""
    proc, holder = _holder_process(settings, "job")
    try:
        assert db.holder_alive(holder)
        assert db.acquire_lease(engine, "job", holder=f"{ELSEWHERE}:1:x:y:z") is None
        host, pid, start, *rest = holder.split(":")
        assert host == socket.gethostname() and int(pid) == proc.pid
        reused = ":".join([host, pid, start + "0", *rest])  # same PID, another process
        assert not db.holder_alive(reused)
        # a holder string of this host whose PID is our own, started at another time
        ours = db.default_holder().split(":")
        assert not db.holder_alive(":".join([ours[0], ours[1], ours[2] + "1", *ours[3:]]))
        assert db.holder_alive(db.default_holder())
    finally:
        _kill(proc)
    assert not db.holder_alive(holder)
    lease = db.acquire_lease(engine, "job")
    assert lease is not None and lease.holder != holder
    lease.release()


# --------------------------------------------------------------- a holder elsewhere


def test_other_host_holder_is_reclaimed_only_when_its_heartbeat_expired(
    settings: Settings, engine: Engine
) -> None:
    pid = os.getpid()  # a live PID here means nothing for another host
    fresh = f"{ELSEWHERE}:{pid}:t1:cafe0000:00000001"
    _put(engine, "fresh", fresh, expires_in_s=60)
    assert db.acquire_lease(engine, "fresh") is None
    assert _row(engine, "fresh").holder == fresh

    stale = f"{ELSEWHERE}:{pid}:t1:cafe0000:00000002"
    _put(engine, "stale", stale, expires_in_s=-1)
    lease = db.acquire_lease(engine, "stale")
    assert lease is not None
    assert _row(engine, "stale").holder == lease.holder != stale
    lease.release()
    assert _row(engine, "stale") is None


def test_heartbeat_keeps_a_short_lease_alive(settings: Settings, engine: Engine) -> None:
    """Leases expire after minutes without a heartbeat, and the heartbeat renews them."""
    default = db.acquire_lease(engine, "default")
    assert default is not None
    ttl = _aware(_row(engine, "default").expires_at) - db.utcnow()
    assert dt.timedelta(seconds=30) < ttl <= dt.timedelta(minutes=5)
    default.release()

    # renewed every TTL/4: a TTL of 2 s leaves a loaded machine 1.5 s for one renewal
    lease = db.acquire_lease(engine, "short", ttl_s=2.0)
    assert lease is not None
    with lease:
        time.sleep(5.0)  # 2.5 TTLs: only renewals keep it
        other = f"{ELSEWHERE}:1:t1:cafe0000:00000003"
        assert db.acquire_lease(engine, "short", holder=other) is None
        assert _aware(_row(engine, "short").expires_at) > db.utcnow()
        lease.check()  # still ours
    assert _row(engine, "short") is None


# ------------------------------------------------------------------ a lost lease


def test_lost_lease_is_noticed_and_never_released_for_the_thief(
    settings: Settings, engine: Engine
) -> None:
    lease = db.acquire_lease(engine, "job", ttl_s=0.4)
    assert lease is not None
    thief = f"{ELSEWHERE}:1:t1:cafe0000:00000004"
    _take_over(engine, "job", thief)
    with pytest.raises(LeaseLostError, match="job"):
        lease.check()
    deadline = time.monotonic() + 5
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.lost  # the heartbeat noticed too
    lease.release()
    assert _row(engine, "job").holder == thief


def test_index_publish_verifies_the_lease_in_the_flipping_transaction(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is taken over after the index files are written: the transaction that
    would publish the new version finds it lost, writes nothing and cleans its files."""
    from ranking import index_files, publish, refresh
    from tests.ranking.test_index import add_articles

    add_articles(engine, [1, 2, 3])
    thief = f"{ELSEWHERE}:1:t1:cafe0000:00000005"
    real_write = index_files.write_files

    def write_then_lose(*args: Any, **kwargs: Any) -> Path:
        path = real_write(*args, **kwargs)
        _take_over(engine, publish.LEASE_NAME, thief)
        return path

    monkeypatch.setattr(index_files, "write_files", write_then_lose)
    with pytest.raises(LeaseLostError, match=publish.LEASE_NAME):
        refresh.refresh_index(settings)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(index_versions)).scalar() == 0
    assert not [p for p in (settings.home / "indexes").iterdir() if not p.name.startswith(".")]
    assert _row(engine, publish.LEASE_NAME).holder == thief


def test_nightly_stops_before_writing_once_its_lease_is_taken_over(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from litpulse.app.demo.generate import generate_corpus
    from litpulse.pipeline import nightly

    corpus = generate_corpus(tmp_path / "corpus", n_records=8, seed=4, delete_fraction=0.0)
    thief = f"{ELSEWHERE}:1:t1:cafe0000:00000006"
    real_ingest = nightly._ingest

    def ingest_then_lose(*args: Any, **kwargs: Any) -> dict[str, int]:
        counts = real_ingest(*args, **kwargs)
        _take_over(engine, nightly.LEASE_NAME, thief)
        return counts

    monkeypatch.setattr(nightly, "_ingest", ingest_then_lose)
    with pytest.raises(LeaseLostError, match=nightly.LEASE_NAME):
        nightly.run_nightly(
            settings,
            source="files",
            files=corpus.files,
            retrain=False,
            citations=False,
            quality=False,
        )
    with engine.connect() as conn:  # nothing after the ingest ran
        assert conn.execute(select(func.count()).select_from(embeddings)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(index_versions)).scalar() == 0
    assert _row(engine, nightly.LEASE_NAME).holder == thief


def test_take_lease_names_the_live_holder_in_the_busy_error(engine: Engine) -> None:
    """The one lease-or-busy rule: a live holder makes ``take_lease`` raise the caller's
    error, told who holds the lease, which lease and until when; once released it is
    taken, and a caller that waits takes it as soon as it is freed."""
    import threading

    from litpulse.core.errors import BusyError

    first = db.take_lease(engine, "digest", BusyError)
    with pytest.raises(BusyError) as caught:
        db.take_lease(engine, "digest", lambda who: BusyError(f"another digest ({who})"))
    message = str(caught.value)
    assert first.holder in message and "'digest'" in message and "unless renewed" in message
    threading.Timer(0.5, first.release).start()
    t0 = time.monotonic()
    with db.take_lease(engine, "digest", BusyError, wait_s=30) as second:
        assert db.lease_holder(engine, "digest")[0] == second.holder  # type: ignore[index]
    assert time.monotonic() - t0 < 10  # taken when freed, not at the end of the wait
