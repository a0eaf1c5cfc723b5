"""``litpulse alerts``: saved searches, their nightly digest and their Atom feeds."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from litpulse.app.cli._common import (
    EX_TEMPFAIL,
    add_filter_args,
    add_json,
    command,
    command_group,
    filter_options_given,
    filters_from_args,
    positive_int,
    print_json,
    print_table,
    safe_text,
)
from litpulse.app.cli.models import _who
from litpulse.core.settings import Settings


def register(sub: Any) -> None:
    actions = command_group(
        sub,
        "alerts",
        help="saved searches: new articles above a score, by feed, e-mail or webhook",
        description=(
            "Save a search; after each index publish (`litpulse nightly`, the "
            "litpulse_index_refresh DAG or `alerts run`) the digest ranks the articles new "
            "since the last digest with the current model and records those scoring at least "
            "the search's threshold, each once, with its explanation. They appear in the "
            "Atom feed /feeds/ID.atom of `litpulse serve` and, when configured, are sent by "
            "e-mail (LITPULSE_DIGEST_SMTP_*) or to a webhook (LITPULSE_DIGEST_WEBHOOK_URL)."
        ),
    )
    a = command(actions, "add", run_add, help="save a search")
    a.add_argument("query", help="words to search for, quoted as one argument (the rules of "
                   "`litpulse search`)")
    a.add_argument("--name", required=True, help="a unique name (not only digits)")
    a.add_argument(
        "--min-score",
        type=float,
        metavar="S",
        help="score a new article needs (default LITPULSE_DIGEST_MIN_SCORE): its semantic "
        "score at the server's weights (`litpulse search --mode semantic` shows it), not "
        "the hybrid score of a default search",
    )
    add_filter_args(a)
    add_json(a)
    command(actions, "list", run_list, help="list saved searches", json="print JSON")
    r = command(actions, "remove", run_remove, help="remove a saved search and its matches")
    r.add_argument("ref", metavar="ID|NAME", help="the saved search's id or name")
    add_json(r)
    command(
        actions,
        "run",
        run_digest_cmd,
        help="run the digest now (record new matches, send what is pending; exit 75 when "
        "deliveries were due and none went out, 2 when a saved search cannot be searched)",
        json="print the digest report as JSON",
    )
    e = command(
        actions, "edit", run_edit,
        help="change a saved search in place (query, filters, threshold)",
        description=(
            "Change a saved search's query, threshold or filters, keeping its id, feed, "
            "matches and watermark: the articles stored while it could not be searched "
            "(a query a later rule refuses) are matched by the next digest. Filters are "
            "replaced only with --replace-filters (by those given, none to clear them); a "
            "filter option without it is refused."
        ),
    )
    e.add_argument("ref", metavar="ID|NAME", help="the saved search's id or name")
    e.add_argument("--query", default=None, help="the new query")
    threshold = e.add_mutually_exclusive_group()
    threshold.add_argument("--min-score", type=float, metavar="S", default=None,
                           help="the new threshold (a semantic score, as for `alerts add`)")
    threshold.add_argument("--default-min-score", action="store_true",
                           help="back to the default threshold, LITPULSE_DIGEST_MIN_SCORE")
    e.add_argument("--replace-filters", action="store_true",
                   help="replace its filters by the filter options given here")
    add_filter_args(e)
    add_json(e)
    f = command(actions, "feed", run_feed, help="print a saved search's Atom feed")
    f.add_argument("ref", metavar="ID|NAME", help="the saved search's id or name")
    f.add_argument(
        "--base-url",
        default=None,
        help="URL of `litpulse serve`, for the feed's own link (default: "
        "LITPULSE_PUBLIC_URL, else http://127.0.0.1:8000/)",
    )
    f.add_argument(
        "--page",
        type=_feed_page,
        default=1,
        help="page of its matches, newest first (200 a page; each page links the next)",
    )
    f.add_argument(
        "--after",
        type=positive_int,
        default=None,
        metavar="MATCH",
        help="the matches after this one (the `after` of a page's next link: following "
        "those links reads each match once while matches come and go)",
    )


def _feed_page(text: str) -> int:
    """``--page``: 1 to the last page a feed serves."""
    from litpulse.pipeline.digest import FEED_PAGES_MAX

    return positive_int(text, most=FEED_PAGES_MAX)


def run_add(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.pipeline.saved_searches import CLI_OWNER_PREFIX, add_search

    saved = add_search(
        settings,
        name=args.name,
        query=args.query,
        filters=filters_from_args(args),
        min_score=args.min_score,
        owner=f"{CLI_OWNER_PREFIX}{_who(None)}",
    )
    if args.json:
        print_json(saved.to_dict())
    else:
        print(
            f"saved search {saved.id} {saved.name!r}: new articles scoring at least "
            f"{saved.threshold(settings):g}; feed {saved.feed_path}"
        )
        for note in saved.notes:
            print(f"note: {note}", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.pipeline.saved_searches import list_searches

    found = list_searches(settings)
    if args.json:
        print_json([s.to_dict() for s in found])
        return 0
    if not found:
        print('no saved searches (add one with `litpulse alerts add "QUERY" --name N`)')
        return 0
    print_table(
        [
            [
                s.id,
                s.name,
                s.query if len(s.query) <= 50 else s.query[:49] + "…",
                f"{s.threshold(settings):g}",
                s.matches,
                f"{s.last_digest_at:%Y-%m-%d %H:%M}" if s.last_digest_at else "never",
                s.owner,
                s.feed_path,
            ]
            for s in found
        ],
        ["id", "name", "query", "min score", "matches", "last digest", "owner", "feed"],
    )
    for s in found:  # saved before a rule it breaks: the digest reports it, never searches it
        if s.problem:
            print(safe_text(f"search {s.id} {s.name!r} cannot be searched: {s.problem}; "
                            f"{s.remedy}"), file=sys.stderr)  # fmt: skip
        for note in s.notes:  # its digests hold what it searches (-word: the word)
            print(f"search {s.id} {s.name!r}: note: {safe_text(note)}", file=sys.stderr)
    return 0


def run_remove(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.pipeline.saved_searches import remove_search

    gone = remove_search(settings, args.ref)
    if args.json:
        print_json(gone.to_dict())
    else:
        print(f"removed saved search {gone.id} {gone.name!r} and its {gone.matches} matches")
    return 0


def run_digest_cmd(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.pipeline.digest import run_digest

    report = run_digest(settings)
    # a saved search that could not be searched needs someone (it fails every digest until
    # edited): a usage error; deliveries due of which none went out (the receivers down,
    # refusing): EX_TEMPFAIL, tried again by the next digest; some delivered: 0
    unsearchable = any(d.error is not None for d in report.searches)
    code = 2 if unsearchable else EX_TEMPFAIL if report.nothing_delivered else 0
    if args.json:
        print_json(report.to_dict())
        return code
    if report.skipped:
        print(f"digest skipped: {safe_text(report.skipped)}")
        return 0
    print_table(
        [
            [d.search_id, d.name, d.candidates, d.matched, f"{d.threshold:g}"]
            for d in report.searches
        ],
        ["id", "name", "new articles", "new matches", "min score"],
    )
    print(
        f"\nindex {report.index_version}: {report.matched} new matches; "
        f"{report.emailed} e-mailed, {report.posted} sent to the webhook"
    )
    for failure in report.failures:  # they may quote a mail server's or webhook's answer
        print(f"failed: {safe_text(failure)}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {safe_text(warning)}", file=sys.stderr)
    if code == EX_TEMPFAIL:
        print("nothing delivered: every delivery due failed (the next digest tries them "
              f"again); exit {EX_TEMPFAIL}", file=sys.stderr)  # fmt: skip
    return code


def run_edit(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.core.errors import ConfigError
    from litpulse.pipeline.saved_searches import KEEP, edit_search

    given = filter_options_given(args)
    if given and not args.replace_filters:  # else dropped: the user thinks them applied
        raise ConfigError(
            f"{', '.join(given)} change the search's filters only with --replace-filters, "
            "which replaces all of them by the filter options given: add it, with every "
            "filter the search should keep"
        )
    threshold = (None if args.default_min_score
                 else KEEP if args.min_score is None else args.min_score)
    edited = edit_search(
        settings, args.ref, query=args.query, min_score=threshold,
        filters=filters_from_args(args) if args.replace_filters else None,
    )  # fmt: skip
    if args.json:
        print_json(edited.to_dict())
    else:
        print(f"edited saved search {edited.id} {edited.name!r}: {edited.query!r}, new "
              f"articles scoring at least {edited.threshold(settings):g}")
        for note in edited.notes:
            print(f"note: {note}", file=sys.stderr)
    return 0


def run_feed(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.pipeline.digest import feed_for
    from litpulse.pipeline.saved_searches import get_search

    found = get_search(settings, args.ref)
    base = args.base_url or settings.public_url or "http://127.0.0.1:8000/"
    url = base.rstrip("/") + found.feed_path
    feed = feed_for(settings, found.id, self_url=url, page=args.page, after=args.after)
    # printed as it is: the feed holds no control character a terminal acts on (C0 left
    # out, DEL and C1 as character references), and escaping would change the document
    sys.stdout.write(feed.decode("utf-8") + "\n")
    return 0
