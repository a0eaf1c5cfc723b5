"""Second review of ``OR`` and ``NOT`` (the query language rewritten today) — as a demanding
researcher pastes and types them: odds ratios in abstract sentences, titles in capitals,
chemical and variant names with brackets and dots, numbers that start a name, brackets
nested, unclosed or square, quotes of other kinds, NOT inside brackets beside OR.

Records go the real way: :class:`ingest.records.Record` through :class:`ingest.store.Store`,
a real published index (:func:`ranking.refresh.refresh_index` with the tiny random
encoder), then :func:`ranking.search.search` — on SQLite and on PostgreSQL (one corpus per
database, built once for the module).

The ``xfail(strict=True)`` tests state what the user expects where the code does
otherwise; the plain ones pin what holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from ranking.lexical import phrase_forms, query_problems, split_exclusions
from ranking.search import checked_query
from tests.ranking.corpus import BOTH_DATABASES, found_offsets, review_world, titled_records
from tests.tiny_encoder import build_tiny_encoder

P = 45000000

#: offset -> (title, abstract)
CORPUS: dict[int, tuple[str, str]] = {
    # heart failure, kidney failure, dyspnea with and without the elderly
    1: ("Heart failure in elderly patients", "Heart failure outcomes in the elderly."),
    2: ("Heart failure and kidney failure", "Kidney failure complicates heart failure."),
    3: ("Dyspnea in elderly patients", "Dyspnea and breathlessness in the elderly."),
    4: ("Dyspnea in young athletes", "Exertional dyspnea in athletes."),
    # a drug by its abbreviation only, and by its name
    5: ("5-FU toxicity in colorectal cancer", "5-FU caused mucositis in most patients."),
    6: ("Capecitabine and 5-fluorouracil in colorectal cancer", "Oral capecitabine was "
        "compared with 5-fluorouracil."),
    # PET tracers: FDG, and another 18F tracer
    7: ("[18F]fluciclovine PET in prostate cancer", "Uptake of [18F]fluciclovine in "
        "recurrent prostate cancer."),
    8: ("[18F]FDG PET in lymphoma", "[18F]FDG uptake predicted relapse in lymphoma."),
    # a variant, and a P value
    9: ("IDH1 R132H in glioma", "The IDH1 R132H mutation in diffuse glioma."),
    10: ("Statins after stroke", "Mortality was lower with statins (P < 0.05)."),
    # COPD with and without asthma and bronchitis
    11: ("COPD rehabilitation", "Pulmonary rehabilitation for COPD patients."),
    12: ("COPD and asthma overlap", "Asthma and COPD in smokers."),
    13: ("COPD in smokers with asthma", "Chronic bronchitis was also frequent in COPD."),
    14: ("COPD and chronic bronchitis", "Chronic bronchitis in COPD patients."),
    # an odds ratio, a hazard ratio; the first name of COVID-19
    15: ("Odds ratio of stroke after infection", "The odds ratio was 1.8 (95% CI 1.2-2.6)."),
    16: ("Hazard ratio of stroke after infection", "Hazard ratio 1.4 (95% CI 1.1-1.8)."),
    17: ("2019-nCoV outbreak in Wuhan", "Pneumonia caused by the novel coronavirus "
         "2019-nCoV."),
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-or2"), max_seq_length=32)


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny: str
) -> Iterator[Settings]:
    yield from review_world(request, tmp_path_factory, tiny, "or_second_review",
                            titled_records(P, CORPUS), rerank_candidates=3)


def _found(s: Settings, query: str, mode: str = "lexical") -> set[int]:
    return found_offsets(s, query, P, mode)


# ----------------------------------------------------------------------- what holds


@pytest.mark.parametrize("query", ['"odds ratio" (OR 1.9, 95% CI)', '"odds ratio" OR=1.9',
                                   '"odds ratio" (OR = 1.9)'])
def test_an_odds_ratio_in_brackets_or_with_a_sign_leaves_the_phrase_required(
    world: Settings, query: str
) -> None:
    assert _found(world, query) == {15}


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_square_brackets_group_alternatives_and_a_bracketed_group_excludes_a_phrase(
    world: Settings, mode: str
) -> None:
    assert _found(world, '["heart failure" OR dyspnea] elderly', mode) == {1, 2, 3, 4}
    found = _found(world, 'COPD NOT (asthma OR "chronic bronchitis")', mode)
    assert 11 in found and found & {12, 13, 14} == set(), found


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(
    ["NOT", "OR", "AND", "(", ")", "[", "]", '"', "\u201c", "\u201d", "'", "asthma", "COPD",
     "the", "1.9", "95%", "E.", "coli", "HER2+", "-", "A", "all", "NO", ",", "?", "x",
     "\u03b1", "Alzheimer's", "[18F]FDG", "5-FU", "p.R132H"]), max_size=9).map(" ".join))
def test_odd_queries_are_refused_or_read_never_an_error(query: str) -> None:
    for read in (checked_query, phrase_forms, query_problems, split_exclusions):
        try:
            read(query)
        except ConfigError:
            pass


# ------------------------------------------------------------------------ defects


# ranking/lexical.py _structure: "an OR before a number is the odds ratio" looks only at
# the first character of the next word, so a name that starts with a digit — 5-FU,
# 2019-nCoV, 25(OH)D, 1,25-dihydroxyvitamin D — ends the chain instead of joining it:
# '"5-fluorouracil" OR 5-FU' requires 5-fluorouracil alone and the article naming the
# drug 5-FU only is silently missing (same for '"COVID-19" OR 2019-nCoV'). Fix: a number
# is a bare numeral (1.9, 95%, .9), not a word holding letters.
@pytest.mark.parametrize(("query", "wanted"), [('"5-fluorouracil" OR 5-FU', 5),
                                               ('"COVID-19" OR 2019-nCoV', 17)])
def test_an_alternative_starting_with_a_digit_is_an_alternative(
    world: Settings, query: str, wanted: int
) -> None:
    assert wanted in _found(world, query)


# ranking/lexical.py _CHAIN_ITEM: square brackets are grouping brackets and a word stops at
# one, so the tracer '[18F]FDG' beside OR offers the alternative "18F" (a group of one
# word) and FDG is left out of the chain: '"FDG PET" OR [18F]FDG' lets any article
# holding "[18F]" — a fluciclovine PET study, no FDG — meet the requirement. Fix: read a
# bracket glued to the word after it ([18F]FDG, [11C]PiB) as part of that word.
def test_a_tracer_in_square_brackets_is_one_alternative(world: Settings) -> None:
    found = _found(world, '"heart failure" OR [18F]FDG')
    assert 8 in found and 7 not in found, found


# ranking/lexical.py _CHAIN_ITEM: a word beside OR ends at a dot (only "E. coli"-like
# species are taken whole), so an HGVS protein variant '"IDH1 R132H" OR p.R132H' offers
# the lone letter "p" as the alternative: every abstract reporting a P value ("P < 0.05")
# meets the requirement — lexical mode lists a statin trial for an IDH1 variant query.
# Fix: keep dotted words whole (p.R132H, c.395G>A), or never let a lone letter stand as
# an alternative.
def test_a_protein_variant_beside_or_is_not_the_letter_p(world: Settings) -> None:
    found = _found(world, '"IDH1 R132H" OR p.R132H')
    assert 9 in found and 10 not in found, found


# ranking/lexical.py _split: a query wholly in capitals has no exclusion (a title typed
# so), but its quoted phrases stay required — so in a shouted query with quotes,
# '"HEART FAILURE" NOT "KIDNEY FAILURE"', the phrase after NOT becomes a *requirement*:
# only articles holding kidney failure are listed, the heart-failure-only one is gone —
# the opposite of what was asked (quotes are syntax: no pasted title carries them). Fix:
# read NOT before a quoted phrase as an exclusion in a shouted query too, or refuse it.
@pytest.mark.parametrize("query", ['"HEART FAILURE" NOT "KIDNEY FAILURE"',
                                   'HEART FAILURE IN THE ELDERLY NOT "KIDNEY FAILURE"'])
def test_a_shouted_not_never_requires_the_phrase_it_names(world: Settings, query: str) -> None:
    try:
        found = _found(world, query)
    except ConfigError:
        return  # refused with a message: acceptable
    assert 1 in found and 2 not in found, found


# ranking/lexical.py _NOT_TARGET: what NOT excludes must start with a word character, a
# double quote or "(": a word in single quotes (straight or curly, the British quote) or in
# square brackets is no target, so the NOT is dropped as an operator and the word is
# *searched for*, with no refusal: 'COPD NOT 'asthma'' ranks the COPD-and-asthma article
# in. Fix: take ' ‘ [ before the word as part of the target (or refuse NOT before them).
@pytest.mark.parametrize("query", ["COPD NOT 'asthma'", "COPD NOT \u2018asthma\u2019",
                                   "COPD NOT [asthma]"])
def test_not_before_a_word_in_single_quotes_or_square_brackets(
    world: Settings, query: str
) -> None:
    try:
        found = _found(world, query)
    except ConfigError:
        return
    assert 11 in found and 12 not in found, found


# ranking/lexical.py _NOT_TARGET: a group after NOT is "\([^()]*\)": a group nested in it,
# or one left unclosed, is no target, NOT is dropped and the words are searched for —
# 'COPD NOT (asthma OR (bronchitis))' ranks asthma in, and 'COPD NOT ("chronic
# bronchitis" OR (asthma))' *requires* the phrase it meant to exclude (only articles on
# chronic bronchitis or asthma are listed; the COPD-only one is gone). The README says
# brackets holding a chain of ORs join it. Fix: match balanced brackets (and refuse an
# unclosed one after NOT).
@pytest.mark.parametrize("query", ["COPD NOT (asthma OR (bronchitis))",
                                   'COPD NOT ("chronic bronchitis" OR (asthma))',
                                   "NOT ((asthma OR bronchitis)) COPD",
                                   "COPD NOT (asthma OR bronchitis"])
def test_not_before_nested_or_unclosed_brackets(world: Settings, query: str) -> None:
    try:
        found = _found(world, query)
    except ConfigError:
        return
    assert 11 in found and found & {12, 13, 14} == set(), found


# ranking/lexical.py _excluded: a group after NOT is split on OR only; any other group —
# PubMed's '(asthma AND bronchitis)', a list '(asthma, bronchitis)' or '(asthma/
# bronchitis)' — becomes ONE phrase to exclude, "asthma bronchitis", which no article
# holds in a row: the article holding asthma and bronchitis apart, excluded by every
# reading (each, or both), is listed. Fix: refuse a group after NOT that is no chain of
# ORs (as brackets beside OR are), or exclude each word / all of them.
@pytest.mark.parametrize("query", ["COPD NOT (asthma AND bronchitis)",
                                   "COPD NOT (asthma, bronchitis)",
                                   "COPD NOT (asthma/bronchitis)"])
def test_a_group_after_not_that_is_no_or_chain(world: Settings, query: str) -> None:
    try:
        found = _found(world, query)
    except ConfigError:
        return
    assert 13 not in found, found


# ranking/lexical.py _split: an exclusion inside brackets applies to the whole query, so
# '("heart failure" NOT elderly) OR dyspnea' (PubMed: heart failure outside the elderly,
# or any dyspnea) excludes the elderly from the dyspnea alternative too: the article on
# dyspnea in the elderly is silently missing, in every mode. Brackets of several terms
# beside OR are refused; a NOT in them is not. Fix: refuse NOT inside brackets beside OR
# (the README's rule for brackets of several terms), or scope it.
@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_not_in_brackets_beside_or_stays_in_its_brackets(world: Settings, mode: str) -> None:
    try:
        found = _found(world, '("heart failure" NOT elderly) OR dyspnea', mode)
    except ConfigError:
        return
    assert {3, 4} <= found, found


# ranking/lexical.py _split/_excluded: a NOT inside the group a NOT excludes is read as a
# word of a phrase to exclude: 'COPD NOT (asthma OR NOT bronchitis)' excludes the phrase
# "NOT bronchitis" (the article on chronic bronchitis is listed) and 'COPD NOT (NOT
# asthma)' the phrase "NOT asthma" (the asthma article is listed) — yet `OR NOT` and `NOT
# NOT` are refused everywhere else (README). Fix: refuse them here too.
@pytest.mark.parametrize("query", ["COPD NOT (asthma OR NOT bronchitis)",
                                   "COPD NOT (NOT asthma)"])
def test_or_not_and_not_not_inside_an_excluded_group_are_refused(query: str) -> None:
    with pytest.raises(ConfigError):
        checked_query(query)


# ranking/lexical.py _alternatives / _structure: the OR refusals apply to queries with no
# quoted phrase at all, where (README) "OR between words alone changes nothing": an
# abstract's sentence 'adjusted OR (95% CI) 1.9 (1.2-3.0)' — the commonest way an odds
# ratio is reported — is refused as "brackets beside OR hold several terms", a title in
# capitals '... (WITH OR WITHOUT RADIATION) OR OBSERVATION ...' too, and a title in
# capitals 'EARLY SURGERY OR NOT SURGERY ...' as "OR NOT" though NOT in a query wholly in
# capitals is no operator. Fix: refuse OR problems only where a chain holds a quoted
# phrase (the only place OR means anything); read OR before "(" and a number as the
# odds ratio; skip OR NOT in a shouted query.
@pytest.mark.parametrize("query", [
    "stroke in smokers adjusted OR (95% CI) 1.9 (1.2-3.0)",
    "ADJUVANT CHEMOTHERAPY (WITH OR WITHOUT RADIATION) OR OBSERVATION IN GASTRIC CANCER",
    "EARLY SURGERY OR NOT SURGERY FOR CHRONIC PANCREATITIS",
])
def test_or_without_a_quoted_phrase_is_never_refused(query: str) -> None:
    checked_query(query)


# ranking/lexical.py _structure: the OR NOT refusal's advice names the phrase without its
# quotes ("write A NOT kidney failure"), and that advice, followed, excludes only
# "kidney" and searches "failure" (split_exclusions('"heart failure" NOT kidney failure')
# excludes ('kidney',)): the articles on heart failure with kidney disease go missing.
# Fix: quote a phrase in the advice (write A NOT "kidney failure").
def test_the_or_not_advice_keeps_the_phrase_quoted() -> None:
    with pytest.raises(ConfigError) as refused:
        checked_query('"heart failure" OR NOT "kidney failure"')
    assert split_exclusions('"heart failure" NOT kidney failure')[1] == ("kidney",)
    assert 'NOT "kidney failure"' in str(refused.value), str(refused.value)
