"""The small exception hierarchy of litpulse.

Every error raised on purpose by the library derives from :class:`LitpulseError`. The
class says whether repeating the same call later can succeed: retry policies (our own
HTTP client, Airflow's task retries) read :attr:`LitpulseError.retryable` and nothing
else.

Example:
    >>> try:
    ...     raise TransientSourceError("HTTP 503 from esearch")
    ... except LitpulseError as exc:
    ...     exc.retryable
    True
"""

from __future__ import annotations

__all__ = [
    "AnswerTooLargeError",
    "ChecksumError",
    "ConfigError",
    "DeviceError",
    "InvalidRequestError",
    "IncompleteSourceError",
    "LitpulseError",
    "NotFoundError",
    "ParseError",
    "RateLimitedError",
    "SourceError",
    "TransientSourceError",
    "ConsistencyError",
    "BudgetError",
    "BusyError",
    "DataQualityError",
    "FileChangedError",
    "LeaseLostError",
    "StoppedError",
    "StorageError",
    "WorkerError",
]


class LitpulseError(Exception):
    """Base class of every error litpulse raises on purpose."""

    #: Whether the same operation may succeed if repeated later.
    retryable: bool = False


class ConfigError(LitpulseError, ValueError):
    """A setting or option has an invalid value; the message names it."""


class DeviceError(ConfigError):
    """A device a setting asks for is not there (``LITPULSE_DEVICE=cuda`` where torch sees
    no CUDA device, or ``cuda:N`` past those it sees): the host's state, which no request
    can change (the HTTP API answers 503, not a request's 400)."""


class NotFoundError(LitpulseError, LookupError):
    """A requested object (article, model version, index version) does not exist."""


class ParseError(LitpulseError, ValueError):
    """A record or document could not be parsed."""


class SourceError(LitpulseError):
    """A remote source (E-utilities, update files, iCite) failed."""


class TransientSourceError(SourceError):
    """A failure that may pass: 429, 5xx, timeouts, resets, truncated bodies."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the server asked us to wait (``Retry-After``), when it said.
        self.retry_after = retry_after


class RateLimitedError(TransientSourceError):
    """The server answered 429 Too Many Requests."""


class AnswerTooLargeError(TransientSourceError):
    """An answer over the decoded bytes its request may hold, read no further (a gzip
    bomb, or a record larger than the caller can take): ``head`` holds its first bytes,
    ``size`` the bytes read before it was given up."""

    def __init__(
        self, message: str, *, head: bytes = b"", size: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.head = head
        self.size = size


class InvalidRequestError(SourceError, ValueError):
    """The server rejected the request itself (bad term, bad database): never retried."""


class ChecksumError(TransientSourceError):
    """A downloaded file does not match its published MD5 checksum."""


class IncompleteSourceError(TransientSourceError):
    """The file server serves less than the whole: a listing that is an error page, a file
    missing between two listed ones (a mirror still copying), a file cut short under an
    MD5 that matches the cut bytes. Nothing past it is applied; a later try, once the
    mirror is whole, goes on where this one stopped."""


class ConsistencyError(LitpulseError):
    """Two stores that must agree (index and database, model and index) do not."""


class BusyError(LitpulseError):
    """Another live process holds the lease this work needs; nothing was done. Retry when
    it is done (the CLI exits with 75, ``EX_TEMPFAIL``)."""

    retryable = True


class BudgetError(LitpulseError, ValueError):
    """A requested job would exceed its time or memory budget; said before it starts."""


class DataQualityError(LitpulseError):
    """A run finished but its output fails a data-quality check (empty day, too many
    quarantined records, stale watermark): repeating the same run will not fix it."""


class LeaseLostError(LitpulseError):
    """This process no longer holds a database lease it took: it stopped renewing it long
    enough for another process to take it over. Whatever it was doing must stop before
    its next write; running the job again later is safe."""

    retryable = True


class WorkerError(LitpulseError):
    """A worker process (a parser feeding the store) died without finishing its work:
    killed, out of memory, crashed. What was committed before stays; running the job
    again resumes it."""

    retryable = True


class FileChangedError(LitpulseError):
    """A file changed while it was being read (rewritten, truncated, appended to, or
    replaced by another file) and is no longer the version recorded when its reading
    began. Nothing read after the change was stored; running the job again reads the
    file as its new version."""

    retryable = True


class StorageError(LitpulseError):
    """A file could not be written (the disk full, a file-size limit, an I/O error). What
    was half written is removed and nothing that depends on it was switched: the state
    served before stays. Not retried on its own: free space, then run the job again."""


class StoppedError(LitpulseError):
    """Work (a download, a wait) was stopped on purpose before it finished: its caller
    stopped or went away. What it wrote so far is kept for the next run to resume."""

    retryable = True
