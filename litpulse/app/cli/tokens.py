"""``litpulse tokens``: create, list and revoke the API tokens of named experts."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from litpulse.app.cli._common import (
    add_json,
    command,
    command_group,
    id_arg,
    print_json,
    print_table,
)
from litpulse.app.cli.models import _who
from litpulse.core.settings import Settings


def register(sub: Any) -> None:
    actions = command_group(
        sub, "tokens",
        help="API tokens: who may send feedback to the HTTP API",
        description=(
            "Manage the API tokens of the HTTP API. Writing (POST /feedback) needs a token "
            "sent as `Authorization: Bearer <token>`; each token is tied to a named expert, "
            "who is recorded with every judgement. Without any token the API is read-only. "
            "Only a token's SHA-256 is stored: `create` prints the token once."
        ),
    )
    c = command(actions, "create", run_create,
                help="create a token for an expert and print it once")
    c.add_argument("--expert", required=True, metavar="NAME", help="who the token speaks for")
    c.add_argument("--email", metavar="ADDRESS",
                   help="e-mail the expert's saved-search digests here while the token is "
                        "active (default: the shared LITPULSE_DIGEST_SMTP_TO list)")
    add_json(c)
    command(actions, "list", run_list, help="list tokens (never the tokens themselves)",
            json="print JSON")
    r = command(actions, "revoke", run_revoke,
                help="revoke a token by its id (see `tokens list`)")
    r.add_argument("id", type=id_arg, help="the token's id")
    add_json(r)


def run_create(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.app.tokens import create_token

    issued = create_token(settings, args.expert, created_by=_who(None), email=args.email)
    if args.json:
        print_json({**issued.info.to_dict(), "token": issued.token})
        return 0
    print(f"token {issued.info.id} for expert {issued.info.expert!r}:")
    print(issued.token)
    print("It is shown only this once; send it as `Authorization: Bearer <token>`.",
          file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.app.tokens import list_tokens

    tokens = list_tokens(settings)
    if args.json:
        print_json([t.to_dict() for t in tokens])
        return 0
    if not tokens:
        print("no API tokens: the HTTP API is read-only")
        return 0
    print_table(
        [[t.id, t.expert, t.prefix + "…", t.state.value, f"{t.created_at:%Y-%m-%d %H:%M}",
          t.created_by or "", f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "",
          t.email or "", t.feedback.sent, t.excluded]
         for t in tokens],
        ["id", "expert", "token", "state", "created", "by", "revoked", "e-mail", "judgements",
         "excluded"],
    )
    return 0


def run_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from litpulse.app.tokens import revoke_token

    done = revoke_token(settings, args.id)
    if args.json:
        print_json(done.to_dict())
        return 0
    info, fb = done.info, done.info.feedback
    print(f"token {info.id} of expert {info.expert!r} revoked")
    print(f"feedback: {info.excluded} standing judgement(s) sent with it excluded from "
          f"training ({fb.sent} sent in all; kept in the store)")
    if fb.fallbacks:
        print(f"  for {fb.fallbacks} of them {info.expert}'s earlier judgement (not sent with "
              "this token) trains instead")
    if done.before_active:
        print(f"  {done.before_active} of them predate the active model {done.active_model}, "
              "which may have learnt from them (`litpulse models rollback` re-activates the "
              "version before it)")
    return 0
