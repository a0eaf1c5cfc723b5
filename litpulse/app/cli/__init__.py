"""The ``litpulse`` command line.

Each command group lives in its own module of this package with a ``register(sub)``
function adding its sub-commands; a handler takes the parsed arguments and the settings
and returns the exit code. Heavy libraries are imported inside handlers only, so
``litpulse --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from litpulse.core import __version__
from litpulse.core.errors import BusyError, LitpulseError, NotFoundError

__all__ = ["main", "build_parser"]

#: Modules of this package that register sub-commands, in --help order.
COMMANDS: tuple[str, ...] = ("ingest", "bootstrap", "info", "nightly", "search", "similar",
                             "index", "citations", "models", "tokens", "alerts", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litpulse",
        description="A continuously learning PubMed index: ingest, rank, search, retrain.",
    )
    parser.add_argument("--version", action="version", version=f"litpulse {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"litpulse.app.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from litpulse.core.settings import Settings

    try:
        settings = Settings.from_env()
        return int(args.func(args, settings) or 0)
    except NotFoundError as exc:
        print(f"litpulse: {exc}", file=sys.stderr)
        return 1
    except LitpulseError as exc:
        from litpulse.app.cli.nightly import EXIT_BUSY

        print(f"litpulse: error: {exc}", file=sys.stderr)
        # another process holds the lease (writes articles, publishes an index, runs a
        # bootstrap, nightly or digest): try again later (EX_TEMPFAIL)
        return EXIT_BUSY if isinstance(exc, BusyError) else 2
    except OSError as exc:  # a path the command cannot write or read (a missing folder)
        print(f"litpulse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("litpulse: interrupted", file=sys.stderr)
        return 130
