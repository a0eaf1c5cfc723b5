"""The history of the model versions: lineage, training data, metrics and the gate's reasons.

One :class:`ModelVersionReport` per row of ``model_versions``, oldest first, read from what
each retrain recorded (:func:`retrain.registry.register`): the parent it continued (or the
base model), the pairs it trained on, what its training did, its metrics on its own
held-out sets beside the parent's and the base model's on the same sets, the gate's
decision and every later change of status (promotion, retirement, rollback).

Metrics are read generically: every held-out set (``fresh``, ``older``, any other the
evaluation records) and every numeric metric in it (``recall@10``, ``mrr@10`` …), so a
metric added to the evaluation shows up here without a change.

Example:
    >>> for v in model_history(settings):  # doctest: +SKIP
    ...     print(v.id, v.parent_id or "base", v.summary)
    m-20250101120000-3fa2c1 base promoted by gate
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from litpulse.core.settings import Settings
from litpulse.core.states import ModelEvent, ModelStatus
from litpulse.core.timeutil import iso
from retrain import registry

__all__ = [
    "Comparison",
    "VersionEvent",
    "ModelVersionReport",
    "model_history",
    "history_dict",
    "metric_table",
]

#: Per-set counts the evaluation records beside the metrics; not metrics themselves.
COUNT_KEYS = frozenset({"queries"})
#: Keys of ``pair_counts`` that are not pair kinds.
NOT_KINDS = frozenset({
    "hard_negatives", "feedback_experts", "feedback_excluded", "feedback_carried",
    "feedback_held_out", "feedback_disputed", "feedback_capped", "carried", "held_back",
    "feedback_gone", "feedback_unpaired",
})
#: Keys of the training record that are local paths (left out of the report).
PATH_KEYS = frozenset({"output_dir", "weights_file"})

Metrics = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Comparison:
    """A version's metrics against another model's, on the version's own held-out sets.

    ``relation`` is ``parent`` (the version it continued, or the base model for a first
    adapter), ``base`` (the base model), or ``active`` (the model the gate judged it
    against, only when that was not its parent: a ``--from-base`` retrain while an
    adapter was active).
    """

    relation: str
    against: str
    theirs: Metrics
    delta: Metrics


@dataclass(frozen=True)
class VersionEvent:
    """One change of a version's status: when, what, by whom, why."""

    at: str | None
    event: str
    by: str | None
    reason: str | None


@dataclass(frozen=True)
class ModelVersionReport:
    """Everything recorded about one model version, ready to show."""

    id: str
    status: ModelStatus
    base_model: str
    #: the version it continued; ``None``: trained on the base model
    parent_id: str | None
    #: versions continued from this one, oldest first
    children: tuple[str, ...]
    #: adapters between the base model and this version, this one included
    generation: int
    created_at: dt.datetime
    promoted_at: dt.datetime | None
    promoted_by: str | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    #: pair kind (title_abstract, citation, feedback, replay …) → pairs
    pairs: dict[str, int]
    #: expert → feedback judgements used
    feedback_experts: dict[str, int]
    #: judgements of the window left out because their API token was revoked
    feedback_excluded: int
    hard_negatives: int
    #: held-out set → queries (and distractors)
    heldout: dict[str, int]
    #: steps, epochs, seconds, losses, device … (empty for a version trained before
    #: litpulse recorded it)
    training: dict[str, Any]
    #: held-out set → metric → this version's value
    metrics: Metrics
    comparisons: tuple[Comparison, ...]
    gate_passed: bool | None
    gate_reasons: tuple[str, ...]
    events: tuple[VersionEvent, ...]
    #: what became of it, in a few words ("rejected by the gate", "rolled back by ann")
    summary: str
    reason: str | None
    #: judgements of articles held back from the round: they waited for a later one
    feedback_carried: int = 0
    #: judgements of articles of the older held-out set (never trained on)
    feedback_held_out: int = 0
    #: judgements of articles experts disagreed on for the query (not trained on)
    feedback_disputed: int = 0
    #: judgements of articles retracted or deleted since (nothing to train)
    feedback_gone: int = 0
    #: "not relevant" judgements of queries no article was marked relevant for (no pair)
    feedback_unpaired: int = 0
    #: expert → feedback pairs left out over one expert's share of the round's pairs
    feedback_capped: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def pairs_total(self) -> int:
        return sum(self.pairs.values())

    def comparison(self, relation: str) -> Comparison | None:
        """The comparison of that relation (``parent``, ``base``, ``active``), if any."""
        return next((c for c in self.comparisons if c.relation == relation), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a value that is no finite number (a diverged run's NaN loss) is
        ``null``, which every JSON reader takes (NaN is not JSON)."""
        d = {k: registry.finite(iso(v)) for k, v in dataclasses.asdict(self).items()}
        d["status"] = str(self.status)
        d["pairs_total"] = self.pairs_total
        return d


def metric_table(role: Mapping[str, Any] | None) -> Metrics:
    """Held-out set → metric → value, from one role of a stored evaluation.

    Every mapping-valued entry is a held-out set; every numeric entry in it but the
    counts (``queries``) is a metric.
    """
    out: Metrics = {}
    for name, values in (role or {}).items():
        if not isinstance(values, Mapping) or values.get("queries") == 0:
            continue  # a held-out set with no item was not measured: its 0.0 is no value
        row = {
            k: float(v)
            for k, v in values.items()
            if k not in COUNT_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if row:
            out[str(name)] = row
    return out


def _delta(mine: Metrics, theirs: Metrics) -> Metrics:
    return {
        s: {m: round(v - theirs[s][m], 6) for m, v in row.items() if m in theirs.get(s, {})}
        for s, row in mine.items()
        if s in theirs
    }


def _comparisons(v: registry.ModelVersion, mine: Metrics) -> tuple[Comparison, ...]:
    stored = v.metrics or {}
    active = stored.get("active") or {}
    judged_against = str(active.get("model") or registry.BASE_ID)
    out: list[Comparison] = []

    def add(relation: str, against: str, role: Mapping[str, Any] | None) -> None:
        theirs = metric_table(role)
        if theirs:
            out.append(Comparison(relation, against, theirs, _delta(mine, theirs)))

    parent = v.parent_id or registry.BASE_ID
    if parent == judged_against:
        add("parent", parent, active)
    elif parent == registry.BASE_ID:
        add("parent", parent, stored.get("base"))
        add("active", judged_against, active)
    else:  # never recorded by retrain: the parent was evaluated under another role
        add("active", judged_against, active)
    add("base", registry.BASE_ID, stored.get("base"))
    return tuple(out)


def _heldout(v: registry.ModelVersion) -> dict[str, int]:
    stored = v.metrics or {}
    counts = {
        str(k): int(n) for k, n in (stored.get("heldout") or {}).items() if isinstance(n, int)
    }
    if not counts:  # older rows: the query counts of the candidate's sets
        for name, values in (stored.get("candidate") or {}).items():
            if isinstance(values, Mapping) and isinstance(values.get("queries"), int):
                counts[str(name)] = int(values["queries"])
    return counts


def _training(v: registry.ModelVersion) -> dict[str, Any]:
    t = {k: val for k, val in (v.training or {}).items() if k not in PATH_KEYS}
    steps, pairs = t.get("steps"), t.get("pairs")
    batch = (v.options or {}).get("batch_size")
    if isinstance(steps, int) and isinstance(pairs, int) and isinstance(batch, int) and pairs:
        t["epochs"] = round(steps * batch / pairs, 3)
    return t


def _events(v: registry.ModelVersion) -> tuple[VersionEvent, ...]:
    if v.events:
        return tuple(
            VersionEvent(e.get("at"), str(e.get("event")), e.get("by"), e.get("reason"))
            for e in v.events
        )
    # a row written before events were recorded: what its columns still tell
    out = [VersionEvent(iso(v.created_at), str(ModelEvent.REGISTERED), None, None)]
    if v.promoted_at is not None:
        out.append(VersionEvent(iso(v.promoted_at), str(ModelEvent.PROMOTED), v.promoted_by, None))
        if v.status is ModelStatus.REJECTED:
            out.append(VersionEvent(None, str(ModelEvent.ROLLED_BACK), None, v.reason))
    elif v.status is ModelStatus.REJECTED:
        out.append(VersionEvent(None, str(ModelEvent.REJECTED), None, v.reason))
    return tuple(out)


def _summary(
    v: registry.ModelVersion, events: Sequence[VersionEvent], gate_passed: bool | None
) -> str:
    last = next((e for e in reversed(events) if e.event != ModelEvent.REGISTERED), None)
    by = f" by {last.by}" if last is not None and last.by else ""
    if v.status is ModelStatus.ACTIVE:
        what = "promoted" if last is None else str(last.event).replace("_", " ")
        return f"active ({what}{by})"
    if v.status is ModelStatus.RETIRED:
        return f"retired ({last.reason if last and last.reason else 'replaced'})"
    if v.status is ModelStatus.CANDIDATE:
        return "candidate (waiting for the gate or a person)"
    if any(e.event == ModelEvent.ROLLED_BACK for e in events):
        rolled = next(e for e in reversed(events) if e.event == ModelEvent.ROLLED_BACK)
        return f"rolled back{f' by {rolled.by}' if rolled.by else ''}"
    if gate_passed is False and not by:
        return "rejected by the gate"
    return f"rejected{by}"


def _generation(id: str, parents: Mapping[str, str | None]) -> int:
    n, seen, cur = 0, set(), id
    while cur is not None and cur in parents and cur not in seen:
        seen.add(cur)
        n += 1
        cur = parents[cur]  # type: ignore[assignment]
    return n


def model_history(settings: Settings, *, engine: Engine | None = None) -> list[ModelVersionReport]:
    """Every model version, oldest first, with lineage, data, metrics and decisions."""
    versions = registry.list_models(settings, engine=engine)
    parents = {v.id: v.parent_id for v in versions}
    children: dict[str, list[str]] = {}
    for v in versions:
        if v.parent_id is not None:
            children.setdefault(v.parent_id, []).append(v.id)
    out = []
    for v in versions:
        mine = metric_table((v.metrics or {}).get("candidate"))
        gate = (v.metrics or {}).get("gate") or {}
        passed = gate.get("passed")
        events = _events(v)
        counts = v.pair_counts or {}
        out.append(
            ModelVersionReport(
                id=v.id,
                status=v.status,
                base_model=v.base_model,
                parent_id=v.parent_id,
                children=tuple(children.get(v.id, ())),
                generation=_generation(v.id, parents),
                created_at=v.created_at,
                promoted_at=v.promoted_at,
                promoted_by=v.promoted_by,
                window_start=v.window_start,
                window_end=v.window_end,
                pairs={
                    str(k): int(n)
                    for k, n in counts.items()
                    if k not in NOT_KINDS and isinstance(n, int)
                },
                feedback_experts=dict(counts.get("feedback_experts") or {}),
                feedback_excluded=int(counts.get("feedback_excluded") or 0),
                hard_negatives=int(counts.get("hard_negatives") or 0),
                heldout=_heldout(v),
                training=_training(v),
                metrics=mine,
                comparisons=_comparisons(v, mine),
                gate_passed=passed if isinstance(passed, bool) else None,
                gate_reasons=tuple(str(r) for r in gate.get("reasons") or ()),
                events=events,
                summary=_summary(v, events, passed if isinstance(passed, bool) else None),
                reason=v.reason,
                feedback_carried=int(counts.get("feedback_carried") or 0),
                feedback_held_out=int(counts.get("feedback_held_out") or 0),
                feedback_disputed=int(counts.get("feedback_disputed") or 0),
                feedback_gone=int(counts.get("feedback_gone") or 0),
                feedback_unpaired=int(counts.get("feedback_unpaired") or 0),
                feedback_capped=dict(counts.get("feedback_capped") or {}),
            )
        )
    return out


def history_dict(history: Sequence[ModelVersionReport]) -> dict[str, Any]:
    """The JSON document of ``litpulse models report --json`` and ``GET /models``."""
    active = next((v.id for v in history if v.status is ModelStatus.ACTIVE), registry.BASE_ID)
    return {"active": active, "count": len(history), "versions": [v.to_dict() for v in history]}
