"""Hostile review (session 32i) of ``litpulse bootstrap`` and the update-file path: the
file downloader (``ingest.http.HttpClient.download``), listing and MD5 handling
(``ingest.updatefiles``), the staging writer (``ingest.bootstrap``), the CLI command
(``litpulse/app/cli/bootstrap.py``) and the ``litpulse_bootstrap`` DAG's functions.

Every test drives the real code against a loopback file server (the tests' emulator, or a
few lines of ``http.server`` where the emulator cannot answer as the mirror does) on SQLite
and, where the store matters, PostgreSQL. Each defect was a strict xfail asserting the
correct behaviour; all three were fixed in the same session and are plain tests now: I1 a
download asks ``Accept-Encoding: identity`` and keeps the bytes as served (never decoded);
I2 the ``.part`` is opened before the request and a local write's ``OSError`` propagates at
once, naming the file; I3 the CLI's ``--workers``/``--prefetch`` hold to their settings'
bounds (``settings.bounds``) and ``--shards`` to ``widths.SHARDS_MAX`` (so do
``resolve_workers``, ``load_files`` and the shard planners). The other tests are guards.

Defects:

I1 A mirror that serves the ``.xml.gz`` files with ``Content-Encoding: gzip`` (or
   ``x-gzip``: Apache's ``AddEncoding x-gzip .gz``, an S3/GCS object stored with that
   metadata) can **never** be bootstrapped from, nor its update files applied: every
   download fails with a nonsense "truncated body (14221 of 892 bytes)" — more bytes than
   the length — retried ``LITPULSE_MAX_RETRIES`` times, then ``TransientSourceError``
   (exit 75, "try again later", for ever). requests sends ``Accept-Encoding: gzip,
   deflate`` and ``ingest.http._body`` decodes an encoded body ("goes through requests'
   decoding"), so the file written is the *decompressed* XML, which is neither the
   Content-Length nor the published MD5 (that is of the ``.gz`` bytes). At fault:
   ``ingest/http.py`` ``HttpClient.download`` / ``_body``. Fix: a download stores the
   bytes as served: ask ``Accept-Encoding: identity`` and read ``response.raw`` with
   ``decode_content=False`` (the MD5 and the Range offsets are of the stored bytes).
   (test_a_mirror_serving_the_gz_files_content_encoded_is_bootstrapped)
I2 A download folder that cannot be written (no space left, read-only, a permission, here
   a ``NAME.part`` that is a folder) is reported as the **server** failing: ``GET <url>:
   IsADirectoryError (gave up after 7 attempts)`` — a retryable
   ``TransientSourceError`` (CLI exit 75, EX_TEMPFAIL; the DAG retries), without the
   path or the OS's reason, after the whole file was requested from the server
   ``LITPULSE_MAX_RETRIES + 1`` times with backoff. ``HttpClient.download`` catches
   ``OSError`` around the body loop to resume a broken *transfer* and so also catches the
   local ``part.open``/``fh.write`` failures. At fault: ``ingest/http.py``
   ``HttpClient.download`` (``except (..., OSError)``). Fix: open the ``.part`` before the
   request and let an ``OSError`` of the local file (open, write, replace) propagate
   unretried (the CLI already answers a local ``OSError`` with its message, exit 2);
   retry only the response's errors.
   (test_a_download_folder_that_cannot_be_written_is_a_local_error_asked_once)
I3 ``litpulse bootstrap --workers N`` and ``--shards N`` take any integer: ``--workers
   100000`` starts 100,000 parse processes (``parse_ordered`` of the bootstrap's lazy
   jobs starts exactly ``workers`` of them), ``--shards 10000000000`` builds a list of
   ten billion shards in ``plan_embedding_shards`` (memory) after the whole load. The
   setting behind ``--workers`` (``LITPULSE_INGEST_WORKERS``) is bounded 0..64 and the
   DAG's ``shards`` param 1..1024; the CLI, which the README offers for the same job,
   checks neither. At fault: ``litpulse/app/cli/bootstrap.py`` ``register``
   (``type=int``). Fix: ``type=int_arg(0, 64)`` for ``--workers``, ``int_arg(1, 1024)``
   for ``--shards`` (and ``int_arg(0, 64)`` for ``--prefetch``), a usage error (exit 2)
   before anything is listed.
   (test_bootstrap_refuses_workers_and_shards_outside_their_bounds)

Guards (right today): a PMID deleted by an update file (and one never seen) and re-added by
a later one ends live, a bootstrap applied one file per call ending exactly as one clean
call (SQLite and PostgreSQL); a partial download of another version of a file, resumed with
Range, is never applied (its MD5 fails, it is fetched whole); an ``.md5`` that disagrees with
its file fails the run with ``ChecksumError`` before anything of that file is applied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from ingest.bootstrap import load_files
from ingest.updatefiles import apply_updates, downloads_folder
from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
from litpulse.core import db
from litpulse.core.errors import ChecksumError, LitpulseError
from litpulse.core.schema import articles, source_files
from litpulse.core.settings import Settings
from tests.emulator import Emulator, running_emulator
from tests.ingest.test_crash_resume import differences, reset, snapshot

EDAT = dt.date(2024, 6, 1)
BASE = "pubmed26n0001.xml.gz"
UPD = "pubmed26n0002.xml.gz"


def _file(pmids: range | list[int], deleted: list[int] | None = None) -> bytes:
    return gz(pubmed_set([article_xml(p, edat=EDAT) for p in pmids], deleted or []))


def _live(s: Settings) -> dict[int, bool]:
    with db.connect(s).connect() as conn:
        rows = conn.execute(select(articles.c.pmid, articles.c.is_deleted))
        return {int(p): not d for p, d in rows}


def _applied(s: Settings) -> list[str]:
    with db.connect(s).connect() as conn:
        return sorted(conn.execute(select(source_files.c.name)).scalars())


@pytest.fixture
def emu() -> Iterator[Emulator]:
    yield from running_emulator()


# ------------------------------------------------------------ I1: a content-encoded mirror


class _EncodedMirror(http.server.ThreadingHTTPServer):
    """A PubMed file server that sends the ``.xml.gz`` files with ``Content-Encoding``
    (as Apache does under ``AddEncoding x-gzip .gz``); listings and ``.md5`` plain."""

    daemon_threads = True

    def __init__(self, files: dict[str, dict[str, bytes]], encoding: str | None) -> None:
        self.files, self.encoding, self.gets = files, encoding, 0
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                folder, _, name = self.path.removeprefix("/pubmed/").partition("/")
                held = mirror.files.get(folder)
                enc = None
                if held is None:
                    return self._answer(404, b"Not Found", "text/html")
                if name in ("", "index.html"):
                    links = "".join(f'<a href="{n}">{n}</a>\n<a href="{n}.md5">{n}.md5</a>\n'
                                    for n in sorted(held))  # fmt: skip
                    # a directory index, as Apache's (an empty folder's lists no file)
                    page = f"<title>Index of /pubmed/{folder}</title>\n{links}"
                    return self._answer(200, page.encode(), "text/html")
                if name.endswith(".md5") and name[:-4] in held:
                    digest = hashlib.md5(held[name[:-4]], usedforsecurity=False).hexdigest()
                    return self._answer(200, f"MD5({name[:-4]})= {digest}\n".encode(), "text/plain")
                if name not in held:
                    return self._answer(404, b"Not Found", "text/html")
                mirror.gets += 1
                enc = mirror.encoding
                return self._answer(200, held[name], "application/x-gzip", enc)

            def _answer(self, status: int, body: bytes, ctype: str, enc: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if enc:
                    self.send_header("Content-Encoding", enc)
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/pubmed/"


@pytest.fixture
def mirror(request: pytest.FixtureRequest) -> Iterator[_EncodedMirror]:
    files = {"baseline": {BASE: _file(range(1, 11))}, "updatefiles": {UPD: _file([11, 12], [3])}}
    server = _EncodedMirror(files, getattr(request, "param", None))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _on(server: _EncodedMirror, s: Settings) -> Settings:
    return s.replace(pubmed_files_url=server.url, backoff_base=0.01, backoff_max=0.05,
                     max_retries=2, http_timeout=10.0)  # fmt: skip


@pytest.mark.parametrize("mirror", [None], indirect=True)
def test_a_plain_mirror_is_bootstrapped(mirror: _EncodedMirror, settings: Settings) -> None:
    """Guard: the same mirror without Content-Encoding."""
    s = _on(mirror, settings)
    report = load_files(s, workers=0, prefetch=1)
    assert list(report.applied) == [BASE, UPD]
    live = _live(s)
    assert sorted(p for p, ok in live.items() if ok) == [1, 2, *range(4, 13)]


@pytest.mark.parametrize("mirror", ["x-gzip"], indirect=True)
def test_a_mirror_serving_the_gz_files_content_encoded_is_bootstrapped(
    mirror: _EncodedMirror, settings: Settings
) -> None:
    s = _on(mirror, settings)
    try:
        report = load_files(s, workers=0, prefetch=1)
    except LitpulseError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc} ({mirror.gets} downloads)")
    assert list(report.applied) == [BASE, UPD]
    assert sorted(p for p, ok in _live(s).items() if ok) == [1, 2, *range(4, 13)]
    assert mirror.gets == 2  # each file downloaded once, as published


@pytest.mark.parametrize("mirror", ["gzip"], indirect=True)
def test_update_files_from_a_content_encoded_mirror_are_applied(
    mirror: _EncodedMirror, sqlite_settings: Settings
) -> None:
    mirror.files["baseline"].clear()  # update files only: `litpulse ingest --updatefiles`
    s = _on(mirror, sqlite_settings)
    try:
        apply_updates(s, workers=0)
    except LitpulseError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}")
    assert _applied(s) == [UPD]


# ------------------------------------------------ I2: a download folder that cannot be written


def test_a_writable_download_folder_applies_the_file(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """Guard of the set-up: with the folder writable the same bootstrap applies both."""
    emu.add_file("baseline", BASE, _file(range(1, 6)))
    s = emu.configure(sqlite_settings, max_retries=3)
    assert list(load_files(s, workers=0, prefetch=0).applied) == [BASE]


@pytest.mark.parametrize("how", ["bootstrap", "updatefiles", "cli"])
def test_a_download_folder_that_cannot_be_written_is_a_local_error_asked_once(
    emu: Emulator, sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], how: str,
) -> None:  # fmt: skip
    kind, name = ("updatefiles", UPD) if how != "bootstrap" else ("baseline", BASE)
    emu.add_file(kind, name, _file(range(1, 6)))
    s = emu.configure(sqlite_settings, max_retries=3)
    part = downloads_folder(s) / f"{name}.part"
    part.mkdir()  # the .part cannot be opened for writing: any local write failure
    if how == "cli":
        from litpulse.app.cli import main

        for key, value in emu.env(s).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("LITPULSE_HOME", str(s.home))
        monkeypatch.setenv("LITPULSE_MAX_RETRIES", "3")
        code = main(["ingest", "--updatefiles"])
        err = capsys.readouterr().err
        assert (code, str(part) in err) == (2, True), err  # as any local OSError: exit 2
    else:
        run = load_files if how == "bootstrap" else apply_updates
        with pytest.raises(Exception) as info:
            run(s, workers=0)
        exc = info.value
        assert not getattr(exc, "retryable", False), f"{type(exc).__name__}: {exc}"
        assert isinstance(exc, OSError) or str(part) in str(exc), f"{type(exc).__name__}: {exc}"
    assert len(emu.requests(f"/{name}")) - len(emu.requests(f"/{name}.md5")) <= 1


# ------------------------------------------------------------ I3: the CLI's bounds


@pytest.mark.parametrize("args", [["--workers", "100000"], ["--workers", "65"],
                                  ["--shards", "10000000000"]])  # fmt: skip
def test_bootstrap_refuses_workers_and_shards_outside_their_bounds(
    emu: Emulator, sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], args: list[str],
) -> None:  # fmt: skip
    from litpulse.app.cli import main

    # the server lists no file: a bootstrap that is not refused fails on the listing,
    # before it could start a worker or plan a shard
    for key, value in emu.env(emu.configure(sqlite_settings)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    try:
        code = main(["bootstrap", "--no-embed", *args])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "usage" in err, f"exit {code}: {err[-300:]}"
    assert not emu.requests("/pubmed/")  # refused before anything was listed


# ------------------------------------------------------------------------------ guards


def test_deleted_then_re_added_pmids_end_as_a_clean_run_one_file_per_call(
    emu: Emulator, settings: Settings
) -> None:
    """PMID 5 in the baseline, deleted by update 2, back in update 3; PMID 999 deleted by
    update 2 before any file held it, added by update 3: both live, and applying one file
    per call ends in the state of one clean call."""
    emu.add_file("baseline", BASE, _file(range(1, 11)))
    emu.add_file("updatefiles", UPD, _file([20], [5, 999]))
    emu.add_file("updatefiles", "pubmed26n0003.xml.gz", _file([5, 999]))
    s = emu.configure(settings)
    engine = db.connect(s)
    load_files(s, workers=0, prefetch=0)
    clean = snapshot(engine)
    assert {p for p, ok in _live(s).items() if not ok} == set()
    reset(engine)
    for _ in range(3):
        load_files(s, workers=0, prefetch=0, max_files=1)
    assert load_files(s, workers=0, prefetch=0).nothing_to_do
    assert differences(snapshot(engine), clean) == []


def test_a_partial_download_of_another_version_is_never_applied(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """A ``.part`` left of another version of the file (the mirror replaced it between a
    killed run and its resumption): the Range resume splices it, the MD5 fails, the file
    is fetched whole and applied as published."""
    data = _file(range(1, 21))
    emu.add_file("baseline", BASE, data)
    s = emu.configure(sqlite_settings)
    other = _file(range(100, 140))
    (downloads_folder(s) / f"{BASE}.part").write_bytes(other[: len(data) // 2])
    load_files(s, workers=0, prefetch=0)
    assert sorted(_live(s)) == list(range(1, 21))
    assert not os.listdir(downloads_folder(s))


def test_an_md5_that_disagrees_applies_nothing_of_that_file(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    emu.add_file("baseline", BASE, _file(range(1, 6)))
    emu.add_file("updatefiles", UPD, _file([7]), md5="0" * 32)  # disagrees with the file
    s = emu.configure(sqlite_settings, max_retries=0)
    with pytest.raises(ChecksumError, match=UPD):
        load_files(s, workers=0, prefetch=0)
    assert _applied(s) == [BASE]
    assert 7 not in _live(s)
