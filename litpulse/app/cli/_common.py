"""Parser and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from litpulse.core.settings import Settings

#: A command handler: the parsed arguments and the settings in, the exit code out.
Handler = Callable[[argparse.Namespace, Settings], int]


def print_json(obj: Any) -> None:
    """Print one JSON document to stdout."""
    json.dump(obj, sys.stdout, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write("\n")


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def show_progress() -> bool:
    """Progress bars only on a terminal."""
    return sys.stderr.isatty()


def kv(pairs: Iterable[tuple[str, Any]]) -> None:
    """Print ``key: value`` lines."""
    items = list(pairs)
    width = max((len(k) for k, _ in items), default=0)
    for k, v in items:
        print(f"{k.ljust(width)}  {v}")


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
