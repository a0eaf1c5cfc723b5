"""``litpulse models``, ``litpulse retrain`` and ``litpulse feedback``."""

from __future__ import annotations

import argparse
import functools
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litpulse.app.cli._common import (
    add_json,
    command,
    command_group,
    float_arg,
    kv,
    path_arg,
    pmid_arg,
    print_json,
    print_table,
    show_progress,
)
from litpulse.core.settings import Settings, bounds
from litpulse.core.timeutil import iso

if TYPE_CHECKING:
    from litpulse.core.db import Lease


def register(sub: Any) -> None:
    actions = command_group(
        sub, "models",
        help="list, inspect, promote or roll back model versions",
        description=(
            "Model versions are the base model plus a LoRA adapter trained by `retrain`. "
            "Promoting one re-embeds the corpus and publishes a new index for it; until "
            "that index is published, searches keep the old model with the old index."
        ),
    )
    command(actions, "list", run_list, help="every model version, oldest first", json="print JSON")
    sh = command(actions, "show", run_show,
                 help="one model version with its lineage and metrics")
    sh.add_argument("id", help="model version id")
    add_json(sh)
    rp = command(
        actions, "report", run_report,
        help="every version's lineage, training pairs, metrics and the gate's reasons",
        description=(
            "The history of the model versions, oldest first: the lineage from the base "
            "model, the pairs each version trained on, its metrics on its own held-out "
            "sets against its parent and the base model, the gate's decision and reasons, "
            "promotions and rollbacks. The same as the /models page."
        ),
    )
    rp.add_argument("--plot", metavar="FILE", default=None, type=path_arg,
                    help="also write the plot of the metrics over versions (PNG) to FILE")
    add_json(rp)
    pr = command(actions, "promote", run_promote,
                 help="make a version active and re-index for it")
    pr.add_argument("id", help="model version id")
    pr.add_argument("--by", default=None, help="who promotes (default: the login name)")
    pr.add_argument("--reason", default=None, help="why (kept on the version)")
    add_json(pr)
    pn = command(
        actions, "prune", run_prune,
        help="remove the adapters and reports of old versions the gate rejected",
        description=(
            "Remove the adapter and report folders of the versions the gate rejected that "
            "never served, registered more than DAYS days ago (default "
            "LITPULSE_KEEP_REJECTED_DAYS; every retrain does this too). Their rows and "
            "history stay (`models list`, `models report`); versions that ever served are "
            "kept for rollbacks."
        ),
    )
    pn.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                    help="age in days (default LITPULSE_KEEP_REJECTED_DAYS; 0: all)")
    pn.add_argument("--dry-run", action="store_true", help="only list what would go")
    add_json(pn)
    rb = command(
        actions, "rollback", run_rollback,
        help="re-activate the previous version (or the base model) and re-index",
    )
    rb.add_argument("--by", default=None, help="who rolls back (default: the login name)")
    rb.add_argument("--reason", default=None, help="why (kept on the rolled-back version)")
    rb.add_argument(
        "--further", action="store_true",
        help="roll back one more step even when the last rollback's re-index is unfinished "
        "(by default that re-index is finished instead)",
    )
    add_json(rb)

    r = command(
        sub, "retrain", run_retrain,
        help="fine-tune a LoRA adapter on new literature; promote it if it passes the gate",
        description=(
            "Mine pairs from the articles ingested since the active model was trained "
            "(title->abstract, citing->cited, expert feedback, plus a replay share of older "
            "pairs), train a LoRA adapter, evaluate it on held-out fresh and older articles "
            "against the active and base models, and promote it when it beats the active "
            "model on fresh recall@10 by LITPULSE_GATE_FRESH_MARGIN while losing at most "
            "LITPULSE_GATE_OLDER_TOLERANCE on older."
        ),
    )
    r.add_argument("--dry-run", action="store_true", help="mine and count pairs only")
    r.add_argument(
        "--from-base", action="store_true",
        help="start a fresh adapter on the base model from all articles",
    )
    r.add_argument("--steps", type=int, default=None,
                   help="most training steps (a cap: the time budget plans how many fit)")
    r.add_argument("--batch-size", type=int, default=None, help="pairs per step")
    r.add_argument("--max-seconds", type=float_arg(*bounds("retrain_budget_s")), default=None,
                   help="training budget, in seconds (default LITPULSE_RETRAIN_BUDGET_S)")
    add_json(r, "print the report as JSON")

    f = command(
        sub, "feedback", run_feedback,
        help="record whether an article is relevant to a query (used by retrain)",
    )
    f.add_argument("--query", required=True, help="the search query")
    f.add_argument("--pmid", required=True, type=pmid_arg, help="the article")
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--relevant", dest="relevant", action="store_true", help="it is relevant")
    g.add_argument("--not-relevant", dest="relevant", action="store_false", help="it is not")
    f.add_argument("--user", required=True, help="who judges")
    add_json(f)


def _who(value: str | None) -> str:
    if value:
        return value
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def _metric(v: Any, name: str) -> str:
    try:
        return f"{v.metrics['candidate'][name]['recall@10']:.3f}"
    except (KeyError, TypeError):
        return ""


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from retrain.registry import list_models
    from retrain.report import NOT_KINDS

    models = list_models(settings)
    if args.json:
        print_json([m.to_dict() for m in models])
        return 0
    if not models:
        print("no model versions: the base model is in use")
        return 0
    print_table(
        [[m.id, m.status, m.parent_id or "base", sum(
            v for k, v in m.pair_counts.items() if k not in NOT_KINDS and isinstance(v, int)
        ), _metric(m, "fresh"), _metric(m, "older"), m.promoted_by or "",
          m.created_at.strftime("%Y-%m-%d %H:%M")] for m in models],
        ["id", "status", "parent", "pairs", "fresh_r@10", "older_r@10", "promoted_by", "created"],
    )
    return 0


def run_prune(args: argparse.Namespace, settings: Settings) -> int:
    from retrain.registry import prune_rejected

    pruned = prune_rejected(settings, older_than_days=args.older_than, dry_run=args.dry_run)
    if args.json:
        print_json({"pruned": pruned, "dry_run": args.dry_run})
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for version in pruned:
        print(f"{verb} the adapter and report of {version}")
    if not pruned:
        print("no rejected version to prune", file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    from retrain.registry import get_model

    m = get_model(settings, args.id)
    if args.json:
        print_json(m.to_dict())
        return 0
    d = m.to_dict()
    kv((k, d[k]) for k in (
        "id", "status", "base_model", "adapter_path", "adapter_sha256", "parent_id",
        "window_start", "window_end", "pair_counts", "promoted_by", "promoted_at",
        "created_at", "reason",
    ))
    for who in ("candidate", "active", "base"):
        mm = m.metrics.get(who)
        if mm:
            print(f"{who:9}  fresh {mm['fresh']}  older {mm['older']}")
    return 0


def _lineage(history: list[Any]) -> list[str]:
    """The family tree from the base model, one version a line."""
    by_parent: dict[str | None, list[Any]] = {}
    for v in history:
        by_parent.setdefault(v.parent_id, []).append(v)
    known = {v.id for v in history}
    lines = [f"base ({history[0].base_model})" if history else "base"]

    def walk(parent: str | None, indent: str) -> None:
        kids = by_parent.get(parent, [])
        if parent is None:  # versions whose parent row is gone hang from the base too
            kids = kids + [v for v in history if v.parent_id and v.parent_id not in known]
        for i, v in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{indent}{'└─' if last else '├─'} {v.id}  {v.summary}")
            walk(v.id, indent + ("   " if last else "│  "))

    walk(None, "")
    return lines


def _deltas(v: Any, heldout: str, metric: str) -> str:
    parts = []
    for c in v.comparisons:
        d = c.delta.get(heldout, {}).get(metric)
        if d is not None:
            parts.append(f"{d:+.3f} vs {c.relation}"
                         + (f" {c.against}" if c.relation != "base" and c.against != "base"
                            else ""))
    return f" ({', '.join(parts)})" if parts else ""


def _day(value: Any) -> str | None:
    return iso(value)[:10] if value is not None else None


def _version_lines(v: Any) -> list[str]:
    lines = [f"{v.id}  {v.summary}",
             f"  lineage: {v.parent_id or 'base'} -> {v.id}"
             + (f" -> {', '.join(v.children)}" if v.children else "")]
    kinds = ", ".join(f"{k} {n}" for k, n in v.pairs.items())
    window = f"{_day(v.window_start) or 'the start'} .. {_day(v.window_end) or 'now'}"
    lines.append(f"  pairs: {v.pairs_total} ({kinds}); window {window}")
    if v.feedback_experts:
        lines.append("  feedback from: " + ", ".join(
            f"{who} {n}" for who, n in v.feedback_experts.items()))
    if v.feedback_excluded:
        lines.append(f"  feedback excluded: {v.feedback_excluded} (revoked API tokens)")
    t = v.training
    if t:
        epochs = f" ({_num(t['epochs'], '.2f')} epochs)" if "epochs" in t else ""
        loss = (f", loss {_num(t['first_loss'], '.3f')} -> {_num(t['last_loss'], '.3f')}"
                if "first_loss" in t and "last_loss" in t else "")
        lines.append(f"  training: {t.get('steps', '?')} steps{epochs} in "
                     f"{_num(t.get('seconds', 0.0), '.1f')} s on {t.get('device', '?')}{loss}")
    if v.heldout:
        lines.append("  held out: " + ", ".join(f"{k} {n}" for k, n in v.heldout.items()))
    for heldout, row in v.metrics.items():
        for metric, value in row.items():
            lines.append(f"  {heldout} {metric} {_num(value, '.3f')}"
                         f"{_deltas(v, heldout, metric)}")
    if v.gate_passed is not None:
        lines.append(f"  gate: {'passed' if v.gate_passed else 'failed'}")
        lines.extend(f"    - {r}" for r in v.gate_reasons)
    for e in v.events:
        who = f" by {e.by}" if e.by else ""
        why = f": {e.reason}" if e.reason else ""
        when = (e.at or "?")[:16].replace("T", " ")
        lines.append(f"  {when}  {e.event.replace('_', ' ')}{who}{why}")
    return lines


def run_report(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.app.models_plot import render_plot
    from retrain.report import history_dict, model_history

    history = model_history(settings)
    if args.plot is not None:
        path = Path(args.plot)
        path.write_bytes(render_plot(history))
    if args.json:
        print_json(history_dict(history))
        return 0
    if not history:
        print("no model versions: the base model is in use (run `litpulse retrain`)")
    else:
        print("\n".join(_lineage(history)))
        for v in history:
            print()
            print("\n".join(_version_lines(v)))
    if args.plot is not None:
        print(f"\nplot written to {args.plot}")
    return 0


def _num(value: Any, spec: str) -> str:
    """A stored number as ``spec`` formats it; ``n/a`` where none is (a diverged training's
    loss is stored as null: JSON has no NaN)."""
    return format(float(value), spec) if isinstance(value, int | float) else "n/a"


def run_promote(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.pipeline.planning import finish_reindex, promotion_lease, reindex_now
    from retrain.registry import promote

    with promotion_lease(settings) as lease:  # before the switch: see promotion_lease
        result = promote(settings, args.id, by=_who(args.by), reason=args.reason,
                         reindex=functools.partial(reindex_now, lease=lease))
        finished = None
        if not result["changed"]:  # active already: an earlier promotion's re-index killed?
            finished = finish_reindex(settings, progress=show_progress() and not args.json,
                                      lease=lease)
            if finished is not None and finished.model_version != args.id:
                from litpulse.core.errors import ConsistencyError

                raise ConsistencyError(
                    f"{args.id} is no longer the active model: {finished.model_version} "
                    "was promoted while this command ran (the retrain DAG's promotion "
                    f"takes no lease); the index it published, {finished.id}, is "
                    f"{finished.model_version}'s (`litpulse models promote {args.id}` "
                    f"makes {args.id} active again)"
                )
            if finished is not None:
                result["index"] = finished.to_dict()
    if args.json:
        print_json(result)
    elif finished is not None:
        print(f"{args.id} is active already; finished its pending re-index: published "
              f"index {finished.id} ({finished.size} vectors, {finished.embedded} embedded now)")
    elif not result["changed"]:
        print(f"{args.id} is active already, and its index is published")
    else:
        print(f"promoted {args.id} (previous: {result['previous']})")
    return 0


def run_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.pipeline.planning import promotion_lease

    with promotion_lease(settings) as lease:  # before the switch: see promotion_lease
        return _rollback(args, settings, lease)


def _rollback(args: argparse.Namespace, settings: Settings, lease: Lease) -> int:
    from litpulse.core.states import ModelEvent
    from litpulse.pipeline.planning import finish_reindex, reindex_now, reindex_pending
    from retrain.registry import active_version, rollback

    active = active_version(settings)
    if (
        not args.further
        and active is not None
        and active.events
        and active.events[-1].get("event") == ModelEvent.REACTIVATED
        and reindex_pending(settings) is not None
    ):
        # the last rollback was cut short while re-indexing (killed, OOM): running the
        # command again finishes it, as a re-run promotion does, instead of a step further
        finished = finish_reindex(settings, progress=show_progress() and not args.json,
                                  lease=lease)
        if args.json:
            print_json({"model": active.id, "rolled_back": None, "finished_reindex":
                        finished.to_dict() if finished is not None else None})
        else:
            print(f"{active.id} is active again after a rollback whose re-index was cut "
                  "short; finished it" + (f": published index {finished.id}"
                                          if finished is not None else "")
                  + " (`--further` rolls back one more step)")
        return 0
    result = rollback(settings, by=_who(args.by), reason=args.reason,
                      reindex=functools.partial(reindex_now, lease=lease))
    if args.json:
        print_json(result)
    else:
        for passed in result.get("skipped") or []:
            print(f"passed over {passed['id']} (now rejected): {passed['problem']}")
        print(f"rolled back {result['rolled_back']}; active model: {result['model']}")
    return 0


def run_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.pipeline.planning import leased_reindex, lexical_negatives
    from retrain.lora import LoraOptions
    from retrain.run import retrain

    changes: dict[str, Any] = {"max_seconds": settings.retrain_budget_s}
    if args.steps is not None:
        changes["max_steps"] = args.steps
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.max_seconds is not None:
        changes["max_seconds"] = args.max_seconds
    report = retrain(
        settings,
        dry_run=args.dry_run,
        from_base=args.from_base,
        progress=show_progress() and not args.json,
        options=LoraOptions(**changes),
        reindex=leased_reindex(progress=show_progress() and not args.json),
        negatives=lexical_negatives(settings),
    )
    if args.json:
        print_json(report.to_dict())
    else:
        for line in report.summary():
            print(line)
    return 0


def run_feedback(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.search import checked_query
    from retrain.feedback import record_feedback

    checked_query(args.query)  # a query no search answers has no result to judge
    fid = record_feedback(
        settings, query=args.query, pmid=args.pmid, relevant=args.relevant, user=args.user
    )
    if args.json:
        print_json({"id": fid, "query": args.query, "pmid": args.pmid,
                    "relevant": args.relevant, "user": args.user})
    else:
        print(f"feedback {fid} recorded")
    return 0
