"""Fixtures of the DAG tests: a throw-away Airflow home on SQLite, and a DAG runner.

Airflow runs in child processes (``tests/dags/dag_runner.py``) with
``AIRFLOW_HOME`` in a temporary folder, ``AIRFLOW__CORE__DAGS_FOLDER`` set to the
repository's ``dags/``, no examples, and a SQLite metadata database migrated once per
test session with ``airflow db migrate``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import Emulator, running_emulator

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("dag_runner.py")


def airflow_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an Airflow child process using ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LITPULSE_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(REPO / "airflow.cfg"),  # the shipped configuration
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__CORE__FERNET_KEY": "",
            "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            ),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated Airflow metadata database (SQLite) in a temporary AIRFLOW_HOME."""
    home = tmp_path_factory.mktemp("airflow_home")
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=airflow_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home


def run_dags(
    home: Path, runs: list[dict[str, Any]], extra_env: Mapping[str, str], tmp: Path
) -> dict[str, Any]:
    """Run DAGs with ``dag.test()`` in a child process; returns the runner's report."""
    spec, out = tmp / "spec.json", tmp / "out.json"
    spec.write_text(json.dumps({"runs": runs}))
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "run", str(spec), str(out)],
        env=airflow_env(home, extra_env),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,
    )
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    return dict(json.loads(out.read_text()))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A loopback PubMed/iCite emulator."""
    yield from running_emulator()
