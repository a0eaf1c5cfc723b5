"""The README stays true: every setting and every CLI command is documented there."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from litpulse.core.settings import Settings, env_name

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_table_with_its_default_and_range() -> None:
    rows = {line.split("|")[1].strip(" `"): line for line in README.splitlines()
            if line.startswith("| `LITPULSE_")}
    settings = Settings.from_env({})
    for row in settings.describe():
        assert row["env"] in rows, f"{row['env']} is missing from the README settings table"
        line = rows[row["env"]]
        if row["range"]:
            assert row["range"] in line, f"{row['env']}: range {row['range']} not in README"
    names = {env_name(f.name) for f in dataclasses.fields(Settings)}
    assert set(rows) <= names, f"README documents unknown settings: {set(rows) - names}"


def test_every_cli_command_is_in_the_readme() -> None:
    from litpulse.app.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"`litpulse {name}" in README, f"`litpulse {name}` is not in the README"
    assert COMMANDS
