"""Review of the query refusals of :func:`ranking.search.checked_query` (commit 398e2f0 and
the change before it): PubMed's field tags, ``NOT word`` / ``-word``, ``word*``, a PMID or a
DOI alone and queries with nothing searchable are refused for every search (CLI, API, web
page) and every saved search — including saved searches stored before the rule existed,
which :func:`litpulse.pipeline.saved_searches._from_row` now reports as refused (their
alerts stop).

The strict xfails are legitimate biomedical queries a researcher types or pastes that the
rules refuse (false refusals); each case names the rule that refuses it. The plain tests pin
the legitimate queries that are accepted and the PubMed syntax that is still refused.
All pure function calls: no store, no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from litpulse.core.errors import ConfigError
from litpulse.pipeline.saved_searches import _clean_query
from ranking.lexical import split_exclusions
from ranking.search import checked_query

BIOASQ = Path(__file__).resolve().parents[3] / "shared/eval/bioasq7b-dev/questions.json"

# ------------------------------------------------------------------ false refusals
#: query -> (the rule that refuses it, why it is legitimate)
FALSE_REFUSALS: dict[str, tuple[str, str]] = {
    # --- NOT: a title or phrase typed in capitals is not a boolean operator
    "NOT IN MY BACKYARD": ("exclusion NOT", "whole query in capitals (a pasted title)"),
    "EFFECT OF DIET NOT EXERCISE ON WEIGHT": ("exclusion NOT", "title typed in capitals"),
    "WHY NOT SCREEN FOR LUNG CANCER": ("exclusion NOT", "title typed in capitals"),
    "THE NOT SO SILENT KILLER": ("exclusion NOT", "title typed in capitals"),
    "DO NOT ATTEMPT RESUSCITATION": ("exclusion NOT", "DNAR: an established term"),
    "DO NOT RESUSCITATE orders": ("exclusion NOT", "DNR orders: NOT after the stop word DO"),
    '"do NOT resuscitate"': ("exclusion NOT", "NOT inside a quoted phrase is no operator"),
    "To treat or NOT to treat subclinical hypothyroidism": (
        "exclusion NOT", "NOT after 'or': emphasis in a title, no left operand"),
    "Why NOT treat mild hypertension?": ("exclusion NOT", "NOT after a question word"),
    "COVID-19 in children: NOT just a cold": ("exclusion NOT", "emphasis in a title"),
    # --- -word: a chemical group, a compound split by a stray space, +ve/-ve
    "hydroxyl (-OH) groups": ("exclusion -word", "a chemical group in parentheses"),
    "thiol (-SH) groups": ("exclusion -word", "a chemical group in parentheses"),
    "amino (-NH2) groups": ("exclusion -word", "a chemical group in parentheses"),
    "carboxyl (-COOH) group": ("exclusion -word", "a chemical group in parentheses"),
    "methyl (-CH3) group": ("exclusion -word", "a chemical group in parentheses"),
    "-log10 p value Manhattan plot": ("exclusion -word", "-log10(P): a GWAS axis"),
    "Ca2+ -activated potassium channels": ("exclusion -word", "space after a superscript"),
    "Ki-67 -positive cells": ("exclusion -word", "compound split by a stray space"),
    "sox2 -dependent transcription": ("exclusion -word", "compound split by a stray space"),
    "HbA1c -lowering drugs": ("exclusion -word", "compound split by a stray space"),
    "beta -lactamase": ("exclusion -word", "compound split by a stray space"),
    "non -small cell lung cancer": ("exclusion -word", "compound split by a stray space"),
    "ER -ve PR -ve HER2 -ve breast cancer": ("exclusion -word", "receptor-negative jargon"),
    "CD45 -ve cells": ("exclusion -word", "receptor-negative jargon"),
    "relative expression 2 -ΔΔCt method": ("exclusion -word", "2^-ΔΔCt pasted from a PDF"),
    "Long COVID -what we know": ("exclusion -word", "a dash before a stop word"),
    # --- word*: miRNA star strands, HPV splice forms, footnote marks, markdown emphasis
    "miR-21* passenger strand": ("truncation", "miRNA star strand (miR-21*)"),
    "miR-155*": ("truncation", "miRNA star strand"),
    "let-7a* strand": ("truncation", "miRNA star strand"),
    "E6* transcripts": ("truncation", "HPV E6* splice isoform"),
    "Cardiac Arrest Outcomes in Children*": (
        "truncation", "title with its footnote star (Crit Care Med titles carry one)"),
    "*BRCA1* mutations": ("truncation", "markdown italics around a gene name"),
    # --- field tags: a bracketed abbreviation, an oxidation state, an element symbol
    "acute lymphoblastic leukaemia [ALL]": ("field tag [all]", "abbreviation defined"),
    "Alzheimer's disease [AD] biomarkers": ("field tag [ad]", "abbreviation defined"),
    "glucocorticoid receptor [GR] signalling": ("field tag [gr]", "abbreviation defined"),
    "left atrium [LA] enlargement": ("field tag [la]", "abbreviation defined"),
    "malignant hyperthermia [MH]": ("field tag [mh]", "abbreviation defined"),
    "insulin sensitivity [IS]": ("field tag [is]", "abbreviation defined"),
    "hexavalent chromium Cr[VI]": ("field tag [vi]", "oxidation state Cr(VI)"),
    "gold [Au] nanoparticles": ("field tag [au]", "element symbol"),
    "titanium [Ti] implants": ("field tag [ti]", "element symbol"),
}


@pytest.mark.parametrize("query", list(FALSE_REFUSALS))
def test_false_refusal(query: str) -> None:
    assert checked_query(query) == query.strip(), FALSE_REFUSALS[query]
    # and no NOT of these excludes anything: each is searched whole
    assert split_exclusions(query.strip()) == (query.strip(), ()), FALSE_REFUSALS[query]


@pytest.mark.parametrize("query", ["miR-21* passenger strand", "hydroxyl (-OH) groups",
                                   "acute lymphoblastic leukaemia [ALL]",
                                   "DO NOT RESUSCITATE orders"])
def test_false_refusal_saved_search(query: str) -> None:
    assert _clean_query(query) == query.strip()


# ------------------------------------------------------------------ what holds
ACCEPTED = [
    # knockout / genotype notation, signed numbers, Unicode minus
    "p53-/- mice", "p53 -/- mice", "Apc(Min/+) intestinal tumours", "Trp53 +/- mice",
    "Brca1 −/− embryos", "Apoe -/- mice atherosclerosis", "IL-6 -174G/C polymorphism",
    "TNF -308G>A", "IL-2 −induced proliferation", "samples stored at -80 °C",
    "−80 °C stability", "CD4+CD25-Foxp3+ regulatory T cells", "CD4+ CD25- T cells",
    "CD3− CD56+ NK cells", "Lin-Sca1+cKit+ cells", "CD34-negative cells",
    "(-)-epicatechin", "(−)-epigallocatechin gallate", "(S)-(-)-limonene",
    "pre- and post-operative pain",
    # chemistry and statistics in brackets
    "[18F]FDG PET in lymphoma", "[Ca2+]i oscillations in beta cells",
    "[3H]thymidine incorporation", "[11C]PiB amyloid imaging", "Cu[II] complexes anticancer",
    "HR 0.8 [95% CI 0.7-0.9]", "p < 0.05 significance threshold", "[PSI+] prion",
    "[Diabetes mellitus in children]",
    # star alleles
    "HLA-B*57:01 abacavir hypersensitivity", "HLA-B*5701 abacavir", "CYP2C19*2 clopidogrel",
    "HLA-DRB1*04 rheumatoid arthritis", "APOE*4 Alzheimer", "HPV16 E6*I splice variant",
    # citations, numbers, short capitals
    "N Engl J Med. 2020;383(27):2603-2615.",
    "Safety and Efficacy of the BNT162b2 mRNA Covid-19 Vaccine. N Engl J Med. 2020 Dec 31;"
    "383(27):2603-2615. doi: 10.1056/NEJMoa2034577.",
    "2019-nCoV", "COVID 19", "1990-2000", "HIV", "ALS", "IT", "AS", "NO", "ALL", "WHO",
    "NOT", "WHY NOT?", "CCR4-NOT complex", "NOTCH signalling", "NOT1 scaffold",
    "do not resuscitate orders", "to be or NOT",
    # other languages, emoji, Greek
    "Le diabète de type 2 chez l'enfant", "Typ-2-Diabetes bei Kindern", "二型糖尿病",
    "2型糖尿病の治療", "🦠 covid vaccine", "α-synuclein", "Δ9-THC", "IFN-γ",
]


@pytest.mark.parametrize("query", ACCEPTED)
def test_legitimate_queries_accepted(query: str) -> None:
    assert checked_query(query) == query.strip()
    assert _clean_query(query) == query.strip()


def test_bioasq_questions_accepted() -> None:
    if not BIOASQ.exists():
        pytest.skip(f"{BIOASQ} not present")
    questions = [q["question"] for q in json.loads(BIOASQ.read_text())]
    assert len(questions) == 300
    refused = []
    for q in questions:
        try:
            checked_query(q)
        except ConfigError as exc:
            refused.append((q, str(exc)))
    assert refused == []


INTENDED_REFUSALS = [
    ("covid[ti]", "field tags"), ("humans[mh]", "field tags"),
    ("asthma[Title/Abstract]", "field tags"), ("cancer AND 2020[dp]", "field tags"),
    ("NOT smith j[au]", "only excludes"), ("COPD NOT the", "excludes nothing"),
    ("cardio*", "truncation"), ("vaccin* uptake", "truncation"),
    ("33301246", "PMID alone"), ("PMID: 33301246", "PMID alone"),
    ("10.1056/NEJMoa2034577", "DOI alone"), ("https://doi.org/10.1056/NEJMoa2034577", "DOI"),
    ("the of and", "no word"), ("???", "no word"), ("what is", "no word"), ("", "empty"),
]


@pytest.mark.parametrize(("query", "message"), INTENDED_REFUSALS)
def test_pubmed_syntax_still_refused(query: str, message: str) -> None:
    # (`COPD NOT asthma`, refused here before, now excludes asthma: test_query_syntax_review)
    with pytest.raises(ConfigError, match=message):
        checked_query(query)
    with pytest.raises(ConfigError, match=message):
        _clean_query(query)


# ------------------------------------------------------------------ notes on -word
#: A Google exclusion typed -> the query the note gives instead (NOT for each -word).
GOOGLE_MINUS = {
    "COPD -asthma": "COPD NOT asthma",
    "-asthma COPD": "NOT asthma COPD",
    "COPD -asthma -smoking in adults": "COPD NOT asthma NOT smoking in adults",
    "COPD -asthma \"heart failure\"": "COPD NOT asthma \"heart failure\"",
    "COPD NOT bronchitis -asthma": "COPD NOT bronchitis NOT asthma",
    "(COPD OR emphysema) -asthma": "(COPD OR emphysema) NOT asthma",
    "COPD -asthma AND Smith J[au]": "COPD NOT asthma AND Smith J[au]",
    "COPD -asthma -asthma": "COPD NOT asthma",
    "COPD -non-smokers": "COPD NOT non-smokers",
    # where NOT in the hyphen's place would be refused or read otherwise: after the rest
    "asthma OR -copd": "asthma NOT copd",
    "COPD OR -asthma OR emphysema": "COPD OR emphysema NOT asthma",
    # NOT is a word in a query wholly in capitals: the word in lower case
    "LUNG CANCER -SMOKING": "LUNG CANCER NOT smoking",
}


@pytest.mark.parametrize("query", list(GOOGLE_MINUS))
def test_a_google_exclusion_gets_a_note_giving_the_query_with_not(query: str) -> None:
    from ranking.search import query_notes

    notes = query_notes(checked_query(query))
    assert len(notes) == 1 and "a hyphen excludes nothing here" in notes[0], notes
    instead = notes[0].rsplit("write: ", 1)[1]
    assert instead == GOOGLE_MINUS[query]
    # what the note gives is accepted, and excludes each word the hyphen did not
    searched, excluded = split_exclusions(checked_query(instead))
    noted = [w[1:] for w in notes[0].split(" is searched")[0].split(" are searched")[0]
             .split(" and ")]  # fmt: skip
    assert {w.lower() for w in noted} <= set(excluded), (noted, excluded)
    assert "-" + noted[0] not in searched


def test_a_google_exclusion_alone_gets_a_note_without_a_query_that_would_be_refused() -> None:
    from ranking.search import query_notes

    (note,) = query_notes("-asthma")
    assert note.endswith("add the words to search for, then NOT asthma"), note


@pytest.mark.parametrize("query", [
    "hydroxyl (-OH) groups", "Long COVID -what we know", "ER -ve PR -ve HER2 -ve breast cancer",
    "CD45 -ve cells", "p53 -/- mice", "samples stored at -80 °C", "IL-6 -174G/C polymorphism",
    "TNF -308G>A", '"COPD -asthma"', "COPD NOT asthma", "non-small cell lung cancer",
    "IL-2 −induced proliferation",
])  # fmt: skip
def test_no_note_where_no_word_is_searched_after_a_spaced_hyphen(query: str) -> None:
    from ranking.search import query_notes

    assert query_notes(checked_query(query)) == ()
