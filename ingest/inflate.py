"""The gzip inflater of the parse: Intel ISA-L (``isal``) where installed, else zlib.

PubMed's files are gzip; a parse worker inflates every byte of its file (a file split over
N workers is inflated by each of them, :func:`ingest.parse.iter_units`), about 120 MB per
30,000 records. ISA-L's inflate gives the same bytes as zlib's in ~60 % of its CPU time
(``isal.isal_zlib``, measured on a 20k-record file: 0.22 → 0.13 s). Both check the gzip
trailer's CRC and length and read multi-member files the same way; their error classes
differ: catch :data:`INFLATE_ERRORS`. Two differences a reader must allow for: with its
output capped, ISA-L may hold decoded bytes with no ``unconsumed_tail`` left (feed it
``b""`` until it gives nothing, as :func:`ingest.parse` does at the end of the input), and of
a stream cut short it may keep the last few bits undecoded (a prefix of zlib's bytes: the
last record of a truncated file can be quarantined as cut off where zlib would have ended
it; the file is reported unreadable either way).

Example:
    >>> import gzip
    >>> d = decompressor()
    >>> d.decompress(gzip.compress(b"<PubmedArticleSet/>")), d.eof
    (b'<PubmedArticleSet/>', True)
"""

from __future__ import annotations

import types
import zlib
from typing import Any, cast

__all__ = ["ENGINE", "INFLATE_ERRORS", "READ_ERRORS", "decompressor"]

#: The module whose ``decompressobj`` inflates.
_engine: types.ModuleType
#: What a corrupt or unreadable gzip stream raises while inflated.
INFLATE_ERRORS: tuple[type[Exception], ...]
#: The inflater in use, in words (``isal`` or ``zlib``; the benchmarks name it).
ENGINE: str
try:  # pragma: no branch - one of the two per installation
    from isal import isal_zlib

    _engine, ENGINE = isal_zlib, "isal"
    INFLATE_ERRORS = (zlib.error, cast(type[Exception], isal_zlib.error))
except ImportError:  # pragma: no cover - isal is a dependency; its wheel may be missing
    _engine, ENGINE = zlib, "zlib"
    INFLATE_ERRORS = (zlib.error,)
#: What reading a document may raise: the file's errors, a gzip stream cut short
#: (``EOFError``) and :data:`INFLATE_ERRORS`.
READ_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, *INFLATE_ERRORS)


def decompressor() -> Any:
    """A fresh decompress object for one gzip member (``wbits=31``): ``decompress(data,
    max_length)``, ``unconsumed_tail``, ``unused_data`` and ``eof`` as zlib's."""
    return _engine.decompressobj(31)
