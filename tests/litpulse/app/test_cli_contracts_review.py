"""Review: the CLI's contracts as scripts and cron jobs rely on them.

Exit codes (0 success, 1 not found, 2 usage/config error, 75 busy/try again later, 130
interrupted), one JSON document on stdout with ``--json``, data on stdout and everything
else on stderr, ``--help`` against the README table, and bad input (overflowing numbers,
non-UTF-8 and over-long arguments, missing files, directories) answered with one line and
the right code, never a traceback.

Each ``xfail(strict=True)`` test is a defect of the current code; the plain tests pin what
holds. SQLite only: no test here depends on the database's kind (the unreachable server
of ``test_unreachable_database_is_one_line_not_a_not_found_traceback`` is a closed port).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from litpulse.app.cli import build_parser, main
from litpulse.core import db
from litpulse.core.settings import Settings

REPO = Path(__file__).resolve().parents[3]
README = (REPO / "README.md").read_text(encoding="utf-8")
#: Larger than any database integer (SQLite and PostgreSQL BIGINT alike).
BIG = "99999999999999999999"
#: What Python makes of the argument byte 0xFF (not UTF-8): a lone surrogate.
NON_UTF8 = b"\xff".decode("utf-8", "surrogateescape")


@pytest.fixture
def env(sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The ``sqlite_settings`` home in os.environ, as the CLI reads it."""
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    return sqlite_settings


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str, str]:
    """``main(argv)`` as a process would end: its exit code, stdout and stderr; an
    exception that escapes ``main`` is what the user sees as a traceback, so it is
    returned as the code ``"traceback"`` with its text on stderr."""
    try:
        code: object = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    except Exception as exc:  # noqa: BLE001 - escaping main is the defect looked for
        out, err = capsys.readouterr()
        return "traceback", out, f"{err}Traceback: {type(exc).__name__}: {exc}"[-2000:]
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: object, out: str, err: str, want: int) -> None:
    assert code == want, f"exit {code!r}, want {want}; stderr: {err[-600:]!r}"
    assert out == "", out[:300]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("litpulse:"), err[-600:]


def child_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITPULSE_")}
    env.update(LITPULSE_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO), **extra)
    return env


def leaf_parsers() -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    """Every runnable command of ``build_parser()`` with its parser (``["index", "check"]``)."""

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[
        tuple[list[str], argparse.ArgumentParser]
    ]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser
            return
        for name, child in subs[0].choices.items():
            yield from walk(child, [*path, name])

    yield from walk(build_parser(), [])


COMMAND_PATHS = [path for path, _ in leaf_parsers()]
GROUPS = sorted({path[0] for path in COMMAND_PATHS if len(path) > 1})


# --------------------------------------------------------------------------------------
# What holds (pinned)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMMAND_PATHS + [[g] for g in GROUPS] + [[]],
                         ids=lambda p: " ".join(p) or "litpulse")
def test_every_help_exits_0_on_stdout_only(
    path: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli([*path, "--help"], capsys)
    assert code == 0 and err == ""
    assert out.startswith("usage: litpulse" + "".join(f" {p}" for p in path))


def _readme_usages() -> list[str]:
    """The usage cell of each row of the README's CLI table, split at `` / ``."""
    section = README[README.index("## The CLI"):README.index("## Scoring")]
    cells = [re.split(r"(?<!\\)\|", line)[1] for line in section.splitlines()
             if line.startswith("| `litpulse")]
    return [seg.strip() for cell in cells for seg in cell.split(" / ")]


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=" ".join)
def test_readme_table_names_exactly_the_flags_of_each_command(path: list[str]) -> None:
    parser = dict((tuple(p), q) for p, q in leaf_parsers())[tuple(path)]
    cmd = " ".join(path)
    whole, action = re.escape(cmd), re.escape(path[-1])
    usages = [u for u in _readme_usages()
              if re.match(rf"`(litpulse )?{whole}(?![\w-])", u)
              or (len(path) > 1 and re.match(rf"`{action}(?![\w-])", u))]
    assert usages, f"`litpulse {cmd}` has no usage in the README table"
    flags = {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}
    documented = {f for u in usages for f in re.findall(r"(?<![\w-])(--[a-z0-9-]+|-k)\b", u)}
    assert flags - {"--drift"} == documented, (flags ^ documented)


@pytest.mark.parametrize("argv", [
    ["article", "5"], ["article", "5", "--json"], ["quarantine", "--raw", "5"],
    ["tokens", "revoke", "5", "--json"], ["alerts", "remove", "nope"],
    ["alerts", "feed", "nope"], ["models", "show", "nope", "--json"],
])
def test_not_found_exits_1_with_one_stderr_line(
    env: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(*run_cli(argv, capsys), want=1)


@pytest.mark.parametrize("argv", [
    ["status"], ["quarantine"], ["missing"], ["settings"], ["index", "status"],
    ["index", "check"], ["models", "list"], ["models", "report"], ["tokens", "list"],
    ["alerts", "list"], ["alerts", "run"], ["citations", "refresh"],
])
def test_json_is_exactly_one_document_on_stdout(
    env: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code in (0, 1), err  # index check: 1 while no index is published
    json.loads(out)  # the whole of stdout, nothing before or after the document
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------

# litpulse/app/cli/info.py:26-53 (status --runs, quarantine --limit/--pmid/--run/--before/
# --raw, missing --limit), citations.py:37-44 (refresh --pmid) and tokens.py:36 (revoke ID)
# parse with a bare ``type=int``: a number beyond the database's integer reaches the query
# and escapes main() as OverflowError (a traceback, exit 1 = "not found") instead of a
# usage error (exit 2) as `article`, `similar` and `feedback` give through pmid_arg.
@pytest.mark.parametrize("argv", [
    ["status", "--runs", BIG], ["quarantine", "--limit", BIG], ["quarantine", "--pmid", BIG],
    ["quarantine", "--run", BIG], ["quarantine", "--before", BIG], ["quarantine", "--raw", BIG],
    ["missing", "--limit", BIG], ["citations", "refresh", "--pmid", BIG],
    ["tokens", "revoke", BIG],
])
def test_overflowing_integer_argument_is_a_usage_error(
    env: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # fixed: argparse's usage error (its usage line, then the error naming the argument)
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "" and "Traceback" not in err, (code, err[-300:])
    assert "must be from" in err or "not a PMID" in err, err


# litpulse/app/cli/citations.py:37-44 and info.py:35: `citations refresh --pmid` and
# `quarantine --pmid` take any int, so `--pmid -3` (or 0) exits 0 having done nothing, where
# `article -3`, `similar -3` and `feedback --pmid -3` refuse "not a PMID" with exit 2: a
# typo in a cron line passes silently.
@pytest.mark.parametrize("argv", [
    ["citations", "refresh", "--pmid", "-3", "--json"], ["quarantine", "--pmid", "0", "--json"],
])
def test_pmid_option_refuses_what_is_not_a_pmid(
    env: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and "not a PMID" in err, (code, out[:200], err[-300:])


# A non-UTF-8 argument reaches SQL or the URL encoder as a lone surrogate and escapes main()
# as UnicodeEncodeError: store lookups by name/text (ingest/store.py `quarantined`
# location=, litpulse/pipeline/saved_searches.py `get_search`/`remove_search`,
# retrain/registry.py `get_model`, via litpulse/app/cli/models.py promote) and
# `search_via_server` (litpulse/app/cli/search.py:177, urlencode before the query is
# validated; run_search itself refuses it cleanly with exit 2). Nothing validates text
# arguments centrally in litpulse/app/cli/__init__.py:main.
@pytest.mark.parametrize("argv", [
    ["quarantine", "--file", NON_UTF8], ["alerts", "remove", NON_UTF8],
    ["alerts", "feed", NON_UTF8], ["models", "show", NON_UTF8],
    ["models", "promote", NON_UTF8, "--by", "ci"], ["search", NON_UTF8],
])
def test_non_utf8_argument_is_a_usage_error(
    env: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(*run_cli(argv, capsys), want=2)


# The same through a real process: argv byte 0xFF (litpulse/app/cli/__init__.py:main has
# no handler for it; the store query in ingest/store.py `quarantined` raises).
def test_non_utf8_argv_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "litpulse", "quarantine", "--file", b"\xff"],
        capture_output=True, env=child_env(tmp_path / "home"), cwd=REPO, timeout=120,
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and proc.returncode == 2, (proc.returncode, err[-500:])


# ingest/store.py `quarantined` (LIKE '%' || :file || '%'): an over-long --file text hits
# SQLite's LIKE pattern limit (50000 bytes) and escapes main() as sqlalchemy
# OperationalError; litpulse/app/cli/info.py:38 bounds nothing.
def test_over_long_quarantine_file_filter(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("not xml", encoding="utf-8")  # one quarantine entry for LIKE to test
    assert run_cli(["ingest", "--files", str(bad), "--json"], capsys)[0] == 0
    code, out, err = run_cli(["quarantine", "--file", "a" * 60000, "--json"], capsys)
    assert code != "traceback", err[:160]
    assert code in (0, 2) and (code == 2 or json.loads(out) == [])


# retrain/registry.py:586 `dt.timedelta(days=days)` with the float of
# litpulse/app/cli/models.py:74 (--older-than): nan, inf or 1e10 pass the `days < 0` check
# (registry.py:582) and raise ValueError/OverflowError out of main() (a traceback, exit 1).
@pytest.mark.parametrize("days", ["nan", "inf", "1e10"])
def test_prune_older_than_not_finite_is_a_usage_error(
    env: Settings, days: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(*run_cli(["models", "prune", "--older-than", days, "--json"],
                                   capsys), want=2)


# ingest/files.py:121-123 and ingest/icite_snapshot.py:314-315 raise NotFoundError for an
# input path that does not exist, which main() (litpulse/app/cli/__init__.py:55-57) maps
# to exit 1 ("litpulse: no such file"), while `nightly --files` of the same path
# (litpulse/pipeline/nightly.py:357-359, ConfigError) exits 2, and the README's concurrency
# notes promise "a path the command cannot read or write ... with 2 and one `litpulse:
# error:` line". The same typo gives two different exit codes.
@pytest.mark.parametrize("argv", [["ingest", "--files"], ["citations", "load"]])
def test_missing_input_file_exits_2_everywhere(
    env: Settings, tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli([*argv, str(tmp_path / "nope.xml")], capsys)
    assert_one_line_error(code, out, err, want=2)
    assert err.startswith("litpulse: error:"), err


def test_nightly_missing_input_file_exits_2(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the two above should match: `nightly --files` of a missing path."""
    code, out, err = run_cli(["nightly", "--no-retrain", "--files", str(tmp_path / "nope.xml")],
                             capsys)
    assert_one_line_error(code, out, err, want=2)
    assert err.startswith("litpulse: error:"), err


# ingest/files.py:121-123: a directory given to `ingest --files` (and `nightly --files`,
# which passes it on) is reported as "no such file: DIR": the path exists; the message
# should say that it is a directory (a file is needed: DIR/*.xml.gz).
def test_directory_given_as_file_is_named_as_a_directory(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "xmls"
    folder.mkdir()
    code, out, err = run_cli(["ingest", "--files", str(folder)], capsys)
    assert code == 2 and "director" in err and "no such file" not in err, (code, err)


# litpulse/app/cli/__init__.py:57-63 maps every LitpulseError but BusyError to 2 ("hard
# error"), including TransientSourceError, which litpulse/core/errors.py marks
# `retryable = True` (a refused connection, 5xx, 429 after the retries): a cron wrapper
# that retries on 75 (EX_TEMPFAIL) takes a network outage for a configuration mistake.
def test_transient_network_failure_exits_tempfail(
    env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITPULSE_EUTILS_URL", "http://127.0.0.1:1/")
    monkeypatch.setenv("LITPULSE_MAX_RETRIES", "0")
    monkeypatch.setenv("LITPULSE_NCBI_EMAIL", "ci@example.org")
    code, out, err = run_cli(
        ["ingest", "--eutils", "--since", "2024-01-01", "--until", "2024-01-01", "--json"],
        capsys,
    )
    assert code != "traceback", err[-300:]
    assert code == 75, (code, err[-300:])


# litpulse/app/cli/__init__.py:52-71: main() catches LitpulseError, OSError and
# KeyboardInterrupt only; a database that cannot be reached (sqlalchemy OperationalError
# from litpulse/core/db.py `connect`) escapes as a traceback and exits 1, the code that
# means "not found".
def test_unreachable_database_is_one_line_not_a_not_found_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/litpulse_review"
    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LITPULSE_DATABASE_URL", url)
    try:
        code, out, err = run_cli(["status", "--json"], capsys)
    finally:
        eng = db._ENGINES.pop(url, None)
        if eng is not None:
            eng.dispose()
    assert code != "traceback", err[-300:]
    assert code in (2, 75) and len(err.strip().splitlines()) == 1, (code, err[-300:])


# litpulse/app/cli/__init__.py:64-66: BrokenPipeError is an OSError, so a reader that
# closes the pipe early (`litpulse settings | head -1`, `... --json | jq -e 'first'`) makes
# the command print "litpulse: error: [Errno 32] Broken pipe" and exit 2, the
# usage/config code: under `set -o pipefail` a cron job fails for a consumer's choice.
def test_closed_stdout_pipe_is_not_a_config_error(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "litpulse", "settings"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=child_env(tmp_path / "home"), cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes a byte
    err = proc.stderr.read().decode("utf-8", "replace")
    code = proc.wait(timeout=120)
    assert "Traceback" not in err
    assert code != 2 and "error" not in err, (code, err[-300:])
