"""Exported values stay what they are (found by a hostile review): numbers in CSV, DOIs
in BibTeX."""

from __future__ import annotations

import io

import pytest


def _export_rows(**extra: object) -> dict[int, dict[str, object]]:
    row: dict[str, object] = {
        "title": "A study",
        "authors": [{"last_name": "Doe", "fore_name": "J"}],
        "journal": "J Test",
        "pub_year": 2024,
        "doi": None,
        "record": {},
        "is_retracted": False,
    }
    row.update(extra)
    return {1: row}


@pytest.mark.xfail(
    strict=True,
    reason="export CSV: the formula-injection guard prefixes ' to negative numbers, so a "
    'negative cosine similarity/score is exported as text "\'-0.120000", not a number',
)
def test_export_csv_keeps_negative_scores_numeric() -> None:
    import csv

    from litpulse.app.export import to_csv
    from ranking.search import Hit

    hit = Hit(pmid=1, title="A study", score=-0.01, similarity=-0.12, recency=0.5, citation=0.5)
    out = list(csv.DictReader(io.StringIO(to_csv([hit], _export_rows()))))
    assert float(out[0]["similarity"]) == pytest.approx(-0.12)
    assert float(out[0]["score"]) == pytest.approx(-0.01)


@pytest.mark.xfail(
    strict=True,
    reason="export BibTeX: the doi field is LaTeX-escaped (_ -> \\_), so a DOI such as "
    "10.1007/978-1-4939-9145-7_3 is exported with a backslash (biblatex doi is verbatim)",
)
def test_export_bibtex_doi_is_the_doi() -> None:
    from litpulse.app.export import to_bibtex

    doi = "10.1007/978-1-4939-9145-7_3"
    out = to_bibtex([1], _export_rows(doi=doi))
    assert f"doi = {{{doi}}}" in out, out
