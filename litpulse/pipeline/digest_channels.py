"""How a saved search's matches reach people: an Atom feed, an e-mail, a webhook POST.

Each function formats or sends; none reads the database. :mod:`litpulse.pipeline.digest`
decides what is new and records what was delivered.

* :func:`atom_feed` renders Atom 1.0 (RFC 4287): the feed's ``id``, ``title``,
  ``updated``, ``author`` and ``self`` link; per match an entry with ``id``, ``title``,
  ``link`` (the PubMed record), ``updated`` and a ``summary`` holding the score and its
  explanation.
* :func:`send_email` sends one plain-text message over SMTP (stdlib ``smtplib``), to the
  addresses it is given (:func:`litpulse.pipeline.digest.recipients_of`: the owner's, or
  the shared ``LITPULSE_DIGEST_SMTP_TO`` list).
* :func:`post_webhook` POSTs ``{"search": ..., "matches": [...]}`` as JSON.

Example:
    >>> url = "http://127.0.0.1:8000/feeds/1.atom"
    >>> xml = atom_feed(search, matches, self_url=url)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import logging
import re
import smtplib
import socket
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import getaddresses
from typing import Any

from litpulse.core.errors import TransientSourceError
from litpulse.core.settings import Settings, env_name
from litpulse.core.text import address_list, sender_address
from litpulse.core.timeutil import iso
from litpulse.pipeline.exchange import Deadline, moved_note, timed_opener
from litpulse.pipeline.saved_searches import SavedSearch
from ranking.details import pubmed_url

__all__ = [
    "ATOM_NS",
    "DeliveryError",
    "FeedPage",
    "Match",
    "atom_feed",
    "delivery_key",
    "email_message",
    "post_webhook",
    "pubmed_url",
    "send_email",
    "shared_recipients",
]

logger = logging.getLogger(__name__)

ATOM_NS = "http://www.w3.org/2005/Atom"
#: Seconds an SMTP or webhook exchange may take at most (``LITPULSE_HTTP_TIMEOUT``, capped:
#: the whole exchange, connection to last byte, not each read:
#: :class:`~litpulse.pipeline.exchange.Deadline`).
MAX_DELIVERY_TIMEOUT_S = 30.0


class DeliveryError(TransientSourceError):
    """An e-mail or webhook delivery failed; the matches stay pending for the next digest.

    ``refused``: the receiver answered and refused this message (a webhook's 4xx but
    those below; an SMTP server's permanent 5xx to the message once it had its data),
    where another message may still go. ``too_large``: it refused the message for its
    size (a webhook's 413; SMTP 552, or 5.3.4 / 5.2.3), so the same matches may go in
    smaller messages. Otherwise the receiver could not be reached, failed, or refuses
    every message alike (a 5xx, a timeout, a redirect, a webhook's 401, 404 or 410, the
    SMTP server refusing the sender, every recipient or the DATA command itself), and the
    later messages wait, in order. ``unanswered``: of those, the receiver could not be
    reached or did not answer within the exchange's time (a 5xx answered, and may be one
    message's). ``unreachable``: of those, no connection was made (refused, no route, a
    name that does not resolve, the connect timing out): not one message's doing, so no
    other goes to it this digest; a receiver that took the request and did not answer in
    time may be stuck on that one message (the digest's ``_deliver`` counts those in a
    row).
    """

    def __init__(
        self, message: str, *, refused: bool = False, too_large: bool = False,
        unanswered: bool = False, unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.refused = refused or too_large
        self.too_large = too_large
        self.unanswered = (unanswered or unreachable) and not self.refused
        self.unreachable = unreachable and self.unanswered


#: Webhook answers in 4xx that are no refusal of the message: "not now" (Request Timeout,
#: Conflict — the Idempotency-Key draft's "a request with this key is in progress" —, Too
#: Early, Too Many Requests) or "not here, whatever you send" (Unauthorized: the token;
#: Not Found and Gone: no receiver at the address, a webhook removed or re-created).
_NO_REFUSAL = frozenset({401, 404, 408, 409, 410, 425, 429})
#: SMTP enhanced status codes of a message over the server's size limit.
_TOO_LARGE_SMTP = (b"5.3.4", b"5.2.3")
#: An enhanced status code (RFC 3463) at the start of an SMTP reply's text.
_ENHANCED = re.compile(rb"[245]\.\d{1,3}\.\d{1,3}(?=\s|$)")


def _too_large(exc: smtplib.SMTPResponseException) -> bool:
    """Whether an SMTP server's answer refuses a message for its size: by its enhanced
    status code where it gives one (5.3.4, 5.2.3; not 5.2.2, a full mailbox, also sent as
    552), else by the basic code 552."""
    reply = exc.smtp_error if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error).encode()
    enhanced = _ENHANCED.match(reply.lstrip())
    if enhanced:
        return enhanced.group(0) in _TOO_LARGE_SMTP
    return exc.smtp_code == 552


class _SMTP(smtplib.SMTP):
    """:class:`smtplib.SMTP` within a :class:`Deadline` (``deadline=``: the connection,
    the greeting and every command after it), that tells a refused ``DATA`` command (the
    server refuses any message now: the sender, a policy) from a refusal of the message's
    data, which :meth:`smtplib.SMTP.data` raises alike (:class:`smtplib.SMTPDataError`)."""

    data_command_refused = False

    def __init__(self, host: str, port: int, *, deadline: Deadline) -> None:
        self.deadline = deadline  # before the connection and greeting, which __init__ reads
        super().__init__(host, port, timeout=deadline.seconds,
                         local_hostname=_ehlo_name(deadline))  # fmt: skip

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self.deadline.connect((host, port), timeout, self.source_address)

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.data_command_refused = True  # until the server answers the command with 354
        return super().data(msg)

    def getreply(self) -> tuple[int, bytes]:
        code, reply = super().getreply()
        if code == 354:
            self.data_command_refused = False
        return code, reply


def _ehlo_name(deadline: Deadline) -> str:
    """The name this machine gives in its EHLO, as :class:`smtplib.SMTP` finds it (its
    fully qualified name, else its address as a literal), but looked up within
    ``deadline`` (:meth:`Deadline.within`): smtplib's own look-up (a reverse lookup, then
    a forward one) takes no timeout, and a resolver that does not answer would hold the
    digest."""
    fqdn = deadline.within("this machine's own name (for EHLO) not looked up",
                           socket.getfqdn)  # fmt: skip
    if "." in fqdn:
        return fqdn
    try:
        address = deadline.within("this machine's own address (for EHLO) not looked up",
                                  socket.gethostbyname, socket.gethostname())  # fmt: skip
    except socket.gaierror:
        address = "127.0.0.1"
    return f"[{address}]"


@dataclass(frozen=True)
class Match:
    """A new article recorded for a saved search.

    Attributes:
        id: The match row's id.
        search_id: The saved search.
        pmid: The article.
        title: Its title when found.
        score: Its score under the model of ``model_version``.
        explanation: The score's explanation (``text`` and its components).
        index_version: The index version it was found in.
        model_version: The model version that scored it.
        found_at: When the digest recorded it.
        retracted: The article is retracted now (it may have been retracted after it was
            found): every channel says so.
        retracted_at: When it is retracted, when the store last wrote its record (the
            retracted revision, or a later one): the store keeps no other time of the
            retraction. ``None``: not retracted, or not read.
        attempt: The delivery key of the message it was handed to on the channel asked
            for (:func:`~litpulse.pipeline.digest.matches_of` ``pending``) and not yet known
            to have gone out; ``None``: never handed to one.
        refused_at: When the receiver on that channel last refused that message
            (:attr:`DeliveryError.refused`); ``None``: never.
    """

    id: int
    search_id: int
    pmid: int
    title: str
    score: float
    index_version: str
    model_version: str
    found_at: dt.datetime
    explanation: dict[str, Any] = field(default_factory=dict, compare=False)
    retracted: bool = False
    attempt: str | None = field(default=None, compare=False)
    refused_at: dt.datetime | None = field(default=None, compare=False)
    retracted_at: dt.datetime | None = field(default=None, compare=False)

    @property
    def headline(self) -> str:
        """The title as a channel shows it, ``[Retracted]`` first when it is."""
        title = self.title or f"PMID {self.pmid}"
        return f"[Retracted] {title}" if self.retracted else title

    @property
    def updated(self) -> dt.datetime:
        """When the match last changed as its channels show it (a feed entry's
        ``updated``): found, or retracted since — the title says ``[Retracted]`` from
        then, and a feed reader holding the entry takes it again only if this moved."""
        if self.retracted_at is not None and self.retracted_at > self.found_at:
            return self.retracted_at
        return self.found_at

    @property
    def why(self) -> str:
        """One line: the score and its explanation."""
        return f"score {self.score:.3f}: {self.explanation.get('text', '')}".rstrip(": ")

    def to_dict(self) -> dict[str, Any]:
        return {
            "pmid": self.pmid,
            "title": self.title,
            "score": self.score,
            "explanation": self.explanation,
            "url": pubmed_url(self.pmid),
            "index_version": self.index_version,
            "model_version": self.model_version,
            "found_at": iso(self.found_at),
            "retracted": self.retracted,
        }


def delivery_key(search: SavedSearch, matches: Sequence[Match]) -> str:
    """The same text for the same matches of the same search, whenever they are sent:
    a digest killed between sending them and recording it sends them again, and a
    receiver can tell the repeat (the e-mail's ``Message-ID``, the webhook's
    ``Idempotency-Key`` header and ``delivery`` field)."""
    ids = ",".join(str(i) for i in sorted(m.id for m in matches))
    text = f"{search.id}:{search.created_at.timestamp():.6f}:{ids}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _feed_id(search: SavedSearch) -> str:
    # the creation time keeps ids unique even if a removed search's id is reused
    return f"urn:litpulse:saved-search:{search.id}:{int(search.created_at.timestamp())}"


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    child = ET.SubElement(parent, f"{{{ATOM_NS}}}{tag}", attrs)
    child.text = text
    return child


@dataclass(frozen=True)
class FeedPage:
    """Which page of a saved search's matches a feed document holds (RFC 5005 paging).

    A page is read by its number (``?page=N``: the matches from position ``(N - 1) ×
    size + 1``), or after a match (``?page=N&after=ID``: the matches that come after
    match ``ID`` in the feed's order, whatever came or went before it). Each page's
    ``next`` link is of the second kind, after its last match, so a reader walking the
    pages while digests add matches at the top, or articles leave, reads each match
    once: a number would shift under it, showing a match again or skipping one.

    Attributes:
        number: The page, from 1 (the newest matches).
        size: Matches a page.
        total: The search's matches over every page.
        after: The match this page was read after (``None``: read by its number).
        first: The position (from 1) of its first match, when it holds any.
        shown: Matches it holds.
        last: The id of its last match (the ``next`` link reads after it).
        more: Whether matches follow its last one, as read with its matches (``None``:
            from ``total``).
    """

    number: int
    size: int
    total: int
    after: int | None = None
    first: int | None = None
    shown: int | None = None
    last: int | None = None
    more: bool | None = None

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def start(self) -> int:
        """The position of its first match (the one a page by number begins with)."""
        return self.first if self.first is not None else (self.number - 1) * self.size + 1

    @property
    def end(self) -> int:
        """The position of its last match (``start - 1``: it holds none)."""
        if self.shown is not None:
            return self.start + self.shown - 1
        return min(self.total, self.number * self.size)

    @property
    def has_next(self) -> bool:
        if self.more is not None:
            return self.more
        return self.end < self.total and self.end >= self.start

    def url(self, base: str, number: int, after: int | None = None) -> str:
        """The URL of page ``number`` of the feed at ``base`` (page 1: ``base`` itself),
        read after match ``after`` when given."""
        if after is not None:
            return f"{base}?page={number}&after={after}"
        return base if number == 1 else f"{base}?page={number}"

    def next_url(self, base: str) -> str:
        """The next page's URL: after this page's last match (by number: it has none)."""
        return self.url(base, self.number + 1, self.last)

    def said(self, base: str) -> str:
        """What the subtitle says of the pages (nothing when one holds them all)."""
        if self.total <= self.size and self.number == 1 and self.after is None:
            return ""
        if self.end < self.start:
            return (f" No matches on page {self.number}: its {self.total} matches are on "
                    f"pages 1 to {self.pages} ({self.url(base, 1)}).")  # fmt: skip
        more = (f"; older ones on the next page ({self.next_url(base)})"
                if self.has_next else "")  # fmt: skip
        return f" Matches {self.start} to {self.end} of {self.total}, newest first{more}."


def atom_feed(
    search: SavedSearch,
    matches: Sequence[Match],
    *,
    self_url: str,
    paging: FeedPage | None = None,
) -> bytes:
    """The Atom 1.0 document of a saved search's matches (newest first), UTF-8; DEL and
    the C1 controls written as character references (``&#155;``), so printed on a
    terminal it cannot act on it.

    Args:
        search: The saved search.
        matches: Its matches, in the order wanted (those of ``paging``'s page).
        self_url: The feed's own URL without a page (its first page; the ``rel="self"``
            link of page 1).
        paging: Which page ``matches`` are, of how many matches: the document links the
            first, previous and next pages (RFC 5005) and its subtitle counts them
            (``None``: ``matches`` are all of them).
    """
    paging = paging or FeedPage(1, max(1, len(matches)), len(matches))
    ET.register_namespace("", ATOM_NS)
    feed = ET.Element(f"{{{ATOM_NS}}}feed")
    _text(feed, "id", _feed_id(search))
    _text(feed, "title", f"litpulse: {search.name}")
    notes = "".join(f" Note: {note}" for note in search.notes)
    _text(
        feed,
        "subtitle",
        f"New articles for “{search.query}” scoring at least "
        f"{search.min_score if search.min_score is not None else 'the default threshold'}."
        f"{paging.said(self_url)}{notes}",
    )
    stamps = [m.updated for m in matches] + [search.created_at]
    if search.last_digest_at is not None:
        stamps.append(search.last_digest_at)
    _text(feed, "updated", iso(max(stamps)))
    author = ET.SubElement(feed, f"{{{ATOM_NS}}}author")
    _text(author, "name", "litpulse")
    links = {"self": paging.url(self_url, paging.number, paging.after)}
    if paging.pages > 1 or paging.number > 1 or paging.after is not None:
        links["first"] = paging.url(self_url, 1)
        if 1 < paging.number <= paging.pages + 1:
            links["previous"] = paging.url(self_url, paging.number - 1)
        if paging.has_next:
            links["next"] = paging.next_url(self_url)
    for rel, href in links.items():
        ET.SubElement(
            feed, f"{{{ATOM_NS}}}link", {"rel": rel, "href": href, "type": "application/atom+xml"}
        )
    _text(feed, "generator", "litpulse")
    for m in matches:
        entry = ET.SubElement(feed, f"{{{ATOM_NS}}}entry")
        _text(entry, "id", f"{_feed_id(search)}:pmid:{m.pmid}")
        _text(entry, "title", m.headline)
        ET.SubElement(entry, f"{{{ATOM_NS}}}link", {"rel": "alternate", "href": pubmed_url(m.pmid)})
        _text(entry, "updated", iso(m.updated))
        retracted = " (retracted)" if m.retracted else ""
        _text(entry, "summary", f"PMID {m.pmid}{retracted}, {m.why}", type="text")
    document = bytes(ET.tostring(feed, encoding="utf-8", xml_declaration=True))
    # DEL and the C1 controls are XML characters, but a terminal acts on them (U+009B
    # starts a control sequence: `litpulse alerts feed` prints the feed): written as
    # character references, the same document to a parser, inert where it is shown
    return _TERMINAL_CONTROL.sub(lambda m: b"&#%d;" % ord(m.group().decode()), document)


#: DEL and the C1 controls (U+007F-U+009F) in UTF-8: XML allows them, a terminal acts on them.
_TERMINAL_CONTROL = re.compile(b"\x7f|\xc2[\x80-\x9f]")


def email_message(
    settings: Settings, search: SavedSearch, matches: Sequence[Match],
    to: Sequence[str] | None = None, key: str | None = None,
) -> EmailMessage:
    """The plain-text e-mail listing a saved search's new matches, to ``to`` (default:
    :func:`shared_recipients`); ``key`` in its ``Message-ID`` (default
    :func:`delivery_key`)."""
    msg = EmailMessage(policy=_POLICY)
    n = len(matches)
    name = _header_text(search.name)
    msg["Subject"] = _encoded(f"litpulse: {n} new article{'s' if n != 1 else ''} for “{name}”")
    msg["From"] = settings.digest_smtp_from
    msg["To"] = ", ".join(shared_recipients(settings) if to is None else to)
    # the domain of the sender's address, as the header is read (not of a comment after it)
    domain = sender_address(settings.digest_smtp_from).rpartition("@")[2]
    msg["Message-ID"] = f"<litpulse-digest-{key or delivery_key(search, matches)}@{domain}>"
    lines = [f"New articles for your saved search “{search.name}” ({search.query}):", ""]
    if search.notes:  # what its query does not do (the page, API and CLI say it too)
        lines += [*(f"Note: {note}" for note in search.notes), ""]
    for i, m in enumerate(matches, start=1):
        lines += [
            f"{i}. {m.headline}",
            f"   {pubmed_url(m.pmid)}",
            f"   {m.why}",
            "",
        ]
    lines.append(f"Feed of every match: {search.feed_path} on your litpulse server.")
    msg.set_content("\n".join(lines))
    return msg


#: Control characters and line or paragraph separators: a header holds none of them.
_NOT_IN_HEADER = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _header_text(text: str) -> str:
    """``text`` for a header of one line: each run of control characters (a line break
    in a name saved before they were refused) as one space."""
    return _NOT_IN_HEADER.sub(" ", text).strip()


class _Folded(str):
    """A header value already encoded and folded (:func:`_encoded`): stored as it is."""


class _Policy(EmailPolicy):
    """The default policy, but for values that are :class:`_Folded`: kept as they are.

    Python's folding of a long non-ASCII header (3.11) leaves some spaces between RFC 2047
    encoded words, where every reader drops them ("клеточнойтерапии"); a value folded here
    keeps them inside the words.
    """

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, _Folded):
            return name, str(value)
        return super().header_store_parse(name, value)


_POLICY = _Policy()
#: UTF-8 bytes per encoded word: ``=?utf-8?b?`` + base64 of 39 bytes (52) + ``?=`` is 64
#: characters: within RFC 2047's 75, and a first line ``Subject: `` + one word within the
#: policy's 78 (a longer line would be folded again, by Python).
_WORD_BYTES = 39


def _encoded(text: str) -> str:
    """``text`` for a header: as it is when ASCII; else as RFC 2047 encoded words of
    whole characters, spaces inside them, one a line (:class:`_Folded`)."""
    if text.isascii():
        return text
    words: list[bytes] = []
    chunk = b""
    for char in text:
        raw = char.encode()
        if len(chunk) + len(raw) > _WORD_BYTES:
            words.append(chunk)
            chunk = b""
        chunk += raw
    words.append(chunk)
    return _Folded("\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words))


def shared_recipients(settings: Settings) -> list[str]:
    """``LITPULSE_DIGEST_SMTP_TO``: who gets the digests of searches whose owner has no
    address of their own."""
    return address_list(settings.digest_smtp_to, env_name("digest_smtp_to"))


def send_email(
    settings: Settings, search: SavedSearch, matches: Sequence[Match],
    to: Sequence[str] | None = None, key: str | None = None,
) -> str | None:
    """Send the e-mail of :func:`email_message` (to ``to``, default
    :func:`shared_recipients`) through ``LITPULSE_DIGEST_SMTP_HOST``.

    Returns:
        ``None``, or, when the server took the message for some recipients and refused
        others, which it refused and why: the message went out (to the others), so it is
        delivered — sending it again would repeat it to everyone who got it — and the
        refusal is for the report.

    Once the server took the message (its answer to the data), it is delivered whatever
    follows: a ``QUIT`` answered otherwise than ``221``, or not in time, is logged.

    Raises:
        DeliveryError: The server could not be reached, or refused the message (for every
            recipient): nothing went out.
    """
    to = shared_recipients(settings) if to is None else list(to)
    msg = email_message(settings, search, matches, to, key)
    envelope = [address for _, address in getaddresses(to) if address]
    deadline = Deadline.of(settings, MAX_DELIVERY_TIMEOUT_S)
    refused: dict[str, tuple[int, bytes]] | None = None  # set: the server took the message
    try:
        with _SMTP(settings.digest_smtp_host, settings.digest_smtp_port,
                   deadline=deadline) as smtp:  # fmt: skip
            try:
                # the envelope is the addresses given, not what reading the To header
                # back makes of them (the e-mail library decodes encoded words there)
                refused = smtp.send_message(msg, to_addrs=envelope)
            except smtplib.SMTPDataError as exc:  # the DATA command, or the message
                permanent = 500 <= exc.smtp_code < 600 and not smtp.data_command_refused
                raise DeliveryError(f"e-mail to {msg['To']} failed: {exc}", refused=permanent,
                                    too_large=permanent and _too_large(exc)) from exc
            except smtplib.SMTPSenderRefused as exc:  # its SIZE (RFC 1870), or the sender
                if not _too_large(exc):
                    raise
                raise DeliveryError(f"e-mail to {msg['To']} failed: {exc}",
                                    too_large=True) from exc  # fmt: skip
    except (OSError, smtplib.SMTPException) as exc:
        if refused is not None:
            # the server took the message (its 250 to the data): what failed is the
            # goodbye (QUIT answered 421, or not within the time left), and the message
            # went out: failed, it would be mailed again by every digest
            logger.info("e-mail to %s delivered; the SMTP server's goodbye failed: %s",
                        msg["To"], deadline.said if deadline.expired else exc)  # fmt: skip
        else:
            why = deadline.said if deadline.expired else str(exc)
            raise DeliveryError(f"e-mail to {msg['To']} failed: {why}",
                                unanswered=deadline.unanswered,
                                unreachable=deadline.unreachable) from exc  # fmt: skip
    if not refused:
        return None
    why = "; ".join(
        f"{address} ({code} {reply.decode('utf-8', 'replace').strip()})"
        for address, (code, reply) in sorted(refused.items())
    )
    return f"the SMTP server refused {why}: the other recipients got it"


def post_webhook(
    settings: Settings, search: SavedSearch, matches: Sequence[Match], key: str | None = None
) -> None:
    """POST the matches as JSON to ``LITPULSE_DIGEST_WEBHOOK_URL``.

    The body is ``{"text": one line, "delivery": key, "search": {...}, "matches":
    [...]}`` (``text`` for chat webhooks; ``delivery``, also the ``Idempotency-Key``
    header, is ``key``, by default :func:`delivery_key`: the same when the same matches
    are sent again).

    Raises:
        DeliveryError: No 2xx answer (none within the exchange's time, :class:`Deadline`;
            an answer that is no HTTP).
    """
    n = len(matches)
    key = key or delivery_key(search, matches)
    body = json.dumps(
        {
            "text": f"litpulse: {n} new article{'s' if n != 1 else ''} for “{search.name}”",
            "delivery": key,
            "search": search.to_dict(),
            "matches": [m.to_dict() for m in matches],
        },
        default=str,
    ).encode()
    request = urllib.request.Request(
        settings.digest_webhook_url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "litpulse-digest",
                 "Idempotency-Key": key},
    )
    deadline = Deadline.of(settings, MAX_DELIVERY_TIMEOUT_S)
    try:
        with timed_opener(deadline).open(request, timeout=deadline.seconds) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        # followed, the body would be lost (a 301/302 turns a POST into a GET)
        moved = moved_note(exc, "digest_webhook_url")
        if moved:
            raise DeliveryError(f"webhook {moved}") from exc
        refused = 400 <= exc.code < 500 and exc.code not in _NO_REFUSAL
        raise DeliveryError(
            f"webhook POST failed: {exc}", refused=refused, too_large=exc.code == 413
        ) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError: an OSError
        # HTTPException: an answer that is no HTTP (a TLS port, a misconfigured proxy:
        # BadStatusLine, LineTooLong), a failure of the receiver's, not of this message
        why = (deadline.said if deadline.expired
               else f"an answer that is no HTTP ({type(exc).__name__}: {exc})"
               if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError)
               else str(exc))  # fmt: skip
        raise DeliveryError(f"webhook POST failed: {why}",
                            unanswered=deadline.unanswered,
                            unreachable=deadline.unreachable) from exc  # fmt: skip
    if not 200 <= status < 300:
        raise DeliveryError(f"webhook answered HTTP {status}")



