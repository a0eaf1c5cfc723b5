"""The one rule for text a user gives: which characters it may hold.

Queries, filter terms, saved-search names and judgements are stored (PostgreSQL refuses
NUL in text), searched in SQL, written into Atom feeds (XML 1.0 forbids most control
characters) and printed on terminals (an escape sequence would act there). So every such
text passes :func:`checked_text` where its floor first checks it: control characters are
refused, except tab, line feed and carriage return (ordinary whitespace, allowed in XML).

Example:
    >>> checked_text("malaria vaccine", "query")
    'malaria vaccine'
    >>> checked_text("malaria\\x1b[31m", "query")
    Traceback (most recent call last):
    ...
    litpulse.core.errors.ConfigError: query must not hold control characters: U+001B (ESC) at 7
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from litpulse.core.errors import ConfigError
from litpulse.core.widths import TERM_MAX

__all__ = [
    "GREEK",
    "address_list",
    "checked_text",
    "clean_doi",
    "doi_forms",
    "doi_key",
    "fold",
    "fold_term",
    "plain_mailbox",
    "sender_address",
    "visible_name",
]

#: C0 and C1 control characters but tab, line feed and carriage return; DEL; lone
#: surrogates (the CLI's arguments carry undecodable bytes as such; no database stores them).
_REFUSED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
#: Names shown for the characters most often met.
_NAMES = {0x00: "NUL", 0x1B: "ESC", 0x7F: "DEL"}


def checked_text(value: str, what: str) -> str:
    """``value`` unchanged, when it holds no refused character.

    Args:
        value: The text as given.
        what: What it is, for the message (``"query"``, ``"mesh"``, …).

    Raises:
        ConfigError: A control character other than tab, line feed or carriage return
            (NUL, escape, backspace, C1 controls, …) or a lone surrogate; the message
            names the first one and its position.
    """
    found = _REFUSED.search(value)
    if found is None:
        return value
    code = ord(found.group())
    name = f"U+{code:04X}" + (f" ({_NAMES[code]})" if code in _NAMES else "")
    raise ConfigError(f"{what} must not hold control characters: {name} at {found.start()}")


#: Invisible characters a name must not hold (a soft hyphen, zero-width space, word
#: joiner and invisible operators, byte-order mark, the bidirectional marks, embeddings,
#: overrides and isolates: a name holding one reads as another's). Other format
#: characters spell words and emoji (the joiners, a flag's tag characters, the Mongolian
#: vowel separator) and stay allowed.
_INVISIBLE = re.compile(
    "[\u00ad\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


def visible_name(value: str, what: str) -> str:
    """A name as it is kept and compared: composed (NFC: ``é`` one character however it was
    typed; macOS types two) and free of invisible characters, so two names that read the
    same are one name (a saved search's, an expert's).

    Raises:
        ConfigError: It holds an invisible character (named, with ``what``).
    """
    text = unicodedata.normalize("NFC", value)
    hidden = _INVISIBLE.search(text)
    if hidden is not None:
        raise ConfigError(f"{what} must not hold the invisible character "
                          f"U+{ord(hidden.group()):04X}: {text!r}")  # fmt: skip
    return text


#: The longest address SMTP carries (RFC 5321's path, 256 octets, less its brackets).
MAX_ADDRESS = 254
#: One plain mailbox, ASCII only: a local part of letters, digits and ``. _ % + ' -``,
#: and a domain of dot-separated labels of letters, digits and inner hyphens. Stricter
#: than RFC 5322 on purpose: nothing here can be read as more than one address or change
#: the message it is written into — no whitespace or control character (a header's line
#: break), no display name, list or comment, and no ``=?…?=`` encoded word, which the
#: e-mail library decodes when it reads a header back (into other recipients).
#: Deliverability is the mail server's to say.
_MAILBOX = re.compile(
    r"[A-Za-z0-9_%+'-]+(?:\.[A-Za-z0-9_%+'-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
#: :data:`_MAILBOX` whose domain may also be one label (``litpulse@localhost``).
_LOCAL_MAILBOX = re.compile(_MAILBOX.pattern.removesuffix(")+") + ")*")


def plain_mailbox(value: str, what: str = "e-mail address", *, one_label: bool = False) -> str:
    """``value`` without surrounding blanks, when it is one plain mailbox
    (``local@domain``, ASCII: see :data:`_MAILBOX`).

    Refused: a line break or any control character (in a header it would start another
    header: a ``Bcc:`` to anyone), a display name or angle brackets, two addresses, an
    encoded word (``=?utf-8?q?…?=``), no local part or a domain without a dot (unless
    ``one_label``: a sender on a local relay, ``litpulse@localhost``), a domain that is
    not ASCII (an internationalised one goes in its ``xn--`` form), more than
    :data:`MAX_ADDRESS` characters or a local part over 64.

    Example:
        >>> plain_mailbox(" ann@lab.example.org ")
        'ann@lab.example.org'

    Raises:
        ConfigError: It is not one plain mailbox.
    """
    address = value.strip()
    local = address.partition("@")[0]
    pattern = _LOCAL_MAILBOX if one_label else _MAILBOX
    if len(address) > MAX_ADDRESS or len(local) > 64 or not pattern.fullmatch(address):
        idn = "; an internationalised domain in its xn-- form" if not address.isascii() else ""
        raise ConfigError(f"{what} must be one plain mailbox (name@domain, ASCII{idn}, at "
                          f"most {MAX_ADDRESS} characters), got {value!r}")  # fmt: skip
    return address


def sender_address(value: str, what: str = "sender") -> str:
    """The address of ``value``, one mailbox as a ``From`` header gives it
    (``name@domain``, ``Name <name@domain>``, ``name@domain (comment)``), when that
    address is a :func:`plain_mailbox` (its domain may be one label: ``localhost``).

    Read as the e-mail library reads the header it is written into, so the address is the
    one the message goes out from, and its domain the one its ``Message-ID`` names.

    Example:
        >>> sender_address("digest@lab.example.org (litpulse)")
        'digest@lab.example.org'

    Raises:
        ConfigError: A control character (a line break would start another header), not
            one mailbox, a malformed one, or its address no plain mailbox (an
            internationalised domain not in its ``xn--`` form).
    """
    from email.policy import default

    text = checked_text(value, what).strip()
    try:
        header: Any = default.header_factory("From", text)
        addresses: list[Any] = [] if header.defects else list(header.addresses)
    except Exception:  # noqa: BLE001 - the parser fails on some malformed text with
        addresses = []  # AttributeError, IndexError…: so would every e-mail's From
    if "\n" in text or "\r" in text or len(addresses) != 1:
        raise ConfigError(f"{what} must be one mailbox (name@domain, optionally with a "
                          f"display name or a comment), got {value!r}")  # fmt: skip
    return plain_mailbox(addresses[0].addr_spec, f"the address of {what}", one_label=True)


def address_list(value: str, what: str = "recipients") -> list[str]:
    """The comma-separated mailboxes of ``value`` as given (blank entries left out), each
    one :func:`sender_address` takes (``name@domain``, ``Name <name@domain>``).

    Example:
        >>> address_list("Team Lead <lead@example.org>, ops@example.org,")
        ['Team Lead <lead@example.org>', 'ops@example.org']

    Raises:
        ConfigError: An entry is not one mailbox (a space or ``;`` between two addresses,
            a name without an address), naming ``what``.
    """
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    for entry in entries:
        sender_address(entry, f"each of {what} (comma-separated)")
    return entries


# ------------------------------------------------------------------------------ folding

#: Greek letters by the names PubMed spells them with (``alpha-Synuclein``).
GREEK = dict(
    zip(
        "αβγδεζηθικλμνξοπρσςτυφϕχψω",
        (
            "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
            "rho sigma sigma tau upsilon phi phi chi psi omega"
        ).split(),
        strict=True,
    )
)
#: Hyphens, dashes and minus signs as ``-``; the apostrophe dropped (``Crohn's`` ``crohns``).
_DASHES = str.maketrans(
    {**{c: "-" for c in "\u2010\u2011\u2012\u2013\u2212\ufe63\uff0d"}, "'": None, "\u2019": None}
)
#: The invisible format characters a word can hold (a soft hyphen, zero-width spaces and
#: joiners, bidirectional marks): ``immuno\u00adglobulin`` is one word.
_IN_WORDS = ("\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064"
             "\ufeff\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSEEN = str.maketrans(dict.fromkeys(_IN_WORDS))
#: Trade and service marks, dropped before NFKC (which would spell ``MAVYRET™`` ``mavyrettm``);
#: apostrophe-like marks inside a word (``Crohnʼs``, ``5′-UTR``, ``Crohn´s``: the acute
#: accent, which NFKC would make a space), dropped as ``'`` is; and the invisible format
#: characters a word can hold (:data:`_IN_WORDS`).
_MARKS = str.maketrans({
    **dict.fromkeys("\u2122\u2120\u00ae\u00a9", " "),
    **dict.fromkeys("\u02bc\u2018\u2032\u00b4"),
    **dict.fromkeys(_IN_WORDS),
})  # fmt: skip
#: Letters with no Unicode decomposition, folded as a reader would type them (after lower
#: case): ``Tromsø`` ``tromso``, ``Gießen`` ``giessen``.
_FOLDS = str.maketrans({"ø": "o", "ß": "ss", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d",
                        "ı": "i", "þ": "th", "ð": "d", "ħ": "h"})  # fmt: skip
#: A run of letters and digits: a folded term's words.
_TERM_WORD = re.compile(r"[^\W_]+")


def as_typed(text: str) -> str:
    """``text`` as a reader sees it typed: composed (NFC: an accent one character, however
    it was typed; macOS and many PDFs give two) and without the invisible characters a
    word can hold (a soft hyphen, zero-width spaces and joiners: :data:`_IN_WORDS`, which
    :func:`fold` drops too), so that what reads a query word by word (a name, a word
    after ``NOT``) reads the words :func:`fold` compares.

    Example:
        >>> as_typed("Mu\u0308l\u00adler") == "Müller"
        True
    """
    return unicodedata.normalize("NFC", text.translate(_UNSEEN))


def fold(text: str, lower: Callable[[str], str] = str.lower) -> str:
    """``text`` as the lexical index and the term filters compare it: marks and invisible
    characters dropped, NFKC (full-width forms, ligatures, the micro sign), ``lower``
    (the lexical index keeps some capitals: :func:`ranking.lexical._lower`), dashes as
    ``-``, apostrophes dropped, accents stripped, ``ø ß æ …`` spelt out, and each Greek
    letter as its name between hyphens (``α-Synuclein`` ``-alpha--synuclein``).

    Example:
        >>> fold("Sjögren’s Syndrome")
        'sjogrens syndrome'
    """
    text = lower(unicodedata.normalize("NFKC", text.translate(_MARKS)))
    text = text.translate(_DASHES).translate(_FOLDS)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(f"-{GREEK[c]}-" if c in GREEK else c for c in text)


def fold_term(term: str) -> str:
    """A MeSH descriptor or publication type as a filter compares it: :func:`fold`, then
    its words (runs of letters and digits) joined by one space, cut to ``TERM_MAX``. A
    term typed with an accent, a curly apostrophe, a Greek letter or another dash finds
    the stored spelling.

    Example:
        >>> fold_term("α‑Synuclein") == fold_term("alpha-Synuclein") == "alpha synuclein"
        True
    """
    return " ".join(_TERM_WORD.findall(fold(term)))[:TERM_MAX]


#: A DOI as typed or pasted: bare, after ``doi:`` or Springer's ``DOI`` (any case, a space
#: or a colon or both), or as a ``doi.org`` link, with or without its scheme (group 1: the
#: link's prefix); ``10.``, a registrant of 4–9 digits, ``/`` and a suffix without spaces
#: (group 2), maybe followed by a sentence's full stop, comma or semicolon.
_DOI = re.compile(
    r"\s*(?:doi\s*:?\s*|((?:https?://)?(?:dx\.)?doi\.org/))?(10\.\d{4,9}/\S+?)[.,;]?\s*", re.I
)
#: A DOI alone with nothing around it to take off (no space, no escape, no last full stop).
_PLAIN_DOI = re.compile(r"10\.\d{4,9}/[^\s%]*[^\s%.,;]")
_LINK = re.compile(r"doi\.org/", re.I)
#: What a PDF or a word processor puts in a DOI copied from it: Unicode hyphens and minus
#: signs for ``-``, a soft hyphen where a line broke (nothing).
_DOI_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2212", "-") | {"\u00ad": None})


def clean_doi(text: str, *, typed: bool = False) -> str | None:
    """The DOI ``text`` holds alone, as written (its case kept): ``doi:``, ``DOI``, a
    ``doi.org`` link's prefix and a sentence's last full stop off, a link's
    percent-escapes decoded; ``None`` when ``text`` is not one DOI alone. PubMed's stored
    DOIs (:mod:`ingest.fields`) and the DOIs typed to look an article up both go through
    it; ``typed`` (a lookup): Unicode hyphens read as ``-`` and soft hyphens dropped, as
    a DOI copied from a PDF carries them, and one holding a control character (NUL, a
C1 control, a lone surrogate: :func:`checked_text`'s) is none (a stored DOI keeps what
PubMed gave).

    Example:
        >>> clean_doi("doi: 10.1056/NEJMoa2034577.")
        '10.1056/NEJMoa2034577'
    """
    if typed:
        text = text.translate(_DOI_DASHES)
        if _REFUSED.search(text):  # a control character: no DOI
            return None
    if _PLAIN_DOI.fullmatch(text):  # most of PubMed's: nothing to take off
        return text
    if _LINK.search(text):  # a link: its escapes are the DOI's characters
        text = unquote(text)
        if typed and _REFUSED.search(text):  # a link's %00 (a plain DOI keeps its % as is)
            return None
    m = _DOI.fullmatch(text)
    return m.group(2) if m is not None else None


def doi_key(text: str) -> str | None:
    """The DOI typed in ``text`` alone (:func:`clean_doi`) in lower case, as DOIs are
    matched: without regard to case, by Python's ``str.lower`` on both sides, the same on
    every store (``ingest.store.Store._by_doi`` finds the candidates through the
    ``lower(doi)`` index with :func:`doi_forms`, what either store's own ``lower`` makes
    of them, then keeps those whose stored DOI in lower case is this key); ``None`` when
    ``text`` is not one DOI alone.

    Example:
        >>> doi_key("https://doi.org/10.1056/NEJMoa2034577")
        '10.1056/nejmoa2034577'
    """
    doi = clean_doi(text, typed=True)
    return doi.lower() if doi is not None else None


#: Most letters outside ASCII of a DOI whose every case :func:`doi_forms` spells (2**n
#: forms); past it, the DOI as typed, in lower and in upper case only.
_MAX_CASED = 8
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def doi_forms(doi: str) -> list[str]:
    """What a store's ``lower()`` may make of a stored DOI that :func:`doi_key` matches
    with ``doi`` (a DOI alone, as :func:`clean_doi` gives it), to look it up through the
    ``lower(doi)`` index on every store alike: SQLite's ``lower`` folds ASCII only (a
    stored ``É`` stays ``É``), PostgreSQL's folds every letter. So: the ASCII letters in
    lower case with each other letter in each of its cases, and the whole DOI in lower
    case. The caller keeps the rows whose DOI's :func:`doi_key` is ``doi``'s.

    Example:
        >>> doi_forms("10.1000/Tést")
        ['10.1000/tÉst', '10.1000/tést']
    """
    import itertools

    base = doi.translate(_ASCII_LOWER)
    choices: list[tuple[str, ...]] = []
    for ch in base:
        cases = {ch} if ch.isascii() else {ch, ch.lower(), ch.upper()}
        choices.append(tuple(sorted(c for c in cases if len(c) == 1)))
    cased = sum(len(c) > 1 for c in choices)
    if cased > _MAX_CASED:
        forms = {base, doi.lower(), doi.upper().translate(_ASCII_LOWER)}
    else:
        forms = {"".join(p) for p in itertools.product(*choices)} | {doi.lower()}
    return sorted(forms)
