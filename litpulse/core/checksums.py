"""Checksums of files, what a recorded artefact (an adapter's weights) is checked against,
and the durable rename that puts a folder of written files in place.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> file_sha256(p)[:16]
    'ba7816bf8f01cfea'
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import cast

from zlib_ng import gzip_ng, zlib_ng

__all__ = ["content_md5", "durable_rename", "file_md5", "file_sha256", "fsync_dir"]

#: zlib-ng's inflate error (its stubs type it as an instance), a damaged stream as zlib's
_NG_ERROR = cast("type[Exception]", zlib_ng.error)
#: The first bytes of a gzip file (RFC 1952).
_GZIP_MAGIC = b"\x1f\x8b"


def _file_digest(path: str | Path, h: hashlib._Hash, *, unpack: bool = False) -> str:
    """Hex digest of a file under ``h``, read in 1 MiB blocks (``unpack``: of the
    content of a gzip file, unpacked by zlib-ng, as the parser unpacks it: ~1.5x faster
    than :mod:`gzip`)."""
    with gzip_ng.open(path, "rb") if unpack else open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    return _file_digest(path, hashlib.sha256())


def file_md5(path: str | Path) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks: NLM's published checksum of its files
    (not a security measure)."""
    return _file_digest(path, hashlib.md5(usedforsecurity=False))


def content_md5(path: str | Path) -> str:
    """Hex MD5 of what a file holds: a gzip file's (told by its first bytes) unpacked
    content, any other file's bytes. A ``.xml.gz`` and its unpacked ``.xml`` have one,
    whatever the packing (level, header time) made of the ``.gz``'s own bytes.

    Raises:
        OSError: The file cannot be read, or is a damaged gzip file
            (``gzip.BadGzipFile``, a cut or corrupt stream included).
    """
    with open(path, "rb") as fh:
        packed = fh.read(2) == _GZIP_MAGIC
    try:
        return _file_digest(path, hashlib.md5(usedforsecurity=False), unpack=packed)
    except (EOFError, zlib.error, _NG_ERROR) as exc:  # cut short, or corrupt: damaged
        raise gzip.BadGzipFile(f"{os.fspath(path)}: damaged gzip stream: {exc}") from exc


def fsync_dir(path: str | Path) -> None:
    """fsync a folder: the names in it (a file created or renamed into it) reach the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_rename(tmp: str | Path, final: str | Path) -> None:
    """Rename the folder ``tmp``, whose files are all written, to ``final`` so that a crash
    at any moment leaves either no ``final`` or one whose files hold every byte: each file
    under ``tmp`` and each of its folders fsynced first (a rename reaches the disk before
    the data of files written just before it, on ext4 and XFS alike), the parent after.

    Raises:
        OSError: A file could not be flushed (an I/O error, a full disk found at last) or
            the rename failed; ``tmp`` is left for the caller to remove.
    """
    tmp = Path(tmp)
    for folder, _subfolders, names in os.walk(tmp, topdown=False):
        for name in names:
            with open(os.path.join(folder, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(folder)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)
