"""Hostile review of configuration and deployment: settings an operator may plausibly
give that silently lose, split or mix data, give a wrong answer or show a secret.

Each test failed before its fix (a strict xfail first): the database password shown by
``litpulse settings`` and ``repr``; ``~`` and relative SQLite paths resolved by whichever
process opened them; a blank home taken for the working directory; the CLI taking a
server's answer ranked with another fusion.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings, hide_password


def _dispose(settings: Settings) -> None:
    eng = db._ENGINES.pop(settings.effective_database_url, None)
    if eng is not None:
        eng.dispose()


# ------------------------------------------------------------------ secrets on display

PG_URL = "postgresql+psycopg://litpulse:S3cr%40tPw@db.internal:5432/litpulse"


def test_settings_never_show_the_database_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from litpulse.app.cli import main

    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LITPULSE_DATABASE_URL", PG_URL)
    assert main(["settings", "--json"]) == 0
    out = capsys.readouterr().out
    rows = {r["env"]: r["value"] for r in json.loads(out)}
    assert "LITPULSE_DATABASE_URL" in rows  # the setting is listed ...
    assert "S3cr" not in out  # ... without its password (raw or percent-decoded)
    s = Settings.from_env({"LITPULSE_DATABASE_URL": PG_URL})
    assert "S3cr" not in repr(s)  # repr is what logs and tracebacks show


# ------------------------------------------------------------- paths in the database URL


def test_tilde_in_a_sqlite_url_means_the_home_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    user_home, cwd = tmp_path / "user", tmp_path / "cwd"
    user_home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.chdir(cwd)
    s = Settings.from_env(
        {"LITPULSE_HOME": "~/lp", "LITPULSE_DATABASE_URL": "sqlite:///~/lp/litpulse.db"}
    )
    assert s.home == user_home / "lp"  # the home's `~` is expanded
    try:
        db.store_id(db.connect(s))
    finally:
        _dispose(s)
    assert not (cwd / "~").exists(), "a store was created under ./~ of the working directory"
    assert (user_home / "lp" / "litpulse.db").exists()


def test_relative_sqlite_url_names_one_file_like_the_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Settings.__post_init__ fixes a relative home at creation "so that what is recorded
    under it names the same folder from any other folder"; the database the same settings
    name must not move when the process (an Airflow task, a worker) works elsewhere."""
    start, other = tmp_path / "start", tmp_path / "other"
    start.mkdir()
    other.mkdir()
    monkeypatch.chdir(start)
    s = Settings.from_env({"LITPULSE_HOME": "lp", "LITPULSE_DATABASE_URL": "sqlite:///lp.db"})
    assert s.home == start / "lp"  # fixed now
    monkeypatch.chdir(other)
    try:
        db.store_id(db.connect(s))
    finally:
        _dispose(s)
    assert not (other / "lp.db").exists(), "the same settings opened a second store"
    assert (start / "lp.db").exists()


# ------------------------------------------------------------------------ blank values


@pytest.mark.parametrize("raw", ["", "   "])
def test_blank_home_is_the_default_or_an_error(
    raw: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        s = Settings.from_env({"LITPULSE_HOME": raw})
    except ConfigError:
        return  # refusing it is fine
    assert s.home == tmp_path / ".litpulse", f"data directory is {s.home}"


# ------------------------------------------------- CLI search answered by a running server


class _FakeServer:
    """A stand-in for `litpulse serve` started with the default settings (fusion mix):
    answers /search with its own options and records the query it was asked."""

    def __init__(self, index_version: str) -> None:
        self.asked: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.asked.append(self.path)
                defaults = Settings.from_env({})
                body = json.dumps({
                    "index_version": index_version, "model_version": "base",
                    "mode": "hybrid", "sort": "score", "candidates": 1,
                    "options": {"w_similarity": 1.0, "w_recency": 0.15, "w_citation": 0.1,
                                "half_life_days": 365.0, "lexical_share": 0.35,
                                "fusion": defaults.fusion, "rrf_k": defaults.rrf_k},
                    "results": [],
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def fake_server() -> Iterator[_FakeServer]:
    srv = _FakeServer("ix-20260101-000000-abcdef")
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_cli_search_never_takes_a_server_answer_ranked_another_way(
    fake_server: _FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from litpulse.app.cli import search as cli
    from litpulse.app.cli._common import filters_from_args
    from ranking.scoring import ScoringOptions

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(["search", "malaria vaccine"])
    monkeypatch.setattr(cli, "_published_index_id", lambda s: "ix-20260101-000000-abcdef")
    settings = Settings.from_env(
        {"LITPULSE_FUSION": "rrf", "LITPULSE_RRF_K": "10"},
        home=tmp_path / "home", search_server_url=fake_server.url,
    )
    options = ScoringOptions.from_settings(settings)
    assert options.fusion == "rrf"
    data = cli.search_via_server(settings, args, filters_from_args(args), options)
    assert fake_server.asked, "the server was asked"
    # correct: either search in process (None), or an answer ranked as this CLI ranks
    assert data is None or (
        data["options"]["fusion"] == "rrf" and data["options"]["rrf_k"] == 10
    ), f"took the server's {data['options']['fusion']} ranking for an rrf search"


# a review of the fixes above (each failed first, as a strict xfail)


# ------------------------------------------------------------------ hide_password

# SQLAlchemy takes everything between "user:" and the last "@" as the password, "/", "#",
# "?", "[" and "]" included (a base64 secret holds "/" and "+"); the status command's old
# make_url-based _safe_url hid them
@pytest.mark.parametrize("password", ["ab/cd+ef==", "pa#ss", "pa?ss", "pa[ss"])
def test_database_password_with_url_delimiters_is_hidden(password: str) -> None:
    from sqlalchemy.engine import make_url

    url = f"postgresql+psycopg://litpulse:{password}@db.internal:5432/litpulse"
    assert make_url(url).password == password  # what SQLAlchemy connects with
    assert password not in hide_password(url)  # litpulse status
    s = Settings.from_env({"LITPULSE_DATABASE_URL": url})
    assert password not in repr(s)  # logs, tracebacks
    shown = {r["name"]: r["value"] for r in s.describe()}  # litpulse settings
    assert password not in shown["database_url"]


# ------------------------------------------------------------------ _sqlite_fixed


def test_relative_sqlite_url_in_a_non_ascii_folder_opens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    # worked before 5749c93: the URL was kept as given, its folder made and opened
    s = Settings.from_env(
        {"LITPULSE_DATABASE_URL": "sqlite:///données/litpulse.db"}, home=tmp_path / "home"
    )
    try:
        db.store_id(db.connect(s))
    finally:
        _dispose(s)
    assert (tmp_path / "données" / "litpulse.db").exists()
    assert "%" not in s.database_url  # `litpulse settings`/`status` show the real path
