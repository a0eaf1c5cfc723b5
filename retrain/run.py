"""One retraining round: mine pairs, train a LoRA adapter, evaluate, gate, register, promote.

Example:
    >>> report = retrain(settings, dry_run=True)  # doctest: +SKIP
    >>> report.status, report.pairs["counts"]  # doctest: +SKIP
    ('dry_run', {'title_abstract': 812, 'citation': 95, 'feedback': 3, 'replay': 227})
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litpulse.core.checksums import durable_rename
from litpulse.core.db import Lease, connect, mark_folder, store_id, take_lease
from litpulse.core.errors import BusyError, ConfigError
from litpulse.core.settings import Settings
from litpulse.core.states import ModelEvent, ModelStatus, RetrainOutcome
from ranking.embed import adapter_problem, adapters_dir, relocate_adapters, version_base_path
from retrain import registry
from retrain.anchors import LexicalSearch
from retrain.evaluate import GateDecision, HeldOut, evaluate_encoder, gate, write_report
from retrain.lora import LoraOptions, train
from retrain.pairs import PairSet, mine_pairs, prune_untrained

__all__ = ["LeasedReindex", "RetrainBusyError", "RetrainReport", "retrain", "evaluate_versions"]

logger = logging.getLogger(__name__)

#: Name of the lease that keeps two retrains from running at once.
LEASE = "retrain"


class RetrainBusyError(BusyError):
    """Another retrain holds the ``retrain`` lease: nothing was done (retry later)."""


@dataclass(frozen=True)
class LeasedReindex:
    """A promotion's re-index that runs under a lease taken *before* the model is switched
    (the application's :func:`litpulse.pipeline.planning.leased_reindex`).

    ``hold(settings)`` is entered before the switch: it takes the ``index-publish`` lease,
    or raises a :class:`~litpulse.core.errors.BusyError` while another process re-indexes
    (then nothing is switched: a switch undone after it failed on the lease would pull the
    model from under that re-index, and show readers a model without its index); it yields
    the re-index step, run under that lease.
    """

    hold: Callable[[Settings], AbstractContextManager[Callable[[Settings], Any]]]


#: The ``reindex`` of a round: a plain step (run after the switch: the retrain DAG's
#: deferring one), or one under a lease taken before it (:class:`LeasedReindex`).
Reindex = Callable[[Settings], Any] | LeasedReindex


@dataclass(frozen=True)
class RetrainReport:
    """What a retraining round did.

    ``status`` is a :class:`~litpulse.core.states.RetrainOutcome`: ``dry_run``,
    ``skipped``, ``promoted`` or ``rejected``.
    """

    status: RetrainOutcome
    version_id: str | None = None
    parent_id: str | None = None
    pairs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    reasons: tuple[str, ...] = ()
    report_paths: dict[str, str] = field(default_factory=dict)
    promotion: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["status"] = str(self.status)  # plain text for JSON, XCom and asset metadata
        d["reasons"] = list(self.reasons)
        return d

    def summary(self) -> list[str]:
        """Human-readable lines (the CLI prints them)."""
        lines = [f"status: {self.status}"]
        if self.version_id:
            lines.append(f"version: {self.version_id} (parent {self.parent_id or 'base'})")
        p = self.pairs
        if p:
            counts = ", ".join(f"{k} {v}" for k, v in p.get("counts", {}).items())
            lines.append(
                f"pairs: {p.get('pairs', 0)} ({counts}); {p.get('new_articles', 0)} new articles"
                f"; held out {p.get('heldout', {})}"
            )
            experts = p.get("feedback_experts") or {}
            if experts:
                lines.append("feedback used from: " + ", ".join(
                    f"{name} {n}" for name, n in experts.items()))
            if p.get("feedback_excluded"):
                lines.append(f"feedback excluded: {p['feedback_excluded']} judgement(s) sent "
                             "with revoked API tokens")
            lines.extend(_feedback_lines(p))
            if p.get("carried") or p.get("held_back"):
                lines.append(
                    f"carried: {p.get('carried', 0)} article(s) the last round held back "
                    f"trainable now; {p.get('held_back', 0)} held back for the next round"
                )
        if self.training:
            t = self.training
            budget = t.get("budget_seconds")
            within = f" (budget {budget:g} s)" if budget else ""
            lines.append(
                f"training: {t['steps']} steps in {t['seconds']:.1f} s{within} on "
                f"{t['device']}, loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}"
            )
        if self.metrics:
            for who in ("candidate", "active", "base"):
                m = self.metrics.get(who)
                if m:
                    lines.append(
                        f"{who}: fresh recall@10 {m['fresh']['recall@10']:.3f}, "
                        f"older recall@10 {m['older']['recall@10']:.3f}" + _queries_line(m)
                    )
        lines.extend(f"- {r}" for r in self.reasons)
        return lines


#: The judgements a round did not train on, by the pairs report's key: what each line says.
_FEEDBACK_UNTRAINED = (
    ("carried", "judgement(s) of articles held back from this round wait for the round "
                "that trains them"),
    ("held_out", "judgement(s) of articles of the older held-out set (never trained on)"),
    ("disputed", "judgement(s) of articles experts disagree on for the query (neither "
                 "positive nor negative)"),
    ("gone", "judgement(s) of articles retracted or deleted since (nothing to train)"),
    ("unpaired", "\"not relevant\" judgement(s) of queries no article was marked relevant "
                 "for"),
)


def _feedback_lines(p: dict[str, Any]) -> list[str]:
    """What became of the judgements the round did not train on (never silently)."""
    lines = [f"feedback {key.replace('_', ' ')}: {p[f'feedback_{key}']} {says}"
             for key, says in _FEEDBACK_UNTRAINED if p.get(f"feedback_{key}")]
    capped = p.get("feedback_capped") or {}
    if capped:
        lines.append("feedback capped (over one expert's share of the round's pairs, "
                     "their most recent judgements kept): " + ", ".join(
                         f"{name} {n}" for name, n in capped.items()) + " pair(s) left out")
    return lines


def _queries_line(m: dict[str, Any]) -> str:
    q = m.get("queries")
    if not q:
        return ""
    return f", queries recall@10 {q['recall@10']:.3f} MRR@10 {q['mrr@10']:.3f}"


def _embedder(settings: Settings, model_id: str, adapter_path: str | None, bar: Any) -> Any:
    from ranking.embed import ModelSpec, embed_texts, load_encoder

    encoder = load_encoder(
        ModelSpec(model_id, settings.model_path, adapter_path,
                  max_seq_length=settings.max_seq_length),
        settings, cache=False,
    )
    return lambda texts: embed_texts(encoder, texts, settings, bar=bar)


def evaluate_versions(
    settings: Settings,
    heldout: HeldOut,
    versions: dict[str, tuple[str, str | None]],
    *,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate several model versions on the same held-out sets.

    Args:
        settings: Device and sequence length (the serving ones).
        heldout: The held-out sets.
        versions: Role (``candidate``, ``active``, ``base``) → (model id, adapter path);
            roles sharing a model id are evaluated once.
        progress: A bar per model on stderr (documents/s and an ETA).
    """
    from tqdm.auto import tqdm

    done: dict[str, dict[str, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    for role, (model_id, adapter) in versions.items():
        if model_id not in done:
            with tqdm(total=heldout.texts(), desc=f"evaluate {role}", unit="doc",
                      disable=not progress) as bar:
                embed = _embedder(settings, model_id, adapter, bar)
                done[model_id] = evaluate_encoder(embed, heldout)
        out[role] = {**done[model_id], "model": model_id}
    return out


def retrain(
    settings: Settings,
    *,
    dry_run: bool = False,
    from_base: bool = False,
    progress: bool = False,
    options: LoraOptions | None = None,
    min_new_articles: int | None = None,
    pair_filter: Callable[[PairSet], PairSet] | None = None,
    promote_by: str = "gate",
    reindex: Reindex,
    mine_kwargs: dict[str, Any] | None = None,
    negatives: LexicalSearch | None = None,
) -> RetrainReport:
    """Run one retraining round.

    Args:
        settings: The settings (gate margins, seed, device, serving sequence length).
        dry_run: Mine and count the pairs, then stop; nothing is written or pruned (the
            old rejected versions a round would prune are named in the reasons).
        from_base: Start a fresh adapter on the base model from all articles, instead
            of continuing the active adapter on the articles since its window.
        progress: Show progress bars.
        options: LoRA and budget options (default :class:`LoraOptions` with the training
            budget ``settings.retrain_budget_s``).
        min_new_articles: Skip when fewer new articles arrived (the scheduled run passes
            ``settings.retrain_min_new_articles``).
        pair_filter: Transforms the mined pairs before training (experiments, tests).
        promote_by: Recorded as ``promoted_by`` when the gate promotes.
        reindex: The re-index step of a promotion (see :func:`retrain.registry.promote`),
            or a :class:`LeasedReindex` (`litpulse nightly`, `litpulse retrain`): its lease
            is taken before the model is switched.
        mine_kwargs: Extra arguments of :func:`retrain.pairs.mine_pairs`.
        negatives: The lexical ranker hard negatives come from (the application floor
            passes the published BM25 index's search); ``None``: none mined.

    Raises:
        RetrainBusyError: Another retrain holds the ``retrain`` lease (nothing was done).
        ConfigError: The active version cannot be continued or judged against: its adapter
            is missing or its weights changed, or it was trained on another base model
            than ``LITPULSE_MODEL`` (``from_base`` starts afresh).
        BudgetError: Training would exceed the options' time or memory budget.
        LeaseLostError: Another retrain took the ``retrain`` lease over meanwhile; this
            one stopped before registering or promoting anything.
    """
    started = time.perf_counter()
    options = options or LoraOptions(max_seconds=settings.retrain_budget_s)
    engine = connect(settings)
    lease = take_lease(engine, LEASE, lambda who: RetrainBusyError(
        f"another retrain ({who}) is running; nothing was done: run again when it is done"
    ))  # fmt: skip
    try:
        would_prune: list[str] = []
        if dry_run:  # a dry run writes nothing: it only says what a round would prune
            would_prune = registry.prune_rejected(settings, dry_run=True, engine=engine)
        else:
            _settle_cut_rounds(settings, engine)  # candidates of rounds cut short
            registry.prune_adapters(settings, engine=engine)  # what killed rounds left
            registry.prune_rejected(settings, engine=engine)  # old rejected candidates
            prune_untrained(engine)  # held-back records no round will read
        report = _retrain(
            settings, engine, options, lease, dry_run=dry_run, from_base=from_base,
            progress=progress,
            min_new_articles=min_new_articles, pair_filter=pair_filter, promote_by=promote_by,
            reindex=reindex, mine_kwargs={"lexical": negatives, **(mine_kwargs or {})},
            started=started,
        )
        if would_prune:
            report = dataclasses.replace(report, reasons=(*report.reasons, (
                f"a round would prune the folders of {len(would_prune)} old rejected "
                f"version(s): {', '.join(would_prune)}")))
        return report
    finally:
        lease.release()


def _retrain(
    settings: Settings,
    engine: Any,
    options: LoraOptions,
    lease: Lease,
    *,
    dry_run: bool,
    from_base: bool,
    progress: bool,
    min_new_articles: int | None,
    pair_filter: Callable[[PairSet], PairSet] | None,
    promote_by: str,
    reindex: Reindex,
    mine_kwargs: dict[str, Any],
    started: float,
) -> RetrainReport:
    """The round under the lease: mine, then stop early or train, evaluate and decide."""
    relocate_adapters(settings, engine)  # a data directory moved: its adapters found there
    active = registry.active_version(settings, engine=engine)
    judged_against = _usable_active(settings, active, from_base=from_base)
    since = None if (from_base or active is None) else active.window_end
    max_pairs = options.max_steps * options.batch_size
    pairs = mine_pairs(settings, since=since, max_pairs=max_pairs, engine=engine,
                       **{"record": not dry_run, **mine_kwargs})  # a dry run writes nothing
    if pair_filter is not None:
        pairs = pair_filter(pairs)
    parent = None if from_base or active is None else active.id

    early = _early_stop(pairs, dry_run=dry_run, min_new_articles=min_new_articles,
                        engine=None if from_base else engine)  # fmt: skip
    if early is not None:
        outcome, reason = early
        return RetrainReport(
            outcome, parent_id=parent, pairs=pairs.to_dict(), reasons=(reason,),
            seconds=round(time.perf_counter() - started, 3),
        )
    init_adapter = _init_adapter(active) if parent is not None else None
    version_id, final, training = _train_candidate(
        settings, pairs, options, init_adapter=init_adapter, progress=progress
    )
    roles: dict[str, tuple[str, str | None]] = {"candidate": (version_id, str(final))}
    roles["active"] = (
        (judged_against.id, judged_against.adapter_path)
        if judged_against is not None else (registry.BASE_ID, None)
    )  # fmt: skip
    roles["base"] = (registry.BASE_ID, None)
    metrics = evaluate_versions(settings, pairs.heldout, roles, progress=progress)
    decision = gate(settings, metrics["candidate"], metrics["active"])
    metrics_doc = {**metrics, "heldout": pairs.heldout.to_dict(), "gate": decision.to_dict()}
    options_doc = options.to_dict()
    if init_adapter:
        options_doc["continued_from"] = parent
    lease.check()  # a retrain whose lease was taken over registers nothing
    failed = "; ".join(decision.reasons) if not decision.passed else None
    registry.register(  # with the gate's outcome: a round cut after this leaves it decided
        settings,
        id=version_id,
        adapter_path=str(final),
        adapter_sha256=training["sha256"],
        parent_id=parent,
        window_start=pairs.window_start,
        window_end=pairs.window_end,
        pair_counts={**pairs.counts, "hard_negatives": pairs.hard_negatives,
                     "feedback_experts": dict(pairs.feedback_experts),
                     "feedback_excluded": pairs.feedback_excluded,
                     "feedback_carried": pairs.feedback_carried,
                     "feedback_held_out": pairs.feedback_held_out,
                     "feedback_disputed": pairs.feedback_disputed,
                     "feedback_gone": pairs.feedback_gone,
                     "feedback_unpaired": pairs.feedback_unpaired,
                     "feedback_capped": dict(pairs.feedback_capped),
                     "carried": pairs.carried, "held_back": pairs.held_back},
        options=options_doc,
        metrics=metrics_doc,
        training={**training, "new_articles": pairs.new_articles},
        status=ModelStatus.CANDIDATE if failed is None else ModelStatus.REJECTED,
        reason=failed,
        engine=engine,
    )
    paths = _write_report(
        settings, engine, version_id,
        {"version": version_id, "parent": parent, "pairs": pairs.to_dict(),
         "training": training, "metrics": metrics, "gate": decision.to_dict()},
    )
    lease.check()
    status, reasons, promotion = _decide(
        settings, engine, version_id, decision, promote_by=promote_by, reindex=reindex,
        compared_with=active.id if active is not None else None,
    )
    return RetrainReport(
        status,
        version_id=version_id,
        parent_id=parent,
        pairs=pairs.to_dict(),
        training=training,
        metrics=metrics_doc,
        gate=decision.to_dict(),
        reasons=reasons,
        report_paths=paths,
        promotion=promotion,
        seconds=round(time.perf_counter() - started, 3),
    )


def _early_stop(
    pairs: PairSet, *, dry_run: bool, min_new_articles: int | None, engine: Any = None
) -> tuple[RetrainOutcome, str] | None:
    """Why the round stops after mining (outcome and reason); ``None`` to train.

    With ``engine``, the new articles are also counted from the last training from the
    model in use (:func:`retrain.registry.articles_since_training`): a round the gate
    rejected leaves its articles counted, so the next is not run on the same data.
    """
    if min_new_articles is not None:
        new = pairs.new_articles
        if engine is not None:
            new = min(new, registry.articles_since_training(engine)[0])
        if new < min_new_articles:
            return RetrainOutcome.SKIPPED, (
                f"{new} new articles since the last training, fewer than {min_new_articles}"
            )
    if dry_run:
        return RetrainOutcome.DRY_RUN, "dry run: pairs mined, nothing trained"
    if len(pairs.pairs) < 2:
        return RetrainOutcome.SKIPPED, "fewer than two training pairs"
    if not pairs.heldout.fresh:
        return RetrainOutcome.SKIPPED, "no fresh held-out set to judge a candidate on"
    if not pairs.heldout.older:
        return RetrainOutcome.SKIPPED, (
            "no older held-out set to judge a candidate's effect on older literature on"
        )
    return None


def _init_adapter(active: registry.ModelVersion | None) -> str | None:
    """The adapter a continued training starts from: the active version's (checked by
    :func:`_usable_active` before mining)."""
    if active is None or not active.adapter_path:
        return None
    return active.adapter_path


def _usable_active(
    settings: Settings, active: registry.ModelVersion | None, *, from_base: bool
) -> registry.ModelVersion | None:
    """The version a candidate is judged against: the active one, when it can serve as it
    was registered (its adapter there, its weights unchanged, on the configured base
    model); else ``None`` (the base model) when training ``from_base``.

    Raises:
        ConfigError: A continued training (not ``from_base``) of an active version that
            cannot serve so; the message names the ways out.
    """
    if active is None:
        return None
    problem = adapter_problem(active.adapter_path, active.adapter_sha256) if (
        active.adapter_path) else None
    if problem is None and version_base_path(settings, active.base_model) != settings.model_path:
        problem = (f"it was trained on the base model {active.base_model!r}, and "
                   f"LITPULSE_MODEL is now {registry.base_model_name(settings)!r}")
    if problem is None:
        return active
    if from_base:
        logger.warning("active model %s: %s; the candidate is judged against the base "
                       "model", active.id, problem)
        return None
    raise ConfigError(
        f"the active model {active.id} cannot be continued: {problem}. Restore it, roll "
        "back (`litpulse models rollback`), or train a new adapter on the base model "
        "(`litpulse retrain --from-base`)"
    )


def _train_candidate(
    settings: Settings,
    pairs: PairSet,
    options: LoraOptions,
    *,
    init_adapter: str | None,
    progress: bool,
) -> tuple[str, Path, dict[str, Any]]:
    """Train an adapter into ``adapters/<version id>`` (a temporary folder until it is done).

    Returns:
        The new version id, its adapter folder and the training statistics.

    Raises:
        StorageError: The adapter could not be written (the disk full): its temporary
            folder is removed, nothing is registered, the active model stays.
    """
    adapters = adapters_dir(settings)
    tmp = adapters / f".tmp-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir(parents=True)
        mark_folder(tmp, store_id(connect(settings)))  # this store may prune it if killed
        result = train(
            settings, pairs.pairs, options, tmp, init_adapter=init_adapter, progress=progress
        )
        version_id = registry.free_version_id(settings, result.sha256)
        final = adapters / version_id
        durable_rename(tmp, final)  # a crash never leaves a registered, empty adapter
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    training = {**result.to_dict(), "output_dir": str(final),
                "weights_file": str(final / Path(result.weights_file).name)}
    return version_id, final, training


def _settle_cut_rounds(settings: Settings, engine: Any) -> list[str]:
    """Reject the candidates rounds cut short left (killed between registering and the
    gate's decision): the caller holds the ``retrain`` lease, so no such round is live.

    A candidate a round registered (its gate's decision in its metrics) stays only when
    a later event kept it: it passed but found the index busy (``not_promoted``: a person
    promotes it), or a person reopened it. Candidates registered otherwise are left alone.

    Returns:
        The ids rejected.
    """
    settled = []
    for version in registry.list_models(settings, engine=engine):
        gate_doc = (version.metrics or {}).get("gate")
        if version.status is not ModelStatus.CANDIDATE or not isinstance(gate_doc, dict):
            continue
        if any(e.get("event") != ModelEvent.REGISTERED for e in version.events):
            continue  # kept on purpose (not promoted: the index was busy; reopened)
        if gate_doc.get("passed") is True:
            why = (f"its round was cut short before the gate's decision was applied (it "
                   f"passed; `litpulse models promote {version.id}` promotes it)")
        else:
            why = ("its round was cut short before the gate's decision was applied: "
                   + "; ".join(str(r) for r in gate_doc.get("reasons") or ["failed the gate"]))
        registry.set_status(settings, version.id, ModelStatus.REJECTED, reason=why,
                            engine=engine)  # fmt: skip
        logger.warning("rejected candidate %s: %s", version.id, why)
        settled.append(version.id)
    return settled


def _write_report(
    settings: Settings, engine: Any, version_id: str, report_doc: dict[str, Any]
) -> dict[str, str]:
    """Write the evaluation report of ``version_id``, beside the history of the others."""
    history = [
        {"id": v.id, "metrics": v.metrics}
        for v in registry.list_models(settings, engine=engine)
        if v.id != version_id
    ]
    return write_report(settings, version_id, report_doc, history)


def _decide(
    settings: Settings,
    engine: Any,
    version_id: str,
    decision: GateDecision,
    *,
    promote_by: str,
    reindex: Reindex,
    compared_with: str | None,
) -> tuple[RetrainOutcome, tuple[str, ...], dict[str, Any] | None]:
    """Promote the candidate when the gate passed, else reject it.

    The gate compared the candidate with ``compared_with`` (the version active when the
    round began; ``None``: the base model). When a person promoted or rolled back
    meanwhile, another version is active: the candidate is not promoted over it (it was
    never compared with it, and a rollback would be silently undone) but rejected with
    that reason (a person may still promote it).

    Returns:
        The outcome, the reasons (the gate's and what was done) and the promotion report.
    """
    reasons = list(decision.reasons)
    by_hand = f"{version_id} was promoted by hand during the round; it stays active"
    now = registry.active_version(settings, engine=engine)
    if now is not None and now.id == version_id:  # a person promoted it, as the round ended
        reasons.append(by_hand)
        return RetrainOutcome.PROMOTED, tuple(reasons), None
    if decision.passed:
        with ExitStack() as stack:
            step: Callable[[Settings], Any]
            if not isinstance(reindex, LeasedReindex):
                step = reindex
            else:
                try:  # before the switch: see LeasedReindex
                    step = stack.enter_context(reindex.hold(settings))
                except BusyError as exc:
                    registry.record_event(  # kept as a candidate by the next round
                        settings, version_id, ModelEvent.NOT_PROMOTED,
                        reason=f"passed its gate; not promoted, the index was busy: {exc}",
                        engine=engine,
                    )
                    raise type(exc)(
                        f"{version_id} passed its gate but was not promoted, nothing was "
                        f"switched: {exc}; it stays a candidate (`litpulse models promote "
                        f"{version_id}` promotes it once that is done)"
                    ) from exc
            try:  # the active model checked under the switch's lock, not read before it
                promotion = registry.promote(
                    settings, version_id, by=promote_by, reason="; ".join(decision.reasons),
                    reindex=step, expected_active=compared_with, engine=engine,
                )
            except registry.ActiveChangedError as exc:
                why = (
                    f"the active model changed during the round ({compared_with or 'base'} "
                    f"-> {exc.active or 'base'}): {version_id} was compared with "
                    f"{compared_with or 'base'} only, so it is not promoted (`litpulse "
                    f"models promote {version_id}` overrides)"
                )
                registry.set_status(settings, version_id, ModelStatus.REJECTED, reason=why,
                                    engine=engine)  # fmt: skip
                reasons.append(why)
                return RetrainOutcome.REJECTED, tuple(reasons), None
        if not promotion.get("changed", True):
            reasons.append(by_hand)
            return RetrainOutcome.PROMOTED, tuple(reasons), None
        reasons.append(f"promoted {version_id}; index rebuilt for it")
        return RetrainOutcome.PROMOTED, tuple(reasons), promotion
    # registered rejected already, with the gate's reasons (see _retrain)
    reasons.append(f"rejected {version_id}; the active model stays")
    return RetrainOutcome.REJECTED, tuple(reasons), None
