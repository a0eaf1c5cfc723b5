"""The import contracts of pyproject.toml hold, and a planted back-edge breaks them."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("litpulse", "ingest", "ranking", "retrain")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )


def test_the_repository_keeps_every_import_contract() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _copy_tree(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(
            ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        (
            "ingest/records.py",
            "\n\ndef _back_edge() -> None:\n    from litpulse.app import api  # noqa: F401\n",
            "Floors: application above stages above core",
        ),
        (
            "ranking/scoring.py",
            "\nimport airflow  # noqa: E402,F401\n",
            "core and stages never import Airflow",
        ),
    ],
)
def test_a_planted_back_edge_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, contract: str
) -> None:
    tree = _copy_tree(tmp_path)
    with (tree / module).open("a", encoding="utf-8") as fh:
        fh.write(planted)
    done = _lint(tree)
    assert done.returncode != 0, done.stdout
    assert f"{contract} BROKEN" in done.stdout, done.stdout


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every import in a file, function-level ones included."""
    out: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, alias.name) for alias in node.names]
    return out


def test_benchmarks_use_neither_tests_nor_private_names() -> None:
    bad = [
        f"{path.name}: {module} {name}".strip()
        for path in sorted((ROOT / "bench").glob("*.py"))
        for module, name in _imports(path)
        if module.split(".")[0] == "tests"
        or (module.split(".")[0] in PACKAGES + ("bench",) and name.startswith("_")
            and name != "__future__")
    ]
    assert bad == []
