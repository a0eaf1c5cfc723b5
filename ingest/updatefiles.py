"""Apply NLM's PubMed update files (and, on request, baseline files) in number order.

NLM publishes ``pubmedYYnNNNN.xml.gz`` files under ``updatefiles/`` (daily, sometimes
several a day) and ``baseline/`` (yearly), each with a ``.md5`` beside it in the form
``MD5(pubmed26n1280.xml.gz)= <32 hex digits>``. :func:`apply_updates`:

1. lists the folders (the HTML index of ``settings.pubmed_files_url``; a ``file://``
   mirror is listed from disk);
2. skips files already recorded in ``source_files``;
3. downloads each remaining file to ``<home>/downloads`` (a partial ``.part`` file is
   resumed with an HTTP Range request, or restarted when the server ignores Range);
4. verifies it against its ``.md5``; a mismatch is downloaded again (up to two more
   times) and then fails the run with :class:`~litpulse.core.errors.ChecksumError` — that
   file and every later one stay unapplied, so the order is never broken;
5. applies it through :meth:`ingest.store.Store.apply` with
   ``SourceRef("updatefile" | "baseline", name, sequence=nlm_sequence(YY, NNNN))`` (year
   first: NLM's numbering restarts each year) and records it in ``source_files`` with its
   MD5, size and counts; the download is then deleted.

A run killed mid-file leaves no ``source_files`` row, so the next run applies that file
again; re-applying records is idempotent in the store.

Example:
    >>> counts = apply_updates(settings, max_files=2)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import select

from ingest.http import HttpClient, raise_if_stopped
from ingest.records import SourceRef, nlm_sequence
from ingest.rows import StoreItem
from ingest.runs import IngestCounts, OpenRun, recorded_run
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import (
    ChecksumError,
    ConfigError,
    InvalidRequestError,
    LitpulseError,
)
from litpulse.core.schema import source_files
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow

__all__ = [
    "BootstrapUnfinishedError",
    "RemoteFile",
    "apply_updates", "list_remote_files", "parse_listing", "parse_md5"]

logger = logging.getLogger(__name__)

FILE_RE = re.compile(r"pubmed(\d{2})n(\d{4})\.xml\.gz")
_HREF_RE = re.compile(
    r"""href\s*=\s*["']?(?:[^"'>\s]*/)?(pubmed\d{2}n\d{4}\.xml\.gz)["'>\s]""", re.I
)
_MD5_RE = re.compile(r"MD5\s*\(\s*(?P<name>[^)]+?)\s*\)\s*=\s*(?P<hex>[0-9a-fA-F]{32})")
_MD5SUM_RE = re.compile(r"^(?P<hex>[0-9a-fA-F]{32})\s+\*?(?P<name>\S+)\s*$", re.M)

#: Downloads of one file whose checksum does not match before the run fails.
CHECKSUM_ATTEMPTS = 3

FOLDERS = {"baseline": "baseline", "updatefile": "updatefiles"}


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

    @property
    def folder(self) -> str:
        return FOLDERS[self.kind]


def parse_listing(html: str, kind: str) -> list[RemoteFile]:
    """The ``pubmedYYnNNNN.xml.gz`` files linked from a directory listing, in order."""
    seen: dict[str, RemoteFile] = {}
    for name in _HREF_RE.findall(html):
        m = FILE_RE.fullmatch(name)
        if m and name not in seen:
            seen[name] = RemoteFile(int(m.group(1)), int(m.group(2)), name, kind)
    return sorted(seen.values())


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
        self.client = HttpClient(settings, settings.pubmed_files_url)

    def listing(self, folder: str) -> str:
        response = self.client.get(f"{folder}/")
        return str(response.text)

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

    def listing(self, folder: str) -> str:
        where = self.root / folder
        names = sorted(p.name for p in where.iterdir()) if where.is_dir() else []
        return "".join(f'<a href="{n}">{n}</a>\n' for n in names)

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
        with (self.root / path).open("rb") as src, dest.open("wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                raise_if_stopped(stop, f"copying {self.root / path}")
                out.write(block)
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def close(self) -> None:
        pass


def _source(settings: Settings) -> _HttpSource | _LocalSource:
    url = settings.pubmed_files_url
    if url.startswith("file://"):
        return _LocalSource(settings)
    if url.startswith(("http://", "https://")):
        return _HttpSource(settings)
    raise ConfigError(f"LITPULSE_PUBMED_FILES_URL must be http(s) or file, got {url!r}")


def list_remote_files(settings: Settings, *, include_baseline: bool = False) -> list[RemoteFile]:
    """Every published file, in application order (baseline first when included)."""
    source = _source(settings)
    try:
        return _list(source, include_baseline)
    finally:
        source.close()


def _refuse_before_the_baseline(
    source: _HttpSource | _LocalSource, done: set[str], baseline_done: set[str]
) -> None:
    """Raise :class:`BootstrapUnfinishedError` when this store applied baseline files and
    the server lists baseline files of the same annual baseline (the year of the name) it
    has not: update files applied before them would be out of order (a record the baseline
    holds and an update file deletes would come back as a bare tombstone, its content
    lost). NLM's next annual baseline, published each December, does not count: a store
    whose baseline is complete goes on with the update files."""
    years = {m.group(1) for m in map(FILE_RE.fullmatch, baseline_done) if m}
    if not years:
        return
    left = [f.name for f in _list_kind(source, "baseline")
            if f.name not in done and f"{f.year:02d}" in years]  # fmt: skip
    if left:
        raise BootstrapUnfinishedError(
            f"a bootstrap is unfinished: {len(left)} baseline file(s) are not applied yet "
            f"(first {left[0]}); update files must come after them: run `litpulse bootstrap` "
            "(it applies them, then the update files)"
        )


def _list_kind(source: _HttpSource | _LocalSource, kind: str) -> list[RemoteFile]:
    return parse_listing(source.listing(FOLDERS[kind]), kind)


def _list(source: _HttpSource | _LocalSource, include_baseline: bool) -> list[RemoteFile]:
    kinds = ("baseline", "updatefile") if include_baseline else ("updatefile",)
    found: list[RemoteFile] = []
    for kind in kinds:
        found += _list_kind(source, kind)
    # one name may be listed in both folders in a transition: keep the first kind
    unique: dict[str, RemoteFile] = {}
    for f in found:
        unique.setdefault(f.name, f)
    return sorted(unique.values())


# -------------------------------------------------------------------------------- apply


def _download_verified(
    source: _HttpSource | _LocalSource,
    f: RemoteFile,
    dest: Path,
    stop: threading.Event | None = None,
) -> tuple[int, str]:
    """Download ``f`` to ``dest`` until its MD5 matches the published one (``stop``: see
    :meth:`ingest.http.HttpClient.download`)."""
    expected = parse_md5(source.text(f"{f.folder}/{f.name}.md5", stop), f.name)
    for attempt in range(1, CHECKSUM_ATTEMPTS + 1):
        size, digest = source.fetch(f"{f.folder}/{f.name}", dest, stop)
        if digest == expected:
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
) -> IngestCounts:
    """Download, verify and apply the update files not applied yet, in number order.

    Args:
        settings: ``pubmed_files_url``, ``home`` (downloads), retry settings, database.
        max_files: Apply at most this many files in this call.
        include_baseline: Also apply the files of ``baseline/`` (before the updates).
        progress: Log each file as it is applied.
        workers: Parse processes feeding the store (default ``settings.ingest_workers``;
            0: parse in this process). A file is parsed while it is stored.

    Returns:
        The summed counts of the files applied.

    Raises:
        ChecksumError: A file kept failing its MD5; it and later files were not applied.
        TransientSourceError: The server kept failing.
        BootstrapUnfinishedError: A bootstrap applied some baseline files and others are
            still pending (the run is recorded as failed, nothing is applied).
    """
    if max_files is not None and max_files < 0:
        raise ConfigError(f"max_files must be >= 0, got {max_files!r}")
    engine = db.connect(settings)
    store = Store(engine)
    downloads = settings.ensure_home() / "downloads"
    applied: list[str] = []
    source = _source(settings)
    redact = getattr(getattr(source, "client", None), "redact", str)
    try:
        with recorded_run(
            store, "updatefiles", target=str(settings.pubmed_files_url), redact=redact
        ) as run:
            details = run.details = {"files": applied, "include_baseline": include_baseline}
            run.on_failure = lambda: {"failed_at": utcnow().isoformat()}
            remote = _list(source, include_baseline)
            with engine.connect() as conn:
                rows = conn.execute(select(source_files.c.name, source_files.c.kind)).all()
            done = {name for name, _kind in rows}
            if not include_baseline:
                _refuse_before_the_baseline(
                    source, done, {name for name, kind in rows if kind == "baseline"}
                )
            pending = [f for f in remote if f.name not in done]
            if done and pending:
                newest = max((f for f in remote if f.name in done), default=None)
                late = [f.name for f in pending if newest is not None and f < newest]
                if late:
                    logger.warning("files older than the newest applied one are pending: %s", late)
            details.update(listed=len(remote), pending=len(pending))
            if max_files is not None:
                pending = pending[:max_files]
            total_bytes = 0
            for n, f in enumerate(pending, 1):
                if progress:
                    logger.info("update file %d/%d: %s", n, len(pending), f.name)
                details["current"] = f.name
                dest = downloads / f.name
                size, digest = _download_verified(source, f, dest)
                total_bytes += size
                file_counts = _apply_file(settings, store, f, dest, size, digest, run, workers)
                dest.unlink(missing_ok=True)
                applied.append(f.name)
                logger.info("applied %s: %s", f.name, file_counts.to_dict())
            details.pop("current", None)
            details["bytes"] = total_bytes
    finally:
        source.close()
    return run.counts


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
            file_counts = _store_file(settings, store, f, items, size, digest, run)
    return file_counts


def _store_file(
    settings: Settings,
    store: Store,
    f: RemoteFile,
    items: Iterable[StoreItem],
    size: int,
    digest: str,
    run: OpenRun,
) -> IngestCounts:
    """Apply one verified file's parsed items and record it in ``source_files``.

    The row is written after the file's last batch commits, so the file is not applied
    again; a resumed run replays a file it has no row for up to where the killed one got.
    Each committed batch is added to the run's counts at once, so a run that fails later
    still says what it stored.
    """

    def on_batch(counts: IngestCounts) -> None:
        run.counts += counts

    file_counts = store.apply(
        items, run_id=run.id, batch_size=settings.store_batch, on_batch=on_batch
    )
    row = {
        "name": f.name,
        "kind": f.kind,
        "sequence": f.number,
        "md5": digest,
        "size": size,
        "run_id": run.id,
        "counts": file_counts.to_dict(),
        "applied_at": utcnow(),
    }
    with store.engine.begin() as conn:
        db.upsert(conn, source_files, [row], keys=["name"])
    return file_counts
