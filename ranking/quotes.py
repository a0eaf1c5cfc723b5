"""Double quotes as the query language reads them: one home for the lexical index's
phrases (:mod:`ranking.lexical`) and the author clauses (:mod:`ranking.authors`)."""

from __future__ import annotations

import re

__all__ = ["CLOSE", "OPEN", "QUOTED", "QUOTES", "blank_quoted"]

#: Opening and closing double quotes: straight, curly (English “…”, German „…“), mixed
#: as an edited query leaves them; and every one of them.
OPEN, CLOSE, QUOTES = '"\u201c\u201e', '"\u201d\u201c', '"\u201c\u201d\u201e'
#: A quoted phrase (group 1 is the text inside). A quote left alone quotes nothing.
QUOTED = re.compile(f"[{OPEN}]([^{QUOTES}]*)[{CLOSE}]")


def blank_quoted(text: str) -> str:
    """``text`` with each quoted phrase, quotes and all, turned into as many spaces: the
    syntax outside phrases at the same offsets (a phrase's operators are words of it)."""
    return QUOTED.sub(lambda m: " " * len(m.group(0)), text)
