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
from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator import Emulator, running_emulator

if TYPE_CHECKING:
    from litpulse.app.demo.generate import CorpusManifest

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
            # the one-process dag.test() runs; a real deployment (airflow_stack.py) sets
            # PostgreSQL. A writer waits up to 30 s for SQLite's lock (pysqlite: 5 s).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=30",
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


def publish_bootstrap_files(emu: Emulator, folder: Path) -> tuple[CorpusManifest, CorpusManifest]:
    """Serve 3 generated baseline files and 1 update file (20 records each) on ``emu``.

    The update file revises 7 baseline records and revises and deletes some of its own.

    Returns:
        The manifests of the baseline files and of the update file.
    """
    from litpulse.app.demo.generate import generate_corpus

    base = generate_corpus(folder / "baseline", n_records=60, n_files=3, seed=8,
                           revise_fraction=0.0, delete_fraction=0.0)  # fmt: skip
    upd = generate_corpus(folder / "updatefiles", n_records=20, n_files=1, seed=9,
                          first_file_number=4,
                          start_date=base.config.start_date.replace(year=2025))  # fmt: skip
    for p in base.files:
        emu.add_file("baseline", p.name, p.read_bytes())
    for p in upd.files:
        emu.add_file("updatefiles", p.name, p.read_bytes())
    return base, upd
