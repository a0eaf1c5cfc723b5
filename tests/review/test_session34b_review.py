"""Hostile review (session 34b): a crashing machine on the derived data — kill anywhere,
resume, same state; and the full disk.

Reviewed: embedding of new and changed articles (``ranking/embed.py``, the shards of
``litpulse/pipeline/planning.py`` and the bootstrap's embed step), the index refresh and
its publication (``ranking/refresh.py``, ``publish.py``, ``index_files.py``,
``index_store.py``, ``faiss_ops.py``), the lexical index (``ranking/lexical.py``), the
retrain's adapter save, registration and promotion (``retrain/run.py``,
``retrain/registry.py``, ``retrain/lora.py``), the digest's sent marks
(``litpulse/pipeline/digest.py``) and the nightly chain's steps and watermark
(``litpulse/pipeline/nightly.py``). The SIGKILL points of a refresh (lexical written, FAISS
file half written, folder renamed, row committed) are covered by
``tests/ranking/test_index.py``; the retrain killed half-way by
``tests/retrain/test_lifecycle_review.py``; the digest records its matches and moves its
watermark in one transaction and sends each message under a key recorded before it goes
(found sound by reading; a nightly SIGKILLed between its publish and its digest, then
run again, is pinned here: the same index and digest as a run never killed). What was
left is the disk that fills up under a write, and the nightly's digest after a failed
retrain.

A full disk (ENOSPC) or a file-size limit (EFBIG) is simulated in a real ``litpulse``
subprocess: the third-party writer (``faiss.write_index``, tantivy through
``ranking.lexical.build_lexical``, ``safetensors.torch.save_file``) runs under
``RLIMIT_FSIZE`` (the write fails as on a full disk; the limit is lifted again after the
call, so the database, the logs and stderr are written as usual). Vectors are synthetic
(``tests/ranking/test_index.py``'s helpers); the retrain trains the tiny random encoder of
``tests/tiny_encoder.py`` for one step.

Defects (each was a strict xfail until fixed):

B1 **A full disk while the FAISS file is written publishes a broken index, exit 0.**
   ``faiss.write_index(index, path)`` writes through C stdio: an index smaller than the
   stdio buffer is written at ``fclose``, whose failure FAISS only prints ("close error:
   File too large") and does not raise. ``write_files`` fsyncs the truncated file, records
   its SHA-256 and renames the folder in; ``publish`` flips the rows: ``litpulse index
   refresh`` exits 0 and every search then fails to load the published index (a traceback
   from ``faiss.read_index``) until the next refresh rebuilds.
B2 **A full disk in the other writes of a refresh ends in a traceback, not a clear error.**
   The lexical index (tantivy's ``ValueError: An IO error occurred``) and a FAISS file
   larger than the stdio buffer (``RuntimeError`` from FAISS's ``fwrite`` check) are
   neither ``OSError`` nor a litpulse error: the CLI prints a Python traceback (exit 1).
   The previous version stays published (the folder aside is removed).
   **Fixed (B1, B2):** ``ranking.index_files.write_faiss`` writes the FAISS file through a
   Python file (``faiss.PyCallbackIOWriter``), flushed and fsynced there, so every failed
   write raises ``OSError``; ``write_files`` turns a writer's failure (``OSError``,
   tantivy's ``ValueError``, a FAISS ``RuntimeError``) into
   :class:`~litpulse.core.errors.StorageError` ("index version … could not be written …:
   nothing was published"), which the CLI prints in one line (exit 2).
B3 **A full disk while the adapter is saved ends ``litpulse retrain`` in a traceback.**
   ``safetensors`` raises ``SafetensorError`` (an ``Exception``): the round's temporary
   adapter folder is removed and nothing is registered, but the CLI prints a traceback
   (exit 1) instead of saying the adapter could not be written.
   **Fixed:** ``retrain.lora.train`` saves through ``_save``, which turns a failed write
   (``OSError``, torch's ``RuntimeError``, ``SafetensorError``) into ``StorageError``.
B4 **A promotion whose re-index fails prints a traceback before the error.**
   ``retrain.registry._reindex`` logs every failure with ``logger.exception``: a re-index
   that fails for a reason it names (the disk full: ``StorageError``; the model switched
   meanwhile: ``ConsistencyError``; the lease lost) prints a Python traceback on stderr
   before the CLI's one-line error. The switch is undone and the index stays, as it should.
   **Fixed:** a ``LitpulseError`` is logged as a warning with its message; any other
   failure (a bug) still with its traceback.
B5 **A nightly whose retrain step fails never sends the digest of the index it published.**
   ``litpulse nightly`` runs index → retrain → digest; an exception of the retrain step (a
   full disk at the adapter, a budget, an unusable active version) ends the run before
   the digest, so the saved searches get nothing for the index the night published (the
   README: the digest runs "after every index publish"), night after night while the
   retrain keeps failing. The ``litpulse_index_refresh`` DAG runs its digest after the
   publish whatever the retrain does.
   **Fixed:** ``run_nightly`` keeps a retrain step's exception, runs the digest step, then
   raises it (logged when it happens).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from litpulse.core import db
from litpulse.core.schema import articles as lexical_articles
from litpulse.core.settings import Settings
from ranking import index_files, lexical, refresh
from ranking.models import published_index_row
from tests.ranking.test_index import _vec, add_articles, delete_article, top1
from tests.retrain.conftest import tiny_model  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[2]

#: The child: wrap ``OBJ.NAME`` so that the real call writes under a file-size limit of
#: ``LIMIT`` bytes (a full disk for whatever it writes), then run ``litpulse ARGS...``. The
#: limit is lifted when the call returns, or, with ``KEEP`` a file name (what the call
#: writes may sit in a buffer until a flush after it returns), once the process opens a
#: file of another name.
_FULL_DISK = textwrap.dedent("""
    import importlib, resource, sys
    module, name, limit, keep, *argv = sys.argv[1:]
    held = []

    def lift():
        if held:
            resource.setrlimit(resource.RLIMIT_FSIZE, held.pop())

    def on_open(event, args):
        if held and keep and event == "open" and not str(args[0]).endswith(keep):
            lift()

    sys.addaudithook(on_open)
    obj = importlib.import_module(module)
    real = getattr(obj, name)

    def wrapped(*a, **k):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        held.append((soft, hard))
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), hard))
        try:
            return real(*a, **k)
        finally:
            if not keep:
                lift()

    setattr(obj, name, wrapped)
    from litpulse.app.cli import main
    sys.exit(main(argv))
""")


def _env(s: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITPULSE_")}
    env.update(PYTHONPATH=str(REPO), LITPULSE_HOME=str(s.home), **extra)
    if s.database_url:
        env["LITPULSE_DATABASE_URL"] = s.database_url
    return env


def _full_disk(s: Settings, target: str, limit: int, argv: list[str], *, keep: str = "",
               **extra: str) -> subprocess.CompletedProcess[str]:
    """``litpulse argv…`` in a subprocess whose ``target`` (``module:attr``) writes
    under a file-size limit of ``limit`` bytes, until it returns or (``keep``) a file of
    another name than ``keep`` is opened."""
    module, name = target.split(":")
    db.dispose_engines()
    return subprocess.run(
        [sys.executable, "-c", _FULL_DISK, module, name, str(limit), keep, *argv],
        env=_env(s, **extra), cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def _fresh_caches() -> None:
    index_files._CACHE.clear()
    lexical._CACHE.clear()


def _clear_error(proc: subprocess.CompletedProcess[str]) -> None:
    """A failed command that says so in one line, with no traceback."""
    err = proc.stderr
    assert proc.returncode != 0, f"the command succeeded (exit 0): {err[-1500:]}"
    assert "Traceback" not in err, f"a traceback, not a clear error: {err[-1500:]}"
    assert "litpulse: error:" in err, err[-1500:]


def _served_unchanged(s: Settings, before_id: str, live: list[int]) -> None:
    """The version published before is still the one served, whole, and nothing the
    failed write left sits beside it."""
    _fresh_caches()
    engine = db.connect(s)
    row = published_index_row(engine)
    assert row is not None and row.id == before_id, (row.id if row else None, before_id)
    pub = index_files.open_published(s)
    assert pub is not None and sorted(pub.ids.tolist()) == live
    assert top1(pub, _vec(live[0]))[1] == live[0]
    assert pub.lexical is not None and pub.lexical.size == len(live)
    left = sorted(p.name for p in index_files.indexes_dir(s).iterdir())
    assert left == [before_id], left


# ----------------------------------------------------------------- B1, B2: the index


def test_b1_a_full_disk_at_the_faiss_write_publishes_nothing(settings: Settings) -> None:
    s = settings
    engine = db.connect(s)
    add_articles(engine, list(range(1, 11)))
    v1 = refresh.refresh_index(s, embed=False)
    add_articles(engine, [50])
    proc = _full_disk(s, "faiss:write_index", 64, ["index", "refresh"],
                      keep="index.faiss")
    _clear_error(proc)
    _served_unchanged(s, v1.id, list(range(1, 11)))
    # and the next refresh, with room again, publishes the article
    again = refresh.refresh_index(s, embed=False)
    assert again.published and again.size == 11


@pytest.mark.parametrize("target", ["ranking.lexical:build_lexical", "faiss:write_index"])
def test_b2_a_full_disk_in_a_refresh_is_a_clear_error(settings: Settings, target: str) -> None:
    s = settings
    engine = db.connect(s)
    first = list(range(1, 121))  # 120 vectors: the FAISS file is larger than stdio's buffer
    add_articles(engine, first)
    v1 = refresh.refresh_index(s, embed=False)
    add_articles(engine, [500])
    delete_article(engine, 7)
    proc = _full_disk(s, target, 64, ["index", "refresh"],
                      keep="index.faiss" if target.startswith("faiss") else "")
    _clear_error(proc)
    assert "could not be written" in proc.stderr, proc.stderr[-1500:]
    _served_unchanged(s, v1.id, first)
    again = refresh.refresh_index(s, embed=False)
    assert again.published and again.size == 120


# ------------------------------------------------------------------- B3: the adapter


def test_b3_a_full_disk_while_the_adapter_is_saved_is_a_clear_error(
    settings: Settings, request: pytest.FixtureRequest
) -> None:
    from bench.drift import insert_batch, make_drugs
    from retrain import registry

    model = str(request.getfixturevalue("tiny_model"))

    s = settings.replace(model=model, max_seq_length=32, device="cpu")
    engine = db.connect(s)
    insert_batch(engine, start_pmid=1000, n=120, start=dt.date(2024, 1, 1), days=180,
                 ingested=dt.datetime(2024, 7, 1, tzinfo=dt.UTC), drugs=make_drugs(12),
                 seed=1)  # fmt: skip
    refresh.refresh_index(s)
    proc = _full_disk(
        s, "safetensors.torch:save_file", 64,
        ["retrain", "--steps", "1", "--batch-size", "8"],
        LITPULSE_MODEL=model, LITPULSE_MAX_SEQ_LENGTH="32", LITPULSE_DEVICE="cpu",
    )
    _clear_error(proc)
    assert "could not be written" in proc.stderr, proc.stderr[-1500:]
    assert registry.list_models(s, engine=engine) == []  # nothing registered
    adapters = s.home / "adapters"
    assert not adapters.exists() or not any(adapters.iterdir())  # nothing left behind
    assert np.asarray(published_index_row(engine).size) == 120


# ----------------------------------------------- B4: a promotion on a full disk


def test_b4_a_full_disk_in_a_promotions_reindex_switches_nothing_and_says_so(
    settings: Settings, request: pytest.FixtureRequest
) -> None:
    """`litpulse models promote` re-embeds the corpus with the version and publishes its
    index; the disk fills up at the FAISS write: the command says so (exit 2) in one line,
    the model switch is undone (the base model active again, the version a candidate) and
    the index published before stays served."""
    from retrain import registry
    from retrain.lora import LoraOptions, train
    from retrain.pairs import Pair

    model = str(request.getfixturevalue("tiny_model"))
    s = settings.replace(model=model, max_seq_length=32, device="cpu")
    engine = db.connect(s)
    with engine.begin() as conn:
        conn.execute(lexical_articles.insert(), [
            {"pmid": p, "version": 1, "source_kind": "test", "source_location": "t",
             "title": f"statin trial {p}", "abstract": f"dementia outcome {p}",
             "text_hash": f"h{p}", "is_deleted": False, "best_date": dt.date(2024, 1, p),
             "ingested_at": db.utcnow(), "updated_at": db.utcnow()}
            for p in range(1, 13)
        ])
    before = refresh.refresh_index(s)
    pairs = [Pair(anchor=f"statin {p}", positive=f"dementia outcome {p}", kind="title",
                  pmid=p) for p in range(1, 13)]
    result = train(s, pairs, LoraOptions(max_steps=1, batch_size=4, max_seq_length=32,
                                         warmup_steps=0, precision="fp32", max_seconds=1e5),
                   s.home / "adapters" / "m-1")  # fmt: skip
    registry.register(s, id="m-1", adapter_path=result.output_dir,
                      adapter_sha256=result.sha256, parent_id=None, window_start=None,
                      window_end=None, pair_counts={}, options={}, metrics={},
                      engine=engine)  # fmt: skip
    proc = _full_disk(s, "faiss:write_index", 64, ["models", "promote", "m-1"],
                      keep="index.faiss", LITPULSE_MODEL=model,
                      LITPULSE_MAX_SEQ_LENGTH="32", LITPULSE_DEVICE="cpu")
    _clear_error(proc)
    assert "could not be written" in proc.stderr, proc.stderr[-1500:]
    assert registry.active_version(s, engine=engine) is None  # the base model serves
    assert registry.get_model(s, "m-1", engine=engine).status == "candidate"
    _fresh_caches()
    row = published_index_row(engine)
    assert row is not None and row.id == before.id and row.model_version == "base"
    assert sorted(p.name for p in index_files.indexes_dir(s).iterdir()) == [before.id]


# ------------------------------------------- B5: the nightly's digest after a retrain


def test_b5_a_failed_retrain_does_not_hold_back_the_nights_digest(
    settings: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from bench.drift import insert_batch, make_drugs
    from litpulse.app.demo.pubmed_xml import article_xml, pubmed_set
    from litpulse.pipeline.saved_searches import add_search, get_search

    model = str(request.getfixturevalue("tiny_model"))
    s = settings.replace(model=model, max_seq_length=32, device="cpu")
    engine = db.connect(s)
    insert_batch(engine, start_pmid=1000, n=120, start=dt.date(2024, 1, 1), days=180,
                 ingested=dt.datetime(2024, 7, 1, tzinfo=dt.UTC), drugs=make_drugs(12),
                 seed=1)  # fmt: skip
    refresh.refresh_index(s)
    add_search(s, name="statins", query="statin trial", min_score=0.0, owner="cli:ann",
               engine=engine)  # fmt: skip
    night = tmp_path / "night.xml"
    night.write_bytes(pubmed_set(
        article_xml(90000 + i, edat=dt.date(2024, 7, 2), title=f"Statin trial {i}",
                    abstract=f"Statins lowered the risk in cohort {i}.")
        for i in range(5)
    ))
    proc = _full_disk(
        s, "safetensors.torch:save_file", 64,
        ["nightly", "--source", "files", "--files", str(night), "--no-citations",
         "--no-quality"],
        LITPULSE_MODEL=model, LITPULSE_MAX_SEQ_LENGTH="32", LITPULSE_DEVICE="cpu",
        LITPULSE_RETRAIN_MIN_NEW_ARTICLES="1",
    )
    _clear_error(proc)  # the retrain failed, and the nightly says so
    assert "could not be written" in proc.stderr, proc.stderr[-1500:]
    row = published_index_row(engine)
    assert row is not None and row.size == 125  # the index step published the night
    search = get_search(s, "statins", engine=engine)
    assert search.last_index_version == row.id, "the digest never ran for the new index"


# ------------------- pinned: a nightly SIGKILLed between its publish and its digest


def _nightly_store(settings: Settings, home: Path, model: str, night: Path) -> Settings:
    """A fresh store (the database emptied, a new home) with 120 articles, their index
    published, and one saved search; ``night`` holds the night's 5 new articles."""
    from bench.drift import insert_batch, make_drugs
    from litpulse.app.demo.pubmed_xml import article_xml, pubmed_set
    from litpulse.pipeline.saved_searches import add_search
    from tests.ingest.test_crash_resume import reset

    s = settings.replace(home=home, model=model, max_seq_length=32, device="cpu")
    engine = db.connect(s)
    reset(engine)
    insert_batch(engine, start_pmid=1000, n=120, start=dt.date(2024, 1, 1), days=180,
                 ingested=dt.datetime(2024, 7, 1, tzinfo=dt.UTC), drugs=make_drugs(12),
                 seed=1)  # fmt: skip
    refresh.refresh_index(s)
    add_search(s, name="statins", query="statin trial", min_score=0.0, owner="cli:ann",
               engine=engine)  # fmt: skip
    night.write_bytes(pubmed_set(
        article_xml(90000 + i, edat=dt.date(2024, 7, 2), title=f"Statin trial {i}",
                    abstract=f"Statins lowered the risk in cohort {i}.")
        for i in range(5)
    ))
    return s


def _digest_state(s: Settings) -> tuple[list[int], list[int], list[int]]:
    """(live PMIDs, the published index's vector and lexical PMIDs agreeing with them,
    the saved search's matched PMIDs) after checking its digest ran for that index."""
    from sqlalchemy import select

    from litpulse.core.schema import digest_matches
    from litpulse.pipeline.saved_searches import get_search
    from ranking.index_store import live_ids

    _fresh_caches()
    engine = db.connect(s)
    pub = index_files.open_published(s)
    assert pub is not None and pub.lexical is not None
    live = live_ids(engine).tolist()
    assert sorted(pub.ids.tolist()) == live
    assert sorted(lexical.read_ids(pub.path).tolist()) == live
    assert get_search(s, "statins", engine=engine).last_index_version == pub.id
    with engine.connect() as conn:
        matched = conn.execute(select(digest_matches.c.pmid)).scalars().all()
    assert len(matched) == len(set(matched))
    return live, sorted(pub.ids.tolist()), sorted(matched)


def test_a_nightly_killed_between_its_publish_and_its_digest_resumes_to_the_clean_state(
    settings: Settings, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`litpulse nightly` SIGKILLed at the first SQL statement after its index version's
    row committed (before pruning, before the digest), then run again: the same index
    content and the same digest matches, each once, as a run never killed (holds)."""
    from litpulse.pipeline.nightly import run_nightly
    from tests.ingest.test_crash_resume import kill_when, self_killing

    model = str(request.getfixturevalue("tiny_model"))
    night = tmp_path / "night.xml"

    def run(store: Settings) -> None:
        run_nightly(store, source="files", files=[night], retrain=False, citations=False,
                    quality=False)  # fmt: skip

    clean = _nightly_store(settings, tmp_path / "clean", model, night)
    run(clean)
    want = _digest_state(clean)
    assert len(want[2]) and set(want[2]) <= set(range(90000, 90005))
    db.dispose_engines()

    s = _nightly_store(settings, tmp_path / "killed", model, night)
    engine = db.connect(s)
    argv = self_killing(
        ["-m", "litpulse", "nightly", "--source", "files", "--files", str(night),
         "--no-retrain", "--no-citations", "--no-quality"],
        engine, "SELECT count(*) FROM index_versions", at=2,
    )
    db.dispose_engines()
    kill_when(argv, _env(s, LITPULSE_MODEL=model, LITPULSE_MAX_SEQ_LENGTH="32",
                         LITPULSE_DEVICE="cpu"),
              lambda: False, tmp_path / "child.log", label="after the publish",
              timeout=120)  # fmt: skip
    from litpulse.pipeline.saved_searches import get_search

    assert get_search(s, "statins").last_index_version is None  # killed before the digest
    run(s)
    assert _digest_state(s) == want
