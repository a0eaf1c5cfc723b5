"""Snippets: the best sentence window, highlights by index terms, spans in code points."""

from __future__ import annotations

import itertools
import unicodedata

from ranking.lexical import query_terms
from ranking.snippets import ELLIPSIS, highlight_spans, highlight_terms, snippet

ABSTRACT = (
    "Background: Malaria remains a leading cause of death. "
    "Methods: We followed 4,000 households in twelve districts for two years and recorded "
    "rainfall, housing and travel. "
    "Results: Vaccinated children had fewer episodes, and IL6 fell after the booster. "
    "Conclusion: the vaccines work."
)


def marked(s: object) -> list[str]:
    return [s.text[a:b] for a, b in s.highlights]  # type: ignore[attr-defined]


def test_the_window_with_most_query_terms_is_chosen_and_stems_match() -> None:
    terms = query_terms("vaccine children IL-6")
    s = snippet(ABSTRACT, terms, limit=120)
    assert s is not None
    assert s.text.startswith(ELLIPSIS + " Results:")  # not the opening sentence
    # stems (vaccin), IL-6 = IL6; the last sentence fits the limit too
    assert marked(s) == ["Vaccinated", "children", "IL6", "vaccines"]
    assert s.text.endswith("the vaccines work.") and len(s.text) <= 120 + 2


def test_without_matches_the_opening_sentences_fill_the_snippet() -> None:
    s = snippet(ABSTRACT, query_terms("cardiology"), limit=200)
    assert s is not None and s.highlights == ()
    assert s.text.startswith("Background: Malaria") and s.text.endswith(ELLIPSIS)
    assert "Methods:" in s.text  # more than one sentence when they fit


def test_a_long_sentence_is_cut_around_its_first_match_at_word_boundaries() -> None:
    text = " ".join(["filler"] * 80 + ["sepsis"] + ["filler"] * 80) + "."
    s = snippet(text, query_terms("sepsis"), limit=60)
    assert s is not None and marked(s) == ["sepsis"]
    assert s.text.startswith(ELLIPSIS + " filler") and s.text.endswith("filler " + ELLIPSIS)
    assert len(s.text) <= 60 + 4


def test_spans_count_code_points_and_greek_letters_match_their_names() -> None:
    text = "\U0001f9ea Levels of TNF-α and α-synuclein rose."
    s = snippet(text, query_terms("TNF alpha synuclein"))
    assert s is not None and marked(s) == ["TNF-α", "α-synuclein"]
    assert s.highlights[0] == (text.index("TNF"), text.index("TNF") + 5)


def test_empty_text_has_no_snippet_and_titles_get_spans() -> None:
    assert snippet("", {"x": 1.0}) is None and snippet("   ", {"x": 1.0}) is None
    title = "Malaria vaccine efficacy in African children"
    spans = highlight_spans(title, query_terms("malaria vaccines"))
    assert [title[a:b] for a, b in spans] == ["Malaria", "vaccine"]


def test_highlight_terms_prefer_the_lexical_explanation() -> None:
    explanation = {
        "components": {
            "lexical": {"terms": [{"term": "malaria", "weight": 2.5, "fields": {"title": 2.5}}]}
        }
    }
    assert highlight_terms(explanation, "malaria vaccine") == {"malaria": 2.5}
    assert highlight_terms({"components": {}}, "malaria vaccines") == query_terms(
        "malaria vaccines"
    )
    assert highlight_terms({}, "") == {}


def test_equal_weights_tie_to_the_earliest_window_whatever_the_term_order() -> None:
    # 0.1 + 0.2 + 0.3 is 0.6 or 0.6000000000000001 depending on the order of the sum (the
    # order of a set of strings, which varies with the process's hashing): the window
    # weighing 0.6 exactly must win the tie as the earliest, for every order
    text = "Malaria here. Fever cough rash."
    for weights in itertools.permutations((0.1, 0.2, 0.3)):
        terms = {"malaria": 0.6, **dict(zip(("fever", "cough", "rash"), weights, strict=True))}
        s = snippet(text, terms, limit=20)
        assert s is not None and s.text == "Malaria here. " + ELLIPSIS, weights


def test_snippet_of_a_long_sentence_starts_at_a_whole_word() -> None:
    text = (
        "Background: " + " ".join(["carcinogenesis"] * 20) + " vaccination "
        + " ".join(["epidemiology"] * 30) + "."
    )
    s = snippet(text, query_terms("vaccination"))
    assert s is not None and s.text.startswith("… ")
    first = s.text[2:].split()[0]
    assert first in text.split(), f"snippet starts mid-word: {s.text[:30]!r}"


def test_highlight_covers_a_decomposed_accented_word() -> None:
    text = unicodedata.normalize("NFD", "Workers in a café. Coffee in cafés.")
    s = snippet(text, query_terms("café"))
    assert s is not None
    shown = [s.text[a:b] for a, b in s.highlights]
    assert shown and all(unicodedata.normalize("NFC", w).startswith("café") for w in shown)


def test_the_window_holding_a_quoted_phrase_is_shown() -> None:
    text = ("Heart surgery raised the risk of kidney failure and heart damage. " * 4
            + "Chronic heart failure followed in few patients.")
    terms = {"heart": 1.0, "failur": 1.0}
    plain = snippet(text, terms, limit=80)
    assert plain is not None and "Chronic" not in plain.text  # the words apart, earliest
    quoted = snippet(text, terms, limit=80, phrases=[("heart", "failur")])
    assert quoted is not None and "heart failure" in quoted.text
    assert [quoted.text[a:b] for a, b in quoted.highlights] == ["heart", "failure"]
