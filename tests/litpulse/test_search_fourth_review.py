"""Fourth hostile review of the search: the page's PMID/DOI lookup (commit 2d102e2:
a PMID or a DOI typed alone in the search box shows that article). Each test asserts the
correct behaviour; each was a strict xfail until its fix (the page now follows the
``article`` the API's refusal names: the server's reading alone decides).

The page decided on its own (``app.js`` ``PMID_ALONE``/``DOI_ALONE``/``lookupOf``) what is
a PMID or a DOI, and the server decided again (``ranking.search._PMID_ONLY``,
``litpulse.core.text.doi_key``): where the two readings differ, the page either asks
``GET /articles/doi/…`` for something that is not the DOI, or sends the server a query it
refuses as "a PMID/DOI alone" — the very refusal the lookup was added to replace.

Uses the fixtures of :mod:`tests.litpulse.app.test_browser` (skipped without Chromium),
with a store of its own in which PMID 202 has a SICI DOI (``<``, ``>``, ``;``, ``(``):
doi.org writes such DOIs percent-escaped in its links.
"""

# ruff: noqa: F811 - the fixtures imported from test_browser are this module's test arguments
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from litpulse.core import db
from litpulse.core.settings import Settings
from tests.litpulse.app.apistore import clone_store
from tests.litpulse.app.test_browser import (  # noqa: F401 - fixtures
    By,
    WebDriverWait,
    browser,
    screenshot_target,
    server,
)
from tests.ranking.corpus import real_corpus

pytestmark = pytest.mark.browser

#: A real-world DOI form (Wiley's SICI DOIs of the 1990s); doi.org's links escape < and >.
SICI = "10.1002/(SICI)1097-0258(19980430)17:8<857::AID-SIM777>3.0.CO;2-E"
SICI_LINK = "https://doi.org/10.1002/(SICI)1097-0258(19980430)17:8%3C857::AID-SIM777%3E3.0.CO;2-E"


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of the real corpus in which article 202's DOI is :data:`SICI`."""
    settings = clone_store(real_corpus(tmp_path_factory),
                           tmp_path_factory.mktemp("page-fourth") / "home")
    with db.connect(settings).begin() as conn:
        conn.execute(text("UPDATE articles SET doi = :doi WHERE pmid = 202"), {"doi": SICI})
    return settings


def _typed(browser: Any, server: str, query: str) -> tuple[list[str], str]:
    """Type ``query`` in a freshly opened page's search box and submit it: the PMIDs of
    the results shown and the error shown, once either appears."""
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "go").is_enabled())
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys(query)
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 20).until(
        lambda d: "result" in d.find_element(By.ID, "count").text
        or d.find_element(By.ID, "error").text)
    hits = [h.get_attribute("data-pmid")
            for h in browser.find_elements(By.CSS_SELECTOR, "li.hit")]  # fmt: skip
    return hits, browser.find_element(By.ID, "error").text


def test_the_doi_itself_is_looked_up(browser: Any, server: str) -> None:
    # the control: the SICI DOI typed as it is shows its article
    assert _typed(browser, server, SICI) == (["202"], "")


# DEFECT (page, DOI link with escapes): DOI_ALONE takes the text after "doi.org/" as it is
# and lookupOf percent-encodes it once more, so the escapes of a pasted doi.org link reach
# the server as literal text ("%3C" instead of "<"): the page says "no article in the
# store has DOI 10.1002/(sici)…%3c857…" for an article it holds. The server itself reads
# the whole link right (doi_key decodes a link's escapes; GET /articles/doi/<the link>
# would too), and its search refusal of the same text names the right DOI. A link is the
# most common way a DOI is pasted; doi.org/Crossref escape <, >, #, space, [ ] etc.
def test_a_doi_link_with_escapes_shows_its_article(browser: Any, server: str) -> None:
    hits, error = _typed(browser, server, SICI_LINK)
    assert (hits, error) == (["202"], "")


# DEFECT (page vs server, escaped slash): "https://doi.org/10.1000%2Ftest.201" is a DOI
# alone for the server (doi_key decodes the link: 10.1000/test.201), so /search refuses
# it with "the query is a DOI alone: … shows that article"; the page's DOI_ALONE needs a
# literal "/" after the prefix, so it searches instead and shows that refusal — exactly
# what the lookup feature was made to replace.
def test_a_doi_link_with_an_escaped_slash_shows_its_article(browser: Any, server: str) -> None:
    hits, error = _typed(browser, server, "https://doi.org/10.1000%2Ftest.201")
    assert (hits, error) == (["201"], "")


# DEFECT (page vs server, digits): the server's _PMID_ONLY uses Python's \d, which takes
# any Unicode decimal digit (full-width ２０１ as a Japanese/Chinese IME types it, Arabic-
# Indic ٢٠١), so /search refuses "２０１" as "a PMID alone: … GET /articles/201 shows that
# article"; the page's PMID_ALONE uses JavaScript's \d (ASCII only), so it searches and
# shows that refusal instead of the article. Either both read it as PMID 201 (the page
# looks it up) or neither does.
def test_a_pmid_in_full_width_digits_shows_its_article(browser: Any, server: str) -> None:
    hits, error = _typed(browser, server, "\uff12\uff10\uff11")  # ２０１
    assert (hits, error) == (["201"], "")
