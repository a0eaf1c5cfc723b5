"""Shared fixtures: settings in a temporary home, and stores on SQLite and PostgreSQL.

PostgreSQL tests use the server of ``LITPULSE_TEST_POSTGRES_URL`` (default the local
``test`` database); each test session creates its own database and drops it at the end.
When the server is unreachable the PostgreSQL variants are skipped locally, but fail in
CI (``CI=true``) and wherever ``LITPULSE_TEST_REQUIRE_POSTGRES`` is set (``.ci/run`` sets
it after starting the server), so they can never be skipped silently there.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import Engine, create_engine, text

from litpulse.core import db
from litpulse.core.schema import metadata
from litpulse.core.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """torch's (and faiss's) OpenMP threads: one share of the cores per xdist worker.

    With every worker's pool as large as the machine (``-n auto``), the pools spin against
    each other: a tiny model's training step took 0.7 s instead of 0.05 s (37f: a budget
    test 75 s -> 4 s on a loaded 2-core machine). Set before any test imports torch or
    faiss (they read it once, at import); a value the caller set is kept.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:  # -n 0 (torch's default: every core) or xdist's controller
        return
    workers = int(workerinput["workercount"])
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // max(1, workers))))


PG_ADMIN_URL = os.environ.get(
    "LITPULSE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
#: Read once at import: the autouse fixture below hides LITPULSE_* from the tests.
PG_REQUIRED = bool(os.environ.get("CI") or os.environ.get("LITPULSE_TEST_REQUIRE_POSTGRES"))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server a test starts later.

    Taken below the kernel's ephemeral range (``ip_local_port_range``), which ``bind(0)``
    and outgoing connections draw from: the test processes running beside this one (the
    suite runs on every core) keep binding port 0 for their own servers, and could take a
    port of that range in the seconds before this test's server binds it.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the IANA ephemeral range
        low = 49152
    rng = random.Random()  # its own: tests that seed the global one stay unaffected
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # nothing free below the range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real Airflow stacks' tests first, the rest in their order.

    They are the longest file by far (minutes); pytest-xdist hands out whole files in
    this order (``--dist loadfile --no-loadscope-reorder``, pyproject.toml), so one
    worker runs them while the others take the rest, instead of all waiting on them at
    the end. Every worker collects, and so orders, the same way.
    """
    items.sort(key=lambda item: item.get_closest_marker("airflow_integration") is None)


@pytest.fixture(autouse=True)
def _clean_litpulse_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own LITPULSE_* settings."""
    for key in list(os.environ):
        if key.startswith("LITPULSE_") and key != "LITPULSE_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty database ``PREFIX_<random>`` on the test server, dropped on exit.

    Skips the test when the server is unreachable, except where PostgreSQL is required
    (CI, ``LITPULSE_TEST_REQUIRE_POSTGRES``): there it raises.

    Yields:
        The database's SQLAlchemy URL (``postgresql+psycopg://``).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means "no server"
        if PG_REQUIRED:
            raise RuntimeError(f"PostgreSQL is required here but unreachable: {exc}") from exc
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    with fresh_postgres_database("litpulse_test") as url:
        yield url
        db.dispose_engines()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings with a temporary home, on SQLite and on PostgreSQL."""
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    s = Settings.from_env({}, home=tmp_path / "home", database_url=url)
    if url:
        _truncate(db.connect(s))
    yield s
    if not url:
        eng = db._ENGINES.pop(s.effective_database_url, None)
        if eng is not None:
            eng.dispose()


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The ``settings`` store as the CLI finds it: LITPULSE_HOME and LITPULSE_DATABASE_URL
    in os.environ."""
    monkeypatch.setenv("LITPULSE_HOME", str(settings.home))
    if settings.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", settings.database_url)
    return settings


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings on SQLite only (for tests whose point is not the database)."""
    s = Settings.from_env({}, home=tmp_path / "home")
    yield s
    eng = db._ENGINES.pop(s.effective_database_url, None)
    if eng is not None:
        eng.dispose()


@pytest.fixture
def engine(settings: Settings) -> Engine:
    return db.connect(settings)


def _truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    db.keep_counts(engine)  # TRUNCATE fires no trigger: the store's counts, made again


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """``litpulse.pipeline.dag_support``, imported with a throw-away AIRFLOW_HOME (nothing
    lands in ``~``)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    import litpulse.pipeline.dag_support as module

    yield module
    mp.undo()
