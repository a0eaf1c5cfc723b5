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

from litpulse.core.errors import ConfigError

__all__ = ["checked_text", "plain_mailbox"]

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


#: The longest address SMTP carries (RFC 5321's path, 256 octets, less its brackets).
MAX_ADDRESS = 254
#: One plain mailbox: a local part and a domain, neither holding whitespace, a control
#: character or what would make it more than one address (a display name, a list, a
#: comment). Deliverability is the mail server's to say; this rule keeps an address
#: from changing the message it is written into.
_MAILBOX = re.compile(r"[^\s@<>(),;:\"\[\]\\\x00-\x1f\x7f]{1,64}@"
                      r"[^\s@<>(),;:\"\[\]\\\x00-\x1f\x7f.][^\s@<>(),;:\"\[\]\\\x00-\x1f\x7f]*")


def plain_mailbox(value: str, what: str = "e-mail address") -> str:
    """``value`` without surrounding blanks, when it is one plain mailbox
    (``local@domain``).

    Refused: a line break or any control character (in a header it would start another
    header: a ``Bcc:`` to anyone), a display name or angle brackets, two addresses, no
    local part or domain, more than :data:`MAX_ADDRESS` characters.

    Example:
        >>> plain_mailbox(" ann@lab.example.org ")
        'ann@lab.example.org'

    Raises:
        ConfigError: It is not one plain mailbox.
    """
    address = value.strip()
    if len(address) > MAX_ADDRESS or not _MAILBOX.fullmatch(address) or address.endswith("."):
        raise ConfigError(f"{what} must be one plain mailbox (name@domain, at most "
                          f"{MAX_ADDRESS} characters), got {value!r}")
    return address
