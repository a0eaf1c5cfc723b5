"""Review 37g: the fixes landed in session 37 (reviews 37a, 37c, 37d, 37e), for
regressions and holes.

Attacked and held: ``dag_support.run_params`` with an empty, ``null`` or absent conf (a
scheduled run, a backfill, a clear keep ``{}``; the asset-triggered DAGs' runs carry no
conf); ``discard_applied_downloads`` on a plain update-file run (an applied name's
download, its ``.part`` and marker are removed, a pending name's are kept);
``litpulse status``'s ``devices`` entry: the HTTP API's ``/status`` does not compute it
(no torch import there); FAISS's part imports faiss (0.3 s). ``run_failed``: Airflow
3.3's three reasons (``task_failure`` left to the task's alert, ``timed_out``,
``all_tasks_deadlocked``) read as the scheduler and ``DagRun.update_state`` send them.
The E-utilities marks: ``delete_checkpoints``'s prefixes (``KEY#batch``, ``KEY#gen``)
cannot reach another window's or a query window's marks; a done window run again
searches anew (a new generation), so a dropped PMID list is never resumed from; the
list's one reader after the check (``_older_release_reseen``) answers 0 without it.

Noticed, not filed: the OOM-halved embedding batch (``ranking.embed._FITS``) is kept for
the encoder's life and never grows back, so one transient out-of-memory (a retrain on
the same card) slows a long-lived process for good, and a small call that ran out at 3
texts sets it to 1; ``content_md5`` inflates every local ``.xml.gz`` once more with
Python's ``gzip`` before it is parsed (a second full decompression of each file).

X1 **A bootstrap's writer deletes the verified, staged copy of a re-issued file that a
   stager just downloaded.** ``ingest.updatefiles.discard_applied_downloads`` (37d X3),
   called at the writer's start (``ingest.bootstrap.load_files``), removes every download
   whose *name* the store applied. A file NLM re-issued under an applied name is applied
   again (``FilePlan.reissued``, in ``pending``), and the stagers (``litpulse bootstrap``'s
   prefetch thread, the DAG's mapped ``prefetch_file`` tasks, in other processes holding
   ``bootstrap-stage:NAME``) stage it before or while the writer starts: its verified
   copy and marker (and a stager's ``.part`` mid-download) are deleted, and the writer
   downloads the file again (a baseline-sized file: tens of MB a file, every file of a
   re-issued year). The clean-up meant for an *earlier issue* left behind also takes the
   new one, whose marker carries the MD5 the plan awaits.
   **Fixed**: ``discard_applied_downloads`` is given the run's plan (``pending``) and
   keeps, of a pending re-issue, a download a live stager holds the lease of
   (``STAGE_LEASE``, moved beside ``STAGED_MARKER`` in ``ingest.updatefiles``) or a
   verified copy whose marker names another MD5 than the one applied
   (``RemoteFile.reissue``, known: not ``UNKNOWN_ISSUE``); an earlier issue's copy, a
   ``.part`` no one downloads, and a plain update-file run's download are removed as before.
   (test_x1_a_staged_reissue_is_not_downloaded_again,
   test_x1_b_a_live_stagers_partial_download_is_kept)
X2 **``litpulse status`` imports torch to say that a CPU build of torch sees no GPU.**
   Its ``devices`` entry (37e X6: ``ranking.embed.device_report``) calls
   ``resolve_device``, which imports torch under ``LITPULSE_DEVICE=auto`` (the default)
   to ask ``torch.cuda.is_available()``; the default install's torch is a CPU build
   (``torch.version.cuda`` is ``None``), which never sees one. Measured here (2 loaded
   cores, SQLite store, three runs each): ``litpulse status`` 4.2-5.3 s, against 1.3-1.6 s
   with ``LITPULSE_DEVICE=cpu LITPULSE_USE_GPU=no``: a command run to look, by a watcher
   or a script every minute, tripled by a device question its answer does not need torch
   for.
   **Fixed**: ``ranking.embed._unimported_cpu_torch`` (used by ``resolve_device``'s
   ``auto`` and ``_no_cuda``) reads ``torch/version.py`` while torch is not imported yet:
   ``cuda = None`` there is a CPU build, answered without importing torch; anything else
   (a CUDA build, an unreadable file) asks torch as before, and so does a process that
   imported torch already (the embedding itself, tests standing in for CUDA).
   ``litpulse status`` here, three runs each: 1.0-1.3 s (auto), 1.2-1.3 s (cpu/no).
   (test_x2_status_on_a_cpu_build_of_torch_does_not_import_it)
X3 **``litpulse ingest --files`` of a cut ``.xml.gz`` ends in a traceback, nothing read.**
   37c X5 tells a local copy by its unpacked content's MD5
   (``litpulse.core.checksums.content_md5``, in ``ingest.files._earlier_issues``, before
   any read); Python's ``gzip`` raises ``EOFError`` for a stream cut short (``zlib.error``
   for a corrupt one), which ``content_md5`` lets through although its docstring promises
   ``OSError``, and nothing catches it: an ``EOFError`` traceback, no run recorded, where
   before the records before the cut were stored and the cut reported ("unreadable input
   ... the records before it were kept", the parser's rule for a damaged file).
   **Fixed**: ``content_md5`` raises a cut or corrupt stream as ``gzip.BadGzipFile`` (an
   ``OSError``, as documented); ``_earlier_issues`` then tells that copy by its bytes'
   MD5, and its read reports the damage as before 37c X5.
   (test_x3_a_cut_gz_is_read_up_to_its_cut)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from litpulse.core import db
from litpulse.core.settings import Settings


def _gets(emu: Any, name: str) -> int:
    return sum(1 for r in emu.requests(name) if r.path.endswith(name))


@pytest.fixture
def reissued(settings: Settings, tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A bootstrapped store (a baseline file, an update file) whose update file NLM has
    re-issued since under its name: the plan awaits it as a re-issue."""
    from ingest import bootstrap, updatefiles
    from litpulse.app.demo.generate import generate_corpus
    from tests.emulator import running_emulator

    corpus = generate_corpus(tmp_path / "corpus", n_records=30, n_files=3, seed=7,
                             first_file_number=1)  # fmt: skip
    name = corpus.files[1].name
    for emu in running_emulator():
        s = emu.configure(settings.replace(ingest_workers=0))
        emu.add_file("baseline", corpus.files[0].name, corpus.files[0].read_bytes())
        emu.add_file("updatefiles", name, corpus.files[1].read_bytes())
        bootstrap.load_files(s, workers=0, prefetch=0)
        engine = db.connect(s)
        assert len(updatefiles.applied_files(engine)[0]) == 2
        emu.add_file("updatefiles", name, corpus.files[2].read_bytes())
        plan = bootstrap.pending_files(s, engine)
        assert [f.name for f in plan.pending] == [name] and plan.pending[0].reissue
        yield SimpleNamespace(
            emu=emu, settings=s, engine=engine, plan=plan, name=name, corpus=corpus,
            folder=updatefiles.downloads_folder(s, engine),
        )


@pytest.mark.parametrize("earlier_left", [False, True], ids=["staged", "earlier-left"])
def test_x1_a_staged_reissue_is_not_downloaded_again(
    reissued: SimpleNamespace, earlier_left: bool
) -> None:
    from ingest import bootstrap, updatefiles

    r = reissued
    f, name, folder = r.plan.pending[0], r.name, r.folder
    if earlier_left:  # what a killed run left of the issue applied before is removed
        (folder / name).write_bytes(r.corpus.files[1].read_bytes())
        (folder / (name + updatefiles.STAGED_MARKER)).write_text(f"{f.reissue} 1\n")
        bootstrap.load_files(r.settings, workers=0, prefetch=0, max_files=0)
        assert list(folder.iterdir()) == []
    # a stager (the prefetch thread, the DAG's prefetch_file) stages the new issue
    assert bootstrap.stage_file(r.settings, f, engine=r.engine) is not None
    before = _gets(r.emu, name)
    bootstrap.load_files(r.settings, workers=0, prefetch=0)
    assert _gets(r.emu, name) == before, (
        "the writer deleted the staged, verified re-issue and downloaded it again")
    new = hashlib.md5(r.corpus.files[2].read_bytes(), usedforsecurity=False).hexdigest()
    assert updatefiles.applied_files(r.engine)[1][f.key][0] == new
    assert list(folder.iterdir()) == []


def test_x1_b_a_live_stagers_partial_download_is_kept(reissued: SimpleNamespace) -> None:
    from ingest import updatefiles

    r = reissued
    part = r.folder / (r.name + ".part")
    part.write_bytes(b"\x1f\x8b")
    lease = db.acquire_lease(r.engine, f"bootstrap-stage:{r.name}")
    assert lease is not None
    with lease:  # a stager downloads it now
        assert updatefiles.discard_applied_downloads(r.folder, r.engine, r.plan.pending) == []
        assert part.exists()
    # no one downloads it any more: a left partial download goes as before
    assert updatefiles.discard_applied_downloads(r.folder, r.engine, r.plan.pending) == [r.name]
    assert not part.exists()


def _torch_is_cpu_build() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.origin is not None
    text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    return "\ncuda: Optional[str] = None" in text or "\ncuda = None" in text


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_x2_status_on_a_cpu_build_of_torch_does_not_import_it(env: Settings) -> None:
    import os
    import subprocess
    import sys

    if not _torch_is_cpu_build():
        pytest.skip("torch here is a CUDA build: it must be asked")
    code = ("import sys, runpy; sys.argv = ['litpulse', 'status', '--json']\n"
            "try:\n    runpy.run_module('litpulse', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120, check=False)
    assert '"devices"' in proc.stdout, proc.stderr[-2000:]
    devices = json.loads(proc.stdout)["devices"]
    assert devices["torch"]["device"] == "cpu"
    assert "CPU build" in devices["torch"]["why"]
    assert "TORCH False" in proc.stderr, "litpulse status imported torch to say cpu"


def test_x3_a_cut_gz_is_read_up_to_its_cut(
    env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from litpulse.app.cli import main
    from litpulse.app.demo.generate import generate_corpus

    corpus = generate_corpus(tmp_path / "corpus", n_records=20, n_files=1, seed=3,
                             first_file_number=5)  # fmt: skip
    data = corpus.files[0].read_bytes()
    cut = tmp_path / corpus.files[0].name
    cut.write_bytes(data[: len(data) // 2])
    assert main(["ingest", "--files", str(cut), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    # the records before the cut stored, the cut quarantined (the parser's damaged file)
    assert counts["inserted"] > 0 and counts["quarantined"] >= 1
