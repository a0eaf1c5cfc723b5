"""Parser and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from litpulse.core.settings import Settings
from litpulse.core.widths import ID_MAX, PMID_MAX

if TYPE_CHECKING:
    from ranking.search import SearchFilters

#: A command handler: the parsed arguments and the settings in, the exit code out.
Handler = Callable[[argparse.Namespace, Settings], int]

#: Exit code of a command that could not do its work now and should be run again later
#: (sysexits.h's ``EX_TEMPFAIL``): another process holds a lease (nightly, bootstrap, the
#: store's writer), the database or a source cannot be reached, or a digest delivered
#: nothing of what was due. Every command returns this one name for it.
EX_TEMPFAIL = 75


def print_json(obj: Any) -> None:
    """Print one JSON document to stdout; DEL and the C1 controls escaped (``\\u009b``), as
    JSON escapes C0 itself, so stored bytes cannot act on the terminal."""
    text = json.dumps(obj, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write(_JSON_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text))
    sys.stdout.write("\n")


#: What JSON leaves raw but a terminal acts on: DEL and the C1 controls.
_JSON_CONTROL = re.compile(r"[\x7f-\x9f]")


def positive_int(text: str, most: int | None = None) -> int:
    """An argument's whole number of 1 or more, and at most ``most`` (argparse's
    ``type``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    if most is not None and value > most:
        raise argparse.ArgumentTypeError(f"must be <= {most:,}: {text!r}")
    return value


def fixed(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, never a negative zero (a cosine of -0.0004 is
    ``0.000``, not ``-0.000``)."""
    return f"{round(float(value), digits) + 0.0:.{digits}f}"


#: Control characters (C0, DEL, C1): a cell shows them escaped, so a stored escape sequence
#: cannot act on the terminal and a line break cannot break the table.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def safe_text(text: str) -> str:
    """``text`` with its control characters shown as ``\\xNN``, line breaks and tabs kept
    (for a terminal: a stored escape sequence cannot act on it)."""
    return _CONTROL.sub(
        lambda m: m.group() if m.group() in "\n\t" else f"\\x{ord(m.group()):02x}", text
    )


class SafeFormatter(logging.Formatter):
    """The CLI's log lines on stderr, their control characters shown as ``\\xNN``
    (:func:`safe_text`): a message may quote a source's answer or a stored value."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record))


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print rows as an aligned plain-text table (control characters shown as ``\\xNN``)."""
    cells = [[_cell(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def show_progress() -> bool:
    """Progress bars only on a terminal."""
    return sys.stderr.isatty()


def kv(pairs: Iterable[tuple[str, Any]]) -> None:
    """Print ``key: value`` lines (control characters shown as ``\\xNN``)."""
    items = list(pairs)
    width = max((len(k) for k, _ in items), default=0)
    for k, v in items:
        print(f"{k.ljust(width)}  {_cell(v)}")


def command_group(sub: Any, name: str, *, help: str, description: str | None = None) -> Any:
    """Add the command ``name`` whose sub-commands (``ACTION``) are added to the result.

    The chosen action lands in ``args.<name>_command``; one is required.
    """
    parser = sub.add_parser(name, help=help, description=description)
    actions = parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    actions.required = True
    return actions


def command(
    sub: Any,
    name: str,
    func: Handler,
    *,
    help: str,
    description: str | None = None,
    json: str | None = None,
) -> argparse.ArgumentParser:
    """Add the (sub-)command ``name`` run by ``func``; ``json``: the help of a ``--json`` flag.

    Commands with more options add theirs to the result, then :func:`add_json` last.
    """
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    parser.set_defaults(func=func)
    if json is not None:
        add_json(parser, json)
    return parser


def add_json(parser: argparse.ArgumentParser, help: str = "print JSON") -> None:
    """The ``--json`` flag: print the result as one JSON document."""
    parser.add_argument("--json", action="store_true", help=help)


def pmid_arg(text: str) -> int:
    """An argparse type: a PMID, 1 .. :data:`~litpulse.core.widths.PMID_MAX` (a larger
    number is no article and would overflow the database's integer)."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= PMID_MAX:
        raise argparse.ArgumentTypeError(f"not a PMID: {text!r}")
    return int(text)


def pmid_or_doi_arg(text: str) -> int | str:
    """An argparse type: a PMID (:func:`pmid_arg`), or a DOI (``10.1056/NEJMoa2034577``,
    ``doi:…``, a ``doi.org`` link: :func:`litpulse.core.text.doi_key`) as typed."""
    from litpulse.core.text import doi_key

    if doi_key(text) is not None:
        return text
    try:
        return pmid_arg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a PMID or a DOI: {text!r}") from None


def int_arg(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low .. high`` (a larger one would overflow the
    database's integer: a traceback, where a usage error is due)."""

    def parse(text: str) -> int:
        if not text.isascii() or not text.lstrip("-").isdigit() or len(text) > 20:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {text}")
        return value

    parse.__name__ = "whole number"  # argparse names the type so in its messages
    return parse


def float_arg(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number in ``low .. high`` (``nan``, an infinity or a
    number out of range is a usage error, not a value the command bends into another)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {text}")
        return value

    parse.__name__ = "number"  # argparse names the type so in its messages
    return parse


#: An id of a stored row (an ingest run, a quarantine entry, a token).
id_arg = int_arg(1, ID_MAX)


def path_arg(text: str) -> str:
    """An argparse type: a file or folder name, not empty (an empty one is the current
    folder to ``Path``: a plot written nowhere, a corpus written or read where the command
    happened to run; ``.`` names the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (`.` is the current folder)")
    return text


path_arg.__name__ = "path"  # argparse names the type so in its messages


def date_arg(text: str) -> dt.date:
    """An argparse type: a date ``YYYY-MM-DD``."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def add_filter_args(p: argparse.ArgumentParser) -> None:
    """The filters of ``litpulse search`` (and of a saved search)."""
    p.add_argument("--since", type=date_arg, help="published on or after YYYY-MM-DD")
    p.add_argument("--until", type=date_arg, help="published on or before YYYY-MM-DD")
    p.add_argument(
        "--mesh", action="append", metavar="TERM", help="MeSH descriptor (repeat for all of)"
    )
    p.add_argument(
        "--type", dest="ptype", action="append", metavar="PUBTYPE",
        help="publication type, e.g. Review (repeat for all of)",
    )
    p.add_argument("--language", help="language: a code (eng) or a name (English)")
    p.add_argument("--has-abstract", action="store_true", help="only articles with an abstract")
    p.add_argument(
        "--include-retracted", action="store_true", help="also return retracted articles"
    )


def filter_options_given(args: argparse.Namespace) -> list[str]:
    """The options of :func:`add_filter_args` given on the command line, as typed."""
    options = (("--since", args.since), ("--until", args.until), ("--mesh", args.mesh),
               ("--type", args.ptype), ("--language", args.language),
               ("--has-abstract", args.has_abstract),
               ("--include-retracted", args.include_retracted))  # fmt: skip
    return [option for option, value in options if value not in (None, False, [])]


def filters_from_args(args: argparse.Namespace) -> SearchFilters:
    """The :class:`~ranking.search.SearchFilters` of :func:`add_filter_args`' options."""
    from ranking.search import SearchFilters

    return SearchFilters(
        since=args.since,
        until=args.until,
        mesh=tuple(args.mesh or ()),
        publication_type=tuple(args.ptype or ()),
        language=args.language,
        has_abstract=True if args.has_abstract else None,
        include_retracted=args.include_retracted,
    )
