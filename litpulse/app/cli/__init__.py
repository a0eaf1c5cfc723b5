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
import os
import sys
from collections.abc import Sequence

from litpulse.app.cli._common import EX_TEMPFAIL, SafeFormatter, safe_text
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
    argv = list(sys.argv[1:] if argv is None else argv)
    for arg in argv:  # undecodable bytes reach Python as lone surrogates
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            print(f"litpulse: error: an argument is not valid text (UTF-8): {arg!r}",
                  file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), handlers=[handler])
    from sqlalchemy.exc import OperationalError

    from litpulse.core.settings import Settings

    try:
        settings = Settings.from_env()
        code = int(args.func(args, settings) or 0)
        sys.stdout.flush()  # a reader that left shows here, not at the interpreter's exit
        return code
    except NotFoundError as exc:
        print(f"litpulse: {safe_text(str(exc))}", file=sys.stderr)
        return 1
    except LitpulseError as exc:  # it may quote a source's answer: escaped, as every output
        print(f"litpulse: error: {safe_text(str(exc))}", file=sys.stderr)
        # another process holds the lease (writes articles, publishes an index, runs a
        # bootstrap, nightly or digest), or a source failed for now: try again later
        # (EX_TEMPFAIL)
        return EX_TEMPFAIL if isinstance(exc, BusyError) or exc.retryable else 2
    except OperationalError as exc:  # the database cannot be reached (down, refused)
        from litpulse.core.db import conflict_rolled_back, disk_full, lock_waited_out

        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[:1]
        if disk_full(exc):  # as a full disk under an index (StorageError): not retried
            print("litpulse: error: the database's disk is full (what was committed stays; "
                  f"free space, then run again): {safe_text(''.join(first))}", file=sys.stderr)
            return 2
        if lock_waited_out(exc):
            what = ("is busy: another process held its write lock longer than this one "
                    "waits (what was committed stays; run again later)")
        elif conflict_rolled_back(exc):  # retry_conflicts met it on each of its attempts
            what = ("rolled this command's transaction back on every try, to break a "
                    "conflict with another writer of the same rows (what was committed "
                    "stays; run again later)")
        else:
            what = "cannot be reached"
        print(f"litpulse: error: the database {what}: {safe_text(''.join(first))}",
              file=sys.stderr)
        return EX_TEMPFAIL
    except BrokenPipeError:  # the reader of stdout left (`| head`): nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit's flush must not fail again
        return 141  # as a process a SIGPIPE ends
    except OSError as exc:  # a path the command cannot write or read (a missing folder)
        print(f"litpulse: error: {safe_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("litpulse: interrupted", file=sys.stderr)
        return 130
