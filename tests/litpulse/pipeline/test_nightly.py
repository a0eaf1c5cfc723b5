"""``litpulse nightly`` / run_nightly: the whole chain in one process, its lease, resuming."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from litpulse.app.cli import main as cli_main
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import (
    articles,
    checkpoints,
    embeddings,
    index_versions,
    ingest_runs,
    locks,
    model_versions,
)
from litpulse.core.settings import Settings
from litpulse.core.states import RunStatus
from litpulse.pipeline.nightly import LEASE_NAME, NightlyBusyError, run_nightly
from litpulse.pipeline.planning import (
    EmbeddingShard,
    embed_shard,
    last_watermark,
    plan_embedding_shards,
    promoted_model,
    reindex_pending,
    retrain_due,
)
from tests.emulator import Emulator, running_emulator

DAY = dt.date(2024, 1, 2)  # a Tuesday
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    yield from running_emulator()


def _serve(emu: Emulator, day: dt.date, pmids: range) -> None:
    for pmid in pmids:
        emu.add_article(
            pmid,
            edat=day,
            title=f"Gut microbiome and statin response study {pmid}",
            abstract=f"We sequenced stool samples of {pmid % 97 + 20} patients on statins.",
        )
        emu.set_icite(pmid, citation_count=pmid % 7)


def _at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


#: The half-open window of the day DAY.
WINDOW: dict[str, Any] = {"since": _at(DAY), "until": _at(DAY + dt.timedelta(days=1))}


def _count(settings: Settings, table: Any, *where: Any) -> int:
    with db.connect(settings).connect() as conn:
        n = conn.execute(select(func.count()).select_from(table).where(*where)).scalar()
    return int(n or 0)


def _env(emu: Emulator, settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITPULSE_")}
    env.update(emu.env(settings))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    return env


#: ``litpulse nightly`` through the real ``main()``, with only the nightly command
#: registered (the other command modules are not under test here).
_MAIN = (
    "import sys, litpulse.app.cli as c; c.COMMANDS = ('nightly',); sys.exit(c.main(sys.argv[1:]))"
)


def _nightly_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", _MAIN, "nightly", "--no-retrain", "--json", *args]


# --------------------------------------------------------------------------- the chain


@pytest.mark.slow
def test_nightly_chain_then_watermark(sqlite_settings: Settings, emulator: Emulator) -> None:
    _serve(emulator, DAY, range(1000, 1012))
    s = emulator.configure(sqlite_settings)

    first = run_nightly(s, **WINDOW)
    assert first.ingest["inserted"] == 12
    assert first.quality["ok"] is True
    assert first.citations is not None and first.citations["updated"] == 12
    assert first.embedded == 12
    assert first.index is not None and first.index["size"] == 12 and first.index["published"]
    assert first.retrain is None
    assert first.retrain_decision is not None and first.retrain_decision["due"] is False
    assert "fewer than LITPULSE_RETRAIN_MIN_NEW_ARTICLES=500" in first.retrain_decision["reason"]
    assert [name for name, _ in first.steps] == [
        "ingest", "citations", "quality", "index", "digest"
    ]
    assert first.digest is not None and first.digest["skipped"] == "no saved searches"
    json.dumps(first.to_dict())  # JSON-ready
    assert _count(s, locks) == 0  # lease released
    mark = last_watermark(s)
    assert mark == _at(DAY + dt.timedelta(days=1))

    # next night: starts at the watermark, picks up only what is new
    _serve(emulator, DAY + dt.timedelta(days=1), range(2000, 2003))
    second = run_nightly(s, until=_at(DAY + dt.timedelta(days=2)))
    assert second.window_start == mark
    assert second.ingest["inserted"] == 3
    assert second.ingest["unchanged"] == 12  # the overlap day, idempotent
    assert second.embedded == 3
    assert second.index is not None and second.index["size"] == 15
    assert _count(s, articles, articles.c.is_deleted.is_(False)) == 15
    assert _count(s, embeddings) == 15


def test_pmids_given_up_raise_an_alert(
    sqlite_settings: Settings, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A PMID ESearch listed that EFetch never returned, given up by this window's run, is
    a known loss: the on-call engineer is alerted (log and webhook), once."""
    import logging

    from ingest.store import Store
    from litpulse.pipeline.nightly import ingest_eutils_window

    _serve(emulator, DAY, range(1000, 1005))
    emulator.faults.add("drop", path="efetch", times=2)  # the batch and its second ask
    s = emulator.configure(sqlite_settings, missing_retries=0)  # given up at once
    with caplog.at_level(logging.ERROR, logger="litpulse.pipeline.alerts"):
        counts = ingest_eutils_window(s, **WINDOW)
    assert counts.missing == 1
    (lost,) = Store(db.connect(s)).runs(1)[0]["details"]["missing_pmids"]
    alerts = [r.getMessage() for r in caplog.records if r.name == "litpulse.pipeline.alerts"]
    assert len(alerts) == 1, alerts
    assert "gave up 1 PMID" in alerts[0] and str(lost) in alerts[0]
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="litpulse.pipeline.alerts"):
        ingest_eutils_window(s, **WINDOW)  # the same window again: nothing given up anew
    assert not [r for r in caplog.records if r.name == "litpulse.pipeline.alerts"]


def test_retrain_runs_when_due(
    sqlite_settings: Settings, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retrain.run
    from retrain.run import RetrainReport

    calls: list[dict[str, Any]] = []

    def fake_retrain(settings: Settings, **kwargs: Any) -> RetrainReport:
        calls.append(kwargs)
        return RetrainReport("rejected", version_id="m-1", reasons=("fresh recall fell",))

    monkeypatch.setattr(retrain.run, "retrain", fake_retrain)
    monkeypatch.setattr("litpulse.pipeline.nightly._index", lambda settings, progress: (0, {}))
    _serve(emulator, DAY, range(1000, 1005))
    s = emulator.configure(sqlite_settings, retrain_min_new_articles=5)
    assert retrain_due(s).due is False  # nothing stored yet
    report = run_nightly(s, **WINDOW, citations=False)
    assert report.retrain_decision is not None and report.retrain_decision["due"] is True
    from litpulse.pipeline.planning import _held_reindex

    # the promotion's re-index, with the run's progress, under a lease taken before the switch
    reindex = calls[0].pop("reindex")
    assert (reindex.hold.func, reindex.hold.keywords) == (_held_reindex, {"progress": False})
    # no index published (``_index`` is replaced): no BM25 hard negatives yet
    assert calls == [{"progress": False, "min_new_articles": 5, "negatives": None}]
    assert report.retrain is not None and report.retrain["status"] == "rejected"
    assert report.promoted is None
    assert promoted_model({"status": "promoted", "version_id": "m-2"}) == "m-2"


def test_an_index_busy_at_promotion_leaves_a_candidate_and_the_digest_runs(
    sqlite_settings: Settings, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate passed while another process re-indexed: the round raises what
    ``retrain.run._decide`` raises then (nothing switched: the session-31b tests), and the
    night goes on to its digest, reporting the candidate and the command that promotes it
    (the digest, and the saved searches' deliveries, were skipped for it before)."""
    import retrain.run
    from ranking.publish import IndexBusyError

    busy = ("m-3 passed its gate but was not promoted, nothing was switched: the index is "
            "being published by another process; it stays a candidate (`litpulse models "
            "promote m-3` promotes it once that is done)")

    def busy_retrain(settings: Settings, **kwargs: Any) -> Any:
        raise IndexBusyError(busy)

    monkeypatch.setattr(retrain.run, "retrain", busy_retrain)
    monkeypatch.setattr("litpulse.pipeline.nightly._index", lambda settings, progress: (0, {}))
    _serve(emulator, DAY, range(1000, 1005))
    s = emulator.configure(sqlite_settings, retrain_min_new_articles=5)
    report = run_nightly(s, **WINDOW, citations=False)
    assert report.retrain == {"status": "not_promoted", "reasons": [busy]}
    assert report.promoted is None
    assert [name for name, _ in report.steps][-2:] == ["retrain", "digest"]
    assert report.digest is not None


@pytest.mark.slow
def test_files_source_then_updatefiles(
    sqlite_settings: Settings, emulator: Emulator, tmp_path: Path
) -> None:
    from litpulse.app.demo.generate import generate_corpus
    from tests.emulator import article_xml, gz, pubmed_set

    manifest = generate_corpus(tmp_path / "corpus", n_records=40, n_files=2, malformed_fraction=0.0)
    s = emulator.configure(sqlite_settings)
    report = run_nightly(s, files=[str(p) for p in manifest.files], source="files", retrain=False)
    assert report.window_start is None
    assert report.quality["checks"] == ["quarantine_rate"]
    assert report.index is not None and report.index["size"] == len(manifest.live_pmids)
    assert _count(s, articles, articles.c.is_deleted.is_(False)) == len(manifest.live_pmids)

    # an update file on the (emulated) NLM server: applied once, then nothing new
    pmid = max(manifest.live_pmids) + 1000
    data = gz(pubmed_set([article_xml(pmid, edat=DAY)]))
    emulator.add_file("updatefiles", "pubmed26n0901.xml.gz", data)
    update = run_nightly(s, source="updatefiles", retrain=False, quality=False)
    assert update.ingest["inserted"] == 1
    assert update.index is not None and update.index["size"] == len(manifest.live_pmids) + 1
    again = run_nightly(s, source="updatefiles", retrain=False, quality=False)
    assert again.ingest["inserted"] == 0 and again.embedded == 0


def test_files_source_needs_files(sqlite_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --files"):
        run_nightly(sqlite_settings, source="files")
    with pytest.raises(ConfigError, match="not found"):
        run_nightly(sqlite_settings, source="files", files=[tmp_path / "missing.xml"])
    with pytest.raises(ConfigError, match="source must be one of"):
        run_nightly(sqlite_settings, source="ftp")
    with pytest.raises(ConfigError, match="is not after its start"):
        run_nightly(sqlite_settings, since=_at(DAY), until=_at(DAY - dt.timedelta(days=2)))


# ------------------------------------------------------------------------------ lease


def test_second_run_exits_while_the_lease_is_held(
    sqlite_settings: Settings, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = emulator.configure(sqlite_settings)
    engine = db.connect(s)
    lease = db.acquire_lease(engine, LEASE_NAME, ttl_s=60)
    assert lease is not None
    with lease:
        with pytest.raises(NightlyBusyError, match=lease.holder):
            run_nightly(s, **WINDOW)
        for key, value in emulator.env(s).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr("litpulse.app.cli.COMMANDS", ("nightly",))
        assert cli_main(["nightly", "--since", "2024-01-02", "--until", "2024-01-03"]) == 75
    assert _count(s, ingest_runs) == 0  # nothing ran


def test_dead_local_holder_is_taken_over(sqlite_settings: Settings, emulator: Emulator) -> None:
    import socket

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = f"{socket.gethostname()}:{int(proc.stdout)}:deadbeef"
    s = emulator.configure(sqlite_settings)
    with db.connect(s).begin() as conn:
        conn.execute(
            insert(locks).values(
                name=LEASE_NAME, holder=dead, expires_at=db.utcnow() + dt.timedelta(hours=1)
            )
        )
    _serve(emulator, DAY, range(1000, 1003))
    report = run_nightly(
        s, **WINDOW, retrain=False, citations=False, quality=False
    )
    assert report.ingest["inserted"] == 3
    assert _count(s, locks) == 0


# --------------------------------------------------------------------------- resuming


@pytest.mark.slow
def test_killed_run_resumes(sqlite_settings: Settings, emulator: Emulator) -> None:
    _serve(emulator, DAY, range(1000, 1024))
    s = emulator.configure(sqlite_settings, efetch_batch=4)  # 6 EFetch batches
    emulator.faults.add("slow", path="efetch", times=1000, delay=0.6)
    proc = subprocess.Popen(
        _nightly_cmd("--since", "2024-01-02", "--until", "2024-01-03", "--no-citations"),
        env=_env(emulator, s),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        done = _wait_for(
            lambda: _count(
                s, checkpoints, checkpoints.c.key.like("%#batch%"), checkpoints.c.status == "done"
            ) >= 2,
            proc,
        )
        assert done, "the nightly run never got through two batches"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert _count(s, articles) < 24  # it was killed mid-ingest
    emulator.faults.clear()

    report = run_nightly(s, **WINDOW, retrain=False, citations=False)
    assert report.ingest["inserted"] + report.ingest["unchanged"] <= 24
    assert _count(s, articles) == 24
    assert _count(s, embeddings) == 24
    with db.connect(s).connect() as conn:
        runs = conn.execute(
            select(ingest_runs.c.status, ingest_runs.c.details).order_by(ingest_runs.c.id)
        ).all()
    assert runs[-1].status == "succeeded"
    assert runs[-1].details["batches_skipped"] >= 2  # resumed from its checkpoints


def _wait_for(cond: Any, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            if cond():
                return True
        except Exception:  # noqa: BLE001 - the tables may not exist yet
            pass
        time.sleep(0.1)
    return False


# --------------------------------------------------------------------- concurrency (PG)


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_runs_on_postgres(
    postgres_url: str, tmp_path: Path, emulator: Emulator
) -> None:
    from tests.conftest import _truncate

    s = emulator.configure(
        Settings.from_env({}, home=tmp_path / "home", database_url=postgres_url),
        efetch_batch=4,
    )
    _truncate(db.connect(s))
    _serve(emulator, DAY, range(1000, 1016))
    emulator.faults.add("slow", path="efetch", times=4, delay=0.6)
    args = ("--since", "2024-01-02", "--until", "2024-01-03")
    env = _env(emulator, s)
    first = subprocess.Popen(_nightly_cmd(*args), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        assert _wait_for(lambda: _count(s, locks, locks.c.name == LEASE_NAME) == 1, first)
        second = subprocess.run(_nightly_cmd(*args), env=env, capture_output=True, text=True,
                                timeout=120)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 75, second.stderr
    assert "another nightly run is in progress" in second.stderr
    assert first.returncode == 0, err.decode()[-3000:]
    report = json.loads(out)
    assert report["ingest"]["inserted"] == 16

    # a third run that waits for the lease: repeats the window, changes nothing
    third = subprocess.run(_nightly_cmd(*args, "--wait", "300"), env=env, capture_output=True,
                           text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    again = json.loads(third.stdout)
    # its finished batches are skipped (checkpoints): nothing inserted or updated
    assert again["ingest"]["inserted"] == 0 and again["ingest"]["updated"] == 0
    assert again["index"]["published"] is False

    assert _count(s, articles) == 16
    assert _count(s, embeddings) == 16
    assert _count(s, index_versions, index_versions.c.status == "published") == 1
    with db.connect(s).connect() as conn:
        statuses = conn.execute(
            select(ingest_runs.c.status).where(ingest_runs.c.source == "eutils")
        ).scalars().all()
    assert sorted(statuses) == ["succeeded", "succeeded"]


# ----------------------------------------------------------------- sharded embedding


@pytest.mark.slow
def test_promoted_model_is_reindexed_in_shards(
    sqlite_settings: Settings, emulator: Emulator
) -> None:
    from ranking.refresh import refresh_index

    _serve(emulator, DAY, range(1000, 1010))
    s = emulator.configure(sqlite_settings)
    run_nightly(s, **WINDOW, retrain=False, citations=False)
    assert reindex_pending(s) is None
    # a promotion whose re-index was deferred to litpulse_reindex
    with db.connect(s).begin() as conn:
        conn.execute(
            insert(model_versions).values(
                id="m-test", base_model="", status="active", created_at=db.utcnow(),
                promoted_at=db.utcnow(), pair_counts={}, options={}, metrics={},
            )
        )
    reason = reindex_pending(s)
    assert reason is not None and "litpulse_reindex" in reason

    shards = plan_embedding_shards(s, 3)
    assert [x.shard for x in shards] == [0, 1, 2]
    assert {x.model_version for x in shards} == {"m-test"}
    assert sum(x.pending for x in shards) == 10
    done = [embed_shard(s, EmbeddingShard.from_dict(x.to_dict())) for x in shards]
    assert done == [x.pending for x in shards]
    assert _count(s, embeddings, embeddings.c.model_version == "m-test") == 10
    assert embed_shard(s, shards[0]) == 0  # resumable: nothing left
    report = refresh_index(s, rebuild=True)
    assert report.model_version == "m-test" and report.size == 10 and report.embedded == 0
    assert reindex_pending(s) is None
    with pytest.raises(ConfigError):
        EmbeddingShard(3, 3, "m-test")


def test_cli_prints_a_summary(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from litpulse.pipeline.nightly import NightlyReport

    seen: dict[str, Any] = {}

    def fake(settings: Settings, **kwargs: Any) -> NightlyReport:
        seen.update(kwargs)
        return NightlyReport(
            source=kwargs["source"],
            window_start=None,
            window_end=None,
            ingest={"inserted": 7, "updated": 0},
            quality={"ok": True},
            citations=None,
            embedded=7,
            index={"id": "ix-1", "size": 7, "published": True},
            retrain=None,
            retrain_decision=None,
            steps=(("ingest", 1.25), ("index", 2.5)),
        )

    monkeypatch.setattr("litpulse.pipeline.nightly.run_nightly", fake)
    monkeypatch.setattr("litpulse.app.cli.COMMANDS", ("nightly",))
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    assert cli_main(["nightly", "--files", "a.xml", "b.xml", "--no-retrain"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["step", "time", "what", "happened"]
    assert any(ln.split()[:4] == ["ingest", "1.2", "s", "records:"] and "7 new" in ln
               for ln in lines)
    assert any(ln.startswith("index") and "7 articles embedded" in ln for ln in lines)
    assert any(ln.split()[:3] == ["retrain", "-", "disabled"] for ln in lines)
    assert any(ln.split()[:3] == ["total", "3.8", "s"] for ln in lines)
    assert seen["source"] == "files" and seen["files"] == ["a.xml", "b.xml"]
    assert seen["retrain"] is False and seen["citations"] is True


def test_index_step_embeds_once(sqlite_settings: Settings) -> None:
    """The nightly index step has one embedding step: refresh_index's, under its lease."""
    from litpulse.pipeline import nightly
    from tests.ranking.test_index import add_articles

    add_articles(db.connect(sqlite_settings), [21, 22, 23], models=())
    embedded, index = nightly._index(sqlite_settings, False)
    assert embedded == 3 and index["embedded"] == 3  # counted where it happened
    assert index["size"] == 3 and index["published"]
    assert _count(sqlite_settings, embeddings) == 3


def _retrain_report(status: str, fresh: float, older: float) -> dict[str, Any]:
    base = {"fresh": {"recall@10": 0.6}, "older": {"recall@10": 0.8}}
    cand = {"fresh": {"recall@10": fresh}, "older": {"recall@10": older}}
    gate = [f"fresh recall@10 {fresh:.3f} vs active 0.600: {fresh - 0.6:+.3f} < margin 0.005"]
    return {
        "status": status, "version_id": "m-1",
        "metrics": {"candidate": cand, "active": {**base, "model": "base"}, "base": base},
        "training": {"steps": 14, "seconds": 59.2, "budget_seconds": 60.0},
        "gate": {"reasons": gate if status == "rejected" else []},
    }


@pytest.mark.parametrize(
    ("status", "fresh", "expected"),
    [
        ("promoted", 0.7, "promoted m-1: fresh recall@10 0.600 -> 0.700 (+0.100), older "
                          "0.800 -> 0.810 (+0.010) against the base model; trained 14 steps "
                          "in 59 s (budget 60 s); the index was rebuilt for it"),
        ("rejected", 0.6, "rejected m-1: fresh recall@10 0.600 -> 0.600 (+0.000), older "
                          "0.800 -> 0.810 (+0.010) against the base model; trained 14 steps "
                          "in 59 s (budget 60 s); fresh recall@10 0.600 vs active 0.600: "
                          "+0.000 < margin 0.005"),
    ],
)
def test_summary_says_what_the_retrain_did(status: str, fresh: float, expected: str) -> None:
    from litpulse.pipeline.nightly import NightlyReport

    report = NightlyReport(
        source="files", window_start=None, window_end=None,
        ingest={"inserted": 1980, "updated": 100, "deleted": 20}, quality={"ok": True},
        citations=None, embedded=1980,
        index={"model_version": "m-1", "kind": "flat", "size": 1980, "published": True},
        index_step={"model_version": "base", "kind": "flat", "size": 1980, "published": True},
        retrain=_retrain_report(status, fresh, 0.81), retrain_decision={"due": True},
        steps=(("ingest", 3.4), ("quality", 0.02), ("index", 41.0), ("retrain", 95.5)),
    )
    rows = {step: (took, what) for step, took, what in report.summary_rows()}
    assert rows["ingest"] == ("3.4 s", "records: 1,980 new, 100 updated, 20 deleted")
    assert rows["citations"] == ("-", "skipped")
    assert rows["index"] == (
        "41.0 s", "1,980 articles embedded with model base; flat index of 1,980 published"
    )
    assert rows["retrain"] == ("1 min 36 s", expected)
    assert rows["total"] == ("2 min 20 s", "")


def test_summary_says_when_the_budget_was_too_small() -> None:
    from litpulse.pipeline.nightly import _retrain_text

    report = _retrain_report("rejected", 0.6, 0.8)
    report["training"] = {"steps": 1, "seconds": 58.0, "budget_seconds": 60.0}
    assert _retrain_text(report).endswith(
        "only 1 steps fitted in the budget on this machine: raise LITPULSE_RETRAIN_BUDGET_S; "
        "fresh recall@10 0.600 vs active 0.600: +0.000 < margin 0.005"
    )


def test_a_query_restricted_window_does_not_move_the_nightly_watermark(
    settings: Settings, emulator: Emulator
) -> None:
    """Review finding: the nightly window started at the end of *any* succeeded E-utilities
    run, a one-topic pull by hand included, and skipped the other records of its days."""
    from ingest.eutils import ingest_window
    from litpulse.pipeline.nightly import _window

    s = emulator.configure(settings)
    emulator.add_article(1, edat=DAY, title="Kinase signalling in yeast")
    ingest_window(s, _at(DAY), _at(DAY + dt.timedelta(days=1)))  # last night's window
    later = DAY + dt.timedelta(days=3)
    emulator.add_article(2, edat=later, title="Kinase inhibitors in mice")
    emulator.add_article(3, edat=later - dt.timedelta(days=1), title="Statins and the gut")
    # someone pulls one topic up to now by hand
    ingest_window(s, _at(DAY), _at(later + dt.timedelta(days=1)), query="kinase")
    # the next nightly run (no --since): its window must still reach record 3
    since, until = _window(s, db.connect(s), None, _at(later + dt.timedelta(days=2)))
    ingest_window(s, since, until)
    with db.connect(s).connect() as conn:
        stored = set(conn.execute(select(articles.c.pmid)).scalars())
    assert stored == {1, 2, 3}


def test_a_window_end_in_the_future_moves_the_watermark_only_to_the_runs_start(
    sqlite_settings: Settings,
) -> None:
    """A hand-run window whose ``--until`` lies after the run (tomorrow) searched days
    whose records were not all in PubMed yet: the mark is the run's start, not its end."""
    from litpulse.pipeline.planning import last_watermark

    s = sqlite_settings
    engine = db.connect(s)
    started = _at(DAY)
    with engine.begin() as conn:
        conn.execute(ingest_runs.insert(), [
            {"source": "eutils", "status": RunStatus.SUCCEEDED, "started_at": started,
             "window_start": started - dt.timedelta(days=1),
             "window_end": started + dt.timedelta(days=2), "details": {"query": None}},
            {"source": "eutils", "status": RunStatus.SUCCEEDED, "started_at": started,
             "window_start": started - dt.timedelta(days=1),
             "window_end": started + dt.timedelta(days=5), "details": {"query": "kinase"}},
        ])  # fmt: skip
    assert last_watermark(s, engine) == started
    with engine.begin() as conn:  # the nightly run of the next day, ended before it started
        conn.execute(ingest_runs.insert(), {
            "source": "eutils", "status": RunStatus.SUCCEEDED,
            "started_at": started + dt.timedelta(days=1, hours=2),
            "window_start": started, "window_end": started + dt.timedelta(days=1),
            "details": {"query": None}})  # fmt: skip
    assert last_watermark(s, engine) == started + dt.timedelta(days=1)
