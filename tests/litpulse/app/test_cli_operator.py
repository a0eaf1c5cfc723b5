"""The CLI as a hurried data engineer runs it (found by a hostile review): a relative
home, a file that is not PubMed XML, busy leases, a killed ingest, a bad output path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.settings import Settings
from tests.ingest.test_files import article_xml, write_xml
from tests.ranking.test_index import add_articles


def _json(capsys: pytest.CaptureFixture[str], *argv: str, code: int | None = 0) -> Any:
    got = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code is None or got == code, out
    return json.loads(out)


@pytest.fixture
def dispose() -> Iterator[None]:
    yield
    db.dispose_engines()


# ------------------------------------------------------------------ relative LITPULSE_HOME


def test_a_published_index_is_found_from_another_folder_with_the_same_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    dispose: None,
) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    monkeypatch.setenv("LITPULSE_DATABASE_URL", f"sqlite:///{tmp_path / 'shared.db'}")
    monkeypatch.chdir(here)
    monkeypatch.setenv("LITPULSE_HOME", "home")  # relative, as the default .litpulse
    add_articles(db.connect(Settings.from_env()), [11, 12, 13])
    published = _json(capsys, "index", "refresh")
    assert published["published"] is True and published["size"] == 3

    # the same data directory and database, named absolutely, from another folder
    monkeypatch.chdir(there)
    monkeypatch.setenv("LITPULSE_HOME", str(here / "home"))
    check = _json(capsys, "index", "check", code=None)
    assert check["ok"] is True, check
    status = _json(capsys, "index", "status")
    assert Path(status["path"]).is_absolute()
    again = _json(capsys, "index", "refresh")
    assert again["published"] is False and again["reason"] is None, again


# ------------------------------------------------------------------ input that is not PubMed


@pytest.mark.parametrize(
    "body",
    [
        "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>\n",
        '<?xml version="1.0"?>\n<eSearchResult><Count>0</Count></eSearchResult>\n',
    ],
    ids=["html-error-page", "other-xml"],
)
def test_a_file_that_is_not_pubmed_xml_is_not_a_silent_success(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str  # noqa: F811
) -> None:
    page = tmp_path / "pubmed26n0001.xml"
    page.write_text(body, encoding="utf-8")
    code = main(["ingest", "--files", str(page), "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["quarantined"] == 1, out  # as plain text is
    listed = _json(capsys, "quarantine")
    assert "not a PubMed document" in json.dumps(listed), listed


def test_plain_text_is_quarantined_for_comparison(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """Sound: a file that is not XML at all is quarantined (the behaviour asked above)."""
    text = tmp_path / "notes.xml"
    text.write_text("hello world\n", encoding="utf-8")
    assert _json(capsys, "ingest", "--files", str(text))["quarantined"] == 1
    good = write_xml(tmp_path / "good.xml", article_xml(5))
    assert _json(capsys, "ingest", "--files", str(good))["inserted"] == 1


# ------------------------------------------------------------------ busy exit codes


@pytest.mark.parametrize(
    ("lease", "argv"),
    [
        ("index-publish", ["index", "refresh"]),
        ("index-publish", ["index", "rollback"]),
        ("index-publish", ["models", "rollback"]),
        ("bootstrap-writer", ["bootstrap", "--no-embed"]),
    ],
    ids=["index-refresh", "index-rollback", "models-rollback", "bootstrap"],
)
def test_a_command_refused_because_another_process_holds_its_lease_exits_75(
    env: Settings, capsys: pytest.CaptureFixture[str], lease: str, argv: list[str],  # noqa: F811
) -> None:
    from litpulse.app.cli._common import EX_TEMPFAIL

    held = db.acquire_lease(db.connect(env), lease, holder="otherhost:1:x", heartbeat=False)
    assert held is not None
    code = main(argv)
    err = capsys.readouterr().err
    assert "another process" in err, err  # refused because of the lease, nothing else
    assert code == EX_TEMPFAIL, err


def test_store_busy_exits_75_for_comparison(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """Sound: a second writer of articles is refused with 75 and writes nothing."""
    from ingest.runs import STORE_LEASE
    from litpulse.app.cli._common import EX_TEMPFAIL

    assert db.acquire_lease(db.connect(env), STORE_LEASE, holder="otherhost:1:x",
                            heartbeat=False) is not None  # fmt: skip
    good = write_xml(tmp_path / "good.xml", article_xml(5))
    assert main(["ingest", "--files", str(good)]) == EX_TEMPFAIL
    assert _json(capsys, "status")["articles"] == 0


# ------------------------------------------------------------------ after a killed ingest


@pytest.fixture
def killed_ingest(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, list[str]]:
    """A real ``litpulse ingest --files`` SIGKILLed once 40 of its 120 articles are
    committed (batches of 20), with the environment of its store set for ``main``."""
    from litpulse.core.schema import articles
    from tests.ingest.test_crash_resume import KillPoint, child_env, run_and_kill

    s = sqlite_settings.replace(store_batch=20, ingest_workers=0)
    big = write_xml(tmp_path / "big.xml", *(article_xml(p) for p in range(1, 121)))
    argv = ["-m", "litpulse", "ingest", "--files", str(big)]
    engine = db.connect(s)
    run_and_kill(argv, child_env(s, LITPULSE_INGEST_WORKERS="0"), engine,
                 KillPoint("40 stored", articles.c.pmid.isnot(None), 40), tmp_path / "child.log")
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    monkeypatch.setenv("LITPULSE_STORE_BATCH", "20")
    monkeypatch.setenv("LITPULSE_INGEST_WORKERS", "0")
    return s, [str(big)]


def test_status_does_not_show_a_killed_ingest_as_running(
    killed_ingest: tuple[Settings, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    st = _json(capsys, "status")
    assert st["articles"] >= 40
    assert st["writer"] is None, st["writer"]  # the process is gone: nobody writes
    run = st["last_runs"][0]
    assert run["status"] != "running", run


def test_the_runs_of_a_killed_and_resumed_ingest_account_for_every_stored_article(
    killed_ingest: tuple[Settings, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _s, files = killed_ingest
    resumed = _json(capsys, "ingest", "--files", *files)
    assert resumed["inserted"] + resumed["unchanged"] == 120
    runs = _json(capsys, "status")["last_runs"]
    assert [r["status"] for r in runs] == ["succeeded", "abandoned"]
    assert sum(r["inserted"] for r in runs) == 120, runs


# ------------------------------------------------------------------ a bad output path


def test_models_report_plot_to_a_missing_folder_is_a_clear_error(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    code = main(["models", "report", "--plot", str(tmp_path / "no" / "such" / "plot.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("litpulse: error:"), err


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "report", "--plot", ""],  # wrote no plot, and said nothing
        ["ingest", "--files", ""],  # read the current folder
        ["nightly", "--files", ""],
        ["citations", "load", ""],  # loaded from the current folder
        ["demo", "generate", ""],  # wrote its files into the current folder
    ],
)
def test_an_empty_path_is_a_usage_error(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, argv: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "icite_metadata.csv").write_text("pmid,year\n1,2020\n")
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "an empty path" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["icite_metadata.csv"]


@pytest.mark.parametrize(
    "dates", [["--start", "0001-01-01"], ["--start", "9999-12-01"], ["--days", "99999999"]]
)
def test_demo_dates_out_of_range_are_a_usage_error(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
    dates: list[str],
) -> None:
    code = main(["demo", "generate", str(tmp_path / "out"), "--records", "5", *dates])
    err = capsys.readouterr().err
    assert code == 2 and "must keep the generated dates within" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args", [["--batch-size", "0"], ["--batch-size", "1000001"], ["--as-of", "2020-13-01"]]
)
def test_citations_load_options_out_of_range_are_a_usage_error(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
    args: list[str],
) -> None:
    snapshot = tmp_path / "icite_metadata.csv"
    snapshot.write_text("pmid,year\n1,2020\n")
    with pytest.raises(SystemExit) as exit_:
        main(["citations", "load", str(snapshot), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {args[0]}" in err, err


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "0", "604801", "soon"])
def test_a_retrain_budget_not_a_finite_time_in_its_setting_range_is_a_usage_error(
    env: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    seconds: str,
) -> None:
    """``litpulse retrain --max-seconds`` holds to LITPULSE_RETRAIN_BUDGET_S's range: NaN was
    taken (a round with no time budget), as a dry run showed with exit 0."""
    from retrain import run

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the retrain ran with a bad --max-seconds")

    monkeypatch.setattr(run, "retrain", never)
    with pytest.raises(SystemExit) as exit_:
        main(["retrain", "--dry-run", f"--max-seconds={seconds}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --max-seconds" in err, err


@pytest.mark.parametrize("wait", ["-1", "-0.5", "nan", "NaN", "inf", "-inf", "86401", "soon"])
def test_a_nightly_wait_not_a_finite_time_of_up_to_a_day_is_a_usage_error(
    env: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    wait: str,
) -> None:
    """``litpulse nightly --wait`` takes seconds from 0 to a day: a negative one, NaN or an
    infinity is a usage error naming the option (it was taken, a NaN or a negative one as
    no wait at all), and nothing runs."""
    from litpulse.pipeline import nightly

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the nightly ran with a bad --wait")

    monkeypatch.setattr(nightly, "run_nightly", never)
    with pytest.raises(SystemExit) as exit_:
        main(["nightly", f"--wait={wait}"])  # "-inf" alone reads as an option
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --wait" in err, err
    assert "from 0 to 86400" in err or "not a number" in err, err


# ------------------------------------------------------------------ a conflict met every time


@pytest.mark.parametrize("settings", ["postgresql"], indirect=True)
def test_a_deadlock_met_on_every_attempt_is_not_called_unreachable(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transaction PostgreSQL rolled back to break a deadlock on each of
    :data:`db.CONFLICT_ATTEMPTS` tries (one here) was told as a database that "cannot be
    reached": it is reachable, another writer held the same rows. A real deadlock: the
    test holds row 200 and the CLI's snapshot load (rows 100, 200) waits for it; the test
    then asks for row 100, and PostgreSQL's check, which runs first for the load (it waited
    first), rolls the load back."""
    import threading

    from sqlalchemy import text

    from ingest.records import Record, SourceRef
    from ingest.store import Store
    from litpulse.app.cli._common import EX_TEMPFAIL
    from litpulse.core.timeutil import utcnow
    from tests.review.test_session34a_review import SNAPSHOT_HEADER, _waiting_on_locks

    monkeypatch.setattr(db, "CONFLICT_ATTEMPTS", 1)
    engine = db.connect(env)
    src = SourceRef("generated", "deadlock", fetched_at=utcnow())
    Store(engine).apply([Record(pmid=p, version=1, title="t", source=src) for p in (100, 200)])
    csv = tmp_path / "icite_metadata.csv"
    csv.write_text(SNAPSHOT_HEADER + "".join(
        f"{p},,A title,,2019,J,True,7,1.0,1.0,2.0,1.5,50.0,0.5,0.25,0.25,0.0,0.4,0.3,"
        "False,,,,False,2026-05-01\n" for p in (100, 200)))  # fmt: skip
    codes: list[int] = []
    load = threading.Thread(target=lambda: codes.append(
        main(["citations", "load", str(csv), "--as-of", "2026-05-01"])))
    with engine.connect() as holder:
        tx = holder.begin()
        holder.execute(text("SELECT pmid FROM articles WHERE pmid = 200 FOR UPDATE")).all()
        load.start()
        _waiting_on_locks(engine, 1)
        holder.execute(text("SELECT pmid FROM articles WHERE pmid = 100 FOR UPDATE")).all()
        tx.commit()
    load.join(60)
    err = capsys.readouterr().err
    assert codes == [EX_TEMPFAIL], err
    assert "cannot be reached" not in err, err
    assert "another writer" in err and "deadlock detected" in err, err
