"""The ingest and info commands, through litpulse.app.cli.main and the installed entry point."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ingest.store import IngestCounts
from litpulse.app.cli import main
from litpulse.core.settings import Settings
from tests.ingest.test_files import BROKEN, article_xml, deletion_xml, write_xml


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    one = write_xml(
        tmp_path / "pubmed26n0001.xml.gz",
        article_xml(101, refs=(102,)), article_xml(102), article_xml(103), BROKEN, gz=True,
    )  # fmt: skip
    two = write_xml(
        tmp_path / "pubmed26n0002.xml",
        article_xml(101, version=2, title="Revised title", refs=(102,)), deletion_xml(103),
    )  # fmt: skip
    return [one, two]


def test_ingest_files_then_info(
    env: Settings, corpus: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    got = run_json(capsys, "ingest", "--files", *map(str, corpus))
    assert got == {"inserted": 3, "updated": 1, "unchanged": 0, "deleted": 1, "quarantined": 1,
                   "requarantined": 0, "reseen": 0, "missing": 0}  # fmt: skip
    again = run_json(capsys, "ingest", "--files", *map(str, corpus))
    assert (again["inserted"], again["updated"], again["deleted"]) == (0, 0, 0)

    art = run_json(capsys, "article", "101")
    assert art["pmid"] == 101 and art["version"] == 2 and art["title"] == "Revised title"
    assert art["authors"][0]["name"] == "Smith J"
    assert art["mesh"][0]["descriptor"] == "Humans" and art["mesh"][0]["major"] is True
    assert art["publication_types"] == ["Journal Article"] and art["references"] == [102]
    assert art["pub_year"] == 2024 and art["pub_month"] == 3 and art["is_deleted"] is False
    assert run_json(capsys, "article", "102")["cited_by_in_corpus"] == 1
    assert run_json(capsys, "article", "103")["is_deleted"] is True

    assert main(["article", "101"]) == 0
    human = capsys.readouterr().out
    assert "PMID 101" in human and "Revised title" in human and "Humans*" in human

    st = run_json(capsys, "status")
    assert (st["articles"], st["deleted"], st["quarantined"]) == (2, 1, 1)
    assert len(st["last_runs"]) == 2 and st["last_runs"][0]["status"] == "succeeded"
    assert main(["status"]) == 0
    assert "articles" in capsys.readouterr().out

    quar = run_json(capsys, "quarantine", "--limit", "5")
    assert len(quar) == 1
    assert quar[0]["reason"] and quar[0]["source_location"].endswith("pubmed26n0001.xml.gz")
    assert "No PMID" in quar[0]["raw_xml"]
    assert main(["quarantine"]) == 0
    assert "pubmed26n0001.xml.gz" in capsys.readouterr().out


def test_missing_lists_owed_and_given_up_pmids(
    env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest import missing
    from litpulse.core import db

    assert main(["missing"]) == 0
    assert "no PMID is missing" in capsys.readouterr().out
    engine = db.connect(env)
    missing.note_window(engine, listed=[11, 12], missing=[11, 12],
                        where="2024-01-01..2024-01-02 (run 4)", key="k", retries=1)  # fmt: skip
    from litpulse.core.schema import missing_pmids

    with engine.begin() as conn:  # first missed a day ago: old enough to give up
        conn.execute(missing_pmids.update().values(
            first_missing_at=db.utcnow() - dt.timedelta(days=1, minutes=1)))  # fmt: skip
    missing.settle(engine, asked=[12], missing=[12], key="k2", retries=1)
    got = run_json(capsys, "missing")
    assert [(r["pmid"], r["given_up"], r["tries"]) for r in got] == [(11, False, 1), (12, True, 2)]
    assert got[0]["first_missing_in"] == "2024-01-01..2024-01-02 (run 4)"
    assert main(["missing"]) == 0
    out = capsys.readouterr().out
    assert "owed" in out and "given up" in out and "(run 4)" in out
    assert run_json(capsys, "status")["missing"] == {"waiting": 1, "given_up": 1}
    assert main(["status"]) == 0
    assert "1 owed (asked again by every E-utilities run), 1 given up" in capsys.readouterr().out


def test_unknown_pmid_exits_1(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["article", "424242"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "424242" in err[0]


def test_ingest_human_output_and_missing_file(
    sqlite_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    path = write_xml(tmp_path / "a.xml", article_xml(7))
    assert main(["ingest", "--files", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inserted" in out and "1" in out
    assert main(["ingest", "--files", str(tmp_path / "nope.xml")]) == 2  # a usage error
    assert "nope.xml" in capsys.readouterr().err


def test_settings_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path))
    monkeypatch.setenv("LITPULSE_NCBI_API_KEY", "sekrit")
    rows = run_json(capsys, "settings")
    by_env = {r["env"]: r for r in rows}
    assert by_env["LITPULSE_HOME"]["value"] == str(tmp_path)
    assert by_env["LITPULSE_NCBI_API_KEY"]["value"] == "***"
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "LITPULSE_EFETCH_BATCH" in out and "sekrit" not in out


def test_ingest_eutils_and_updatefiles_dispatch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The handlers pass the window and options on (the sources have their own tests)."""
    import ingest.eutils
    import ingest.updatefiles

    calls: list[tuple[str, Any]] = []

    def fake_window(settings: Settings, since: dt.datetime, until: dt.datetime, **kw: Any) -> Any:
        calls.append(("eutils", (since, until, kw)))
        return IngestCounts(inserted=2, missing=1)

    def fake_updates(settings: Settings, **kw: Any) -> Any:
        calls.append(("updatefiles", kw))
        return IngestCounts(updated=3)

    monkeypatch.setattr(ingest.eutils, "ingest_window", fake_window)
    monkeypatch.setattr(ingest.updatefiles, "apply_updates", fake_updates)
    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path))
    got = run_json(capsys, "ingest", "--eutils", "--since", "2024-01-01", "--until",
                   "2024-01-02", "--query", "cancer")  # fmt: skip
    assert got["inserted"] == 2 and got["missing"] == 1
    since, until, kw = calls[-1][1]
    assert since == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert until == dt.datetime(2024, 1, 3, tzinfo=dt.UTC)  # --until is inclusive
    assert kw["query"] == "cancer"
    got = run_json(capsys, "ingest", "--updatefiles", "--max-files", "2")
    assert got["updated"] == 3 and calls[-1] == ("updatefiles", {"max_files": 2,
                                                                 "progress": False,
                                                                 "accept_gaps": False})  # fmt: skip
    run_json(capsys, "ingest", "--updatefiles", "--accept-gaps")
    assert calls[-1][1]["accept_gaps"] is True
    # options that do not fit the source
    assert main(["ingest", "--eutils"]) == 2
    assert "--since" in capsys.readouterr().err
    assert main(["ingest", "--updatefiles", "--since", "2024-01-01"]) == 2
    assert main(["ingest", "--files", "a.xml", "--accept-gaps"]) == 2
    assert "--accept-gaps only goes with --updatefiles" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ingest", "--files", "a.xml", "--eutils"])  # mutually exclusive
    with pytest.raises(SystemExit):
        main(["ingest", "--eutils", "--since", "yesterday"])


def test_installed_entry_point(
    sqlite_settings: Settings, corpus: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    exe = shutil.which("litpulse") or str(Path(sys.executable).parent / "litpulse")
    if not os.path.exists(exe):
        pytest.skip("the litpulse entry point is not installed")
    environ = {k: v for k, v in os.environ.items()}
    done = subprocess.run(
        [exe, "ingest", "--files", *map(str, corpus), "--json"],
        capture_output=True, text=True, env=environ, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inserted"] == 3
    missing = subprocess.run(
        [exe, "article", "555"], capture_output=True, text=True, env=environ, timeout=60,
        check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stdout == "" and "555" in missing.stderr


def test_a_table_shows_control_characters_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from litpulse.app.cli._common import print_table

    # a saved search stored before control characters were refused (finding 4, rev-api)
    print_table([[7, "malaria\x1b[31mkids\x08", None]], ["id", "name", "owner"])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x08" not in out
    assert out.splitlines()[2].split() == ["7", "malaria\\x1b[31mkids\\x08"]


def test_an_error_or_log_line_shows_control_characters_escaped(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error or a log line may quote a source's answer (E-utilities' ``<ERROR>`` text, a
    mail server's reply): on stderr it is escaped as every output is (session 33a)."""
    import logging

    from litpulse.app.cli import _common, info
    from litpulse.core.errors import TransientSourceError

    said = "efetch: error in body: \x9b2J\x1b]0;pwned\x07 down"

    def failing(_args: object, _settings: Settings) -> int:
        raise TransientSourceError(said)

    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    monkeypatch.setattr(info, "status", failing)
    assert main(["status"]) == 75  # retryable: EX_TEMPFAIL
    err = capsys.readouterr().err
    assert "error in body: \\x9b2J\\x1b]0;pwned\\x07 down" in err, err
    record = logging.LogRecord("ingest", logging.WARNING, __file__, 1, "answer: %s", (said,), None)
    line = _common.SafeFormatter("%(levelname)s %(message)s").format(record)
    assert line == "WARNING answer: efetch: error in body: \\x9b2J\\x1b]0;pwned\\x07 down"


# ------------------------------------------- hostile review: a killed rollback, run again

_KILLED_ROLLBACK = (
    "import os, signal\n"
    "from litpulse.core.settings import Settings\n"
    "from retrain import registry\n"
    "def killed(_settings):  # SIGKILL (OOM, a reboot) while the re-index embeds\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "registry.rollback(Settings.from_env(), by='ops', reindex=killed)\n"
)


def test_a_killed_rollback_run_again_ends_where_an_uninterrupted_one_ends(
    env: Settings,
) -> None:
    """m1 then m2 promoted (each with its index); `models rollback` should end with m1
    active and m1's index published. Killed after its status switch, while re-indexing,
    then run again: it ends with the base model active and m1 rejected, a model neither
    the operator nor the gate chose."""
    from litpulse.core import db
    from litpulse.pipeline.planning import reindex_now, reindex_pending
    from ranking.models import published_index_row
    from retrain import registry
    from tests.ingest.test_crash_resume import child_env
    from tests.ranking.test_index import add_articles

    engine = db.connect(env)
    add_articles(engine, list(range(1, 11)), models=("base", "m1", "m2"))  # vectors stored
    for vid in ("m1", "m2"):
        registry.register(env, id=vid, adapter_path="", adapter_sha256="", parent_id=None,
                          window_start=None, window_end=None, pair_counts={}, options={},
                          metrics={})
        registry.promote(env, vid, by="gate", reindex=reindex_now)
    assert published_index_row(engine).model_version == "m2"
    db.dispose_engines()

    proc = subprocess.run([sys.executable, "-c", _KILLED_ROLLBACK], env=child_env(env),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    engine = db.connect(env)
    assert registry.active_version(env).id == "m1"  # type: ignore[union-attr]
    assert reindex_pending(env) is not None  # m2's index still published

    assert main(["models", "rollback", "--by", "ops"]) == 0
    active = registry.active_version(env)
    statuses = {v.id: str(v.status) for v in registry.list_models(env)}
    assert active is not None and active.id == "m1", statuses
    assert published_index_row(engine).model_version == "m1"


@pytest.mark.parametrize(
    "argv",
    [
        ["article", "99999999999999999999"],
        ["feedback", "--query", "sepsis", "--pmid", "99999999999999999999", "--relevant"],
        ["similar", "99999999999999999999"],
    ],
)
def test_a_pmid_beyond_any_is_refused_by_every_command(
    env: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # it reached the database and ended in an OverflowError traceback (article, feedback)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "not a PMID" in capsys.readouterr().err


def test_an_article_is_shown_by_its_doi(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from ingest.store import Store
    from litpulse.core import db
    from tests.ingest.test_store import make_record

    first = dataclasses.replace(make_record(301, title="First"), doi="10.1056/NEJMoa2034577")
    second = dataclasses.replace(make_record(302), doi="10.1056/nejmoa2034577")
    Store(db.connect(env)).apply([first, second, make_record(303)])
    art = run_json(capsys, "article", "https://doi.org/10.1056/NEJMOA2034577")
    assert (art["pmid"], art["title"], art["same_doi"]) == (301, "First", [302])
    assert main(["article", "doi:10.1056/NEJMoa2034577"]) == 0
    human = capsys.readouterr().out
    assert "PMID 301" in human and "same doi" in human and "PMID 302" in human
    assert run_json(capsys, "article", "10.1000/303")["pmid"] == 303
    assert main(["article", "10.1000/nothing"]) == 1
    assert "no article in the store has DOI 10.1000/nothing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # neither a PMID nor a DOI: a usage error
        main(["article", "malaria"])
    assert usage.value.code == 2 and "not a PMID or a DOI" in capsys.readouterr().err
