"""One exchange with a receiver — a webhook POST, an SMTP conversation — within one
deadline, connection to last byte (:class:`Deadline`), not a timeout per read.

The digest's deliveries (:mod:`litpulse.pipeline.digest_channels`) and the on-call alert
(:mod:`litpulse.pipeline.alerts`) go through here: a receiver that drips its answer a
byte at a time holds neither longer than its deadline.

Example:
    >>> deadline = Deadline.of(settings, cap=10.0)  # doctest: +SKIP
    >>> opener = timed_opener(deadline)  # doctest: +SKIP
    >>> opener.open(request, timeout=deadline.seconds).status  # doctest: +SKIP
    200
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from litpulse.core.settings import Settings, env_name

T = TypeVar("T")

__all__ = [
    "Deadline",
    "TimedHTTPConnection",
    "TimedHTTPHandler",
    "TimedHTTPSConnection",
    "TimedHTTPSHandler",
    "TimedSSLSocket",
    "TimedSocket",
    "Unredirected",
    "moved_note",
    "timed_opener",
    "timed_tls",
]


class Deadline:
    """The time one exchange with a receiver may take: ``LITPULSE_HTTP_TIMEOUT``, at most
    ``cap`` (:meth:`of`).

    A socket timeout bounds each read or write, not the exchange: a receiver that drips
    its answer (a byte every second: a stuck proxy, a tarpit, an overloaded relay) would
    hold the caller (a digest and its leases, a DAG's failure callback) for as long as it
    drips. Here the connection, and each read and write of it (:class:`TimedSocket`),
    waits at most the time left.

    Attributes:
        seconds: The exchange's time.
        cap: The most it may be, whatever ``LITPULSE_HTTP_TIMEOUT`` says.
        reached: The receiver accepted the connection.
        expired: The time ran out (a :class:`TimeoutError` was raised): connecting
            (``reached`` false) or after (the request may have gone out).
        ran_out: What did not come in time where that was a look-up (:meth:`within`:
            ``"name HOST not resolved"``); ``None`` otherwise. :attr:`said` tells it.
    """

    def __init__(self, timeout: float, cap: float) -> None:
        self.cap = cap
        self.seconds = min(timeout, cap)
        self.end = time.monotonic() + self.seconds
        self.reached = False
        self.expired = False
        self.ran_out: str | None = None

    @classmethod
    def of(cls, settings: Settings, cap: float) -> Deadline:
        """An exchange's deadline, from now: ``LITPULSE_HTTP_TIMEOUT``, at most ``cap``
        seconds (that timeout is a download's, a minute by default: an exchange that
        holds its caller waits less)."""
        return cls(settings.http_timeout, cap)

    def left(self) -> float:
        """Seconds left of the exchange.

        Raises:
            TimeoutError: None are left.
        """
        left = self.end - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError(f"no answer within {self.seconds:g} s")
        return left

    @property
    def unanswered(self) -> bool:
        """The receiver could not be reached, or did not answer in time."""
        return self.expired or not self.reached

    @property
    def unreachable(self) -> bool:
        """No connection was made (refused, no route, unresolvable, the connect timed
        out)."""
        return not self.reached

    @property
    def said(self) -> str:
        """What a failure says when the time ran out, as far as the exchange got: a
        look-up that did not answer (``name HOST not resolved within N s``), no connection
        made, or a receiver reached that did not answer whole (``no complete answer``)."""
        what = (self.ran_out or ("no complete answer" if self.reached else "no connection"))
        return (f"{what} within {self.seconds:g} s ({env_name('http_timeout')}, "
                f"at most {self.cap:g} s an exchange)")  # fmt: skip

    def within(self, what: str, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` — a blocking look-up that takes no timeout of its own (a name
        resolved by the C library's ``getaddrinfo``) — within the time left: run in a
        thread of its own, abandoned (it ends when the resolver gives up) once the time
        runs out.

        ``what`` says what does not come when the time runs out (``"name HOST not
        resolved"``): the :class:`TimeoutError`'s message and :attr:`said` tell it.

        Raises:
            TimeoutError: No answer in the time left.
            Exception: What ``call`` raised.
        """
        box: dict[str, Any] = {}
        done = threading.Event()

        def ask() -> None:
            try:
                box["value"] = call(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=ask, name=f"litpulse {what}", daemon=True).start()
        if not done.wait(self.left()):
            self.expired, self.ran_out = True, what
            raise TimeoutError(f"{what} within {self.seconds:g} s")
        if "error" in box:
            raise box["error"]
        return cast(T, box["value"])

    def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """The addresses of ``host`` (``getaddrinfo``, stream sockets) within the time
        left (:meth:`within`: a resolver that does not answer holds no caller past its
        deadline); an address literal without asking anyone."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return self.within(f"name {host} not resolved", socket.getaddrinfo, host, port, 0,
                               socket.SOCK_STREAM)  # fmt: skip
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)

    def connect(
        self, address: tuple[str, int], timeout: object = None, source_address: Any = None
    ) -> socket.socket:
        """:func:`socket.create_connection` within the time left, the name's resolution
        included (:meth:`resolve`; ``timeout`` is not used: it is there for the callers'
        signature), as a :class:`TimedSocket`."""
        host, port = address
        errors: list[OSError] = []
        sock = None
        try:
            for family, kind, proto, _, where in self.resolve(host, port):
                candidate = socket.socket(family, kind, proto)
                try:
                    candidate.settimeout(self.left())
                    if source_address:
                        candidate.bind(source_address)
                    candidate.connect(where)
                except OSError as exc:
                    candidate.close()
                    if isinstance(exc, TimeoutError):
                        raise
                    errors.append(exc)
                    continue
                sock = candidate
                break
        except TimeoutError:
            self.expired = True
            raise
        if sock is None:
            if errors:
                raise errors[0]
            raise OSError(f"getaddrinfo returned no address for {host}")
        self.reached = True
        timed = TimedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        timed.deadline = self
        timed.settimeout(self.left())  # what a TLS handshake, right after, may take
        return timed


class TimedSocket(socket.socket):
    """A connected socket whose every read and write waits at most the time left of its
    :class:`Deadline` (none set: as a plain socket)."""

    deadline: Deadline | None = None

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        """One read or write, waiting at most the time left; running out expires it."""
        if self.deadline is not None:
            self.settimeout(self.deadline.left())
        try:
            yield
        except TimeoutError:
            if self.deadline is not None:
                self.deadline.expired = True
            raise

    def recv(self, *args: Any) -> bytes:
        with self._timed():
            return super().recv(*args)

    def recv_into(self, *args: Any) -> int:
        with self._timed():
            return super().recv_into(*args)

    def send(self, *args: Any) -> int:
        with self._timed():
            return super().send(*args)

    def sendall(self, *args: Any) -> None:
        with self._timed():  # one timeout for the whole of it (Python 3.5+)
            super().sendall(*args)


class TimedSSLSocket(TimedSocket, ssl.SSLSocket):
    """:class:`TimedSocket` over TLS (an ``https`` webhook): the TLS socket a context of
    :func:`timed_tls` makes, given its deadline once the handshake is done."""


@functools.cache
def timed_tls() -> ssl.SSLContext:
    """The TLS context of an ``https`` webhook: the default one (certificates checked),
    whose sockets are :class:`TimedSSLSocket`; made once (it reads the CA certificates),
    shared by every exchange (a context is thread-safe)."""
    context = ssl.create_default_context()
    context.sslsocket_class = TimedSSLSocket
    return context


class TimedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection within a :class:`Deadline` (``deadline=``)."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = deadline.connect


class TimedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection within a :class:`Deadline` (``deadline=``)."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self._create_connection = deadline.connect

    def connect(self) -> None:
        try:
            super().connect()  # the handshake within the time left (Deadline.connect)
        except TimeoutError:
            self.deadline.expired = True
            raise
        if isinstance(self.sock, TimedSocket):
            self.sock.deadline = self.deadline


class TimedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(TimedHTTPConnection, deadline=self.deadline), req)


class TimedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        self.tls = timed_tls()
        super().__init__(context=self.tls)
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(TimedHTTPSConnection, deadline=self.deadline)
        return self.do_open(connection, req, context=self.tls)


class Unredirected(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: the answer is raised as the :class:`urllib.error.HTTPError`
    it is (urllib would re-send a POST answered 301, 302 or 303 as a GET without its
    body, and take the GET's 200 for a delivery)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def timed_opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    """A :mod:`urllib` opener whose ``http`` and ``https`` exchanges run within
    ``deadline`` and follow no redirect (:class:`Unredirected`: what is POSTed here, a
    digest or an alert, is sent to the address configured or not at all)."""
    return urllib.request.build_opener(
        Unredirected, TimedHTTPHandler(deadline), TimedHTTPSHandler(deadline)
    )


def moved_note(exc: urllib.error.HTTPError, setting: str) -> str | None:
    """What to say of a redirect answer that was not followed (``None`` for any other
    answer): where the receiver moved, and the setting (a settings field) to change."""
    moved = exc.headers.get("Location") if 300 <= exc.code < 400 else None
    if not moved:
        return None
    return (f"answered HTTP {exc.code}, moved to {moved}: not followed; set "
            f"{env_name(setting)} to the new address")

