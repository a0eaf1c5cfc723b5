"""A small drifted corpus for the retraining tests and benchmark, inserted into ``articles``.

Older literature: ordinary biomedical topics whose titles and abstracts share words (the
base model retrieves them well). Later literature adds an *emerging topic* made of
invented drugs: a title names each drug by its brand name, the abstract by its generic
name — words that exist nowhere before the later window, so the base model cannot link
them, and only training on the new pairs can. Held-out fresh articles combine the same
drugs in new pairs, so a model that improves on them has learned the associations, not
memorised the articles.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass

from sqlalchemy import Engine

from litpulse.core.db import upsert
from litpulse.core.schema import articles, references

OLD_TOPICS = {
    "cardiology": ["atrial fibrillation", "heart failure", "statin", "hypertension",
                   "myocardial infarction", "anticoagulation", "ejection fraction"],
    "oncology": ["breast cancer", "chemotherapy", "tumour", "metastasis", "radiotherapy",
                 "immunotherapy", "lymphoma"],
    "infection": ["sepsis", "antibiotic", "tuberculosis", "malaria", "vaccine",
                  "influenza", "hepatitis"],
    "neurology": ["stroke", "epilepsy", "dementia", "Parkinson disease", "migraine",
                  "multiple sclerosis", "neuropathy"],
    "metabolism": ["diabetes", "insulin", "obesity", "thyroid", "cholesterol",
                   "kidney disease", "gout"],
    "respiratory": ["asthma", "COPD", "pneumonia", "lung fibrosis", "sleep apnoea",
                    "bronchiectasis", "oxygen therapy"],
}
POPULATIONS = ["older adults", "children", "pregnant women", "veterans", "outpatients",
               "intensive care patients", "a rural cohort", "athletes"]
DESIGNS = ["A randomised trial", "A cohort study", "A case-control study",
           "A meta-analysis", "A cross-sectional survey"]
FILLER = [
    "Patients were followed for twelve months.",
    "Outcomes were assessed by blinded investigators.",
    "Adverse events were rare and mild.",
    "Further studies are needed to confirm these findings.",
    "Data were analysed with mixed-effects models.",
]
SYLLABLES = ["zor", "vex", "qua", "lim", "tes", "bro", "nak", "fel", "dru", "pax", "mir",
             "sol", "tav", "ken", "rib", "ulo", "gan", "fyr", "hob", "jet"]


@dataclass(frozen=True)
class Drug:
    brand: str
    generic: str


def make_drugs(n: int, seed: int = 7) -> list[Drug]:
    r = random.Random(seed)
    seen: set[str] = set()
    out: list[Drug] = []
    while len(out) < n:
        brand = "".join(r.sample(SYLLABLES, 2)).capitalize()
        generic = "".join(r.sample(SYLLABLES, 3)) + r.choice(["mab", "tinib", "vir", "stat"])
        if brand in seen or generic in seen:
            continue
        seen.update((brand, generic))
        out.append(Drug(brand, generic))
    return out


def _old_article(r: random.Random) -> tuple[str, str]:
    topic = r.choice(list(OLD_TOPICS))
    a, b = r.sample(OLD_TOPICS[topic], 2)
    pop = r.choice(POPULATIONS)
    title = f"{a.capitalize()} and {b} in {pop}"
    abstract = " ".join([
        f"{r.choice(DESIGNS)} of {a} among {pop}.",
        f"We examined how {b} related to {a}.",
        r.choice(FILLER),
        f"{b.capitalize()} was associated with {a} outcomes.",
    ])
    return title, abstract


def _new_article(r: random.Random, d1: Drug, d2: Drug) -> tuple[str, str]:
    title = f"{d1.brand} combined with {d2.brand} in {r.choice(POPULATIONS)}"
    abstract = " ".join([
        f"{r.choice(DESIGNS)} of {d1.generic} given with {d2.generic}.",
        r.choice(FILLER),
        f"Treatment with {d1.generic} and {d2.generic} was well tolerated.",
    ])
    return title, abstract


def _row(pmid: int, title: str, abstract: str, day: dt.date, at: dt.datetime) -> dict:
    return {
        "pmid": pmid, "version": 1, "source_sequence": 0, "source_time": 0.0,
        "source_kind": "file", "source_location": "drift", "title": title, "abstract": abstract,
        "journal": "J Drift", "pub_year": day.year, "pub_month": day.month, "pub_day": day.day,
        "best_date": day, "language": "eng", "is_retracted": False, "is_book": False,
        "is_deleted": False, "has_abstract": True,
        "text_hash": hashlib.sha1(f"{title}\n{abstract}".encode()).hexdigest(),
        "authors": [], "mesh": [], "publication_types": [], "record": {},
        "cited_by_in_corpus": 0, "ingested_at": at, "updated_at": at,
    }


def insert_batch(
    engine: Engine,
    *,
    start_pmid: int,
    n: int,
    start: dt.date,
    days: int,
    ingested: dt.datetime,
    new_share_from: float = 0.0,
    new_share_to: float = 0.0,
    drugs: list[Drug] | None = None,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Insert ``n`` articles spread over ``days`` days from ``start``.

    The share of emerging-topic articles grows linearly from ``new_share_from`` (first
    day) to ``new_share_to`` (last day). Emerging articles cite an earlier emerging
    article sharing a drug when there is one.

    Returns:
        ``{"old": pmids, "new": pmids}``.
    """
    r = random.Random(seed)
    drugs = drugs or make_drugs(24)
    rows, refs = [], []
    out: dict[str, list[int]] = {"old": [], "new": []}
    by_drug: dict[str, list[int]] = {}
    for i in range(n):
        pmid = start_pmid + i
        frac = i / max(1, n - 1)
        day = start + dt.timedelta(days=int(frac * (days - 1)))
        share = new_share_from + (new_share_to - new_share_from) * frac
        if r.random() < share:
            d1, d2 = r.sample(drugs, 2)
            title, abstract = _new_article(r, d1, d2)
            cited = by_drug.get(d1.brand, [])
            if cited:
                refs.append({"citing_pmid": pmid, "cited_pmid": r.choice(cited)})
            for d in (d1, d2):
                by_drug.setdefault(d.brand, []).append(pmid)
            out["new"].append(pmid)
        else:
            title, abstract = _old_article(r)
            out["old"].append(pmid)
        rows.append(_row(pmid, title, abstract, day, ingested))
    with engine.begin() as conn:
        upsert(conn, articles, rows, keys=("pmid",))
        upsert(conn, references, refs, keys=("citing_pmid", "cited_pmid"), update=())
    return out
