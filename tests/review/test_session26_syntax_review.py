"""Hostile review: search syntax of OTHER systems pasted into litpulse (commit 6fddd18).

Researchers paste strategies from Ovid MEDLINE, Embase, Scopus, Web of Science, Cochrane,
Europe PMC and Google Scholar. litpulse refuses PubMed's field tags (``covid[ti]``) and
truncation (``cardio*``) with a message saying what to write instead, and notes Google's
``-word``; but every form below is accepted without a refusal or a note, and its operators
and field codes are searched as words (``ranking.lexical.query_terms``), so the results
differ from what was asked, silently:

* Ovid: ``exp Asthma/`` (MeSH explode: searches the word *exp*), ``asthma.ti,ab.`` /
  ``asthma.mp.`` (field suffixes: searches *ti*, *ab*, *mp*), ``asthma adj3 children``
  (proximity: searches *adj3*, *adj*, *3*), ``wheez$`` (truncation: ``wheez*`` is refused,
  ``wheez$`` searches the stem *wheez* alone), ``#1 AND #2`` / ``1 or 2 or 3`` (search
  history lines: searches the numbers).
* Scopus: ``TITLE-ABS-KEY(asthma)`` (searches *titleabskey*, *titl*, *ab*, *key*),
  ``PUBYEAR > 2019`` (searches *pubyear*, *2019*; no date bound), ``W/3``, ``PRE/2``.
* Web of Science / Cochrane / Embase: ``TS=(asthma)``, ``NEAR/3``, ``NEXT/3``,
  ``'asthma'/exp`` (Emtree explode), ``asthma:ti,ab,kw`` (Cochrane's default line), ``MeSH
  descriptor: [Asthma] explode all trees`` (searches *mesh*, *descriptor*, *explode*,
  *trees*).
* Google Scholar / Europe PMC: ``intitle:asthma``, ``author:"smith"`` and ``AUTH:"Smith J"``
  (the name is *required as a phrase in the text*: articles mentioning Smith, not by him),
  ``"asthma children"~5`` (Europe PMC proximity: the words are required *side by side*,
  stricter than asked).
* PubMed's own syntax: ``asthma[tiab:~3]`` / ``"asthma children"[Title/Abstract:~3]``
  (proximity: not refused like ``[tiab]``; searches *tiab* and *3*), and the tags as PubMed's
  MeSH database search builder writes them, ``"Asthma"[Mesh]``, ``"Asthma"[Majr]``, and
  ``asthma[Tiab]`` (only lower case and a few spelled-out names are refused; mixed case is
  searched as the word *mesh*).
* Lower-case Boolean operators (Ovid, Embase, Scopus, WoS, Cochrane read them in any case):
  ``"heart failure" or "cardiac failure"`` requires *both* phrases (``OR`` requires either),
  ``(asthma or wheeze) not copd`` searches copd instead of excluding it.

Refusal or note: the rule this file applies is the repository's own. Field tags and
truncation are refused (the query can be searched, but the tag's words would be searched
too, and the user's intent, a field or a stem, is lost); Google's ``-word`` gets a note
because a space before a hyphen is common in legitimate text. So: a form that has no
legitimate biomedical reading is **refused** with the form to write instead; a form that
legitimate text also takes (lower-case ``or``/``not``: titles and questions use them) gets a
**note**. Each proposed rule is narrow (an exact operator shape: ``adj`` + digits, ``NEAR/``
+ digits, ``.ti,ab.`` after a word, a Scopus code before a bracket, ``TS=(``): the plain
tests list legitimate texts near each shape — ``Exp Neurol``, ``exp(-kt)``, ``HIV/AIDS``,
``adj R2``, ``US$ 500``, ``W/O emulsion``, ``w/v``, ``pts w/3``, ``TI = 10``, ``TS =
thymidylate synthase``, ``Ti:sapphire``, ``Nd:YAG``, ``m.p.``, ``type 1 and 2 diabetes``,
``near-infrared``, ``~5 mg/kg``, ``asthma not controlled by ...``, ``(ICS) not LABA`` —
which must stay accepted, exclude nothing and get no note.

Judged not worth a rule (each searched close enough to what was meant, or ambiguous with
legitimate text): Lucene ``asthma~`` (asthma is searched, stemmed), ``+asthma`` and lower-case
``and``/``or`` between words (every word is scored anyway), ``wom?n`` (``Sj?gren`` is the
same shape in mojibake), bare ``NEAR`` (an English word), ``asthma not copd`` without other
Boolean syntax (``asthma not controlled ...`` is the same shape), ``Asthma/`` alone, ``limit
3 to english language``.

Each defect was a strict xfail asserting the correct behaviour (the reasons say what
happened before); all are fixed: ``ranking.search.foreign_syntax`` (refused by
``checked_query``), ``_FIELD_TAG`` (the search builder's case, proximity), ``_TRUNCATION``
(``$``), and ``query_notes`` (lower-case ``or``/``not``). The plain tests pin the
legitimate texts and the references the defects are measured against. Pure calls only.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from litpulse.core.errors import ConfigError
from ranking.lexical import phrase_forms, query_terms, split_exclusions
from ranking.search import checked_query, query_notes


def _all(*parts: str) -> str:
    """A ``match`` pattern requiring every part (regexes), in any order."""
    return "(?s)" + "".join(f"(?=.*{p})" for p in parts)


def _refusal(query: str, match: str, reason: str) -> Any:
    # each was a strict xfail (raises=: it held only while checked_query accepted the query,
    # or refused it with another message); ``reason`` says what happened before the fix
    return pytest.param(query, match, id=query)


# ------------------------------------------------------------------ refusals
# Every query here is accepted today, with its operator or field code searched as words
# (shown in each reason). Each should be refused, as covid[ti] and cardio* are: the form
# has no legitimate biomedical reading, and the message names what to write instead.
REFUSALS = [
    # --- Ovid MEDLINE. `exp X/` is the MeSH explode, as `X[mh]` is in PubMed (refused,
    # naming --mesh). Proposed: "Ovid's MeSH heading 'exp Asthma/' is not supported: filter
    # by MeSH instead (--mesh Asthma, mesh=Asthma)".
    _refusal(
        "exp Asthma/",
        _all("exp Asthma/", "--mesh"),
        "Ovid MeSH explode: accepted, searches 'exp' and 'asthma' (no MeSH filter)",
    ),
    _refusal(
        "exp Asthma/ AND exp Child/",
        _all("exp Asthma/", "--mesh"),
        "Ovid MeSH explode: accepted, searches 'exp', 'asthma', 'child'",
    ),
    # Ovid field suffixes, as [tiab] is refused ("drop the tag"). Proposed: "Ovid field
    # suffixes such as '.ti,ab.' are not supported: the words are searched in titles,
    # abstracts, MeSH headings and keywords alike: drop the suffix".
    _refusal(
        "asthma.ti,ab.",
        _all(r"\.ti,ab\.", "drop"),
        "Ovid field suffix: accepted, searches 'ti' and 'ab' (titanium, antibody)",
    ),
    _refusal("asthma.mp.", _all(r"\.mp\.", "drop"), "Ovid field suffix: accepted, searches 'mp'"),
    _refusal(
        "(asthma or wheeze).tw.",
        _all(r"\.tw\.", "drop"),
        "Ovid field suffix after a group: accepted, searches 'tw'",
    ),
    # Ovid proximity: `adj` + digits is no word. Proposed: "proximity operators such as
    # 'adj3' are not supported: write the words (asthma children), or quote a phrase to
    # require them side by side".
    _refusal(
        "asthma adj3 children",
        _all("adj3", "asthma children"),
        "Ovid proximity: accepted, searches 'adj3', 'adj' and the number '3'",
    ),
    # Ovid truncation: `wheez*` is refused, `wheez$` is not. Proposed: the truncation
    # message, naming the `$` form ("truncation (wheez$) is not supported: type whole
    # words").
    _refusal(
        "wheez$ AND asthma",
        _all(r"wheez\$", "whole words"),
        "Ovid truncation: accepted, searches the stem 'wheez' alone (wheeze* refused)",
    ),
    # Search history lines: nothing of the strategy is searched. Proposed: "search history
    # lines (#1 AND #2) are not supported: write the lines' words themselves".
    _refusal(
        "#1 AND #2",
        _all("#1", "(?i:line)"),
        "history line numbers: accepted, searches the numbers 1 and 2",
    ),
    _refusal(
        "1 or 2 or 3",
        _all("(?i:line)"),
        "Ovid line combination: accepted, searches the numbers 1, 2 and 3",
    ),
    # --- Scopus: field codes before a bracket. Proposed: "Scopus field codes such as
    # TITLE-ABS-KEY( ) are not supported: drop the code and keep the words".
    _refusal(
        "TITLE-ABS-KEY(asthma)",
        _all("TITLE-ABS-KEY", "drop"),
        "Scopus field code: accepted, searches 'titleabskey', 'titl', 'ab', 'key'",
    ),
    # PUBYEAR: a date bound, as [dp] is refused naming --since/--until.
    _refusal(
        "asthma AND PUBYEAR > 2019",
        _all("PUBYEAR", "--since"),
        "Scopus date bound: accepted, searches 'pubyear' and '2019'; no date bound",
    ),
    # --- proximity of Scopus, WoS, Cochrane, Embase: an operator word + "/" + digits.
    # Proposed: the proximity message above.
    _refusal(
        "asthma W/3 children",
        _all("W/3", "asthma children"),
        "Scopus proximity: accepted, searches 'w' and the number '3'",
    ),
    _refusal(
        "asthma PRE/2 children",
        _all("PRE/2", "asthma children"),
        "Scopus proximity: accepted, searches 'pre' and the number '2'",
    ),
    _refusal(
        "asthma NEAR/3 children",
        _all("NEAR/3", "asthma children"),
        "WoS/Cochrane/Embase proximity: accepted, searches 'near' and '3'",
    ),
    _refusal(
        "asthma NEXT/3 children",
        _all("NEXT/3", "asthma children"),
        "Embase proximity: accepted, searches 'next' and '3'",
    ),
    # --- Web of Science field codes: `TS=(`. Proposed: "Web of Science field codes such as
    # TS=( ) are not supported: drop the code and keep the words".
    _refusal(
        "TS=(asthma AND children)",
        _all("TS=", "drop"),
        "WoS field code: accepted, searches 'ts' (thymidylate synthase, Tourette)",
    ),
    # --- Embase Emtree explode. Proposed: "Emtree terms such as 'asthma'/exp are not
    # supported: filter by MeSH (--mesh Asthma), or search the words".
    _refusal(
        "'asthma'/exp", _all("/exp", "--mesh"), "Embase Emtree explode: accepted, searches 'exp'"
    ),
    # --- Cochrane: its default search line, and its MeSH line.
    _refusal(
        "asthma:ti,ab,kw",
        _all(":ti,ab,kw", "drop"),
        "Cochrane field suffix: accepted, searches 'ti', 'ab' and 'kw'",
    ),
    _refusal(
        "MeSH descriptor: [Asthma] explode all trees",
        _all("MeSH descriptor", "--mesh"),
        "Cochrane MeSH line: accepted, searches 'mesh', 'descriptor', 'explod', 'tree'",
    ),
    # --- Google Scholar.
    _refusal(
        "intitle:asthma",
        _all("intitle:", "drop"),
        "Google Scholar operator: accepted, searches 'intitl'",
    ),
    # An author field of another system requires the name as a phrase in the TEXT: the
    # articles that mention Smith, not Smith's articles. Proposed: "author:\"smith\" is
    # Google Scholar's; an author is searched as Smith[au]".
    _refusal(
        'author:"smith"',
        r"(?i)smith\[au\]",
        "Google Scholar author: accepted; 'smith' is required as a phrase in the text",
    ),
    _refusal(
        'asthma AND AUTH:"Smith J"',
        r"Smith J\[au\]",
        "Europe PMC author: accepted; 'smith j' is required as a phrase in the text",
    ),
    # Europe PMC proximity: the quoted words are required SIDE BY SIDE, stricter than the
    # 5 words asked. Proposed: "proximity (\"asthma children\"~5) is not supported: drop ~5
    # to require the words side by side, or the quotes to search the words".
    _refusal(
        '"asthma children"~5',
        _all("~5", "(?i:quote)"),
        "Europe PMC proximity: accepted, phrase required adjacent (stricter), '5' searched",
    ),
    # --- PubMed's own proximity: [tiab] is refused, [tiab:~3] is not. Proposed: the field
    # tag message ("drop the tag"), naming the proximity ("[tiab:~3]").
    _refusal(
        "asthma[tiab:~3]",
        _all(r"\[tiab:~3\]", "drop"),
        "PubMed proximity tag: accepted, searches 'tiab' and '3'",
    ),
    _refusal(
        '"asthma children"[Title/Abstract:~3]',
        _all(r"Title/Abstract:~3", "drop"),
        "PubMed proximity tag: accepted, phrase required adjacent (stricter), "
        "'titl', 'abstract', '3' searched",
    ),
    # --- PubMed's tags as its MeSH database's search builder writes them (mixed case, not
    # an abbreviation in capitals like [MH] or [ALL]): "Asthma"[Mesh], "Asthma"[Majr].
    _refusal(
        '"Asthma"[Mesh]',
        _all(r"\[Mesh\]", "--mesh"),
        "PubMed MeSH tag in the search builder's case: accepted, searches 'mesh'",
    ),
    _refusal(
        '"Asthma"[Majr] AND "Child"[Mesh]',
        _all(r"\[Majr\]", "--mesh"),
        "PubMed major-topic tag in the search builder's case: accepted, searches 'majr'",
    ),
    _refusal(
        "asthma[Tiab]",
        _all(r"\[Tiab\]", "drop the tag"),
        "PubMed tag in title case: accepted, searches 'tiab'",
    ),
]


def test_refusal_patterns_compile() -> None:
    for param in REFUSALS:
        re.compile(param.values[1])  # a bad pattern would make its xfail hold for nothing


@pytest.mark.parametrize(("query", "match"), REFUSALS)
def test_foreign_syntax_refused(query: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        checked_query(query)


# ------------------------------------------------------------------ notes
# Lower-case Boolean operators: Ovid, Embase, Scopus, WoS and Cochrane read them; PubMed
# (and litpulse) read capitals only. A note, not a refusal: lower-case `or` and `not` are
# common in legitimate titles and questions (see LEGIT: "asthma not controlled by ...",
# "(ICS) not LABA"), and each query below can be searched; but not as meant.


# Proposed note: 'lower-case "or" is a word here: both phrases are required. For either,
# write: "heart failure" OR "cardiac failure"'.
def test_lower_case_or_between_phrases_noted() -> None:
    query = '"heart failure" or "cardiac failure"'
    assert len(phrase_forms(query)[0]) == 2  # now: two requirements, both must hold
    notes = query_notes(query)
    assert notes and '"heart failure" OR "cardiac failure"' in notes[0]


# Proposed note: 'lower-case "not" is a word here: copd is searched for, not left out. To
# leave out the articles that mention copd, write: (asthma or wheeze) NOT copd'. The sign
# that "not" is an operator: it follows a group holding a lower-case or/and.
def test_lower_case_not_after_boolean_group_noted() -> None:
    query = "(asthma or wheeze) not copd"
    assert "copd" in query_terms(split_exclusions(query)[0])  # now: searched for
    notes = query_notes(query)
    assert notes and "(asthma or wheeze) NOT copd" in notes[0]
    assert split_exclusions("(asthma or wheeze) NOT copd")[1] == ("copd",)


# ------------------------------------------------------------------ legitimate texts
#: Legitimate biomedical text near the shape of each proposed rule: accepted as typed,
#: nothing excluded, no note. query -> the rule it is near.
LEGIT: dict[str, str] = {
    "Exp Neurol asthma model": "exp X/ (a journal abbreviation)",
    "exp(-kt) decay": "exp X/ (the exponential)",
    "exp/ctrl ratio in mice": "exp X/ (experimental over control)",
    "HIV/AIDS prevention": "X/ (a slash between words)",
    "asthma/COPD overlap syndrome": "X/ (a slash between words)",
    "asthma and/or COPD": "X/ and lower-case operators",
    "adj R2 regression asthma": "adj3 (adjusted R squared)",
    "adjusted OR 1.5 asthma": "adj3 and OR (odds ratio)",
    "cost of asthma care US$ 500": "word$ truncation (a currency)",
    "$1000 per QALY asthma": "word$ truncation (a price)",
    "costs in AU$ and US$/QALY": "word$ truncation (currencies)",
    "W/O emulsion": "W/n proximity (water in oil)",
    "10% w/v sucrose": "W/n proximity (weight per volume)",
    "pts w/3 comorbidities": "W/n proximity (clinical shorthand: with 3)",
    "5 W/kg power output": "W/n proximity (watts per kilogram)",
    "pre/post intervention": "PRE/n proximity",
    "near-infrared spectroscopy": "NEAR/n proximity",
    "near miss events": "NEAR/n proximity (an English word)",
    "NEAR INFRARED IMAGING": "NEAR/n proximity (a title in capitals)",
    "therapeutic index TI = 10": "TI= (therapeutic index)",
    "TS = thymidylate synthase": "TS= (an abbreviation defined)",
    "AB = antibody titre": "AB= (an abbreviation defined)",
    "thymidylate synthase (TS) inhibitors 5-FU": "TS= (the gene)",
    "Ti:sapphire laser": ":ti field suffix (a laser)",
    "Nd:YAG laser capsulotomy": ": field suffix (a laser)",
    "Ag:Ab immune complexes": ":ab field suffix (antigen:antibody)",
    "melting point (m.p.) 120 °C": ".mp. field suffix",
    "MP (mycophenolate) levels": ".mp. field suffix (an abbreviation)",
    "i.v. vs. p.o. dosing": ".xx. field suffix (dosing abbreviations)",
    "type 1 and 2 diabetes": "1 and 2 (line combination)",
    "phase 1 and 2 trials": "1 and 2 (line combination)",
    "1 or 2 doses": "1 or 2 (line combination)",
    "heart disease #1 cause of death": "#1 (line reference)",
    "ABS plastic": "ABS( (Scopus code)",
    "key role of IL-6 in asthma": "KEY( (Scopus code)",
    "active site of the enzyme": "site: (Google)",
    "corresponding author: J Smith asthma": "author: (Google Scholar)",
    "author contributions asthma": "author: (Google Scholar)",
    "approximately ~5 mg/kg": "~n proximity (approximately)",
    "age ~50 years": "~n proximity (approximately)",
    "[Asthma in children]": "[Mesh] (a translated title in brackets)",
    "gold [Au] nanoparticles": "[Mesh] (an element after a space)",
    "asthma or COPD in smokers": "lower-case or (between words: changes nothing)",
    "asthma not controlled by inhaled corticosteroids": "lower-case not",
    "why do some children with asthma not respond to inhaled steroids": "lower-case not",
    "inhaled corticosteroids (ICS) not LABA monotherapy": (
        "lower-case not after a bracket (no Boolean group)"
    ),
}


@pytest.mark.parametrize("query", list(LEGIT))
def test_legitimate_text_accepted_without_note(query: str) -> None:
    assert checked_query(query) == query, LEGIT[query]
    assert split_exclusions(query)[1] == (), LEGIT[query]
    assert query_notes(query) == (), LEGIT[query]


# ------------------------------------------------------------------ references
# What the defects are measured against: PubMed's forms of the same intent are refused or
# read, with what to write instead.
@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("asthma[tiab]", "drop the tag"),
        ("asthma[mh]", "--mesh"),
        ("asthma AND 2019[dp]", "--since"),
        ("wheez* AND asthma", "truncation"),
    ],
)
def test_pubmed_forms_refused(query: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        checked_query(query)


def test_pubmed_capital_operators_read() -> None:
    assert split_exclusions("(asthma or wheeze) NOT copd")[1] == ("copd",)
    # OR in capitals: one requirement met by either phrase
    assert len(phrase_forms('"heart failure" OR "cardiac failure"')[0]) == 1
