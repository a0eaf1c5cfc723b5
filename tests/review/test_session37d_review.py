"""Hostile review (session 37d): a year of nights — what accumulates, and the operator
tools that bound it.

Attacked, on SQLite and PostgreSQL, by running the real code paths N times (small N) and
counting what is left: the nightly's E-utilities windows through the loopback emulator
(``ingest_eutils_window`` then ``check_window``, the two calls of the nightly DAG and of
``litpulse nightly``), the model registry's prune (``retrain.registry.prune_rejected``,
``litpulse models prune``) interleaved with a promotion, and ``litpulse status`` /
``litpulse quarantine`` over 1,500 generated runs and 100,000 quarantine rows written
through the schema (the past nights faked quickly).

Attacked and held (no test kept): index versions beyond the three kept are pruned by each
publish, rows and folders, with the ``.tmp-*`` folders of crashed publishers older than an
hour and whole folders no row names (``ranking.publish._prune``), and the vectors of
retired or rejected models no kept index holds (``drop_unused_vectors``); an update file's
progress mark is deleted in the transaction that records the file; a download is deleted
once its file is applied; adapter folders no version names are removed by each retrain
(``prune_adapters``, a day's grace for a round still writing); ``litpulse quarantine``
(newest first by primary key; ``--run``, ``--file``, ``--before``) and ``litpulse
missing`` answer in milliseconds over 100,000 quarantine rows on both stores.

Noticed, not filed: ``litpulse status`` (and ``GET /status``) computes the watermark twice
(``planning.last_watermark``, again inside ``held_windows``), each time reading the whole
``details`` JSON of every succeeded E-utilities and update-file run ever recorded: 1,500
runs of ~1 KB took 0.37 s of a 0.75 s status on PostgreSQL here, growing with the nights;
``store_counts`` counts ``articles`` and ``references`` in full on every status (a
sequential scan of both at PubMed's size). Marks a store wrote before X1/X4 stay until
their window is run again.

Defects (each a strict xfail asserting the right behaviour until fixed):

X1 **Every E-utilities window leaves its progress marks in ``checkpoints`` for ever.**
   ``ingest.eutils`` writes, per window, the ``#search`` mark (every PMID ESearch listed),
   one ``#batchN`` mark per EFetch batch (``LITPULSE_EFETCH_BATCH`` PMIDs each), and the
   ``#genN#owed-noted`` / ``#owed-list`` / ``#owed`` marks of the owed PMIDs' ask; only an
   update file's mark is ever deleted (``ingest.updatefiles._store_file``). Once a window
   succeeded (its ``#search`` mark ``done``) no run reads its batch or owed marks again: a
   rerun of the window starts a new generation, whose batches are fetched anew. Four
   nights of 20 new records (batches of 5; each window lists 40 with its overlap day)
   leave 44 rows, 11 more a night; a year of real nights
   (tens of thousands of listed PMIDs a day, batches of 200) leaves ~10^5 rows that
   nothing removes (no command prunes ``checkpoints``).
   **Fixed**: the run that finishes a window deletes the window's ``#batch…`` and
   ``#gen…`` marks (``Checkpoints.delete_checkpoints``, by key prefix) in the transaction
   that marks its search ``done``; the search mark stays (one row a window: the generation
   a rerun numbers on from, which ``missing_pmids.last_asked_in`` is keyed by, and the
   listed PMIDs the window's check reads). Marks a store made before the fix keeps until
   its window is run again.
   (test_x1_a_succeeded_window_leaves_only_its_search_mark)

X2 **``models prune`` removes the adapter of the version a person just promoted.**
   ``retrain.registry.prune_rejected`` reads the rejected versions older than
   ``LITPULSE_KEEP_REJECTED_DAYS`` in one statement, then removes each one's adapter
   folder, checking nothing again and holding no lock. ``litpulse models promote V`` (a
   person overriding the gate: "candidate, retired or rejected") committed between the
   two: V is active, its adapter folder is deleted and a ``pruned`` event appended, so
   every semantic search and the next re-index fail ("adapter ... missing") and
   ``status`` reports an index problem; each retrain runs this prune too (under the
   ``retrain`` lease, which ``models promote`` does not take).
   **Fixed**: ``prune_rejected`` prunes each version in a transaction of its own under the
   switch's lock (``_lock_models``), first writing the row only if it is still rejected
   and never promoted (a promotion committed since the read keeps its adapter), then
   removing the folders and appending the ``pruned`` event; ``promote`` reads the target
   again under its lock and refuses one pruned since its first check (the other
   interleaving: the prune commits between ``promote``'s check of the adapter and its
   switch, which made active a version whose adapter was gone;
   test_x2_b_a_promotion_never_activates_a_version_pruned_after_its_check).
   (test_x2_a_prune_never_removes_the_adapter_of_a_version_promoted_meanwhile)

X3 **A daily update-file run killed after it recorded its file leaves the download in the
   data directory for ever.** ``ingest.updatefiles.apply_updates`` deletes a file's
   download (``<home>/downloads/<store id>/NAME``, tens of MB for a real update file)
   after ``_store_file`` committed its ``source_files`` row; a kill between the two
   (SIGKILL, the OOM killer, an Airflow task timeout) leaves the download, and no later
   ``litpulse ingest --updatefiles`` or ``litpulse nightly --source updatefiles`` looks at
   it again: the file is applied, never pending, never downloaded again. Only
   ``litpulse bootstrap`` (``ingest.bootstrap.load_files``) discards staged files of
   applied names at its start, and a deployment past its bootstrap does not run it. Three
   nights each killed at that point leave three downloads, and a clean fourth run leaves
   them all.
   **Fixed**: ``ingest.updatefiles.discard_applied_downloads`` (the bootstrap's start-up
   clean-up moved there, one home for both, with ``discard_download``) removes the
   downloads of applied files; ``apply_updates`` calls it at its start, inside its run
   (under the writer lease), as ``load_files`` does.
   (test_x3_downloads_of_applied_update_files_do_not_accumulate)
X4 **Every E-utilities window's search mark keeps every PMID it listed for ever.** The
   ``#search`` mark (one a window, X1) holds ``pmids``: the whole ESearch answer of the
   window, which its run fetches and its data-quality check reads
   (``ingest.eutils.listed_pmids``). Nothing reads it after the check judged the window
   (a rerun searches anew, a new generation), yet it is never dropped: a day of PubMed
   revisions lists tens of thousands of PMIDs, NLM's yearly MeSH update millions, so a
   year of nights keeps hundreds of MB of PMID lists in ``checkpoints``. Four nights of
   40 listed PMIDs keep 160.
   **Fixed**: ``ingest.eutils.forget_listed`` rewrites a done search mark without its
   ``pmids`` (``listed``: their number), only if no run wrote it since it was read
   (``Checkpoints.rewrite_checkpoint``); the check calls it after judging the window
   (``ingest.quality.check_ingest``), and ``ingest_window`` when no check follows.
   (test_x4_a_judged_window_keeps_no_list_of_its_pmids)

"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from litpulse.core import db
from litpulse.core.schema import checkpoints
from litpulse.core.settings import Settings
from litpulse.core.states import ModelStatus
from ranking.embed import adapter_problem
from retrain import registry
from tests.emulator import Emulator
from tests.review.test_session32q_review import Steps, _age, _version

UTC = dt.UTC


@pytest.fixture
def emu37() -> Iterator[Emulator]:
    server = Emulator()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _day(d: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(d.year, d.month, d.day, tzinfo=UTC)
    return start, start + dt.timedelta(days=1)


def _eutils_marks(settings: Settings) -> list[tuple[str, str]]:
    c = checkpoints.c
    with db.connect(settings).connect() as conn:
        return [(k, s) for k, s in conn.execute(
            select(c.key, c.status).where(c.scope == "eutils").order_by(c.key))]  # fmt: skip


# ------------------------------------------------------------------------------- X1


def test_x1_a_succeeded_window_leaves_only_its_search_mark(
    emu37: Emulator, settings: Settings
) -> None:
    from litpulse.pipeline.nightly import check_window, ingest_eutils_window

    s = emu37.configure(settings.replace(ncbi_api_key="k", ncbi_email="t@example.org",
                                         efetch_batch=5))  # fmt: skip
    first, pmid, nights = dt.date(2024, 3, 4), 1000, 4  # Monday ..
    for n in range(nights):
        day = first + dt.timedelta(days=n)
        for _ in range(20):
            emu37.add_article(pmid, edat=day)
            pmid += 1
        window = _day(day)
        counts = ingest_eutils_window(s, *window, checked=True)
        check_window(s, counts.to_dict(), window)
    marks = _eutils_marks(s)
    # one mark per window (its search: the generation a rerun goes on from, the listed
    # PMIDs its check reads), not one per batch and per owed ask
    assert len(marks) == nights, marks
    assert all(key.endswith("#search") and status == "done" for key, status in marks), marks

    # a rerun of a finished window still works and leaves one mark
    again = ingest_eutils_window(s, *_day(first), checked=False)
    assert again.unchanged == 20 + 0 and again.inserted == 0
    assert len(_eutils_marks(s)) == nights


# ------------------------------------------------------------------------------- X2


def test_x2_a_prune_never_removes_the_adapter_of_a_version_promoted_meanwhile(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _version(settings, "old-rejected", status=ModelStatus.REJECTED)
    _age(settings, old, 40)  # older than LITPULSE_KEEP_REJECTED_DAYS: the prune's
    adapter = Path(registry.get_model(settings, old).adapter_path or "")
    steps = Steps()
    promoted: list[dict[str, Any]] = []
    real = registry.ModelVersion.from_row

    def promote_first(row: Any) -> registry.ModelVersion:
        # the prune read its rejected versions; a person's `models promote` commits now
        if not promoted:
            promoted.append({})
            promoted[0] = registry.promote(settings, old, by="alice", reason="override",
                                           reindex=steps)  # fmt: skip
        return real(row)

    monkeypatch.setattr(registry.ModelVersion, "from_row", staticmethod(promote_first))
    pruned = registry.prune_rejected(settings)
    monkeypatch.undo()

    assert promoted and promoted[0]["changed"], promoted
    active = registry.active_version(settings)
    assert active is not None and active.id == old
    assert old not in pruned, pruned
    assert adapter.is_dir() and os.listdir(adapter), "the active version's adapter was removed"
    assert adapter_problem(str(adapter), active.adapter_sha256) is None


def test_x2_b_a_promotion_never_activates_a_version_pruned_after_its_check(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litpulse.core.errors import ConfigError

    old = _version(settings, "old-rejected-b", status=ModelStatus.REJECTED)
    _age(settings, old, 40)
    real = registry.adapter_problem
    pruned: list[list[str]] = []

    def checked_then_pruned(*args: Any, **kwargs: Any) -> str | None:
        problem = real(*args, **kwargs)  # promote's check: the adapter is there
        if not pruned:  # ... and `models prune` commits before promote switches
            pruned.append(registry.prune_rejected(settings))
        return problem

    monkeypatch.setattr(registry, "adapter_problem", checked_then_pruned)
    with pytest.raises(ConfigError, match="pruned"):
        registry.promote(settings, old, by="alice", reason="override", reindex=Steps())
    monkeypatch.undo()
    assert pruned == [[old]]
    assert registry.active_version(settings) is None  # the base model still serves
    assert registry.get_model(settings, old).status is ModelStatus.REJECTED


# ------------------------------------------------------------------------------- X3


class Killed(BaseException):
    """A kill at that point of the run (nothing after it runs)."""


def test_x3_downloads_of_applied_update_files_do_not_accumulate(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest import updatefiles
    from litpulse.app.demo.generate import generate_corpus
    from tests.emulator import running_emulator

    corpus = generate_corpus(tmp_path / "corpus", n_records=60, n_files=4, seed=5,
                             first_file_number=1275)  # fmt: skip
    real = updatefiles._apply_file

    def killed_after_recording(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)  # the file's row is committed
        raise Killed  # ... and the process dies before it deletes the download

    for emu in running_emulator():
        s = emu.configure(settings.replace(ingest_workers=0))
        downloads = updatefiles.downloads_folder(s)
        for night, path in enumerate(corpus.files[:3], 1):
            emu.add_file("updatefiles", path.name, path.read_bytes())
            monkeypatch.setattr(updatefiles, "_apply_file", killed_after_recording)
            with pytest.raises(Killed):
                updatefiles.apply_updates(s)
            monkeypatch.setattr(updatefiles, "_apply_file", real)
            assert len(updatefiles.applied_files(db.connect(s))[0]) == night
        emu.add_file("updatefiles", corpus.files[3].name, corpus.files[3].read_bytes())
        updatefiles.apply_updates(s)  # the fourth night, clean
        assert len(updatefiles.applied_files(db.connect(s))[0]) == 4
        left = sorted(p.name for p in downloads.iterdir())
        assert left == [], f"downloads of applied files left in {downloads}: {left}"


# ------------------------------------------------------------------------------- X4


def _listed_kept(settings: Settings) -> dict[str, int]:
    c = checkpoints.c
    with db.connect(settings).connect() as conn:
        rows = conn.execute(select(c.key, c.value).where(c.scope == "eutils")).all()
    return {key: len(value["pmids"]) for key, value in rows if "pmids" in (value or {})}


def test_x4_a_judged_window_keeps_no_list_of_its_pmids(
    emu37: Emulator, settings: Settings
) -> None:
    from litpulse.pipeline.nightly import check_window, ingest_eutils_window

    s = emu37.configure(settings.replace(ncbi_api_key="k", ncbi_email="t@example.org",
                                         efetch_batch=5))  # fmt: skip
    first, pmid = dt.date(2024, 3, 4), 1000  # Monday ..
    for n in range(4):
        day = first + dt.timedelta(days=n)
        for _ in range(20):
            emu37.add_article(pmid, edat=day)
            pmid += 1
        window = _day(day)
        counts = ingest_eutils_window(s, *window, checked=True)
        check_window(s, counts.to_dict(), window)  # the last reader of the list
    assert _listed_kept(s) == {}
    # a window by hand, no check to come: judged as it succeeds, its list dropped too
    ingest_eutils_window(s, *_day(first), checked=False)
    assert _listed_kept(s) == {}
    # and a rerun of a judged window still searches and stores it whole
    again = ingest_eutils_window(s, *_day(first + dt.timedelta(days=1)), checked=False)
    assert again.unchanged == 40 and again.inserted == 0
