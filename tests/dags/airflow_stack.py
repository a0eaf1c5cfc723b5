"""A real Airflow 3.3 deployment for the integration tests, started and stopped by PID.

:class:`AirflowStack` starts ``airflow scheduler --skip-serve-logs``, ``airflow
dag-processor`` and ``airflow api-server`` (and, for CeleryExecutor, one ``airflow celery
worker --skip-serve-logs``) as child processes, each in its own process group, bound to
127.0.0.1 on free ports, with ``AIRFLOW_HOME`` in a temporary folder, the repository's
``airflow.cfg`` and ``dags/``, and the metadata database in a database of its own on the test
PostgreSQL server (what a deployment with several Airflow processes runs: on SQLite the API
server's REST calls failed now and then with 500 "Database error" while the scheduler and
the dag-processor wrote, a lock wait of 30 s notwithstanding). :meth:`AirflowStack.stop` ends
every group it started (SIGTERM, then SIGKILL), whatever happened before.

The tests talk to it the way an engineer does: the ``airflow`` CLI and the REST API
(``/api/v2``, with a JWT from ``/auth/token`` for the generated admin password).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

from tests.conftest import free_port
from tests.dags.conftest import REPO, airflow_env

__all__ = ["AirflowStack", "StackError", "free_port", "wait_for"]

T = TypeVar("T")
FINISHED = {"success", "failed"}


class StackError(AssertionError):
    """The deployment did not do what the test waited for (the message has the logs)."""


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    """Call ``probe`` until it returns something other than ``None``/``False``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None and last is not False:
            return last
        time.sleep(every)
    raise StackError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class AirflowStack:
    """One Airflow deployment in ``home`` (see the module docstring).

    Attributes:
        home: The ``AIRFLOW_HOME``.
        database_url: SQLAlchemy URL of Airflow's metadata database (``postgresql+psycopg``:
            Airflow uses it for its synchronous and asynchronous engines alike).
        executor: ``LocalExecutor`` or ``CeleryExecutor``.
        extra_env: ``LITPULSE_*`` and other variables of every process.
    """

    home: Path
    database_url: str
    executor: str = "LocalExecutor"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token: str | None = None

    # -------------------------------------------------------------------- environment
    @property
    def env(self) -> dict[str, str]:
        url = f"http://127.0.0.1:{self.port}"
        return airflow_env(
            self.home,
            {
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": self.database_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
                # parse once at start-up; the files do not change during a test
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            },
        )

    def log(self, name: str) -> Path:
        return self.home / f"{name}.out"

    def tail(self, lines: int = 60) -> str:
        """The end of every process log (for failure messages)."""
        out = []
        for name in self.procs:
            text = self.log(name).read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {name} -----\n" + "\n".join(text))
        return "\n".join(out)

    # ---------------------------------------------------------------------- processes
    def cli(self, *args: str, timeout: float = 180, check: bool = True) -> str:
        """Run ``airflow ARGS``; return its stdout (fails the test on a non-zero exit)."""
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )
        if check and proc.returncode != 0:
            raise StackError(
                f"airflow {' '.join(args)} exited {proc.returncode}\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            )
        return proc.stdout + ("" if check else proc.stderr)

    def spawn(self, name: str, *args: str) -> None:
        """Start ``airflow ARGS`` in a new process group, output to ``HOME/NAME.out``."""
        with self.log(name).open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "airflow", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                start_new_session=True,
            )

    def start(self, *, worker_args: tuple[str, ...] = ()) -> None:
        """Migrate, create the ``ncbi`` pool, start the services, wait for every DAG."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.cli("db", "migrate", timeout=300)
        self.cli("pools", "set", "ncbi", "1", "NCBI E-utilities/iCite calls (rate limit)")
        # picked now, not when the stack was made: the migration takes tens of seconds, in
        # which another test process may bind a port the kernel handed out
        self.port = free_port()
        self.spawn("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1")
        self.spawn("dag-processor", "dag-processor")
        self.spawn("scheduler", "scheduler", "--skip-serve-logs")
        if self.executor == "CeleryExecutor":
            self.spawn("worker", "celery", "worker", "--skip-serve-logs", *worker_args)
        wait_for("the API server", self._healthy, 180)
        n = len(list((REPO / "dags").glob("litpulse_*.py")))  # one DAG a file
        wait_for(f"the {n} DAGs to be parsed", lambda: len(self.get("/dags")["dags"]) >= n, 180)

    def _healthy(self) -> bool:
        self.check_alive()
        try:
            return requests.get(self.url("/monitor/health"), timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}\n{self.tail()}")

    def stop(self) -> None:
        """End every process group this stack started (TERM, then KILL after 5 s: nothing
        of a test waits on a graceful end; the LocalExecutor's scheduler took 20 s)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            # the group too: task processes of an already-exited parent
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    # ---------------------------------------------------------------------- REST API
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2{path}"

    @property
    def password_file(self) -> Path:
        return self.home / ".airflow-secrets" / "simple_auth_manager_passwords.json.generated"

    def token(self) -> str:
        if self._token is None:
            password = json.loads(self.password_file.read_text())["admin"]
            resp = requests.post(
                f"http://127.0.0.1:{self.port}/auth/token",
                json={"username": "admin", "password": password},
                timeout=30,
            )
            resp.raise_for_status()
            self._token = str(resp.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return requests.request(method, self.url(path), headers=headers, timeout=60, **kwargs)

    def get(self, path: str, **params: Any) -> Any:
        resp = self.request("GET", path, params=params)
        if resp.status_code != 200:
            raise StackError(f"GET {path}: HTTP {resp.status_code} {resp.text[:2000]}")
        return resp.json()

    def unpause(self, dag_id: str) -> None:
        resp = self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        if resp.status_code != 200:
            raise StackError(f"unpause {dag_id}: HTTP {resp.status_code} {resp.text[:2000]}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        runs = self.get(f"/dags/{dag_id}/dagRuns", limit=100, order_by="run_after")
        return list(runs["dag_runs"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.get(f"/dags/{dag_id}/dagRuns/{run_id}"))

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """Task instances of a run by ``task_id`` (``task_id[i]`` for mapped ones)."""
        out = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100)
        tis = {}
        for ti in out["task_instances"]:
            key = ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"
            tis[key] = ti
        return tis

    def wait_run(self, dag_id: str, run_id: str, timeout: float,
                 states: frozenset[str] = frozenset(FINISHED)) -> dict[str, Any]:
        """Wait until the run reaches one of ``states``; returns the run."""

        def probe() -> dict[str, Any] | None:
            self.check_alive()
            run = self.run(dag_id, run_id)
            return run if run["state"] in states else None

        try:
            return wait_for(f"{dag_id} {run_id} to reach {sorted(states)}", probe, timeout)
        except StackError as exc:
            raise StackError(f"{exc}\n{self.tail()}") from None

    def wait_idle(self, dag_id: str, timeout: float) -> list[dict[str, Any]]:
        """Wait until no run of ``dag_id`` is queued or running; returns all its runs."""

        def probe() -> list[dict[str, Any]] | None:
            self.check_alive()
            runs = self.runs(dag_id)
            return runs if runs and all(r["state"] in FINISHED for r in runs) else None

        try:
            return wait_for(f"{dag_id} to be idle", probe, timeout)
        except StackError as exc:
            raise StackError(f"{exc}\n{self.tail()}") from None
