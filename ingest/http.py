"""An NCBI-polite HTTP client: one rate limiter per host for the whole process, retries
with exponential backoff and full jitter, and an API key that never leaks.

Every remote source of litpulse (E-utilities, the PubMed file server, iCite) goes
through :class:`HttpClient`:

* **Rate.** Request *starts* to one host are spaced at least ``1/rate`` seconds apart,
  plus a 10 % margin (Biopython spaces keyless requests 0.37 s rather than 0.33 s) so
  that network jitter never lets the server count one request too many in a second.
  The limiter is shared by every client and thread of the process:
  :func:`limiter_for` keeps one per host, and when two clients ask for different
  rates the stricter one wins.
* **Retries.** 429 (``Retry-After`` honoured), 5xx, timeouts, connection errors and
  resets, truncated bodies (``Content-Length`` mismatch, ``IncompleteRead``) and bodies
  that a ``parse`` callback rejects with a retryable error are retried up to
  ``settings.max_retries`` times, waiting ``uniform(0, min(backoff_max,
  backoff_base * 2**attempt))`` seconds ("full jitter"). Other 4xx answers raise
  :class:`~litpulse.core.errors.InvalidRequestError` at once.
* **Bounded answers.** An answer is read as it arrives, decoded piece by piece: it must
  come whole within ``settings.http_timeout`` of the request's start (a server that
  trickles under the read timeout is cut there, as a timeout) and hold at most
  ``max_bytes`` decoded bytes (:data:`MAX_BODY_BYTES` unless the caller says: a gzip
  bomb is never decoded whole); either is transient. A file :meth:`HttpClient.download`
  streams to disk is bounded by each wait instead.
* **Redirects** of a request with a form or a secret (E-utilities' POSTs, with
  ``api_key``) are never followed: a redirected POST would carry the form, ``api_key``
  included, to whatever host ``Location`` names (307/308), or lose it (301-303). A GET of
  a client with neither (the file server's listings and downloads, iCite) follows up to
  :data:`_MAX_REDIRECTS` in a row (a mirror's director, a storage path), never from
  ``https`` to plain ``http``; a download's ``Range`` goes to the final address. A
  redirect not followed is an error naming the new address: not retried for a permanent
  move (301, 308: the URL setting is out of date), retried for a temporary one.
* **Secrets.** E-utilities parameters, ``api_key`` included, travel in POST bodies,
  never in URLs (so not in urllib3's debug log either), and every message this module
  writes or raises passes through :func:`redact` (an error page whole, before it is cut
  for the message).

Example:
    >>> from litpulse.core.settings import Settings
    >>> client = eutils_client(Settings(ncbi_email="me@example.org"))  # doctest: +SKIP
    >>> form = {"db": "pubmed", "term": "all[sb]"}
    >>> response = client.post("esearch.fcgi", data=form)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import functools
import hashlib
import http.client
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus, urljoin, urlsplit

import requests
import urllib3

from litpulse.core import __version__
from litpulse.core.errors import (
    AnswerTooLargeError,
    ConfigError,
    InvalidRequestError,
    LitpulseError,
    RateLimitedError,
    StoppedError,
    TransientSourceError,
)
from litpulse.core.settings import Settings

__all__ = [
    "HttpClient",
    "MAX_BODY_BYTES",
    "RETRY_AFTER_MAX",
    "RateLimiter",
    "eutils_client",
    "limiter_for",
    "redact",
    "reset_limiters",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Spacing factor on top of ``1/rate`` so arrival jitter never exceeds the limit.
RATE_MARGIN = 1.1

#: ``api_key=…`` in a query or form, URL-encoded (``api_key%3D…``) or as a dict/JSON item;
#: also spelt ``api-key`` (NCBI's error answers name a refused key so).
_KEY_RE = re.compile(r"""(api[_-]key(?:=|%3D|['"]?\s*[:=]\s*['"]?))[^&\s'"]+""", re.IGNORECASE)
_PERCENT_RE = re.compile(r"%(?:25)?[0-9A-Fa-f]{2}")  # one escape, or one escaped twice


def _encodings(secret: str) -> set[str]:
    """The forms a secret takes in URLs, forms and logs: raw, quoted, quoted twice."""
    once = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret),
            quote_plus(secret, safe="/")}
    return {form for form in once | {quote(f, safe="") for f in once} if form}


def _hex_insensitive(form: str) -> str:
    """A regex for ``form`` whose percent escapes match in either case (``%2B`` = ``%2b``,
    ``%252B`` = ``%252b``)."""
    out, last = [], 0
    for m in _PERCENT_RE.finditer(form):
        out.append(re.escape(form[last : m.start()]))
        out.append("%" + "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c
                                 for c in m.group(0)[1:]))
        last = m.end()
    out.append(re.escape(form[last:]))
    return "".join(out)


@functools.lru_cache(maxsize=32)
def _secrets_re(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    forms = {form for secret in secrets if secret for form in _encodings(secret)}
    if not forms:
        return None
    return re.compile("|".join(_hex_insensitive(f) for f in sorted(forms, key=len, reverse=True)))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret and every ``api_key=…`` value replaced by ``***``.

    A secret is found in every encoding a URL or form gives it: raw, percent-encoded
    (``quote``, ``quote_plus``, with upper- or lower-case hex) and percent-encoded twice.
    The secrets go first, so a key holding ``&`` or spaces is not cut in two.
    """
    pattern = _secrets_re(tuple(secrets))
    out = pattern.sub("***", text) if pattern is not None else text
    return _KEY_RE.sub(r"\1***", out)


# ------------------------------------------------------------------------- rate limiting


class RateLimiter:
    """Spaces request starts at least ``RATE_MARGIN / rate`` seconds apart; thread-safe.

    Each caller reserves the next free slot under a lock and sleeps outside it, so
    concurrent threads queue in order without holding the lock while waiting.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ConfigError(f"rate must be positive, got {rate!r}")
        self._lock = threading.Lock()
        self._clock = clock
        self._next = 0.0
        self.rate = rate

    @property
    def interval(self) -> float:
        """Seconds between two request starts."""
        return RATE_MARGIN / self.rate

    def tighten(self, rate: float) -> None:
        """Lower the rate to ``rate`` if it is stricter than the current one."""
        with self._lock:
            if 0 < rate < self.rate:
                self.rate = rate

    def acquire(self) -> float:
        """Wait for this caller's slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            time.sleep(wait)  # real time: the limiter is never faked
        return wait


_LIMITERS: dict[str, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(url: str, rate: float) -> RateLimiter:
    """The process-wide limiter of ``url``'s host (scheme + host + port)."""
    parts = urlsplit(url)
    key = f"{parts.scheme}://{parts.netloc}".lower()
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = RateLimiter(rate)
        else:
            limiter.tighten(rate)
        return limiter


def reset_limiters() -> None:
    """Forget every limiter (tests)."""
    with _LIMITERS_LOCK:
        _LIMITERS.clear()


# ------------------------------------------------------------------------------- client


#: The longest ``Retry-After`` a request waits for; a server asking for longer gets the
#: error at once (with its ``retry_after``), for the scheduler to retry the task later.
RETRY_AFTER_MAX = 900.0

#: The most decoded bytes of one answer held in memory unless the caller sets its own
#: (``max_bytes``): an ESearch page of 9,999 PMIDs is ~200 KB, an iCite batch of 200
#: records a few MB, a file server's listing well under 1 MB. EFetch sets its own, from
#: the records it asked for (:func:`ingest.eutils.efetch`).
MAX_BODY_BYTES = 32 << 20
#: The most bytes of an error answer (4xx) read for its message.
_ERROR_BODY_BYTES = 64 << 10
#: Decoded bytes read at a time: a compressed piece is never decoded past this at once.
_READ_PIECE = 1 << 16
#: Redirects that say the address moved for good: the URL setting is out of date.
_MOVED_FOR_GOOD = (301, 308)
#: The most redirects in a row a GET without form or secrets follows (see the module
#: docstring).
_MAX_REDIRECTS = 5


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpClient:
    """A ``requests.Session`` with a shared rate limiter, retries and redaction.

    Args:
        settings: Timeouts, retry and backoff settings come from here.
        base_url: Relative paths given to the methods are joined to it.
        rate: Requests/s to this host (default ``settings.rate_limit``).
        form: Parameters added to every request (``tool``, ``email``, ``api_key`` for
            E-utilities); they go into the POST body, or the query string of a GET.
        secrets: Values that must never appear in a message.
        sleep: Waits between retries (injectable so tests need not wait); the rate
            limiter always sleeps for real.
        rng: Source of jitter.
        session: A session to use instead of a new one.
        url_setting: The setting ``base_url`` comes from, named by the error of a redirect.
    """

    def __init__(
        self,
        settings: Settings,
        base_url: str,
        *,
        rate: float | None = None,
        form: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
        session: requests.Session | None = None,
        url_setting: str = "",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"HTTP client needs an http(s) URL, got {redact(base_url)!r}")
        self.settings = settings
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.form = {k: v for k, v in (form or {}).items() if v}
        self.secrets = tuple(s for s in secrets if s)
        self.limiter = limiter_for(self.base_url, rate or settings.rate_limit)
        self._sleep = sleep or time.sleep
        self._rng = rng or random.Random()
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = f"litpulse/{__version__} (+python-requests)"
        self.url_setting = url_setting
        #: Requests sent (attempts, not calls), for run details.
        self.requests_sent = 0
        #: Retries made after a transient failure.
        self.retries = 0

    # -- helpers ------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """``text`` without this client's secrets."""
        return redact(text, self.secrets)

    def url(self, path: str) -> str:
        """The absolute URL of ``path``."""
        return urljoin(self.base_url, path)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): full jitter."""
        cap = min(self.settings.backoff_max, self.settings.backoff_base * (2**attempt))
        delay = self._rng.uniform(0, cap) if cap > 0 else 0.0
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------
    def get(
        self,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        parse: Callable[[requests.Response], T] | None = None,
        headers: Mapping[str, str] | None = None,
        stop: threading.Event | None = None,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> Any:
        """GET with retries; returns ``parse(response)`` or the response (``stop``,
        ``max_bytes``: see :meth:`request`)."""
        return self.request("GET", path, params=params, parse=parse, headers=headers, stop=stop,
                            max_bytes=max_bytes)  # fmt: skip

    def post(
        self,
        path: str,
        *,
        data: Mapping[str, Any] | None = None,
        parse: Callable[[requests.Response], T] | None = None,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> Any:
        """POST a form with retries; returns ``parse(response)`` or the response
        (``max_bytes``: see :meth:`request`)."""
        return self.request("POST", path, data=data, parse=parse, max_bytes=max_bytes)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        parse: Callable[[requests.Response], T] | None = None,
        headers: Mapping[str, str] | None = None,
        stop: threading.Event | None = None,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> Any:
        """Send one logical request, retrying transient failures.

        Args:
            method: ``GET`` or ``POST``.
            path: Relative to ``base_url`` (or absolute).
            params: Query parameters.
            data: Form fields (POST).
            parse: Called with the complete response; may raise
                :class:`TransientSourceError` (retried) or another error (not retried).
            headers: Extra request headers.
            stop: Once set, no further attempt is made and a wait between attempts
                ends at once: :class:`~litpulse.core.errors.StoppedError`.
            max_bytes: The most decoded bytes the answer may hold; a larger one is a
                transient failure (:class:`AnswerTooLargeError`), read no further.

        Raises:
            TransientSourceError: Still failing after ``max_retries`` retries (a timeout
                counts the whole answer, a temporary redirect is one).
            InvalidRequestError: The server rejected the request (4xx other than 429), or
                its address moved for good (301, 308: never followed).
            StoppedError: ``stop`` was set.
        """
        url = self.url(path)
        shown = self.redact(f"{method} {url}")
        if method == "POST":
            data = {**self.form, **(data or {})}
        else:
            params = {**self.form, **(params or {})}
        attempt = 0
        while True:
            raise_if_stopped(stop, shown)
            try:
                response = self._send(method, url, shown, params=params, data=data,
                                      headers=headers, max_bytes=max_bytes)  # fmt: skip
                return parse(response) if parse is not None else response
            except TransientSourceError as exc:
                if attempt >= self.settings.max_retries:
                    raise _restated(
                        exc, self.redact(f"{exc} (gave up after {attempt + 1} attempts)")
                    ) from None
                if exc.retry_after is not None and exc.retry_after > RETRY_AFTER_MAX:
                    # not waited for here: the caller (a scheduler) retries much later
                    raise _restated(
                        exc,
                        self.redact(f"{exc} (the server asks to wait {exc.retry_after:.0f} s, "
                                    f"over {RETRY_AFTER_MAX:.0f} s: not waited for)"),
                    ) from None
                delay = self.backoff(attempt, exc.retry_after)
                logger.warning(
                    "%s; retry %d/%d in %.2f s",
                    self.redact(str(exc)),
                    attempt + 1,
                    self.settings.max_retries,
                    delay,
                )
                self.retries += 1
                attempt += 1
                self._wait(delay, stop)
            except LitpulseError as exc:
                if self.secrets and any(s in str(exc) for s in self.secrets):
                    raise type(exc)(self.redact(str(exc))) from None
                raise

    def _send(
        self,
        method: str,
        url: str,
        shown: str,
        *,
        params: Mapping[str, Any] | None,
        data: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        stream: bool = False,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> requests.Response:
        """One attempt. Without ``stream``, the answer is read whole (at most ``max_bytes``
        decoded, within ``http_timeout`` of the start) before it is returned; with it, the
        caller reads it (a download). A redirect is followed where it is safe (see
        :meth:`_unfollowed`), within the same deadline."""
        timeout = self.settings.http_timeout
        deadline = time.monotonic() + timeout
        hops = 0
        while True:
            # a redirect to another host is spaced by that host's limiter
            limiter = self.limiter if not hops else limiter_for(url, self.limiter.rate)
            limiter.acquire()
            self.requests_sent += 1
            with _transport_errors(shown, self.redact):
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=dict(headers or {}),
                    timeout=timeout,
                    stream=True,  # read here, piece by piece: bounded in size and time
                    allow_redirects=False,  # followed below, only where it is safe
                )
            status = response.status_code
            if not 300 <= status < 400:
                break
            response.close()
            location = response.headers.get("Location")
            refused = self._unfollowed(method, url, location, hops)
            if refused:
                raise self._redirected(shown, url, status, location, refused)
            assert location is not None  # _unfollowed refuses a redirect without one
            url, params, hops = urljoin(url, location), None, hops + 1  # the query is in it
            shown = self.redact(f"{method} {url}")
            logger.info("%s: redirected (HTTP %d)", shown, status)
        if status == 429:
            response.close()
            raise RateLimitedError(
                f"{shown}: HTTP 429 Too Many Requests",
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            response.close()
            raise TransientSourceError(
                f"{shown}: HTTP {status}",
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 400 and status != 416:
            # the page whole (as much as is read for a message) redacted, then cut: a key
            # cut in two by the cut would match no pattern
            detail = _snippet(self.redact(_error_body(response, deadline)))
            response.close()
            raise InvalidRequestError(f"{shown}: HTTP {status} {detail}".rstrip())
        if stream:
            return response
        with _transport_errors(shown, self.redact), response:
            body = _read_body(response, shown, max_bytes, deadline, timeout)
        expected = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding", "identity") != "identity"
        if expected is not None and not encoded and expected.isdigit():
            if int(expected) != len(body):
                raise TransientSourceError(
                    f"{shown}: truncated body ({len(body)} of {expected} bytes)"
                )
        response._content = body  # what .content, .text and .json() read
        return response

    def _unfollowed(self, method: str, url: str, location: str | None, hops: int) -> str:
        """Why a redirect of ``url`` to ``location`` is not followed; empty when it is (see
        the module docstring)."""
        if method != "GET" or self.form:
            return "not followed: the request, its form included, would go where the answer says"
        if self.secrets:
            return "not followed: the request, its key included, would go where the answer says"
        if not location:
            return "not followed: no address to follow"
        scheme = urlsplit(urljoin(url, location)).scheme.lower()
        if scheme not in ("http", "https"):
            return "not followed: not an http(s) address"
        if urlsplit(url).scheme.lower() == "https" and scheme != "https":
            return "not followed: it leaves https for plain http"
        if hops >= _MAX_REDIRECTS:
            return f"not followed: over {_MAX_REDIRECTS} redirects in a row"
        return ""

    def _redirected(
        self, shown: str, url: str, status: int, location: str | None, why: str
    ) -> LitpulseError:
        """The error of a redirect not followed (``why``: see :meth:`_unfollowed`)."""
        target = self.redact(urljoin(url, location)) if location else "an address not given"
        if status in _MOVED_FOR_GOOD:
            setting = self.url_setting or "the base URL"
            return InvalidRequestError(
                f"{shown}: HTTP {status}: moved for good to {target}; {why}: set {setting} to "
                "the new address if it is trusted"
            )
        return TransientSourceError(f"{shown}: HTTP {status}: redirects to {target}; {why}")

    # -- downloads ------------------------------------------------------------------
    def download(
        self,
        path: str,
        dest: Path,
        *,
        chunk_size: int = 1 << 14,
        stop: threading.Event | None = None,
    ) -> tuple[int, str]:
        """Download ``path`` to ``dest``, resuming a partial ``dest.part`` with HTTP Range.

        A server that ignores the Range header (answers 200) restarts the file; a
        broken transfer is retried from where it stopped.

        Args:
            path: Relative to the base URL.
            dest: Where the finished file goes.
            chunk_size: Bytes read and written at a time.
            stop: Once set, the download stops before its next chunk (or wait between
                retries) and raises :class:`~litpulse.core.errors.StoppedError`, keeping
                ``dest.part`` to be resumed: nothing writes after this call returns.

        Returns:
            The size in bytes and the MD5 hex digest of the finished file.
        """
        url = self.url(path)
        shown = self.redact(f"GET {url}")
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        attempt = 0

        while True:
            raise_if_stopped(stop, shown, "the part downloaded is kept")
            # opened before the request: a download folder that cannot be written is the
            # disk's failure, not the server's (raised at once, naming the file; no retry)
            with _local(part, wrap=False):
                # at its end: what an earlier try left is resumed; unbuffered, so each write
                # reaches the disk in its own call (and its failure is seen there)
                fh = part.open("ab", buffering=0)
            try:
                try:
                    have = fh.tell()
                    # the bytes as served: an archive sent with Content-Encoding: gzip (Apache's
                    # AddEncoding, an object stored so) is kept as the archive its MD5 is of
                    headers = {"Accept-Encoding": "identity"}
                    if have:
                        headers["Range"] = f"bytes={have}-"
                    response = self._send(
                        method="GET", url=url, shown=shown, params=None, data=None,
                        headers=headers, stream=True,
                    )
                    with response:
                        if response.status_code == 416:  # nothing left to send: restart cleanly
                            with _local(part):
                                fh.truncate(0)
                            raise TransientSourceError(f"{shown}: HTTP 416, restarting download")
                        resumed = response.status_code == 206
                        if have and not resumed:
                            logger.info("%s: server ignored Range, restarting", shown)
                            with _local(part):
                                fh.truncate(0)
                        total = response.headers.get("Content-Length")
                        written = 0
                        for chunk in _body(response, chunk_size):
                            with _local(part):
                                fh.write(chunk)
                            written += len(chunk)
                            raise_if_stopped(stop, shown, "the part downloaded is kept")
                        if total is not None and total.isdigit() and written != int(total):
                            raise TransientSourceError(
                                f"{shown}: truncated body ({written} of {total} bytes)"
                            )
                    break
                except _LocalFileError as exc:  # the disk's failure, not the server's: no retry
                    raise exc.error from None
                except TransientSourceError as exc:
                    if attempt >= self.settings.max_retries:
                        raise TransientSourceError(
                            self.redact(f"{exc} (gave up after {attempt + 1} attempts)")
                        ) from None
                    delay = self.backoff(attempt, exc.retry_after)
                    logger.warning("%s; retry %d in %.2f s", self.redact(str(exc)), attempt + 1,
                                   delay)
                    self.retries += 1
                    attempt += 1
                    self._wait(delay, stop)
                except (requests.RequestException, urllib3.exceptions.HTTPError,
                        http.client.HTTPException, OSError) as exc:
                    # raised while streaming the body (urllib3's own errors from _body's raw
                    # reads): keep the part, resume next time
                    if attempt >= self.settings.max_retries:
                        raise TransientSourceError(
                            f"{shown}: {type(exc).__name__} (gave up after {attempt + 1} attempts)"
                        ) from None
                    delay = self.backoff(attempt)
                    logger.warning("%s: %s; resuming in %.2f s", shown, type(exc).__name__, delay)
                    self.retries += 1
                    attempt += 1
                    self._wait(delay, stop)
            finally:
                fh.close()  # unbuffered: nothing left to write
        part.replace(dest)
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        with dest.open("rb") as got:
            for block in iter(lambda: got.read(chunk_size), b""):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def _wait(self, delay: float, stop: threading.Event | None) -> None:
        """Wait ``delay`` seconds before a retry, or until ``stop`` is set."""
        if stop is None:
            self._sleep(delay)
        else:
            stop.wait(delay)


def raise_if_stopped(stop: threading.Event | None, what: str, kept: str = "") -> None:
    """Raise :class:`~litpulse.core.errors.StoppedError` once ``stop`` is set (``what``
    was stopped; ``kept``: what stays for the next run)."""
    if stop is not None and stop.is_set():
        raise StoppedError(f"{what}: stopped" + (f"; {kept}" if kept else ""))


class _LocalFileError(Exception):
    """An ``OSError`` of the local file a download writes (no space left, read-only, a
    permission): carried past the retries of the transfer's own errors."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _local(path: Path, *, wrap: bool = True) -> Iterator[None]:
    """An ``OSError`` of writing ``path``, naming it, raised as :class:`_LocalFileError`
    (``wrap=False``: as the ``OSError`` itself)."""
    try:
        yield
    except OSError as exc:
        named = exc if exc.filename else type(exc)(exc.errno, exc.strerror, str(path))
        if not wrap:
            raise named from exc
        raise _LocalFileError(named) from exc


def _body(response: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """The body of a streamed response as served (never decoded: an archive sent with
    ``Content-Encoding: gzip`` is the archive), in pieces of at most ``chunk_size`` bytes,
    each as soon as it arrives: a server that trickles (under the read timeout) cannot hold
    a reader for a whole chunk, so a stop is seen between pieces."""
    while piece := response.raw.read1(chunk_size, decode_content=False):
        yield piece


def _restated(exc: TransientSourceError, message: str) -> TransientSourceError:
    """``exc`` (its class and attributes: ``retry_after``, an oversize answer's ``head``)
    with ``message``."""
    out = copy.copy(exc)
    out.args = (message,)
    return out


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "…"


def _snippet(text: str) -> str:
    """The start of an answer for a message, its blanks collapsed (redact it first)."""
    return " ".join(text[:300].split())


@contextlib.contextmanager
def _transport_errors(shown: str, redact_text: Callable[[str], str]) -> Iterator[None]:
    """The failures of sending a request and reading its answer as this module's errors:
    a timeout or a broken connection is transient, an invalid URL is not."""
    try:
        yield
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
        raise InvalidRequestError(f"{shown}: invalid URL ({type(exc).__name__})") from None
    except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
        raise TransientSourceError(f"{shown}: timed out") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
            OSError) as exc:
        # connection refused/reset, IncompleteRead, a body that does not decode, ...
        raise TransientSourceError(
            f"{shown}: {type(exc).__name__}: {redact_text(_short(exc))}"
        ) from None


def _read_body(
    response: requests.Response, shown: str, max_bytes: int, deadline: float, timeout: float
) -> bytes:
    """The decoded body of ``response``, read as it arrives: at most ``max_bytes`` of it
    (urllib3 decodes a compressed piece no further than asked), all of it before
    ``deadline``.

    Raises:
        AnswerTooLargeError: The body is larger (its first bytes kept).
        TransientSourceError: The body is still coming at the deadline.
    """
    pieces: list[bytes] = []
    size = 0
    while piece := response.raw.read1(_READ_PIECE, decode_content=True):
        size += len(piece)
        if size > max_bytes:
            raise AnswerTooLargeError(
                f"{shown}: answer over {max_bytes} bytes (decoded): not read further",
                head=(pieces[0] if pieces else piece)[:_READ_PIECE],  # the first piece
                size=size,
            )
        if time.monotonic() > deadline:
            raise TransientSourceError(
                f"{shown}: timed out: the answer was still coming after {timeout:g} s"
            )
        pieces.append(piece)
    return b"".join(pieces)


def _error_body(response: requests.Response, deadline: float) -> str:
    """As much of an error answer's body as a message needs (at most
    :data:`_ERROR_BODY_BYTES`, before ``deadline``), decoded; what cannot be read is left out."""
    pieces: list[bytes] = []
    size = 0
    with contextlib.suppress(requests.RequestException, urllib3.exceptions.HTTPError,
                             http.client.HTTPException, OSError):  # fmt: skip
        while size < _ERROR_BODY_BYTES and time.monotonic() < deadline:
            piece = response.raw.read1(_READ_PIECE, decode_content=True)
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
    return b"".join(pieces)[:_ERROR_BODY_BYTES].decode("utf-8", "replace")


def eutils_client(settings: Settings, **kwargs: Any) -> HttpClient:
    """A client for E-utilities sending ``tool``, ``email`` and ``api_key`` every time."""
    if not settings.ncbi_email:
        logger.warning(
            "LITPULSE_NCBI_EMAIL is empty: NCBI asks E-utilities clients for a contact e-mail"
        )
    form = {
        "tool": settings.ncbi_tool,
        "email": settings.ncbi_email,
        "api_key": settings.ncbi_api_key,
    }
    return HttpClient(
        settings,
        settings.eutils_url,
        form=form,
        secrets=(settings.ncbi_api_key,),
        url_setting="LITPULSE_EUTILS_URL",
        **kwargs,
    )
