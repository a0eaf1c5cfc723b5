"""Review: PATCH /alerts/{id}, snippets that show the quoted phrase, and the letter ``A``
as a term — a hostile reading.

The API tests use the real store of :mod:`tests.litpulse.app.test_alerts` (a private copy
of the real corpus, a real published index); the search tests store records through the
ingest and build both indexes (:func:`tests.ranking.corpus.store_and_index`).

The ``xfail(strict=True)`` tests state what the user expects where the code does
otherwise; the plain ones pin what holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from litpulse.core import db
from litpulse.core.settings import Settings
from ranking.lexical import query_phrases, query_terms
from ranking.snippets import snippet
from tests.litpulse.app.apistore import unlimited_store
from tests.ranking.corpus import make_article, search_in, store_and_index

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.tokens import create_token, revoke_token  # noqa: E402

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def store(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    return unlimited_store(tmp_path, tmp_path_factory, monkeypatch)


@pytest.fixture
def client(store: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(store), raise_server_exceptions=False) as c:
        yield c


def _auth(store: Settings, expert: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(store, expert).token}"}


def _save(client: TestClient, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    r = client.post("/alerts", headers=auth, json={"name": "malaria", "query": "malaria vaccine",
                                                   **body})  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()


# ------------------------------------------------------------- PATCH /alerts/{id}: holds


def test_patch_refuses_bad_filters_and_a_name_with_4xx_never_500(
    store: Settings, client: TestClient
) -> None:
    alice = _auth(store, "alice")
    made = _save(client, alice, min_score=0.5, mesh=["Humans"])
    url = f"/alerts/{made['id']}"
    for filters, word in [
        ({"since": "2024-01-01", "until": "2020-01-01"}, "must not be after"),
        ({"mesh": ["Neoplasms/therapy"]}, "subheading"),
        ({"language": "klingonese"}, "language"),
        ({"mesh": ["Humans\u0000"]}, "control"),
    ]:
        r = client.patch(url, headers=alice, json={"filters": filters})
        assert r.status_code == 400 and word in r.json()["detail"], (filters, r.text)
    for body in (
        {"name": "renamed"},
        {"filters": {"colour": "red"}},
        {"min_score": -1},
        {"min_score": "NaN"},
        {"query": "   "},
        {"filters": {"since": "yesterday"}},
    ):
        assert client.patch(url, headers=alice, json=body).status_code == 422, body
    renamed = client.patch(url, headers=alice, json={"name": "renamed"}).json()
    assert any(e["loc"][-1] == "name" for e in renamed["detail"])  # names the field refused
    assert client.get(url).json() == {**made, "recent_matches": []}  # nothing changed


def test_patch_a_cli_search_or_with_a_revoked_token_is_refused(
    store: Settings, client: TestClient
) -> None:
    from litpulse.pipeline.saved_searches import add_search

    alice = _auth(store, "alice")
    cli = add_search(store, name="ops", query="malaria", owner="cli:root")
    assert client.patch(f"/alerts/{cli.id}", headers=alice,
                        json={"query": "x"}).status_code == 403  # fmt: skip
    with pytest.raises(Exception, match="cli:"):
        create_token(store, "cli:root")  # no token may own the CLI's searches

    made = _save(client, alice)
    tok = create_token(store, "bob")
    bob = {"Authorization": f"Bearer {tok.token}"}
    mine = client.post("/alerts", headers=bob, json={"name": "b", "query": "malaria"}).json()
    revoke_token(store, tok.info.id)
    r = client.patch(f"/alerts/{mine['id']}", headers=bob, json={"query": "sepsis"})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert client.get(f"/alerts/{made['id']}").json()["query"] == "malaria vaccine"


def test_patch_corrects_a_refused_query_in_place_and_the_feed_says_the_new_query(
    store: Settings, client: TestClient
) -> None:
    from lxml import etree

    from litpulse.core.schema import saved_searches
    from litpulse.core.timeutil import utcnow

    now = utcnow()
    with db.connect(store).begin() as conn:  # saved before the rule that refuses it
        sid = conn.execute(insert(saved_searches).values(
            name="old", query="malaria[ti]", filters={}, owner="alice", created_at=now,
            watermark=now)).inserted_primary_key[0]  # fmt: skip
    alice = _auth(store, "alice")
    assert client.get(f"/alerts/{sid}").json()["problem"]
    r = client.patch(f"/alerts/{sid}", headers=alice, json={"query": "malaria vaccine"})
    assert r.status_code == 200 and r.json()["problem"] is None, r.text
    assert r.json()["watermark"] == client.get(f"/alerts/{sid}").json()["watermark"]
    feed = etree.fromstring(client.get(f"/feeds/{sid}.atom").content)
    sub = feed.findtext("{http://www.w3.org/2005/Atom}subtitle") or ""
    assert "malaria vaccine" in sub and "[ti]" not in sub


def test_the_openapi_document_has_patch_with_its_body_schema(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/alerts/{search_id}"]["patch"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/SavedSearchEdit")
    schema = doc["components"]["schemas"]["SavedSearchEdit"]
    assert set(schema["properties"]) == {"query", "min_score", "filters"}
    assert schema.get("additionalProperties") is False
    assert {"400", "401", "403", "404", "422"} <= set(op["responses"])


def test_concurrent_patch_and_delete_are_never_500(store: Settings, client: TestClient) -> None:
    alice = _auth(store, "alice")
    seen: list[tuple[str, int]] = []
    for trial in range(6):
        made = _save(client, alice, name=f"race {trial}")
        url = f"/alerts/{made['id']}"
        barrier = threading.Barrier(5)

        def go(kind: str, url: str = url, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            if kind == "delete":
                seen.append((kind, client.delete(url, headers=alice).status_code))
            else:
                seen.append(
                    (
                        kind,
                        client.patch(
                            url,
                            headers=alice,
                            json={"query": "malaria vaccine children", "min_score": 0.6},
                        ).status_code,
                    )
                )

        threads = [threading.Thread(target=go, args=(k,))
                   for k in ("delete", "patch", "patch", "patch", "delete")]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.get(url).status_code == 404
    assert {code for _, code in seen} <= {200, 404}, seen


# ------------------------------------------------------------ PATCH /alerts/{id}: defects


# litpulse/app/alerts_api.py SavedSearchEdit/edit_endpoint and saved_searches.edit_search:
# ``None`` means "leave it", so {"min_score": null} is "nothing to change" (400): a search
# saved with its own threshold can never go back to LITPULSE_DIGEST_MIN_SCORE (nor can the
# CLI: --min-score takes a number only); the only way is remove-and-save, which loses the
# id, feed, matches and watermark the edit exists to keep. Fix: tell null from absent
# (change.model_fields_set; a sentinel for edit_search's min_score), null resetting it.
def test_patch_min_score_null_resets_the_threshold_to_the_default(
    store: Settings, client: TestClient
) -> None:
    alice = _auth(store, "alice")
    made = _save(client, alice, min_score=0.9)
    r = client.patch(f"/alerts/{made['id']}", headers=alice, json={"min_score": None})
    assert r.status_code == 200, r.text
    assert r.json()["min_score"] is None


# litpulse/pipeline/digest.py _digest_one: the search is read (query, filters, threshold),
# ranked, then its watermark moved forward with a WHERE on id and created_at only; a PATCH
# that lands while it is ranked changes the query, and the digest still moves the
# watermark past the new articles it judged by the OLD query — the new query never sees
# them (README: the watermark is kept so what was stored meanwhile is matched). Fix: add
# query, filters and min_score (or an edit counter) to that UPDATE's WHERE, recording
# nothing when the search changed (as for a removed one): the next digest judges them.
def test_a_patch_while_the_digest_ranks_leaves_the_new_articles_to_the_new_query(
    store: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ranking.search
    from litpulse.pipeline.digest import matches_of, run_digest
    from ranking.refresh import refresh_index
    from tests.litpulse.app.test_alerts import _store_new

    alice = _auth(store, "alice")
    made = _save(client, alice, query="malaria vaccine in children", min_score=0.5)
    _store_new(store)  # 901, 902 on malaria; 903 knee osteoarthritis and running shoes
    assert refresh_index(store).published
    real = ranking.search.run_search
    edited: list[int] = []

    def racing(*args: Any, **kw: Any) -> Any:
        if not edited:  # the owner edits the search while the digest ranks it
            r = client.patch(
                f"/alerts/{made['id']}",
                headers=alice,
                json={"query": "knee osteoarthritis running shoes"},
            )
            edited.append(r.status_code)
        return real(*args, **kw)

    monkeypatch.setattr(ranking.search, "run_search", racing)
    run_digest(store)
    monkeypatch.setattr(ranking.search, "run_search", real)
    assert edited == [200]
    run_digest(store)
    found = {m.pmid for m in matches_of(db.connect(store), made["id"], limit=50)}
    assert 903 in found, found


# litpulse/app/alerts_api.py edit_endpoint: the owner is checked by owned() (one read),
# then edit_search reads the search again and UPDATEs it by id alone. On SQLite a freed id
# is given to the next search saved (the digest's own comment says so): alice's PATCH of
# her search N, racing her DELETE of N and bob's save (which gets N), rewrites bob's
# search. Fix: pass the checked owner/created_at to edit_search and put them in the
# UPDATE's WHERE (0 rows: 404), as the digest does with created_at.
def test_a_patch_never_rewrites_another_experts_search_that_took_the_id(
    store: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litpulse.pipeline import saved_searches as ss

    alice, bob = _auth(store, "alice"), _auth(store, "bob")
    made = _save(client, alice)
    real_get = ss.get_search
    raced: list[int] = []

    def racing_get(*args: Any, **kw: Any) -> Any:
        if not raced:  # between the owner check and the edit: removed, id taken by bob
            raced.append(1)
            ss.remove_search(store, made["id"])
            theirs = _save(client, bob, name="bob's", query="sepsis in neonates")
            assert theirs["id"] == made["id"]  # SQLite gives the freed id again
        return real_get(*args, **kw)

    monkeypatch.setattr(ss, "get_search", racing_get)
    r = client.patch(f"/alerts/{made['id']}", headers=alice, json={"query": "malaria"})
    monkeypatch.setattr(ss, "get_search", real_get)
    assert raced
    assert client.get(f"/alerts/{made['id']}").json()["query"] == "sepsis in neonates"
    assert r.status_code in (403, 404), r.text


# litpulse/pipeline/saved_searches.py edit_search: an edit is logged as "edited saved
# search 3 'malaria': query" — not what the query or threshold was, nor who changed it.
# A replaced query is gone (no history, no undo), and the log, the only trace, cannot
# say what it was. Fix: log the old and the new values (and the API's expert).
def test_an_edit_is_logged_with_the_query_it_replaced(
    store: Settings, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    alice = _auth(store, "alice")
    made = _save(client, alice, query="malaria vaccine in the Sahel")
    with caplog.at_level(logging.INFO, logger="litpulse.pipeline.saved_searches"):
        r = client.patch(f"/alerts/{made['id']}", headers=alice, json={"query": "sepsis"})
    assert r.status_code == 200
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "malaria vaccine in the Sahel" in text and "sepsis" in text, text


# ---------------------------------------------------------------------------- snippets

HF = '"heart failure"'
FILLER = " ".join(f"We enrolled cohort number {i} of adults in the region and followed them."
                  for i in range(8))  # fmt: skip


def test_snippet_of_a_huge_abstract_is_fast_and_holds_the_phrase() -> None:
    sentences = [f"Patient {i} had a heart rate of {60 + i % 40} and failure of care."
                 for i in range(1000)]  # fmt: skip
    sentences[900] = "Readmission for heart failure was the commonest outcome."
    text = " ".join(sentences)
    assert len(text) > 50_000
    t0 = time.perf_counter()
    s = snippet(text, query_terms(HF), phrases=query_phrases(HF))
    assert time.perf_counter() - t0 < 1.0
    assert s is not None and "heart failure" in s.text


def test_snippet_without_the_phrase_in_the_abstract_falls_back_to_the_terms() -> None:
    text = FILLER + " The heart rate fell. Renal failure was rare."
    s = snippet(text, query_terms(HF), phrases=query_phrases(HF))
    assert s is not None and "heart" in s.text and "failure" in s.text  # the best terms
    assert [s.text[a:b] for a, b in s.highlights] == ["heart", "failure"]


# ranking/snippets.py _window: each window's phrase tokens are its sentences' tokens
# concatenated, so "...a weak heart. Failure of therapy..." counts as holding "heart
# failure" across the full stop; the earliest such window wins and the snippet shows
# the false pair while the real "heart failure" later in the abstract is cut off. Fix:
# look for a phrase inside one sentence (or put a boundary token between sentences).
def test_snippet_shows_the_phrase_not_its_words_across_a_full_stop() -> None:
    text = ("Patients had a weak heart. Failure of therapy was common. " + FILLER
            + " Readmission for heart failure was the commonest outcome.")  # fmt: skip
    s = snippet(text, query_terms(HF), phrases=query_phrases(HF))
    assert s is not None and "heart failure" in s.text.lower(), s.text


# ranking/snippets.py _cut: a window of one sentence longer than SNIPPET_CHARS (common in
# abstracts) is cut around its FIRST term match, not around the phrase: a long sentence
# that says "heart" early and "heart failure" at its end gives a snippet without the
# phrase — the very case the change set out to fix. Fix: pass the phrases to _cut and
# centre the cut on the first phrase occurrence when the window holds one.
def test_snippet_of_one_long_sentence_shows_the_phrase() -> None:
    text = (
        "The heart of the problem is that "
        + " and ".join(f"clinic {i} staff recorded visit number {i}" for i in range(15))
        + " while heart failure was the commonest reason for readmission. Short end."
    )
    s = snippet(text, query_terms(HF), phrases=query_phrases(HF))
    assert s is not None and "heart failure" in s.text, s.text


# ------------------------------------------------------------ the letter A as a term


@pytest.fixture
def a_world(sqlite_settings: Settings, tmp_path: Path) -> tuple[Settings, Any, Any, Any]:
    engine = db.connect(sqlite_settings)
    records = [
        make_article(1, "Hepatitis A vaccine uptake in travellers", "Uptake was low."),
        make_article(2, "Hepatitis B vaccine uptake in infants", "Uptake was high."),
        make_article(3, "Influenza A virus in swine herds", "Pigs were sampled."),
        make_article(4, "Influenza virus infection in nursing homes", "Type B dominated."),
        make_article(5, "Vitamin A supplementation in children", "Night blindness fell."),
        make_article(6, "Vitamin supplementation in pregnancy", "Folate and iron only."),
        make_article(7, "Protein kinase inhibitors in melanoma", "BRAF was targeted."),
        make_article(8, "Protein kinase A inhibitors in heart cells", "cAMP signalling."),
    ]
    index, lex = store_and_index(engine, tmp_path, records)
    return sqlite_settings, engine, index, lex


def _lex(world: tuple[Settings, Any, Any, Any], query: str) -> set[int]:
    s, engine, index, lex = world
    return {h.pmid for h in search_in(s, engine, query, index=index, lexical=lex,
                                      mode="lexical").hits}  # fmt: skip


def test_hepatitis_a_vitamin_a_in_capitals_are_told_apart(
    a_world: tuple[Settings, Any, Any, Any],
) -> None:
    assert _lex(a_world, '"hepatitis A"') == {1}
    assert _lex(a_world, '"Hepatitis A vaccine"') == {1}
    assert _lex(a_world, '"vitamin A"') == {5}
    assert _lex(a_world, '"hepatitis B vaccine"') == {2}
    # a sentence's opening "A" after a colon or a full stop, or after a stop word: no term
    assert "A" not in query_terms("Results: A total of 30")
    assert "A" not in query_terms("Hepatitis rose. A total of 30")
    assert "A" not in query_terms("The Role Of A Nurse")


# ranking/lexical.py _lower (documents keep "A" after a word: hepat, A, vaccin) vs
# phrase_terms of a query typed in lower case ("a" is a stop word: hepat, vaccin): the
# phrase field of "Hepatitis A vaccine ..." no longer holds hepat, vaccin in a row, so
# '"hepatitis a vaccine"' — how most people type it — finds nothing; before the change it
# found the article. Fix: make a lower-case "a" after a word in a phrase match the capital
# term too (a Should of the phrase with "A" in its place), as _constraints' loose variant
# does the other way round.
def test_a_phrase_typed_in_lower_case_finds_hepatitis_a(
    a_world: tuple[Settings, Any, Any, Any],
) -> None:
    assert 1 in _lex(a_world, '"hepatitis a vaccine"')
    assert 5 in _lex(a_world, '"vitamin a supplementation"')
    assert 2 not in _lex(a_world, '"hepatitis a vaccine"')


# ranking/lexical.py LexicalIndex._constraints anywhere(): the "loose" alternative (the
# phrase without its capital stop-word abbreviation) is meant for texts wholly in capitals
# (indexed in lower case without it), but it is OR-ed in for every text: '"influenza A
# virus"' matches any "influenza virus", '"vitamin A supplementation"' any "vitamin
# supplementation", '"protein kinase A inhibitors"' any "protein kinase inhibitors" — the
# quotes required A and it is not there. Fix: apply the loose variant only to values
# indexed shouted (e.g. index a shouted value's phrase tokens with a marker, or in a field
# of their own, and constrain the loose clause to it).
def test_a_phrase_with_a_capital_a_does_not_match_texts_without_it(
    a_world: tuple[Settings, Any, Any, Any],
) -> None:
    assert _lex(a_world, '"influenza A virus"') == {3}
    assert _lex(a_world, '"vitamin A supplementation"') == {5}
    assert _lex(a_world, '"protein kinase A inhibitors"') == {8}


# ranking/lexical.py _CAPS_WORD group 2: "A" after any word that is no stop word is kept
# as a term, so a title in Title Case — "Towards A Cure", "Making A Difference", "What A
# Year" — gets the term "A" (the article, not a letter); its phrase field holds toward, A,
# cure, so the phrase copied in lower case ('"towards a cure"') misses it, and "A"
# ranks it for a query "vitamin A". Fix: not in a text in Title Case (most words of a
# title capitalised), or only after a lower-case word / before a non-capitalised word.
def test_title_case_article_a_is_no_term() -> None:
    for text in (
        "Towards A Cure For Sepsis",
        "Making A Difference In Stroke Care",
        "What A Year For Vaccines",
    ):
        assert "A" not in query_terms(text), text
