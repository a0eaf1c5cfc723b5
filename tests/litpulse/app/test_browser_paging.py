"""Hostile review of the researcher's page (headless Chromium): URL state, paging, stale
results after an error, shared links and server-side scoring defaults.

Each test is a finding of that review (first strict xfails, now fixed in the page's
``app.js``/``alerts.js``/``index.html``). Uses the fixtures of
:mod:`tests.litpulse.app.test_browser` (skipped without Chromium).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest

from litpulse.core.settings import Settings
from tests.litpulse.app.test_browser import (  # noqa: F401 - fixtures
    By,
    WebDriverWait,
    _serve,
    browser,
    fetch,
    real,
    server,
)
from tests.litpulse.app.test_browser_page import _count, _pmids, _wait_results

pytestmark = pytest.mark.browser


def _api_pmids(url: str) -> list[int]:
    """The PMIDs ``GET /search`` answers for ``url``, in order."""
    return [h["pmid"] for h in json.loads(fetch(url))["results"]]


def _weights(driver: Any) -> dict[str, str]:
    """The weight column of the first result's explanation: component -> text."""
    first = driver.find_elements(By.CSS_SELECTOR, "#results > li.hit")[0]
    rows = [
        [td.get_attribute("textContent") for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in first.find_elements(By.CSS_SELECTOR, "table.explain tr")[1:]
    ]
    return {row[0]: row[2] for row in rows}


def _wait_weight(driver: Any, component: str, text: str) -> None:
    """Wait until the first result's explanation shows ``text`` as ``component``'s weight.

    After Back (or a new search) the page shows the results it had until the new answer
    renders; read meanwhile, a result the render replaces is stale (or none is listed yet).
    """
    from selenium.common.exceptions import StaleElementReferenceException

    WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException, IndexError,
                                                  KeyError)).until(
        lambda d: _weights(d)[component] == text
    )  # fmt: skip


def test_back_button_after_next_returns_to_the_previous_page(
    browser: Any,  # noqa: F811 - fixture
    server: str,  # noqa: F811 - fixture
) -> None:
    browser.get("about:blank")
    browser.get(server + "/?q=gene+editing+with+CRISPR&k=5")
    _wait_results(browser, "(1–5)")
    page1 = _pmids(browser)
    browser.find_element(By.ID, "next").click()
    _wait_results(browser, "(6–10)")
    page2 = _pmids(browser)
    browser.back()
    # the researcher expects page 1 of the same search again, not the page before litpulse
    WebDriverWait(browser, 10).until(lambda d: d.current_url.startswith(server))
    assert "offset=5" not in browser.current_url
    _wait_results(browser, "(1–5)")
    assert _pmids(browser) == page1
    # and Forward shows page 2 again, from its URL
    browser.forward()
    _wait_results(browser, "(6–10)")
    assert "offset=5" in browser.current_url
    assert _pmids(browser) == page2
    # a new search is an entry of its own too: Back from it shows page 2 of the first one,
    # with the form set to that search again
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys("malaria vaccine for children")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 20).until(lambda d: "malaria" in d.current_url)
    _wait_results(browser, "(1–5)")
    browser.back()
    _wait_results(browser, "(6–10)")
    assert _pmids(browser) == page2
    assert browser.find_element(By.ID, "q").get_attribute("value") == "gene editing with CRISPR"


def test_next_after_changing_k_does_not_skip_results(
    browser: Any,  # noqa: F811 - fixture
    server: str,  # noqa: F811 - fixture
) -> None:
    browser.get(server + "/?q=gene+editing+with+CRISPR&k=5")
    _wait_results(browser, "(1–5)")
    k = browser.find_element(By.ID, "k")
    browser.execute_script("arguments[0].value = '10'", k)  # the Results field, not submitted
    browser.find_element(By.ID, "next").click()
    WebDriverWait(browser, 20).until(lambda d: "(1–5)" not in _count(d))
    # results 6.. must follow the five shown: nothing between them is skipped
    assert "(6–10)" in _count(browser), _count(browser)
    assert "k=5" in browser.current_url and "offset=5" in browser.current_url
    assert _pmids(browser) == _api_pmids(server + "/search?q=gene+editing+with+CRISPR&k=5&offset=5")
    assert "Page 2" in browser.find_element(By.ID, "page-info").text


def test_next_pages_the_search_shown_not_the_unsubmitted_box(
    browser: Any,  # noqa: F811 - fixture
    server: str,  # noqa: F811 - fixture
) -> None:
    browser.get(server + "/?q=gene+editing+with+CRISPR&k=5")
    _wait_results(browser, "(1–5)")
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys("malaria vaccine")  # typed, not submitted
    browser.find_element(By.ID, "next").click()
    _wait_results(browser, "(6–10)")
    assert "gene+editing" in browser.current_url, browser.current_url
    assert "malaria" not in browser.current_url
    assert _pmids(browser) == _api_pmids(server + "/search?q=gene+editing+with+CRISPR&k=5&offset=5")
    # what was typed stays in the box, for a submit of its own
    assert browser.find_element(By.ID, "q").get_attribute("value") == "malaria vaccine"


def test_a_failed_search_does_not_leave_stale_results(
    browser: Any,  # noqa: F811 - fixture
    server: str,  # noqa: F811 - fixture
) -> None:
    browser.get(server + "/?q=malaria+vaccine+for+children")
    _wait_results(browser, "result")
    assert _pmids(browser)
    browser.find_element(By.CSS_SELECTOR, "#filters summary").click()
    browser.execute_script(
        "document.getElementById('since').value = '2024-05-01';"
        "document.getElementById('until').value = '2024-01-01';"
    )
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys("gene editing")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "q=gene+editing" in browser.current_url
    # what is still listed are malaria articles, with export links for the malaria search
    assert _pmids(browser) == [] or not browser.find_element(By.ID, "results").is_displayed()
    href = browser.find_element(By.ID, "export-csv").get_attribute("href") or ""
    toolbar = browser.find_element(By.ID, "toolbar")
    assert not toolbar.is_displayed() or "malaria" not in href
    assert _pmids(browser) == [] and not toolbar.is_displayed()
    assert "malaria" not in href and _count(browser) == ""
    assert not browser.find_element(By.ID, "pager").is_displayed()
    # Back: the malaria search again, its results and export links, no error
    browser.back()
    _wait_results(browser, "result")
    assert _pmids(browser) and not browser.find_element(By.ID, "error").is_displayed()
    href = browser.find_element(By.ID, "export-csv").get_attribute("href") or ""
    assert "q=malaria" in href


def test_a_link_with_two_mesh_filters_keeps_both(
    browser: Any,  # noqa: F811 - fixture
    server: str,  # noqa: F811 - fixture
) -> None:
    browser.get(server + "/?q=gene+editing&mesh=Gene+Editing&mesh=Animals&k=20")
    _wait_results(browser, "result")
    shown = set(_pmids(browser))
    api = set(_api_pmids(server + "/search?q=gene+editing&mesh=Gene+Editing&mesh=Animals&k=20"))
    # 102 and 103 carry both descriptors; 101 and 104 (Humans, not Animals) must be out
    assert api and not api & {101, 104}, api
    assert shown == api, shown
    assert browser.current_url.count("mesh=") == 2, browser.current_url
    # the form holds both (a field each), and so do searches from it and saved searches
    fields = [
        i.get_attribute("value")
        for i in browser.find_elements(By.CSS_SELECTOR, "#mesh, input[data-also='mesh']")
    ]
    assert fields[:2] == ["Gene Editing", "Animals"] and not any(fields[2:]), fields
    assert browser.execute_script("return savedBody('x').mesh") == ["Gene Editing", "Animals"]
    browser.execute_script("document.getElementById('count').textContent = ''")
    browser.find_element(By.ID, "go").click()
    _wait_results(browser, "result")
    assert browser.current_url.count("mesh=") == 2, browser.current_url
    assert set(_pmids(browser)) == api
    # w_lexical in a link reaches the search (hybrid: half the relevance is lexical) and
    # stays in the URL
    browser.get(server + "/?q=gene+editing&w_lexical=0.5&k=5")
    _wait_results(browser, "result")
    assert "w_lexical=0.5" in browser.current_url
    weights = _weights(browser)
    assert weights["similarity"] == weights["lexical"] == "0.50", weights
    assert browser.find_element(By.ID, "w_lexical_out").text == "0.50"


def test_page_searches_with_the_servers_own_weights(
    browser: Any,  # noqa: F811 - fixture
    real: Settings,  # noqa: F811 - fixture
) -> None:
    tuned = real.replace(weight_recency=0.12, weight_similarity=3.0)
    with contextlib.contextmanager(_serve)(tuned) as url:
        browser.get(url + "/?q=malaria+vaccine+for+children")
        _wait_results(browser, "result")
        weights = _weights(browser)
        # the researcher touched no slider: the server's defaults must apply (hybrid splits
        # the similarity weight between the semantic and the lexical part)
        assert weights["recency"] == "0.12", weights
        relevance = float(weights["similarity"]) + float(weights.get("lexical", "0"))
        assert relevance == pytest.approx(3.0, abs=0.011), weights
        assert "w_recency" not in browser.current_url and "w_sim" not in browser.current_url
        # the sliders show the server's values, unrounded, and say they are its defaults
        assert browser.execute_script(
            "return [document.getElementById('w_recency').value,"
            " document.getElementById('w_sim').value]"
        ) == ["0.12", "3"]
        assert (
            browser.find_element(By.ID, "w_recency_out").get_attribute("textContent")
            == "0.12 (server default)"
        )
        assert (
            browser.find_element(By.ID, "w_sim_out").get_attribute("textContent")
            == "3.00 (server default)"
        )
        # a slider the researcher moves is sent, and only that one
        browser.execute_script(
            "const s = document.getElementById('w_recency'); s.value = '0.5';"
            "s.dispatchEvent(new Event('input', { bubbles: true }));"
        )
        browser.execute_script("document.getElementById('count').textContent = ''")
        browser.find_element(By.ID, "go").click()
        _wait_results(browser, "result")
        assert "w_recency=0.5" in browser.current_url and "w_sim" not in browser.current_url
        _wait_weight(browser, "recency", "0.50")
        # Back: the server's defaults again, nothing sent
        browser.back()
        WebDriverWait(browser, 20).until(lambda d: "w_recency" not in d.current_url)
        _wait_results(browser, "result")
        _wait_weight(browser, "recency", "0.12")
        assert (
            browser.find_element(By.ID, "w_recency_out").get_attribute("textContent")
            == "0.12 (server default)"
        )


def test_a_page_from_another_list_says_so(
    browser: Any,  # noqa: F811 - fixture
    server: str,  # noqa: F811 - fixture
    real: Settings,  # noqa: F811 - fixture
) -> None:
    """Pages are slices of one list only while the index and the store stay the same: a
    page answered after citations were written (the store version moved) says it is of
    another list, where the researcher reads it, above the results."""
    from litpulse.core import db

    def note() -> str:
        return browser.find_element(By.ID, "notes").get_attribute("textContent") or ""

    browser.get("about:blank")
    browser.get(server + "/?q=gene+editing+with+CRISPR&k=5")
    _wait_results(browser, "(1–5)")
    browser.find_element(By.ID, "next").click()
    _wait_results(browser, "(6–10)")
    assert "changed since the page before" not in note()  # one list so far
    with db.connect(real).begin() as conn:  # a citation refresh commits meanwhile
        db.mark_written(conn, "citations")
    browser.find_element(By.ID, "next").click()
    _wait_results(browser, "(11–15)")
    assert "The results changed since the page before" in note()
    assert browser.find_element(By.ID, "notes").is_displayed()
    browser.find_element(By.ID, "prev").click()  # the page before, of that list again
    _wait_results(browser, "(6–10)")
    assert "changed since the page before" not in note()
