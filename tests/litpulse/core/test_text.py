"""The rule for text a user gives (:func:`litpulse.core.text.checked_text`)."""

from __future__ import annotations

import pytest

from litpulse.core.errors import ConfigError
from litpulse.core.text import checked_text


@pytest.mark.parametrize(
    "text",
    ["malaria", "", "  tab\there ", "two\nlines\r\n", "Müller – naïve ✓ 日本", "\u00a0\u2028"],
)
def test_ordinary_text_and_whitespace_pass_unchanged(text: str) -> None:
    assert checked_text(text, "query") is text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\x00b", r"query must not hold control characters: U\+0000 \(NUL\) at 1"),
        ("malaria \x1b[31m", r"U\+001B \(ESC\) at 8"),
        ("back\x08", r"U\+0008 at 4"),
        ("\x0bvertical tab", r"U\+000B at 0"),
        ("form\x0cfeed", r"U\+000C"),
        ("unit\x1fsep", r"U\+001F"),
        ("del\x7f", r"U\+007F \(DEL\)"),
        ("c1\x85next line", r"U\+0085"),
        ("c1\x9bcsi", r"U\+009B"),
        ("bad byte \udcff", r"U\+DCFF"),  # what the CLI makes of undecodable argv bytes
    ],
)
def test_control_characters_are_refused_by_name_and_position(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        checked_text(text, "query")
