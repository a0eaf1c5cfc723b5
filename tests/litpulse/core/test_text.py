"""The rule for text a user gives (:func:`litpulse.core.text.checked_text`)."""

from __future__ import annotations

import pytest

from litpulse.core.errors import ConfigError
from litpulse.core.text import checked_text, doi_key


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


@pytest.mark.parametrize(("text", "key"), [
    ("10.1056/NEJMoa2034577", "10.1056/nejmoa2034577"),
    ("  doi:10.1056/NEJMoa2034577. ", "10.1056/nejmoa2034577"),
    ("DOI: 10.1056/nejmoa2034577", "10.1056/nejmoa2034577"),
    ("https://doi.org/10.1056/NEJMoa2034577", "10.1056/nejmoa2034577"),
    ("http://dx.doi.org/10.1016/S0140-6736(20)30183-5", "10.1016/s0140-6736(20)30183-5"),
    ("https://doi.org/10.1002/(SICI)1097-0258(19980115)17:1%3C3::AID-SIM1%3E3.0.CO;2-4",
     "10.1002/(sici)1097-0258(19980115)17:1<3::aid-sim1>3.0.co;2-4"),
])
def test_a_doi_is_read_as_pubmed_stores_it_whatever_its_case_and_prefix(
    text: str, key: str
) -> None:
    assert doi_key(text) == key


@pytest.mark.parametrize("text", ["", "malaria", "10.1056", "10.12/x", "PMID 123",
                                  "10.1056/NEJMoa2034577 and more words", "doi:"])
def test_what_is_no_doi_is_none(text: str) -> None:
    assert doi_key(text) is None
