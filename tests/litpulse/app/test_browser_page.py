"""The researcher's page in headless Chromium: authors, highlighted snippet, MeSH, links,
Similar articles, pages, sort by date, retracted marks, keyboard use, labels, contrast,
and a 360 px window without horizontal scrolling.

Uses the fixtures of :mod:`tests.litpulse.app.test_browser` (skipped without Chromium).
``LITPULSE_TEST_SCREENSHOT=/tmp/page.png`` keeps a screenshot of the end state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.litpulse.app.test_browser import (  # noqa: F401 - fixtures
    By,
    Select,
    WebDriverWait,
    browser,
    fetch,
    real,
    screenshot_target,
    server,
)
from tests.ranking.corpus import ARTICLES

pytestmark = pytest.mark.browser

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

#: Contrast ratio of text against its background (WCAG 2 AA, normal text: 4.5).
CONTRAST_JS = """
function rgb(c) { const m = c.match(/[\\d.]+/g).map(Number); return m; }
function lum(c) { const [r, g, b] = rgb(c).slice(0, 3).map((v) => { v /= 255;
  return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b; }
function bg(node) { for (let n = node; n; n = n.parentElement) {
  const c = getComputedStyle(n).backgroundColor; const v = rgb(c);
  if (v.length < 4 || v[3] > 0) return c; } return "rgb(255, 255, 255)"; }
const out = [];
for (const sel of arguments[0]) for (const node of document.querySelectorAll(sel)) {
  const a = lum(getComputedStyle(node).color), b = lum(bg(node));
  out.push([sel, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]); }
return out;
"""


def _count(driver: Any) -> str:
    return str(driver.find_element(By.ID, "count").text)


def _pmids(driver: Any) -> list[int]:
    return [
        int(h.get_attribute("data-pmid"))
        for h in driver.find_elements(By.CSS_SELECTOR, "#results > li.hit")
    ]


def _wait_results(driver: Any, text: str) -> None:
    WebDriverWait(driver, 20).until(lambda d: text in _count(d))


def _tab_to(driver: Any, element: Any, limit: int = 120) -> int:
    """Press Tab until ``element`` has the focus; the number of presses."""
    for n in range(1, limit + 1):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.switch_to.active_element == element:
            return n
    raise AssertionError("the element cannot be reached with Tab")


def test_the_researchers_page(
    browser: Any,  # noqa: F811 - fixture
    server: str,  # noqa: F811 - fixture
    tmp_path: Path,
    screenshot_target: str | None,  # noqa: F811 - fixture
) -> None:
    browser.set_window_size(1200, 1400)
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: "articles" in d.find_element(By.ID, "status").text)
    # every input and select has a label; updates are announced
    unlabeled = browser.execute_script(
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter((e) => e.type !== 'hidden' && !e.labels.length && !e.getAttribute('aria-label'))"
        ".map((e) => e.id);"
    )
    assert unlabeled == []
    assert browser.find_element(By.ID, "count").get_attribute("aria-live") == "polite"

    # search with the keyboard only: type, Enter
    box = browser.find_element(By.ID, "q")
    box.click()
    box.send_keys("malaria vaccine for children", Keys.ENTER)
    _wait_results(browser, "result")
    first = browser.find_elements(By.CSS_SELECTOR, "#results > li.hit")[0]
    assert first.get_attribute("data-pmid") == "201"
    assert first.find_element(By.CSS_SELECTOR, ".authors").text == "Doe J, Test Consortium"
    marks = [m.text.lower() for m in first.find_elements(By.CSS_SELECTOR, ".snippet mark")]
    assert marks == ["malaria", "vaccine", "children"]
    assert first.find_element(By.CSS_SELECTOR, ".snippet").text == ARTICLES[201]["abstract"]
    assert {m.text.lower() for m in first.find_elements(By.CSS_SELECTOR, "a.title mark")} == {
        "malaria",
        "vaccine",
        "children",
    }
    tags = [t.text for t in first.find_elements(By.CSS_SELECTOR, ".tags span")]
    assert tags == ARTICLES[201]["ptype"] + ARTICLES[201]["mesh"]
    links = {
        a.text: a.get_attribute("href") for a in first.find_elements(By.CSS_SELECTOR, ".links a")
    }
    assert links == {
        "PubMed": "https://pubmed.ncbi.nlm.nih.gov/201/",
        "DOI 10.1000/test.201": "https://doi.org/10.1000/test.201",
    }

    # Similar articles: reached with Tab, opened with Enter, shown with a visible focus ring
    button = first.find_element(By.CSS_SELECTOR, "button.similar-btn")
    browser.find_element(By.ID, "q").click()
    assert _tab_to(browser, button) > 1
    outline = browser.execute_script(
        "const s = getComputedStyle(document.activeElement);"
        "return [s.outlineStyle, s.outlineWidth];"
    )
    assert outline[0] != "none" and outline[1] != "0px"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    region = first.find_element(By.CSS_SELECTOR, "section.similar")
    WebDriverWait(browser, 20).until(
        lambda d: region.find_elements(By.CSS_SELECTOR, "li.similar-hit")
    )
    assert button.get_attribute("aria-expanded") == "true"
    shown = [
        int(li.get_attribute("data-pmid"))
        for li in region.find_elements(By.CSS_SELECTOR, "li.similar-hit")
    ]
    api = [h["pmid"] for h in json.loads(fetch(f"{server}/similar/201?k=5"))["results"]]
    assert shown == api and 201 not in shown and len(shown) == 5
    # more: the next page of the same list appended, until none follows
    whole = [h["pmid"] for h in json.loads(fetch(f"{server}/similar/201?k=100"))["results"]]
    more = region.find_element(By.CSS_SELECTOR, "button.more-similar")
    more.click()
    WebDriverWait(browser, 20).until(
        lambda d: len(region.find_elements(By.CSS_SELECTOR, "li.similar-hit")) == 10
    )
    assert [
        int(li.get_attribute("data-pmid"))
        for li in region.find_elements(By.CSS_SELECTOR, "li.similar-hit")
    ] == whole[:10]
    while region.find_elements(By.CSS_SELECTOR, "button.more-similar"):
        count = len(region.find_elements(By.CSS_SELECTOR, "li.similar-hit"))
        region.find_element(By.CSS_SELECTOR, "button.more-similar").click()
        WebDriverWait(browser, 20).until(
            lambda d, n=count: len(region.find_elements(By.CSS_SELECTOR, "li.similar-hit")) > n
            or not region.find_elements(By.CSS_SELECTOR, "button.more-similar")
        )
    assert [
        int(li.get_attribute("data-pmid"))
        for li in region.find_elements(By.CSS_SELECTOR, "li.similar-hit")
    ] == whole

    # pages: five at a time, Next and Previous by keyboard, disjoint and reproducible
    browser.get(server + "/?q=gene+editing+with+CRISPR&k=5")
    _wait_results(browser, "(1–5)")
    page1 = _pmids(browser)
    nxt = browser.find_element(By.ID, "next")
    nxt.send_keys(Keys.ENTER)
    _wait_results(browser, "(6–10)")
    page2 = _pmids(browser)
    assert len(page1) == len(page2) == 5 and not set(page1) & set(page2)
    assert "offset=5" in browser.current_url
    assert browser.switch_to.active_element == browser.find_element(By.ID, "count")
    browser.find_element(By.ID, "prev").send_keys(Keys.ENTER)
    _wait_results(browser, "(1–5)")
    assert _pmids(browser) == page1

    # newest first: the sort selector, operated from the keyboard, searches again
    sort = browser.find_element(By.ID, "sort")
    Select(sort).select_by_value("date")
    _wait_results(browser, "newest first")
    dates = [
        li.find_element(By.CSS_SELECTOR, ".meta").text.split(" · ")[1]
        for li in browser.find_elements(By.CSS_SELECTOR, "#results > li.hit")
    ]
    dated = [d for d in dates if d[:4].isdigit()]
    assert dated == sorted(dated, reverse=True) and len(dated) >= 4

    # retracted articles, when asked for, are marked as such
    browser.get(server + "/?q=CRISPR+gene+editing+cures&include_retracted=true&k=10")
    _wait_results(browser, "result")
    retracted = browser.find_element(By.CSS_SELECTOR, "#results > li.hit[data-pmid='105']")
    assert "retracted" in retracted.get_attribute("class")
    assert "Retracted article" in retracted.find_element(By.CSS_SELECTOR, ".badge").text

    # text contrast (WCAG AA 4.5:1) of what a result shows
    ratios = browser.execute_script(
        CONTRAST_JS,
        [
            ".meta",
            ".authors",
            ".snippet",
            ".snippet mark",
            ".tags span",
            ".links a",
            "#count",
            "button.primary",
            ".actions button",
            "a.title",
            "#status",
            ".badge",
        ],
    )
    low = [(sel, round(r, 2)) for sel, r in ratios if r < 4.5]
    assert ratios and low == []

    # a 360 px window: nothing scrolls sideways, similar articles included
    browser.set_window_size(360, 900)
    browser.get(server + "/?q=malaria+vaccine+for+children&include_retracted=true")
    _wait_results(browser, "result")
    first = browser.find_elements(By.CSS_SELECTOR, "#results > li.hit")[0]
    first.find_element(By.CSS_SELECTOR, "button.similar-btn").click()
    WebDriverWait(browser, 20).until(
        lambda d: first.find_elements(By.CSS_SELECTOR, "li.similar-hit")
    )
    first.find_element(By.CSS_SELECTOR, "details.why summary").click()
    browser.find_element(By.CSS_SELECTOR, "#filters summary").click()
    widths = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " window.innerWidth];"
    )
    assert widths[0] <= widths[1] <= widths[2], widths
    target = Path(screenshot_target) if screenshot_target else tmp_path / "page.png"
    browser.save_screenshot(str(target.with_name(target.stem + "-360" + target.suffix)))
    browser.find_element(By.CSS_SELECTOR, "#filters summary").click()

    browser.set_window_size(1200, 1400)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(target))
    assert target.stat().st_size > 10_000


def test_the_export_buttons_download_the_page_shown(
    browser: Any,  # noqa: F811 - fixture
    server: str,  # noqa: F811 - fixture
) -> None:
    """On page 2 the RIS, BibTeX and CSV buttons download page 2: its articles, in its
    order, ranked 6–10 (a hostile review found page 1 downloaded instead)."""
    import csv
    import io

    browser.get(server + "/?q=gene+editing+with+CRISPR&k=5&offset=5")
    _wait_results(browser, "(6–10)")
    shown = _pmids(browser)
    for fmt in ("ris", "bibtex", "csv"):
        href = browser.find_element(By.ID, f"export-{fmt}").get_attribute("href")
        assert "offset=5" in href and "k=5" in href, href
    href = browser.find_element(By.ID, "export-csv").get_attribute("href")
    rows = list(csv.DictReader(io.StringIO(fetch(href).decode("utf-8"))))
    assert [int(r["pmid"]) for r in rows] == shown
    assert [int(r["rank"]) for r in rows] == [6, 7, 8, 9, 10]
