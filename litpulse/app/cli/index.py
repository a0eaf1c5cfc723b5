"""``litpulse index``: refresh, inspect, check and roll back the FAISS index."""

from __future__ import annotations

import argparse
from typing import Any

from litpulse.app.cli._common import (
    add_json,
    command,
    command_group,
    kv,
    print_json,
    print_table,
    show_progress,
)
from litpulse.core.settings import Settings


def register(sub: Any) -> None:
    actions = command_group(
        sub, "index",
        help="refresh, inspect, check or roll back the vector index",
        description=(
            "Manage the FAISS index of article vectors. `refresh` embeds new and changed "
            "articles with the active model version and publishes an updated index "
            "(atomically; the previous versions stay on disk for `rollback`)."
        ),
    )
    r = command(
        actions, "refresh", run_refresh,
        help="embed pending articles and publish an updated index",
        description=(
            "Embed live articles that are new or changed, then add/remove their vectors in "
            "the newest index of the active model and publish it. A full rebuild happens "
            "with --rebuild, on a model change, when the corpus crosses the exact/IVF "
            "threshold, or when an IVF index outgrew its training (2x)."
        ),
    )
    r.add_argument(
        "--rebuild", action="store_true",
        help="build from scratch (retrain IVF); after LITPULSE_MODEL changed, embed every "
        "article again with the new base model first (a refresh without it refuses)",
    )  # fmt: skip
    add_json(r, "print the report as JSON")
    command(actions, "status", run_status, help="the published index and the kept versions",
            json="print the status as JSON")
    command(
        actions, "check", run_check,
        help="compare the published index with the store (exit 1 when they disagree)",
        description=(
            "Check that the published index version (its vector and its lexical index) holds "
            "exactly the live articles, with current vectors and text, for the active model "
            "version. Exit status 1 when it does not."
        ),
        json="print the report as JSON",
    )
    command(actions, "rollback", run_rollback, help="re-publish the previous index version",
            json="print the result as JSON")


def run_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.refresh import refresh_index

    report = refresh_index(settings, rebuild=args.rebuild, progress=show_progress())
    if args.json:
        print_json(report.to_dict())
    else:
        kv(report.to_dict().items())
    return 0


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.index_status import index_status

    status = index_status(settings)
    if args.json:
        print_json(status)
        return 0
    kv((k, v) for k, v in status.items() if k != "versions")
    if status["versions"]:
        print()
        print_table(
            [[v["id"], v["status"], v["model_version"], v["kind"], v["size"], v["published_at"]]
             for v in status["versions"]],
            ["id", "status", "model", "kind", "size", "published_at"],
        )
    return 0


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.index_status import check_consistency

    report = check_consistency(settings)
    if args.json:
        print_json(report)
    else:
        kv((k, v) for k, v in report.items() if k != "problems")
        for problem in report["problems"]:
            print(f"problem: {problem}")
    return 0 if report["ok"] else 1


def run_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.publish import rollback_index

    result = rollback_index(settings)
    if args.json:
        print_json(result)
    else:
        print(f"index rolled back from {result['from']} to {result['to']} "
              f"(model {result['model_version']})")
    return 0
