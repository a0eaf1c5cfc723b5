"""``litpulse ingest``: local files, an E-utilities window, or NLM update files."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
from collections.abc import Callable
from typing import Any

from litpulse.app.cli._common import kv, path_arg, print_json, show_progress
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ingest",
        help="store PubMed records from files, E-utilities or the update files",
        description=(
            "Parse PubMed records and store them: one row per PMID holding its newest "
            "version, deletions as tombstones, unparseable records in quarantine. "
            "Repeating an ingest changes nothing."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--files", nargs="+", metavar="PATH", type=path_arg,
        help="PubMed XML files (plain or .xml.gz)",
    )
    src.add_argument(
        "--eutils", action="store_true", help="fetch a date window through E-utilities"
    )
    src.add_argument(
        "--updatefiles", action="store_true", help="apply new NLM update files, in order"
    )
    p.add_argument("--since", type=_date, metavar="YYYY-MM-DD", help="window start (--eutils)")
    p.add_argument(
        "--until",
        type=_date,
        metavar="YYYY-MM-DD",
        help="last day of the window, inclusive (--eutils; default: now)",
    )
    p.add_argument("--query", metavar="TERM", help="extra ESearch term (--eutils)")
    p.add_argument(
        "--max-files", type=int, metavar="N", help="apply at most N files (--updatefiles)"
    )
    p.add_argument(
        "--accept-gaps",
        action="store_true",
        help=(
            "apply the update files after a number missing from the server's listing "
            "(only for a file NLM withdrew; a mirror still copying fills its gap later)"
        ),
    )
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    p.set_defaults(func=run)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {text!r}") from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    progress = show_progress() and not args.json
    if not args.eutils and (args.since or args.until or args.query):
        raise ConfigError("--since, --until and --query only go with --eutils")
    if not args.updatefiles and args.max_files is not None:
        raise ConfigError("--max-files only goes with --updatefiles")
    if not args.updatefiles and args.accept_gaps:
        raise ConfigError("--accept-gaps only goes with --updatefiles")
    from litpulse.pipeline.alerts import tell_given_up

    ingest = _planned(args, settings, progress)  # the arguments checked first
    try:
        counts = ingest()
    finally:  # the give-ups of this run, and those still owed (an outbox: any source)
        tell_given_up(settings)
    result = counts.to_dict()
    if args.json:
        print_json(result)
    else:
        kv(result.items())
    return 0


def _planned(args: argparse.Namespace, settings: Settings, progress: bool) -> Callable[[], Any]:
    """The ingest the arguments name, ready to run (it returns its counts).

    Raises:
        ConfigError: The arguments do not make one.
    """
    if args.files:
        from ingest.files import ingest_files

        return functools.partial(ingest_files, settings, args.files, progress=progress)
    if args.eutils:
        if args.since is None:
            raise ConfigError("--eutils needs --since YYYY-MM-DD")
        since = dt.datetime.combine(args.since, dt.time(), tzinfo=dt.UTC)
        if args.until is None:
            until = dt.datetime.now(dt.UTC)
        else:
            # the window is [since, until + 1 day): --until names the last day included
            try:
                after = args.until + dt.timedelta(days=1)
            except OverflowError:
                raise ConfigError(f"--until {args.until} reaches past the calendar's end "
                                  "(the window ends the day after it)") from None
            until = dt.datetime.combine(after, dt.time(), tzinfo=dt.UTC)
        if until <= since:
            raise ConfigError("--until must not be before --since")
        from ingest.eutils import ingest_window

        return functools.partial(ingest_window, settings, since, until, query=args.query,
                                 progress=progress)  # fmt: skip
    if args.max_files is not None and args.max_files <= 0:
        raise ConfigError("--max-files must be positive")
    from ingest.updatefiles import apply_updates

    return functools.partial(apply_updates, settings, max_files=args.max_files,
                             progress=progress, accept_gaps=args.accept_gaps)  # fmt: skip
