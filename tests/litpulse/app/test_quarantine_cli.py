"""`litpulse quarantine` and `litpulse article` as an operator uses them on bad records:
finding an entry (by PMID, run, file), paging a long list, taking its raw bytes out, and
seeing from an article that a newer revision of it sits in quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.files import ingest_files
from ingest.store import Store
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.errors import NotFoundError
from litpulse.core.settings import Settings
from tests.ingest.hostile import article, document


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture
def bad_store(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """File 1: 5 good (v1), 11..16 bad. File 2: 5's revision v2 bad, 7 good."""
    first = [article(5, title="Good title.")] + [
        article(p, title=f"<i>unclosed {p}") for p in range(11, 17)
    ]
    ingest_files(settings, [_write(tmp_path, "pubmed26n0001.xml", document(first))])
    second = [article(5, version="2", title="Revised <b>unclosed"), article(7)]
    ingest_files(settings, [_write(tmp_path, "pubmed26n0002.xml", document(second))])
    monkeypatch.setenv("LITPULSE_HOME", str(settings.home))
    monkeypatch.setenv("LITPULSE_DATABASE_URL", settings.effective_database_url)
    return settings


def _listed(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert main(["quarantine", "--json", *args]) == 0
    out: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return out


def test_entries_are_found_by_pmid_run_and_file(
    bad_store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert [e["pmid"] for e in _listed(capsys, "--pmid", "5")] == [5]
    runs = Store(db.connect(bad_store)).runs(2)
    second = next(r["id"] for r in runs if "0002" in r["target"])
    assert [e["pmid"] for e in _listed(capsys, "--run", str(second))] == [5]
    got = _listed(capsys, "--file", "pubmed26n0001")
    assert sorted(e["pmid"] for e in got) == list(range(11, 17))


def test_a_long_list_pages_with_before(
    bad_store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    everything = _listed(capsys, "--limit", "100")
    assert len(everything) == 7
    seen: list[object] = []
    before: list[str] = []
    while True:
        page = _listed(capsys, "--limit", "3", *before)
        if not page:
            break
        seen += [e["id"] for e in page]
        before = ["--before", str(page[-1]["id"])]
    assert seen == [e["id"] for e in everything]
    assert main(["quarantine", "--limit", "3"]) == 0
    assert "--before" in capsys.readouterr().err  # the table says how to see more


def test_raw_prints_an_entry_s_bytes_as_stored(
    bad_store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    (entry,) = _listed(capsys, "--pmid", "5")
    assert main(["quarantine", "--raw", str(entry["id"])]) == 0
    assert capsys.readouterr().out == entry["raw_xml"]
    assert main(["quarantine", "--raw", "999999"]) == 1
    assert "no quarantine entry 999999" in capsys.readouterr().err


def test_an_article_says_a_newer_revision_sits_in_quarantine(
    bad_store: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    art = Store(db.connect(bad_store)).get_article(5)
    assert art["version"] == 1
    (entry,) = art["quarantined"]
    assert entry["source_location"].endswith("pubmed26n0002.xml") and "raw_xml" not in entry
    assert main(["article", "5"]) == 0
    out = capsys.readouterr().out
    assert "quarantine" in out and "litpulse quarantine --pmid 5" in out
    assert Store(db.connect(bad_store)).get_article(7)["quarantined"] == []
    with pytest.raises(NotFoundError, match="litpulse quarantine --pmid 11"):
        Store(db.connect(bad_store)).get_article(11)  # never stored, only quarantined


def test_an_article_s_text_cannot_act_on_the_terminal(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """XML 1.0 allows DEL and the C1 controls in text: a title holding CSI (U+009B) must
    not clear the operator's screen when `litpulse article` shows it."""
    evil = "Evil \u009b2J title \u007f."
    xml = article(9, title=evil, abstract="Clear \u009b2J abstract.")
    ingest_files(sqlite_settings, [_write(tmp_path, "pubmed26n0009.xml", document([xml]))])
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    assert Store(db.connect(sqlite_settings)).get_article(9)["title"] == evil  # kept as is
    assert main(["article", "9"]) == 0
    out = capsys.readouterr().out
    assert "\u009b" not in out and "\u007f" not in out
    assert "Evil \\x9b2J title \\x7f." in out and "Clear \\x9b2J abstract." in out
