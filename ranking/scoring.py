"""The explainable ranking score: relevance (semantic ⊕ lexical) ⊕ recency ⊕ citation impact.

Every hit gets one number, a weighted sum of four components in plain sight::

    score = w_sim · ((1 - λ) · similarity + λ · lexical) + w_rec · recency + w_cit · citation

where λ is the lexical share (``LITPULSE_WEIGHT_LEXICAL``) in hybrid mode, 0 in
semantic mode and 1 in lexical mode; the explanation lists ``w_sim · (1 - λ)`` and
``w_sim · λ`` as the weights of the two parts.

* **similarity** — from the cosine between the query and the article (title + abstract)
  embeddings, as the FAISS index returns it (inner product of L2-normalised vectors,
  within [-1, 1]; in practice 0..1 for related texts). Semantic mode uses it as is;
  hybrid mode fuses it (below).
* **lexical** — from the article's BM25 score for the query in the lexical index
  (:mod:`ranking.lexical`: title, abstract, MeSH headings, keywords); the explanation
  lists the matched terms and their BM25 weights. Lexical mode uses it min-max normalised
  over the candidates (1 for the best match).
* **fusion** (hybrid mode, ``LITPULSE_FUSION``) — ``rrf``: each part is
  ``(k + 1) / (k + rank)`` with its rank among the candidates (1 for the first, 0.5 at
  rank k + 2; ``LITPULSE_RRF_K``, default 60), and 0 for an article without any query term
  (lexical) or vector (semantic); ``mix``: each part min-max normalised over the candidates.
* **recency** — ``0.5 ** (age_days / half_life_days)`` where ``age_days`` counts from the
  article's ``best_date`` (electronic date, else publication date, else Entrez date) to
  today: 1.0 for today's paper, 0.5 one half-life ago, 0.25 two half-lives ago. Dates
  in the future count as today. **No date → 0.5** (neutral: the value of an article one
  half-life old), so a missing date neither helps nor hurts much.
* **citation** — a bounded, monotone transform of the best citation evidence known,
  each mapped so that a *typical* article lands on 0.5:

  1. iCite's Relative Citation Ratio (RCR). RCR is already normalised by field and by
     year (1.0 = the median NIH-funded paper of its field), so a young paper is not
     punished twice for its age: ``saturate(rcr, 1.0)``.
  2. else iCite's citations per year (or citation count ÷ years since publication):
     ``saturate(cpy, 2.0)`` — two citations a year is about typical.
  3. else citations from inside our own corpus per year of age, which can only *raise*
     the value above neutral: ``0.5 + 0.5 · rate / (rate + 1)``. A zero count in a
     partial corpus says little, so it stays neutral.
  4. else **0.5** (neutral: unknown impact is treated as typical impact).

  where ``saturate(x, ref) = ln(1 + x) / (ln(1 + x) + ln(1 + ref))``: 0 at x = 0, 0.5 at
  x = ref, strictly increasing and always below 1 (RCR 3 → 0.67, RCR 10 → 0.78).

Weights and the half-life come from the settings (``LITPULSE_WEIGHT_*``,
``LITPULSE_RECENCY_HALF_LIFE_DAYS``) and can be overridden per query with
:class:`ScoringOptions`. The explanation of every score lists each component's raw input,
its transformed value, weight and contribution; the contributions sum to the score.

Example:
    >>> import datetime as dt
    >>> opts = ScoringOptions(1.0, 0.2, 0.1, 365.0, today=dt.date(2025, 1, 1))
    >>> s = score_article(0.8, {"best_date": dt.date(2024, 1, 2),
    ...                         "relative_citation_ratio": 1.0}, opts)
    >>> round(s.recency, 3), round(s.citation, 3), round(s.score, 4)
    (0.5, 0.5, 0.95)
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from litpulse.core.errors import ConfigError
from litpulse.core.impact import (
    CORPUS_REFERENCE,
    CPY_REFERENCE,
    NEUTRAL_CITATION,
    RCR_REFERENCE,
    YOUNG_DAYS,
    age_days,
    recency_decay,
    row_citation_impact,
    saturate,
)
from litpulse.core.settings import Settings, allowed, bounds
from litpulse.core.states import Fusion, SearchMode
from litpulse.core.timeutil import as_date, iso, utcnow

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "NEUTRAL_CITATION",
    "NEUTRAL_RECENCY",
    "RCR_REFERENCE",
    "CPY_REFERENCE",
    "CORPUS_REFERENCE",
    "FORMULA",
    "HYBRID_FORMULA",
    "Relevance",
    "ScoringOptions",
    "Score",
    "recency_value",
    "citation_value",
    "lexical_share",
    "saturate",
    "score_article",
    "scores",
]

logger = logging.getLogger(__name__)

#: Recency of an article without any date (that of an article one half-life old).
NEUTRAL_RECENCY = 0.5

FORMULA = "score = w_sim*similarity + w_rec*recency + w_cit*citation"
#: The formula when the lexical part is present (λ: the lexical share of the mode).
HYBRID_FORMULA = "score = w_sim*((1-λ)*similarity + λ*lexical) + w_rec*recency + w_cit*citation"


#: The setting each per-query option stands for (its default and its range), and the
#: option's name in a refusal.
_SETTING_OF = {
    "w_similarity": ("weight_similarity", "w_similarity"),
    "w_recency": ("weight_recency", "w_recency"),
    "w_citation": ("weight_citation", "w_citation"),
    "half_life_days": ("recency_half_life_days", "half_life_days"),
    "lexical_share": ("weight_lexical", "lexical weight λ"),
}


def _default(name: str) -> Any:
    """The default of a :class:`Settings` field (the one home of the scoring defaults)."""
    return next(f.default for f in fields(Settings) if f.name == name)


@dataclass(frozen=True)
class ScoringOptions:
    """Weights and the recency half-life of one query.

    Args:
        w_similarity: Weight of the cosine similarity (>= 0).
        w_recency: Weight of the recency value (>= 0).
        w_citation: Weight of the citation-impact value (>= 0).
        half_life_days: Age in days at which recency falls to 0.5 (> 0).
        today: The day ages are counted to; ``None`` means today (UTC).
        lexical_share: λ, the share of ``w_similarity`` given to the lexical part in
            hybrid mode (0..1).
        fusion: ``rrf`` or ``mix`` (:class:`~litpulse.core.states.Fusion`).
        rrf_k: The k of reciprocal-rank fusion (>= 1).
        lexical_asked: λ was asked for this query (``--w-lexical``, ``w_lexical``), even
            equal to the setting: a search that does not use it says so
            (:func:`ranking.search.unused_share_notes`). Not an option of the ranking:
            left out of comparisons and of :meth:`to_dict`.

    A ``-0.0`` given for any of them is ``0.0`` (shown as ``0``, never ``-0``).

    Raises:
        ConfigError: A weight is negative or not finite, all weights are 0, the
            half-life is not a positive finite number, or a fusion option is invalid.
    """

    w_similarity: float = _default("weight_similarity")
    w_recency: float = _default("weight_recency")
    w_citation: float = _default("weight_citation")
    half_life_days: float = _default("recency_half_life_days")
    today: dt.date | None = field(default=None, compare=False)
    lexical_share: float = _default("weight_lexical")
    fusion: str = _default("fusion")
    rrf_k: int = _default("rrf_k")
    lexical_asked: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # each within the range of its setting: a query's option means what the setting
        # means (the CLI took --w-sim 5000 and --half-life 0.5, which GET /search or
        # LITPULSE_RECENCY_HALF_LIFE_DAYS refused)
        for name, (setting, shown) in _SETTING_OF.items():
            value = getattr(self, name)
            low, high = bounds(setting)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not (math.isfinite(value) and low <= value <= high)):
                raise ConfigError(f"{shown} must be {allowed(setting)}, got {value!r}")
            object.__setattr__(self, name, float(value) + 0.0)  # -0.0 + 0.0 is 0.0
        if self.w_similarity + self.w_recency + self.w_citation <= 0:
            raise ConfigError("w_similarity, w_recency, w_citation: at least one must be > 0")
        if self.today is not None and not isinstance(self.today, dt.date):
            raise ConfigError(f"today must be a date, got {self.today!r}")
        try:
            object.__setattr__(self, "fusion", str(Fusion(self.fusion)))
        except ValueError:
            raise ConfigError(f"fusion must be rrf or mix, got {self.fusion!r}") from None
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, int) or self.rrf_k < 1:
            raise ConfigError(f"rrf_k must be an integer >= 1, got {self.rrf_k!r}")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        weights: Mapping[str, float | None] | None = None,
        half_life_days: float | None = None,
        today: dt.date | None = None,
    ) -> ScoringOptions:
        """The settings' weights and half-life, with per-query overrides.

        Args:
            settings: Source of the defaults.
            weights: Overrides keyed ``similarity``, ``recency``, ``citation`` and
                ``lexical`` (the lexical share λ, 0..1); ``None`` values keep the default.
            half_life_days: Override of the half-life.
            today: The day ages are counted to (default today, UTC).

        Raises:
            ConfigError: An unknown weight name or an invalid value.
        """
        values = {
            "similarity": settings.weight_similarity,
            "recency": settings.weight_recency,
            "citation": settings.weight_citation,
            "lexical": settings.weight_lexical,
        }
        for key, value in (weights or {}).items():
            if key not in values:
                raise ConfigError(
                    f"unknown weight {key!r}; use similarity, recency, citation or lexical"
                )
            if value is not None:
                values[key] = value
        return cls(
            w_similarity=values["similarity"],
            w_recency=values["recency"],
            w_citation=values["citation"],
            half_life_days=(
                settings.recency_half_life_days if half_life_days is None else half_life_days
            ),
            today=today,
            lexical_share=values["lexical"],
            fusion=settings.fusion,
            rrf_k=settings.rrf_k,
            lexical_asked=(weights or {}).get("lexical") is not None,
        )

    def reference_day(self) -> dt.date:
        """The day ages are counted to."""
        return self.today or utcnow().date()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready weights, half-life and fusion (and the reference day).

        Every field is a number or text, so no deep copy (``asdict``) is needed: this runs
        once per candidate of every query.
        """
        d: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "lexical_asked"
        }
        d["today"] = iso(self.reference_day())
        return d


@dataclass(frozen=True)
class Score:
    """One article's score, its component values and the explanation."""

    score: float
    similarity: float
    recency: float
    citation: float
    explanation: dict[str, Any]
    lexical: float = 0.0


@dataclass(frozen=True)
class Relevance:
    """What the two indexes say of one candidate, fused by the search (see the module
    docstring): the inputs and the values of the similarity and lexical parts.

    Attributes:
        mode: The search mode (decides λ: hybrid the option's, semantic 0, lexical 1).
        similarity: The semantic part's value.
        lexical: The lexical part's value.
        cosine: The cosine similarity, or ``None`` (not computed, no vector).
        bm25: The BM25 score, or ``None`` (no query term matched, or not asked).
        similarity_rank: Rank by cosine among the candidates (1 = best), or ``None``.
        lexical_rank: Rank by BM25 among the candidates, or ``None``.
        terms: The matched terms ``{"term", "weight", "fields"}``, largest first.
        how: One line on how the values were made (fusion, normalisation).
    """

    mode: SearchMode
    similarity: float
    lexical: float
    cosine: float | None = None
    bm25: float | None = None
    similarity_rank: int | None = None
    lexical_rank: int | None = None
    terms: tuple[dict[str, Any], ...] = ()
    how: str = ""

    def share(self, options: ScoringOptions) -> float:
        """λ of this mode."""
        return lexical_share(self.mode, options)

    def parts(self, options: ScoringOptions) -> dict[str, tuple[float, float, dict[str, Any]]]:
        """``{name: (value, weight, info)}`` of the similarity and lexical components."""
        lam = self.share(options)
        cos = "not computed" if self.cosine is None else f"{self.cosine:.3f}"
        sim_rank = "" if self.similarity_rank is None else f", rank {self.similarity_rank}"
        lex_rank = "" if self.lexical_rank is None else f", rank {self.lexical_rank}"
        terms = ", ".join(f"{t['term']} {t['weight']:.2f}" for t in self.terms)
        bm25 = (
            "no query term in it"
            if self.bm25 is None
            else f"BM25 {self.bm25:.2f}{lex_rank}" + (f" ({terms})" if terms else "")
        )
        how = f"; {self.how}" if self.how else ""
        return {
            "similarity": (
                self.similarity,
                options.w_similarity * (1 - lam),
                {
                    "raw": self.cosine,
                    "rank": self.similarity_rank,
                    "source": "vector index",
                    "text": f"cosine similarity {cos}{sim_rank} -> {self.similarity:.3f}{how}",
                },
            ),
            "lexical": (
                self.lexical,
                options.w_similarity * lam,
                {
                    "raw": self.bm25,
                    "rank": self.lexical_rank,
                    "source": "lexical index",
                    "terms": [dict(t) for t in self.terms],
                    "text": f"{bm25} -> {self.lexical:.3f}{how}",
                },
            ),
        }


def lexical_share(mode: SearchMode, options: ScoringOptions) -> float:
    """λ of a search mode: hybrid the option's, semantic 0, lexical 1."""
    if mode == SearchMode.SEMANTIC:
        return 0.0
    if mode == SearchMode.LEXICAL:
        return 1.0
    return options.lexical_share


def _recency(best_date: Any, options: ScoringOptions) -> tuple[float, dt.date | None, int | None]:
    """(recency, date, age in days) of a ``best_date``."""
    day = _as_date(best_date)
    age = age_days(day, options.reference_day())
    value = NEUTRAL_RECENCY if age is None else recency_decay(age, options.half_life_days)
    return value, day, age


def recency_value(best_date: Any, options: ScoringOptions) -> tuple[float, dict[str, Any]]:
    """Recency in (0, 1] with its explanation; :data:`NEUTRAL_RECENCY` without a date."""
    value, day, age = _recency(best_date, options)
    if age is None:
        return NEUTRAL_RECENCY, {
            "raw": None,
            "age_days": None,
            "source": "missing",
            "text": f"no publication date known: neutral {NEUTRAL_RECENCY}",
        }
    if day is not None and day > options.reference_day():  # ahead of print, a wrong date
        return value, {
            "raw": iso(day),
            "age_days": 0,
            "source": "best_date",
            "text": f"published {day}, in the future: counted as today -> {value:.3f}",
        }
    return value, {
        "raw": iso(day),
        "age_days": age,
        "source": "best_date",
        "text": (
            f"published {day} ({age} days ago); half-life {options.half_life_days:g} days "
            f"-> 0.5^({age}/{options.half_life_days:g}) = {value:.3f}"
        ),
    }


def _as_date(value: Any) -> dt.date | None:
    """A date from a row value; unreadable text counts as no date."""
    try:
        return as_date(value)
    except ValueError:
        return None


def citation_value(row: Mapping[str, Any], options: ScoringOptions) -> tuple[float, dict[str, Any]]:
    """Citation impact in [0, 1) with its explanation; see the module docstring."""
    age = age_days(_as_date(row.get("best_date")), options.reference_day())
    impact = row_citation_impact(row, age)
    value = impact.value
    info: dict[str, Any] = {"raw": impact.raw, "source": impact.source}
    if impact.source == "icite_rcr":
        # iCite marks an RCR from too few years of citations provisional: it moves yet
        provisional = bool(row.get("icite_provisional"))
        info["provisional"] = provisional
        kind = "field- and year-normalised"
        info["text"] = (
            f"iCite relative citation ratio {impact.raw:g} "
            f"({'provisional, ' if provisional else ''}{kind}; 1 = field median) "
            f"-> {value:.3f}"
        )
    elif impact.source in ("icite_citations_per_year", "icite_citation_count"):
        young = age is not None and age < YOUNG_DAYS
        rate = (
            f"iCite {impact.raw:.2f} citations/year"
            if impact.source == "icite_citations_per_year"
            else f"{impact.raw:.2f} citations/year from iCite's count of "
            f"{row.get('citation_count')} over the article's age"
        )
        info["text"] = (
            f"{rate} (no RCR yet; {CPY_REFERENCE:g}/year is typical"
            f"{'; under a year old: at least neutral' if young else ''}) -> {value:.3f}"
        )
    elif impact.source == "in_corpus":
        info["rate_per_year"] = impact.rate_per_year
        times = "once" if impact.raw == 1 else f"{impact.raw:g} times"
        info["text"] = (
            f"cited {times} inside this corpus ({impact.rate_per_year:.2f}/year; "
            f"no iCite data) -> {value:.3f}"
        )
    else:
        info["text"] = f"no citation data yet: neutral {NEUTRAL_CITATION}"
    return value, info


def _places(weight: float) -> int:
    """Decimals a value is printed with beside ``weight``: enough that the printed
    products add up to the printed total (to its 4 decimals) whatever the weight."""
    return 5 + max(0, math.ceil(math.log10(weight))) if weight > 0 else 3


def score_article(
    similarity: float,
    row: Mapping[str, Any],
    options: ScoringOptions,
    relevance: Relevance | None = None,
) -> Score:
    """Score one candidate.

    Args:
        similarity: The cosine the index returned for it (used when ``relevance`` is
            ``None``: semantic search without a lexical index).
        row: Its article columns; read are ``best_date``, ``relative_citation_ratio``,
            ``citations_per_year``, ``citation_count`` and ``cited_by_in_corpus``
            (missing keys count as unknown).
        options: Weights, half-life and reference day.
        relevance: The fused similarity and lexical parts (search with a lexical index).

    Returns:
        The score with an explanation whose contributions sum to it.
    """
    sim = float(similarity)
    rec, rec_info = recency_value(row.get("best_date"), options)
    cit, cit_info = citation_value(row, options)
    parts: dict[str, tuple[float, float, dict[str, Any]]]
    if relevance is None:
        parts = {
            "similarity": (
                sim,
                options.w_similarity,
                {
                    "raw": sim,
                    "source": "index",
                    "text": f"cosine similarity to the query {sim:.3f}",
                },
            )
        }
    else:
        parts = relevance.parts(options)
    parts["recency"] = (rec, options.w_recency, rec_info)
    parts["citation"] = (cit, options.w_citation, cit_info)
    components: dict[str, Any] = {}
    total = 0.0
    for name, (value, weight, info) in parts.items():
        contribution = weight * value
        total += contribution
        components[name] = {
            **info,
            "value": value,
            "weight": weight,
            "contribution": contribution,
        }
    summary = " + ".join(
        f"{c['weight']:g}x{c['value']:.{_places(c['weight'])}f} ({name})"
        for name, c in components.items()
    )
    explanation = {
        "formula": FORMULA if relevance is None else HYBRID_FORMULA,
        "score": total,
        "components": components,
        "options": options.to_dict(),
        "text": f"{summary} = {total:.4f}",
    }
    if relevance is None:
        return Score(total, sim, rec, cit, explanation)
    explanation["mode"] = str(relevance.mode)
    explanation["lexical_share"] = relevance.share(options)
    # the similarity the score used (fused: the cosine normalised over the candidates),
    # as ``lexical`` is: the README's formula gives the score from a hit's own fields
    return Score(total, relevance.similarity, rec, cit, explanation, lexical=relevance.lexical)


def scores(
    similarity: Sequence[float] | np.ndarray,
    lexical: Sequence[float] | np.ndarray | None,
    rows: Sequence[Mapping[str, Any]],
    options: ScoringOptions,
    mode: SearchMode | None = None,
) -> np.ndarray:
    """The scores :func:`score_article` gives many candidates, without explanations.

    The same values and the same floating-point operations in the same order (weight ×
    value, summed similarity, lexical, recency, citation from 0.0), so each score equals
    ``score_article(...).score`` to the last bit: rank all candidates with this, explain
    only those shown.

    Args:
        similarity: Per candidate, the cosine (``mode`` ``None``) or the fused similarity
            part (``Relevance.similarity``).
        lexical: Per candidate, the lexical part (``Relevance.lexical``); ignored without
            ``mode``.
        rows: Their article columns, as for :func:`score_article`.
        options: Weights, half-life and reference day.
        mode: The search mode of the relevances, or ``None``: no relevance (the plain
            formula, as ``score_article(similarity, row, options)``).
    """
    import numpy as np

    rec = np.empty(len(rows), dtype=np.float64)
    cit = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        rec[i], _, age = _recency(row.get("best_date"), options)
        cit[i] = row_citation_impact(row, age).value
    parts: list[tuple[Any, float]]
    if mode is None:
        parts = [(similarity, options.w_similarity)]
    else:
        lam = lexical_share(mode, options)
        parts = [
            (similarity, options.w_similarity * (1 - lam)),
            (lexical, options.w_similarity * lam),
        ]
    parts += [(rec, options.w_recency), (cit, options.w_citation)]
    total = np.zeros(len(rows), dtype=np.float64)
    for values, weight in parts:
        total = total + weight * np.asarray(values, dtype=np.float64)
    return total
