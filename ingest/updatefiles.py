"""Apply NLM's PubMed update files (and, on request, baseline files) in number order.

NLM publishes ``pubmedYYnNNNN.xml.gz`` files under ``updatefiles/`` (daily, sometimes
several a day) and ``baseline/`` (yearly), each with a ``.md5`` beside it in the form
``MD5(pubmed26n1280.xml.gz)= <32 hex digits>``. :func:`apply_updates`:

1. lists the folders (the HTML index of ``settings.pubmed_files_url``; a ``file://``
   mirror is listed from disk);
2. skips files already recorded in ``source_files``, unless NLM re-issued one under its
   name (:func:`find_reissues`: its listing entry — modification time, size — changed and
   its ``.md5`` names another MD5 than the one applied): the new issue is applied again,
   ranked after the earlier issue and before the next file (:meth:`ingest.store.Store.
   reissue`), and reported ("re-issued file applied again");
3. downloads each remaining file to ``<home>/downloads/<store id>`` (a partial ``.part`` file is
   resumed with an HTTP Range request, or restarted when the server ignores Range);
4. verifies it against its ``.md5``; a mismatch is downloaded again (up to two more
   times, each reading the ``.md5`` again: a mirror mid-update changes both) and then
   fails the run with :class:`~litpulse.core.errors.ChecksumError` — that file and every
   later one stay unapplied, so the order is never broken;
5. applies it through :meth:`ingest.store.Store.apply` with
   ``SourceRef("updatefile" | "baseline", name, sequence=nlm_sequence(YY, NNNN))`` (year
   first: NLM's numbering restarts each year) and records it in ``source_files`` with its
   MD5, size and counts; the download is then deleted (the download of a file a killed
   run recorded and did not delete is deleted by the next run:
   :func:`discard_applied_downloads`).

A run killed mid-file leaves no ``source_files`` row, so the next run applies that file
again, going on after the items the killed run committed (a progress mark each batch
commits with: :func:`_store_file`); the file records its whole counts, each item once.

Example:
    >>> counts = apply_updates(settings, max_files=2)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import Connection, Engine, delete, func, select, update

from ingest.http import HttpClient, raise_if_stopped
from ingest.records import (
    SourceRef,
    nlm_file_key,
    nlm_file_order,
    nlm_sequence,
)
from ingest.rows import StoreItem
from ingest.runs import IngestCounts, OpenRun, recorded_run
from ingest.store import UNKNOWN_ISSUE, Store
from litpulse.core import db
from litpulse.core.checksums import content_md5
from litpulse.core.errors import (
    ChecksumError,
    ConfigError,
    IncompleteSourceError,
    InvalidRequestError,
    LitpulseError,
)
from litpulse.core.schema import checkpoints, source_files
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow

__all__ = [
    "BootstrapUnfinishedError",
    "FilePlan",
    "RemoteFile",
    "applied_files",
    "apply_updates",
    "coverage_details",
    "discard_applied_downloads",
    "discard_download",
    "downloads_folder",
    "find_reissues",
    "list_remote_files",
    "listed_entries",
    "note_listed",
    "parse_listing",
    "parse_md5",
    "plan_files",
    "reissue_notes",
]

logger = logging.getLogger(__name__)

#: A link to a file: its href may be relative (``./``), absolute (a URL), and carry a query
#: string or a fragment (``NAME?download=1``, ``NAME#top``: a web mirror's or a CDN's
#: index); a ``.md5`` beside it is no file.
_HREF_RE = re.compile(
    r"""href\s*=\s*["']?(?:[^"'>\s]*/)?(pubmed\d{2}n\d{4}\.xml\.gz)(?:[?#][^"'>\s]*)?["'>\s]""",
    re.I,
)
#: What only a directory index holds (NCBI's is Apache's "Index of /pubmed/updatefiles"
#: with a "Parent Directory" link; nginx and lighttpd write "Index of" too, IIS "[To Parent
#: Directory]"): a page naming no file is an empty folder only when it is such an index.
_INDEX_RE = re.compile(
    r"""<(?:title|h1)[^>]*>\s*Index\s+of\b|Parent\s+Directory|href\s*=\s*["']?\.\./""", re.I
)
_MD5_RE = re.compile(r"MD5\s*\(\s*(?P<name>[^)]+?)\s*\)\s*=\s*(?P<hex>[0-9a-fA-F]{32})")
_MD5SUM_RE = re.compile(r"^(?P<hex>[0-9a-fA-F]{32})\s+\*?(?P<name>\S+)\s*$", re.M)

#: Downloads of one file whose checksum does not match before the run fails.
CHECKSUM_ATTEMPTS = 3

#: Checkpoint scope of a file being applied (keyed by its name): its MD5, the items
#: committed and their counts, written with each batch (:func:`_store_file`).
PROGRESS_SCOPE = "updatefiles-progress"
#: Checkpoint scope of the annual baselines this store saw listed (keyed by the year's two
#: digits, value ``{"last": N}``): where that year's update files begin (``N + 1``) once a
#: mirror pruned its ``baseline/`` (:func:`known_baselines`).
BASELINES_SCOPE = "updatefiles-baselines"

FOLDERS = {"baseline": "baseline", "updatefile": "updatefiles"}

#: Applied files (the newest listed) whose ``.md5`` each run reads again where the listing
#: cannot tell a re-issue (no modification time or size listed, or none recorded).
RECHECK_NEWEST = 2

_ENTRY_RE = re.compile(r"(pubmed\d{2}n\d{4}\.xml\.gz)(\.md5)?</a>([^<\n]*)", re.I)
#: Characters kept of each listing entry (``source_files.listed`` holds 200).
_ENTRY_MAX = 90


class BootstrapUnfinishedError(LitpulseError):
    """Update files were asked for while baseline files a bootstrap started are still
    pending: run ``litpulse bootstrap`` to finish it (retrying alone will not help)."""


@dataclass(frozen=True, order=True)
class RemoteFile:
    """One published file; sorts in application order (year, then number)."""

    year: int
    number: int
    name: str
    kind: str  # "baseline" or "updatefile"
    #: What the listing says of the file besides its name (modification time, size).
    listed: str = field(default="", compare=False)
    #: A re-issue of an applied file (:func:`find_reissues`): the MD5 applied before.
    reissue: str = field(default="", compare=False)

    @property
    def folder(self) -> str:
        return FOLDERS[self.kind]

    @property
    def key(self) -> str:
        """NLM's spelling of the name (all lower case): how the store knows the file,
        however a listing spells it (:func:`applied_files`)."""
        return nlm_file_key(self.name)


def parse_listing(html: str, kind: str) -> list[RemoteFile]:
    """The ``pubmedYYnNNNN.xml.gz`` files linked from a directory listing, in order:
    one file per number, however often it is linked or however its name is spelled (a
    copy made through a case-insensitive share lists ``PubMed26N0002.xml.gz`` beside
    ``pubmed26n0002.xml.gz``: NLM's spelling, all lower case, is kept where listed)."""
    seen: dict[tuple[int, int], RemoteFile] = {}
    for name in _HREF_RE.findall(html):
        order = nlm_file_order(name)  # the one rule of an NLM name (ingest.records)
        if order is None:
            continue
        had = seen.get(order)
        if had is None or (had.name != had.name.lower() and name == name.lower()):
            seen[order] = RemoteFile(*order, name, kind)
    return sorted(seen.values())


def listed_entries(html: str) -> dict[str, str]:
    """What a directory listing says of each ``pubmedYYnNNNN.xml.gz`` besides its name
    (an Apache-style index, as NCBI's: ``<a href=NAME>NAME</a>  2025-12-11 14:07  19M``),
    whitespace folded: the modification time and size, compared as they are written; and
    of its ``.md5`` (after ``" | "``), so that a ``.md5`` a mirror copies after its file
    (a run may come between the two) changes the entry too."""
    files: dict[str, str] = {}
    sums: dict[str, str] = {}
    for m in _ENTRY_RE.finditer(html):
        entry = " ".join(m.group(3).split())[:_ENTRY_MAX]
        (sums if m.group(2) else files)[m.group(1)] = entry
    return {n: f"{e} | {sums[n]}" if sums.get(n) else e for n, e in files.items()}


def parse_md5(text: str, name: str) -> str:
    """The hex digest for ``name`` in an NLM ``.md5`` file (or ``md5sum`` output).

    Raises:
        ChecksumError: The file names another file or holds no digest.
    """
    for rx in (_MD5_RE, _MD5SUM_RE):
        for m in rx.finditer(text):
            if m.group("name").strip().lstrip("*") == name:
                return m.group("hex").lower()
    raise ChecksumError(f"{name}.md5 holds no MD5 for {name}: {text[:120]!r}")


# ------------------------------------------------------------------------------ sources


class _HttpSource:
    def __init__(self, settings: Settings) -> None:
        self.client = HttpClient(
            settings, settings.pubmed_files_url, url_setting="LITPULSE_PUBMED_FILES_URL"
        )
        #: The last listing of each folder (:func:`find_reissues` reads its entries).
        self.pages: dict[str, str] = {}

    def listing(self, folder: str) -> str:
        response = self.client.get(f"{folder}/")
        self.pages[folder] = str(response.text)
        return self.pages[folder]

    def where(self, folder: str) -> str:
        """The listing's address, as an error may quote it."""
        return self.client.redact(self.client.url(f"{folder}/"))

    def text(self, path: str, stop: threading.Event | None = None) -> str:
        response = self.client.get(path, stop=stop)
        return str(response.text)

    def fetch(self, path: str, dest: Path, stop: threading.Event | None = None) -> tuple[int, str]:
        return self.client.download(path, dest, stop=stop)

    def close(self) -> None:
        self.client.close()


class _LocalSource:
    """A ``file://`` mirror of the PubMed file server (air-gapped sites)."""

    def __init__(self, settings: Settings) -> None:
        self.root = Path(unquote(urlsplit(settings.pubmed_files_url).path))
        self.pages: dict[str, str] = {}

    def listing(self, folder: str) -> str:
        """The names in ``folder``, as links. A folder that is not there (a typo in the
        URL, a share not mounted) or cannot be read is refused as an HTTP mirror's 404 is,
        never listed as empty: "nothing published" would pass every run that applies
        nothing (:func:`_listed_baseline` leaves out a pruned mirror's baseline/)."""
        where = self.root / folder
        try:
            names = sorted(p.name for p in where.iterdir())
        except OSError as exc:
            raise InvalidRequestError(f"cannot list {where}: {exc.strerror}") from None
        rows = []
        for n in names:  # each with its modification time and size, as a server lists them
            try:
                st = (where / n).stat()
                entry = f" {st.st_mtime_ns} {st.st_size}"
            except OSError:
                entry = ""
            rows.append(f'<a href="{n}">{n}</a>{entry}\n')
        # a folder read is an index
        self.pages[folder] = f"<title>Index of {where}</title>\n" + "".join(rows)
        return self.pages[folder]

    def where(self, folder: str) -> str:
        """The folder listed, as an error may quote it."""
        return str(self.root / folder)

    def text(self, path: str, stop: threading.Event | None = None) -> str:
        try:
            return (self.root / path).read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise InvalidRequestError(f"cannot read {self.root / path}: {exc.strerror}") from None

    def fetch(self, path: str, dest: Path, stop: threading.Event | None = None) -> tuple[int, str]:
        """Copy ``path`` to ``dest`` (stopping between blocks once ``stop`` is set)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        where = self.root / path

        def unreadable(exc: OSError) -> IncompleteSourceError:
            # listed, and not there to read (a dangling link, a share gone): as a mirror
            # still copying is, tried again by a later run; a write error of dest stays
            # the caller's (a local one)
            return IncompleteSourceError(f"the mirror lists {path}, but {where} cannot be "
                                         f"read: {exc.strerror or exc}")  # fmt: skip

        def read() -> bytes:
            try:
                return src.read(1 << 20)
            except OSError as exc:
                raise unreadable(exc) from None

        try:
            src = where.open("rb")
        except OSError as exc:
            raise unreadable(exc) from None
        with src, dest.open("wb") as out:
            for block in iter(read, b""):
                raise_if_stopped(stop, f"copying {self.root / path}")
                out.write(block)
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def close(self) -> None:
        pass


def downloads_folder(settings: Settings, engine: Engine | None = None) -> Path:
    """Where this store stages its downloads: ``<home>/downloads/<store id>``.

    One folder per store (:func:`litpulse.core.db.store_id`): two stores sharing one
    ``LITPULSE_HOME`` (two databases: a test store beside production) never take, discard
    or clean up each other's files, which may carry the same NLM names with other content.
    """
    folder = settings.ensure_home() / "downloads" / db.store_id(engine or db.connect(settings))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


#: The marker a bootstrap's stager writes beside a file it staged and verified
#: (:mod:`ingest.bootstrap`), with its ``.tmp`` while it is written.
STAGED_MARKER = ".verified"
#: The lease a stager of ``name`` holds while it downloads it (:mod:`ingest.bootstrap`).
STAGE_LEASE = "bootstrap-stage:{name}"


def discard_download(folder: Path, name: str) -> None:
    """Remove the download of ``name`` in ``folder``: the file, a stager's marker of it
    (and the marker's ``.tmp``) and a partial download (``.part``: ``ingest.http``)."""
    path = folder / name
    for suffix in (STAGED_MARKER, STAGED_MARKER + ".tmp", "", ".part"):
        path.with_name(name + suffix).unlink(missing_ok=True)


def discard_applied_downloads(
    folder: Path, engine: Engine, pending: Iterable[RemoteFile] = ()
) -> list[str]:
    """Remove the downloads in ``folder`` of the files this store applied. A run killed
    after recording a file (``source_files``), before or while it deleted the download,
    left it, and no run downloads an applied file again: every update-file run and
    bootstrap calls this at its start, under the store's writer lease.

    A re-issue of an applied file (in ``pending``, the run's plan) keeps what is of the
    new issue (:func:`_new_issue_download`): a stager's verified copy of another MD5 than
    the one applied, and whatever a live stager is downloading; what lies there of the
    issue applied before, or of an issue the store never knew the MD5 of, is removed.

    Returns:
        The names whose downloads were removed.
    """
    applied, _ = applied_files(engine)
    reissues = {f.key: f for f in pending if f.reissue}
    removed: set[str] = set()
    for path in folder.glob("*.xml.gz*"):
        name = path.name.split(".xml.gz", 1)[0] + ".xml.gz"
        key = nlm_file_key(name)
        if name in removed or key not in applied:
            continue
        if key in reissues and _new_issue_download(folder, name, reissues[key], engine):
            continue
        discard_download(folder, name)
        removed.add(name)
    if removed:
        logger.info("removed the downloads of %d applied file(s) a killed run left: %s",
                    len(removed), sorted(removed)[:20])  # fmt: skip
    return sorted(removed)


def _new_issue_download(folder: Path, name: str, f: RemoteFile, engine: Engine) -> bool:
    """Whether the download of ``name`` in ``folder`` is (or is becoming) the re-issue
    ``f`` awaited: a live process stages it now (its lease), or a stager verified it under
    another MD5 than the one applied (:attr:`RemoteFile.reissue`, a known MD5)."""
    if db.live_holder(engine, STAGE_LEASE.format(name=name)) is not None:
        return True
    if f.reissue == UNKNOWN_ISSUE:
        return False
    try:
        md5 = (folder / (name + STAGED_MARKER)).read_text(encoding="ascii").split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return md5.lower() != f.reissue.lower()


def _source(settings: Settings) -> _HttpSource | _LocalSource:
    url = settings.pubmed_files_url
    if url.startswith("file://"):
        return _LocalSource(settings)
    if url.startswith(("http://", "https://")):
        return _HttpSource(settings)
    raise ConfigError(f"LITPULSE_PUBMED_FILES_URL must be http(s) or file, got {url!r}")


@dataclass(frozen=True)
class FilePlan:
    """What to apply of the server's listing: the files not applied yet, in application
    order, up to the first gap in the numbers (``held`` says which file is missing and
    what waits for it), and how many files the listing offered."""

    pending: tuple[RemoteFile, ...]
    listed: int
    held: str | None = None
    #: Listed files this store applied before.
    applied: int = 0
    #: Applied files NLM re-issued under their names (also in ``pending``).
    reissued: tuple[str, ...] = ()
    #: ``(name, listing entry)`` of applied files whose entry changed while their MD5 did
    #: not (or was not known): recorded by :func:`note_listed`, not applied again.
    restamp: tuple[tuple[str, str], ...] = ()
    #: ``(year, last number)`` of each annual baseline listed: recorded by
    #: :func:`note_listed`, so that a mirror pruning it later still says where that
    #: year's update files begin (:func:`known_baselines`).
    baselines: tuple[tuple[int, int], ...] = ()

    def raise_if_held(self) -> None:
        """Raise :class:`IncompleteSourceError` when files wait behind a gap."""
        if self.held is not None:
            raise IncompleteSourceError(self.held)


def list_remote_files(settings: Settings, *, include_baseline: bool = False) -> list[RemoteFile]:
    """Every published file, in application order (baseline first when included): one
    annual baseline (:func:`plan_files`), the update files from its year on."""
    source = _source(settings)
    try:
        baseline = _listed_baseline(source, strict=include_baseline)
        return _listed_files(source, baseline if include_baseline else [], set())[0]
    finally:
        source.close()


def plan_files(
    settings: Settings,
    applied: Mapping[str, str],
    *,
    include_baseline: bool = False,
    accept_gaps: bool = False,
    issues: Mapping[str, tuple[str, str | None]] | None = None,
    known: Mapping[int, int] | None = None,
) -> FilePlan:
    """The files to apply now, from the server's listing and the store's ``applied`` files
    (name → kind, ``source_files``).

    The listing is taken for what it is only when it can be whole: a ``baseline/`` listing
    naming no file (an error page served with status 200) raises
    :class:`IncompleteSourceError`; of several annual baselines a mirror kept, the one the
    store started (else the newest) is loaded, and update files of earlier years are left
    out (their records are in that baseline); files are numbered without gaps within a
    year (NLM's update files go on from the baseline's last number), so a number missing
    between listed or applied ones (a mirror still copying) holds every later file back
    (``FilePlan.held``) — applied after it, a deletion or revision would land before the
    record it changes. ``accept_gaps`` applies past such gaps (a file NLM withdrew).
    ``issues`` (name → MD5 and listing entry applied, :func:`applied_files`): the applied
    files NLM re-issued are pending again (:func:`find_reissues`). Where a year's update
    files begin is known from that year's baseline listing (its last number + 1; NCBI
    always lists it), from ``known`` (the baselines this store saw listed before:
    :func:`known_baselines`) or from the files of that year it applied; a later year than
    the store's first whose start is known from none of them (a mirror that pruned its
    ``baseline/`` across the year's turn) holds its files back, never taken to begin at
    the lowest number listed (the end of the year before and the new year's first files
    could be missing unseen); ``accept_gaps`` takes it so.

    Raises:
        IncompleteSourceError: The baseline listing names no file.
        BootstrapUnfinishedError: Update files only (no ``include_baseline``) while
            baseline files of the annual baseline this store started are not applied.
    """
    source = _source(settings)
    try:
        return _plan(source, applied, include_baseline, accept_gaps, issues, known)
    finally:
        source.close()


def applied_files(
    engine: Engine,
) -> tuple[dict[str, str], dict[str, tuple[str, str | None]]]:
    """The files this store applied (``source_files``): name → kind, and name → the MD5
    and listing entry applied (the ``issues`` of :func:`plan_files`), each NLM file under
    NLM's spelling of its name (:attr:`RemoteFile.key`), however it was listed when it
    was applied: a listing that spells it otherwise later lists the same file."""
    sf = source_files.c
    with engine.connect() as conn:
        rows = conn.execute(select(sf.name, sf.kind, sf.md5, sf.listed)).all()
    keys = [nlm_file_key(r.name) for r in rows]
    return ({k: r.kind for k, r in zip(keys, rows, strict=True)},
            {k: (r.md5, r.listed) for k, r in zip(keys, rows, strict=True)})  # fmt: skip


def note_listed(engine: Engine, plan: FilePlan) -> None:
    """Record the listing entries of applied files found unchanged (``plan.restamp``), so
    that the next run reads their ``.md5`` only when the entry changes again, and the last
    number of each annual baseline listed (``plan.baselines``) not recorded yet or lower
    (:func:`known_baselines`)."""
    known = known_baselines(engine) if plan.baselines else {}
    new = [(year, last) for year, last in plan.baselines if known.get(year, 0) < last]
    if not plan.restamp and not new:
        return
    sf = source_files.c
    with engine.begin() as conn:
        for name, entry in plan.restamp:
            conn.execute(
                update(source_files).where(func.lower(sf.name) == name).values(listed=entry)
            )  # fmt: skip
        for year, last in new:
            db.upsert(conn, checkpoints, [{
                "scope": BASELINES_SCOPE, "key": f"{year:02d}", "status": "listed",
                "value": {"last": last}, "updated_at": utcnow(),
            }], keys=["scope", "key"])  # fmt: skip


def known_baselines(engine: Engine) -> dict[int, int]:
    """The last number of each annual baseline this store saw listed (year → number),
    recorded by :func:`note_listed`: that year's update files begin after it."""
    c = checkpoints.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.key, c.value).where(c.scope == BASELINES_SCOPE)).all()
    return {int(key): int((value or {})["last"]) for key, value in rows
            if key.isdigit() and (value or {}).get("last")}  # fmt: skip


def find_reissues(
    source: _HttpSource | _LocalSource,
    remote: list[RemoteFile],
    issues: Mapping[str, tuple[str, str | None]],
) -> tuple[list[RemoteFile], list[tuple[str, str]]]:
    """The applied files of ``remote`` NLM re-issued under their names, each with the MD5
    applied before (``RemoteFile.reissue``), and the entries to record of those found
    unchanged (:attr:`FilePlan.restamp`).

    Cheap, as NCBI asks: an applied file's ``.md5`` is read again only where the listing's
    entry for it (modification time and size: :func:`listed_entries`) differs from the one
    recorded when it was applied, or, where either is not known (a listing without them, a
    file applied by an older release), for the :data:`RECHECK_NEWEST` newest applied files;
    the entry of an older applied file is then recorded as it is (no request). A re-issue is
    a ``.md5`` naming another MD5 than the one applied; a changed entry with the same MD5
    (the file copied again) is only recorded. An applied file's ``.md5`` that cannot be
    read (gone, or an error page) is left to the next run, with a warning: it holds back
    no other file.
    """
    done = [f for f in remote if f.key in issues]
    newest = {f.key for f in done[-RECHECK_NEWEST:]}
    found: list[RemoteFile] = []
    restamp: list[tuple[str, str]] = []
    for f in done:
        md5, was = issues[f.key]
        if f.listed and was and f.listed == was:
            continue
        if not (f.listed and was) and f.key not in newest:
            if f.listed:
                restamp.append((f.key, f.listed))  # first known: nothing to compare
            continue
        try:
            published = parse_md5(source.text(f"{f.folder}/{f.name}.md5"), f.name)
        except (InvalidRequestError, ChecksumError) as exc:
            logger.warning("%s is applied and its listing entry changed, but its .md5 "
                           "cannot be read (%s): checked again next run", f.name, exc)
            continue
        if published != md5:
            found.append(replace(f, reissue=md5))
        elif f.listed and f.listed != was:
            restamp.append((f.key, f.listed))
    return found, restamp


def _baseline_years(applied: Mapping[str, str]) -> set[int]:
    """The years of the baseline files this store applied (a bootstrap started)."""
    orders = (nlm_file_order(name) for name, kind in applied.items() if kind == "baseline")
    return {order[0] for order in orders if order is not None}


def _past_the_baseline(applied: Mapping[str, str]) -> bool:
    """Whether this store applied an update file after its last baseline file: its
    bootstrap finished (a bootstrap applies update files only after every baseline file)."""
    last: dict[str, tuple[int, int]] = {}
    for name, kind in applied.items():
        order = nlm_file_order(name)
        if order is not None and order > last.get(kind, (0, 0)):
            last[kind] = order
    return "baseline" in last and last.get("updatefile", (0, 0)) > last["baseline"]


def _listed(source: _HttpSource | _LocalSource, kind: str) -> list[RemoteFile]:
    """The files the listing of ``kind``'s folder names. A page naming none is an empty
    folder only when it is a directory index (:data:`_INDEX_RE`): anything else answered
    with status 200 (a proxy's or CDN's error or sign-in page, an empty body) would read
    as "nothing published", and every run would succeed applying nothing.

    Raises:
        IncompleteSourceError: The page names no file and is no directory index.
    """
    folder = FOLDERS[kind]
    page = source.listing(folder)
    files = parse_listing(page, kind)
    if not files and not _INDEX_RE.search(page):
        raise IncompleteSourceError(
            f"{source.where(folder)} answered a page that is no directory index (an error "
            f"or sign-in page of a proxy, an empty answer): {page[:120]!r}; nothing was "
            "applied (run again once the mirror lists its files; check "
            "LITPULSE_PUBMED_FILES_URL)"
        )
    return files


def _listed_baseline(source: _HttpSource | _LocalSource, *, strict: bool) -> list[RemoteFile]:
    """The ``baseline/`` listing. ``strict`` (a bootstrap, or one not known to be
    finished): a listing naming no file — an error page served with status 200, an empty
    folder — is refused, never read as "no baseline file left". Otherwise an absent or
    empty folder (a local mirror pruned after its bootstrap) lists nothing."""
    try:
        files = _listed(source, "baseline")
    except InvalidRequestError:  # 404: no such folder
        if strict:
            raise
        return []
    if not files and strict:
        raise IncompleteSourceError(
            f"the baseline/ listing names no PubMed file (an empty folder): "
            f"{source.where(FOLDERS['baseline'])}; nothing was applied"
        )
    return files


def _listed_files(
    source: _HttpSource | _LocalSource, baseline: list[RemoteFile], started: set[int]
) -> tuple[list[RemoteFile], int | None]:
    """The files to consider in application order — of ``baseline`` (given: a bootstrap)
    one annual baseline, then the update files from its year on — and the year of the
    baseline they go on from (``None``: no baseline listed or applied)."""
    found: list[RemoteFile] = []
    year: int | None = max(started) if started else None
    if baseline:
        years = sorted({f.year for f in baseline})
        year = max((y for y in years if y in started), default=years[-1])
        if len(years) > 1:
            logger.warning(
                "the baseline/ folder holds the annual baselines of %s: only %02d's is "
                "loaded (the one this store started, else the newest)",
                ", ".join(f"{y:02d}" for y in years), year,
            )  # fmt: skip
        found += [f for f in baseline if f.year == year]
    updates = _listed(source, "updatefile")
    if year is not None:
        older = [f.name for f in updates if f.year < year]
        if older:
            logger.info("%d update files of years before the %02d baseline left out (first "
                        "%s): that baseline holds their records", len(older), year, older[0])
            updates = [f for f in updates if f.year >= year]
    found += updates
    # one name may be listed in both folders in a transition: keep the first kind
    unique: dict[str, RemoteFile] = {}
    for f in found:
        unique.setdefault(f.name, f)
    return sorted(unique.values()), year


def _gaps(
    remote: list[RemoteFile],
    applied: Mapping[str, str],
    baseline_year: int | None,
    baseline_tops: Mapping[int, int],
) -> list[tuple[int, int, int]]:
    """Every ``(year, first, last)`` run of numbers missing among the listed and applied
    files' numbers, above the highest applied one of its year (a hole below it is behind
    the store already), in order: the first holds the files after it back, and
    ``accept_gaps`` skips them all (each is named: :func:`_held_message`). The year of
    the store's baseline counts from 1; another year whose baseline is listed (NLM's next
    one, in December) or was seen listed (``baseline_tops``: :func:`known_baselines`) from
    that baseline's last number + 1, where its update files begin; the first year known
    (a store started on update files) and a year of which the store applied files from
    their lowest known number. Any later year's start is unknown (a mirror that pruned its
    ``baseline/`` across the year's turn): ``(year, 0, lowest listed - 1)``, the whole
    year held (:func:`_unknown_start`), never taken to begin at its lowest listed number;
    the holes among its listed files follow."""
    numbers: dict[int, set[int]] = {}
    applied_top: dict[int, int] = {}
    for f in remote:
        numbers.setdefault(f.year, set()).add(f.number)
    for name in applied:
        order = nlm_file_order(name)
        if order is not None:
            year, number = order
            numbers.setdefault(year, set()).add(number)
            applied_top[year] = max(applied_top.get(year, 0), number)
    gaps = []
    for year, have in numbers.items():
        if year == baseline_year:
            floor = 1
        elif year in baseline_tops:
            floor = baseline_tops[year] + 1
        elif year not in applied_top and year > min(numbers):
            # where its update files begin is not known: never the lowest listed number
            gaps.append((year, 0, min(have) - 1))
            floor = min(have)
        else:
            floor = min(have)
        start = max(floor, applied_top.get(year, 0) + 1)
        missing: int | None = start
        while missing is not None:
            missing = next((n for n in range(missing, max(have)) if n not in have), None)
            if missing is not None:
                last = next(n for n in range(missing, max(have) + 1) if n in have) - 1
                gaps.append((year, missing, last))
                missing = last + 1
    return sorted(gaps)


def _held_message(
    gap: tuple[int, int, int],
    waiting: list[RemoteFile],
    before: str | None = None,
    further: Sequence[tuple[int, int, int]] = (),
) -> str:
    """Why ``waiting`` is held behind ``gap``, naming every missing file: a pruned mirror
    (one keeping only recent files) is told from one file NLM withdrew, the only case
    ``--accept-gaps`` is for. A year of unknown start (``first`` 0): :func:`_unknown_start`.
    ``further``: the gaps among the waiting files, which ``--accept-gaps`` skips too."""
    told = _held_by(gap, waiting, before)
    if not further:
        return told
    return (f"{told}. Missing among the files that wait as well, and skipped too by "
            f"--accept-gaps: {'; '.join(map(_gap_named, further))}")


def _held_by(gap: tuple[int, int, int], waiting: list[RemoteFile], before: str | None) -> str:
    """:func:`_held_message` of the first gap."""
    year, first, last = gap
    if first == 0:
        return _unknown_start(year, waiting, before)
    name = f"pubmed{year:02d}n{first:04d}.xml.gz"
    if first == last:
        missing, cause = f"{name} is not on the server", "a mirror still copying?"
        way_out = ("if NLM withdrew it, apply past it once: `litpulse ingest --updatefiles "
                   "--accept-gaps` (a bootstrap: `litpulse bootstrap --accept-gaps`)")
    else:
        missing = (f"{name}..pubmed{year:02d}n{last:04d}.xml.gz ({last - first + 1} files) "
                   "are not on the server")
        cause = "a mirror still copying, or one that keeps only recent files?"
        way_out = ("--accept-gaps would skip them all, their records lost for good: point "
                   "LITPULSE_PUBMED_FILES_URL at a server that holds them")
    it, holds, is_ = ("it", "it holds", "it is") if first == last else (
        "them", "they hold", "they are")
    return (
        f"{missing}, though files after {it} are: the {len(waiting)} file(s) from "
        f"{waiting[0].name} on wait for {it} ({cause}), since applied before {it} they "
        f"would change records {holds}. Run again once {is_} there; {way_out}"
    )


def _unknown_start(year: int, waiting: list[RemoteFile], before: str | None) -> str:
    """Why the update files of ``year`` (``waiting``, from its lowest listed) are held:
    where that year's numbering begins is known only from its baseline's listing, which
    the mirror does not hold (pruned) and this store never saw. ``before``: the newest
    file of an earlier year the store applied."""
    full, first = f"20{year:02d}", waiting[0].name
    since = f"after {before}" if before else "before it"
    return (
        f"where {full}'s update files begin is not known: the server lists them from "
        f"{first} on, but not {full}'s baseline (baseline/: NLM numbers a year's update "
        f"files on from the last file of that year's baseline), and this store never saw "
        f"it listed. Files {since} may be missing unseen (the rest of the year before's "
        f"update files, {full}'s first ones): the {len(waiting)} file(s) from {first} on "
        f"wait. Run again once the server lists {full}'s baseline (a mirror: restore its "
        f"baseline/ folder, the {full} files or their names), or, if the server holds every "
        f"update file {since}, apply from {first} on once: `litpulse ingest --updatefiles "
        "--accept-gaps` (a bootstrap: `litpulse bootstrap --accept-gaps`)"
    )


def _plan(
    source: _HttpSource | _LocalSource,
    applied: Mapping[str, str],
    include_baseline: bool,
    accept_gaps: bool,
    issues: Mapping[str, tuple[str, str | None]] | None = None,
    known: Mapping[int, int] | None = None,
) -> FilePlan:
    started = _baseline_years(applied)
    # the baseline listing must be whole where it decides what is applied: a bootstrap,
    # or update files while this store's bootstrap is not known to be finished
    strict = include_baseline or (bool(started) and not _past_the_baseline(applied))
    baseline = _listed_baseline(source, strict=strict)
    if not include_baseline:
        _refuse_before_the_baseline(baseline, applied, started)
    remote, year = _listed_files(source, baseline if include_baseline else [], started)
    listed: dict[int, int] = {}
    for f in baseline:
        listed[f.year] = max(listed.get(f.year, 0), f.number)
    # NLM's baseline of a year never shrinks: a shorter listing (a mirror pruning it) does
    # not move where that year's update files begin, as the store recorded it
    tops = dict(known or {})
    for y, last in listed.items():
        tops[y] = max(tops.get(y, 0), last)
    entries = {n: e for page in source.pages.values() for n, e in listed_entries(page).items()}
    remote = [replace(f, listed=entries.get(f.name, "")) for f in remote]
    pending = [f for f in remote if f.key not in applied]
    already = len(remote) - len(pending)
    if applied and pending:
        newest = max((f for f in remote if f.key in applied), default=None)
        late = [f.name for f in pending if newest is not None and f < newest]
        if late:
            logger.warning("files older than the newest applied one are pending: %s", late)
    reissued, restamp = find_reissues(source, remote, issues) if issues else ([], [])
    for f in reissued:
        logger.warning("%s was re-issued under its name (MD5 %s applied): it is applied "
                       "again", f.name, f.reissue)  # fmt: skip
    pending = sorted(pending + reissued)
    names = tuple(f.name for f in reissued)

    def made(kept: Iterable[RemoteFile], held: str | None = None) -> FilePlan:
        return FilePlan(tuple(kept), len(remote), held, already, names, tuple(restamp),
                        tuple(sorted(listed.items())))
    gaps = _gaps(remote, applied, year, tops)
    if not gaps:
        return made(pending)
    gap = gaps[0]
    waiting = [f for f in pending if (f.year, f.number) > gap[:2]]
    if accept_gaps:  # every gap is skipped: each is named
        logger.warning("applying past every file missing from the listing (accept_gaps): "
                       "%s", "; ".join(map(_gap_named, gaps)))  # fmt: skip
        return made(pending)
    if not waiting:
        return made(pending)
    kept = tuple(f for f in pending if (f.year, f.number) < gap[:2])
    orders = [o for o in map(nlm_file_order, applied) if o is not None and o[0] < gap[0]]
    before = f"pubmed{max(orders)[0]:02d}n{max(orders)[1]:04d}.xml.gz" if orders else None
    return made(kept, _held_message(gap, waiting, before, gaps[1:]))


def _gap_named(gap: tuple[int, int, int]) -> str:
    """One run of missing numbers (:func:`_gaps`) in words: its files, or a year's start
    that is not known (``first`` 0)."""
    year, first, last = gap
    if first == 0:
        return (f"where 20{year:02d}'s update files begin (its baseline is not listed: "
                "taken to be the lowest listed)")  # fmt: skip
    name = f"pubmed{year:02d}n{first:04d}.xml.gz"
    if first == last:
        return name
    return f"{name}..pubmed{year:02d}n{last:04d}.xml.gz ({last - first + 1} files)"


def _refuse_before_the_baseline(
    baseline: list[RemoteFile], applied: Mapping[str, str], started: set[int]
) -> None:
    """Raise :class:`BootstrapUnfinishedError` when this store applied baseline files and
    the server lists baseline files of the same annual baseline (the year of the name) it
    has not: update files applied before them would be out of order (a record the baseline
    holds and an update file deletes would come back as a bare tombstone, its content
    lost). NLM's next annual baseline, published each December, does not count: a store
    whose baseline is complete goes on with the update files."""
    left = [f.name for f in baseline if f.key not in applied and f.year in started]
    if left:
        raise BootstrapUnfinishedError(
            f"a bootstrap is unfinished: {len(left)} baseline file(s) are not applied yet "
            f"(first {left[0]}); update files must come after them: run `litpulse bootstrap` "
            "(it applies them, then the update files)"
        )


# -------------------------------------------------------------------------------- apply


def _download_verified(
    source: _HttpSource | _LocalSource,
    f: RemoteFile,
    dest: Path,
    stop: threading.Event | None = None,
) -> tuple[int, str]:
    """Download ``f`` to ``dest`` until its MD5 matches the published one (``stop``: see
    :meth:`ingest.http.HttpClient.download`). Each download reads the ``.md5`` again: a
    mirror mid-update changes a file and its ``.md5`` together, so the digest read before
    the first try may belong to a file no longer served."""
    from ingest.parse import document_damage

    expected = ""
    for attempt in range(1, CHECKSUM_ATTEMPTS + 1):
        expected = parse_md5(source.text(f"{f.folder}/{f.name}.md5", stop), f.name)
        size, digest = source.fetch(f"{f.folder}/{f.name}", dest, stop)
        if digest == expected:
            # NLM's files are whole: one cut short under a matching MD5 (a mirror that
            # copied it half-way, then its .md5) is not applied, or its records after the
            # cut would be lost for good once it is recorded as applied
            damage = document_damage(dest)
            if damage is not None:
                dest.unlink(missing_ok=True)
                raise IncompleteSourceError(
                    f"{f.name} matches its published MD5 but is not whole: {damage}; the "
                    "server holds a damaged copy: this file and the later ones were not "
                    "applied (run again once the mirror is repaired)"
                )
            return size, digest
        logger.warning(
            "%s: MD5 %s does not match the published %s (download %d/%d)",
            f.name,
            digest,
            expected,
            attempt,
            CHECKSUM_ATTEMPTS,
        )
        dest.unlink(missing_ok=True)
    raise ChecksumError(
        f"{f.name}: MD5 still wrong after {CHECKSUM_ATTEMPTS} downloads (published {expected}); "
        "this file and the later ones were not applied"
    )


def apply_updates(
    settings: Settings,
    *,
    max_files: int | None = None,
    include_baseline: bool = False,
    progress: bool = False,
    workers: int | None = None,
    accept_gaps: bool = False,
) -> IngestCounts:
    """Download, verify and apply the update files not applied yet, in number order
    (:func:`plan_files`).

    Args:
        settings: ``pubmed_files_url``, ``home`` (downloads), retry settings, database.
        max_files: Apply at most this many files in this call.
        include_baseline: Also apply the files of ``baseline/`` (before the updates).
        progress: Log each file as it is applied.
        workers: Parse processes feeding the store (default ``settings.ingest_workers``;
            0: parse in this process). A file is parsed while it is stored.
        accept_gaps: Apply the files after a number missing from the listing (see
            :func:`plan_files`).

    Returns:
        The summed counts of the files applied.

    Raises:
        ChecksumError: A file kept failing its MD5; it and later files were not applied.
        TransientSourceError: The server kept failing.
        BootstrapUnfinishedError: A bootstrap applied some baseline files and others are
            still pending (the run is recorded as failed, nothing is applied).
        IncompleteSourceError: The listing is not whole (an error page for the baseline;
            a number missing: the files before it were applied, the run fails), or a file
            is cut short under its MD5 (it and later files are not applied).
    """
    if max_files is not None and max_files < 0:
        raise ConfigError(f"max_files must be >= 0, got {max_files!r}")
    engine = db.connect(settings)
    store = Store(engine)
    downloads = downloads_folder(settings, engine)
    applied: list[str] = []
    source = _source(settings)
    redact = getattr(getattr(source, "client", None), "redact", str)
    try:
        with recorded_run(  # no window's check judges an update file's records
            store, "updatefiles", target=str(settings.pubmed_files_url), redact=redact,
            judged=True,
        ) as run:
            details = run.details = {"files": applied, "include_baseline": include_baseline}
            run.on_failure = lambda: {"failed_at": utcnow().isoformat()}
            kinds, issues = applied_files(engine)
            plan = _plan(source, kinds, include_baseline, accept_gaps, issues,
                         known_baselines(engine))
            note_listed(engine, plan)
            pending = list(plan.pending)
            discard_applied_downloads(downloads, engine, pending)
            details.update(listed=plan.listed, pending=len(pending))
            if plan.held is not None:
                details["held"] = plan.held
            if max_files is not None:
                pending = pending[:max_files]
            total_bytes = 0
            read = store.issues_read(_file_ref(f).sequence for f in pending)
            for n, f in enumerate(pending, 1):
                if progress:
                    logger.info("update file %d/%d: %s", n, len(pending), f.name)
                details["current"] = f.name
                dest = downloads / f.name
                size, digest = _download_verified(source, f, dest)
                total_bytes += size
                file_counts = _apply_file(settings, store, f, dest, size, digest, run, workers,
                                          read)
                dest.unlink(missing_ok=True)
                applied.append(f.name)
                logger.info("applied %s: %s", f.name, file_counts.to_dict())
            details.pop("current", None)
            details["bytes"] = total_bytes
            details.update(coverage_details(plan.pending, pending))
            if len(pending) == len(plan.pending):  # this call reached the gap
                plan.raise_if_held()  # what was applied before it stays applied
    finally:
        source.close()
    return run.counts


def coverage_details(
    offered: Iterable[RemoteFile], applied: Iterable[RemoteFile]
) -> dict[str, int]:
    """How far a run reaches that applied ``applied`` of the files its plan ``offered``, as
    its details (the one home of what :func:`litpulse.pipeline.planning.last_watermark`
    reads): ``left``, the files offered and left (``max_files``: the run does not hold
    what NLM published up to now), and ``update_files``, the update files applied (a run
    of baseline files only holds what the baseline held)."""
    applied = list(applied)
    return {
        "left": len(list(offered)) - len(applied),
        "update_files": sum(f.kind == "updatefile" for f in applied),
    }


def reissue_notes(details: Mapping[str, object]) -> list[str]:
    """What a run's details say of the re-issued files it applied again (``reissued``:
    :func:`_store_file`), one line each, as ``litpulse status`` shows them."""
    told = details.get("reissued")
    return [
        f"re-issued file applied again: {r['name']} (MD5 {r['md5']}, replacing "
        f"{'an issue whose MD5 was never recorded' if r['was'] == UNKNOWN_ISSUE else r['was']}; "
        f"{r['earlier_only']} record(s) only the earlier issue held kept)"
        for r in (told if isinstance(told, list) else [])
    ]


def _file_ref(f: RemoteFile) -> SourceRef:
    """The source of ``f``'s items: the same whenever it is read (its number fixes its content)."""
    return SourceRef(f.kind, f.name, sequence=nlm_sequence(f.year, f.number))  # type: ignore[arg-type]


def _apply_file(
    settings: Settings,
    store: Store,
    f: RemoteFile,
    dest: Path,
    size: int,
    digest: str,
    run: OpenRun,
    workers: int | None = None,
    read: Mapping[int, str | None] | None = None,
) -> IngestCounts:
    """Parse and apply one verified file and record it (see :func:`_store_file`)."""
    from ingest import parse
    from ingest.parallel import parse_ordered, queue_batches_for
    from ingest.parse import ParseLimits

    n_workers = settings.ingest_workers if workers is None else workers
    limits = ParseLimits.from_settings(settings)
    file_counts = IngestCounts()
    jobs = [(dest, _file_ref(f))]
    with contextlib.closing(
        parse_ordered(
            jobs,
            workers=n_workers,
            limits=limits,
            parse=parse.iter_items,
            queue_batches=queue_batches_for(settings.store_batch),
        )  # fmt: skip
    ) as parsed:
        for _index, items in parsed:
            file_counts = _store_file(settings, store, f, items, size, digest, run, dest,
                                      read)
    return file_counts


def _store_file(
    settings: Settings,
    store: Store,
    f: RemoteFile,
    items: Iterable[StoreItem],
    size: int,
    digest: str,
    run: OpenRun,
    path: Path | None = None,
    read: Mapping[int, str | None] | None = None,
) -> IngestCounts:
    """Apply one verified file's parsed items and record it in ``source_files``.

    ``path``: the verified file, whose unpacked content's MD5 tells it from the issue a
    local copy recorded, where that is another MD5 (:meth:`Store.reissue`: an unpacked
    ``.xml`` copy of the same content is this issue, not an earlier one).

    ``read``: the issues this store had read of the run's files when the run began
    (:meth:`Store.issues_read`; the writer's lease keeps them so meanwhile): a file it
    never read, or read as this issue, is no re-issue, and is applied without asking
    :meth:`Store.reissue` (a transaction and a query a file); ``None``: ask it.

    The row is written after the file's last batch commits, so the file is not applied
    again. Each batch commits with a progress mark (:data:`PROGRESS_SCOPE`: the file's
    MD5, the items applied, their counts; for a re-issue, written with its new as-of time
    before the first batch, the MD5 it replaces), so a run resuming a file a killed run began
    goes on after the items that run committed, and the file records its whole counts,
    each item counted once (as do the runs: the killed run's row holds what it
    committed), unless another issue of the file was read since (a local copy: the as-of
    time moves past it now), which this one replaces whole, from its first item. A file
    whose MD5 differs from the mark's (re-issued meanwhile) is applied
    from its start as a re-issue of the mark's issue (:meth:`Store.reissue`: ranked after
    what that issue stored, never as replays of it); one begun by a release without marks
    is replayed from its start (a replay changes nothing stored).
    Each committed batch is added to the run's counts at once, so a run that fails later
    still says what it stored.
    """

    def on_batch(counts: IngestCounts) -> None:
        run.counts += counts

    mark = store.get_checkpoint(PROGRESS_SCOPE, f.name)
    value = mark["value"] if mark is not None else {}
    ours = value.get("md5") == digest  # a killed run began this issue of the file
    # a re-issue (of the issue applied, or of a local copy read first: Store.reissue)
    # ranks after the earlier issue, before the next file (ingest.rules); its progress
    # mark, written with it, keeps the issue replaced: the run that resumes the file
    # after a kill (the as-of time moved already) reports the re-issue as well
    # a mark of another MD5: a killed run began another issue of the file (its first
    # application, say: no issue recorded), which this one replaces, never replays
    other = "" if ours else str(value.get("md5") or "")
    ref = _file_ref(f)
    if f.reissue or other or read is None or read.get(ref.sequence, digest) != digest:
        with store.engine.begin() as conn:
            content = functools.partial(content_md5, path) if path is not None else None
            moved = store.reissue(ref, digest, was=f.reissue or other, content=content,
                                  conn=conn)  # fmt: skip
            was = moved or f.reissue
            # moved under a killed run's mark of this issue: another issue was read since
            # (a local copy), after the items that run applied: applied whole, from item 0
            if moved if ours else was:
                value = {"md5": digest, "items": 0, "counts": IngestCounts().to_dict(),
                         "was": was}  # fmt: skip
                store.set_checkpoint(PROGRESS_SCOPE, f.name, "applying", value, conn=conn)
                ours = True
    else:  # never read, or read as this issue: Store.reissue would return ""
        was = ""
    was = was or (str(value.get("was") or "") if ours else "")
    done, before = 0, IngestCounts()
    if ours and value.get("items"):
        done, before = int(value["items"]), IngestCounts(**value["counts"])
        logger.info("%s: going on after the %d items a killed run applied", f.name, done)

    def in_batch(conn: Connection, counts: IngestCounts, position: int) -> None:
        progress = {"md5": digest, "items": position, "counts": (before + counts).to_dict(),
                    "was": was}  # fmt: skip
        store.set_checkpoint(PROGRESS_SCOPE, f.name, "applying", progress, conn=conn)

    file_counts = before + store.apply(
        itertools.islice(items, done, None), run_id=run.id, batch_size=settings.store_batch,
        on_batch=on_batch, start=done, in_batch=in_batch,
    )  # fmt: skip
    if was:
        kept = store.earlier_issue_rows(_file_ref(f))
        logger.warning(
            "re-issued file applied again: %s (MD5 %s, was %s): %s; %d record(s) only the "
            "earlier issue held are kept", f.name, digest, was, file_counts.to_dict(),
            kept,
        )  # fmt: skip
        told = run.details.setdefault("reissued", [])
        told.append({"name": f.name, "md5": digest, "was": was, "earlier_only": kept})
    row = {
        "name": f.name,
        "kind": f.kind,
        "sequence": f.number,
        "md5": digest,
        "size": size,
        "run_id": run.id,
        "counts": file_counts.to_dict(),
        "applied_at": utcnow(),
        "listed": f.listed or None,
    }
    with store.engine.begin() as conn:  # one row of the file, however it was spelled
        sf = source_files.c
        conn.execute(delete(source_files).where(func.lower(sf.name) == f.key, sf.name != f.name))
        db.upsert(conn, source_files, [row], keys=["name"])
        store.delete_checkpoint(PROGRESS_SCOPE, f.name, conn=conn)
    return file_counts
