"""Authors in queries, PubMed's way: ``Smith J[au]``, ``"van der Berg J"[au]``, ``[1au]``.

The lexical index holds each article's authors as *keys* (:func:`author_keys`, the
field :data:`ranking.lexical.AUTHOR_FIELD`): each author's surname folded
(:func:`litpulse.core.text.fold_term`: case, accents, apostrophes and hyphens aside), the
surname with each prefix of the initials (``smith j``, ``smith ja``), the surname with the
first words of the forename (``smith john``), a collective name whole; the first and the
last author's keys once more with a mark (``[1au]``, ``[lastau]``). A query's author
clause is one key looked up as it is, so ``Smith J[au]`` finds Smith J, Smith JA and
Smith JR, as PubMed does, ``Smith[au]`` every Smith, and ``Müller[au]`` Muller too.

Where a name ends is read as PubMed reads it: the tag takes the text before it back to
the start of the query, an ``AND``/``OR``/``NOT``, a bracket, a comma or a quote. That
text must name one author: a surname (its particles ``van der``, ``de la`` … before it)
and at most one more word, the initials or a forename. ``asthma Smith J[au]`` is
refused (does *asthma* belong to the name?): ``asthma AND Smith J[au]``, or the name in
quotes, ``asthma "Smith J"[au]``, says it. A quoted name is taken whole.

``NOT`` before a name excludes that author's articles. Authors joined by ``OR`` alone,
in brackets of their own or first in the query (``asthma AND (Smith J[au] OR Li
X[au])``), are one clause met by any of them. A query of authors alone lists their
articles (:func:`ranking.search.run_search`); an author among the topic's alternatives
(``asthma OR Smith J[au]``) and a query that only excludes authors are refused with what
to write instead (:func:`ranking.search.checked_query`).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from litpulse.core.text import fold, fold_term
from ranking.quotes import CLOSE, OPEN, QUOTES, blank_quoted

__all__ = ["AuthorClause", "Role", "author_keys", "split_authors", "tidy_left_over"]


class Role(enum.StrEnum):
    """Which of an article's authors a clause asks for."""

    ANY = "au"
    FIRST = "1au"
    LAST = "lastau"


#: The mark before a first or last author's keys in the index (:func:`author_keys`).
_MARKS = {Role.ANY: "", Role.FIRST: "^", Role.LAST: "$"}


@dataclass(frozen=True)
class AuthorClause:
    """One author a query asks for (or, ``excluded``, leaves out).

    Attributes:
        name: The name as typed (quotes off), for messages and the results line.
        key: What is looked up in the index: the mark of :attr:`role`, then the name
            folded (:func:`litpulse.core.text.fold_term`).
        role: Any author, the first or the last.
        excluded: ``NOT Smith J[au]``: articles by this author are left out.
        also: Other keys of the same author (see the field).
    """

    name: str
    key: str
    role: Role = Role.ANY
    excluded: bool = False
    #: Other keys that name the same author: a full name in natural order (``Jane A
    #: Smith``) read inverted too (``smith jane a``), as PubMed reads [fau].
    also: tuple[str, ...] = ()
    #: The tag the results line shows: :attr:`role`'s, or ``fau`` or ``cn`` as typed.
    tag: str = ""
    #: ``(Smith J[au] OR Li X[au])``: the authors any of which meets the clause (their
    #: keys are :attr:`keys`); empty for one author.
    alternatives: tuple[AuthorClause, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key the clause is met by (any alternative's)."""
        if self.alternatives:
            return tuple(k for a in self.alternatives for k in a.keys)
        return (self.key, *self.also)

    @property
    def shown(self) -> str:
        """The clause as PubMed writes it: ``Smith J[au]``, ``NOT Smith J[1au]``."""
        if self.alternatives:
            return "(" + " OR ".join(a.shown for a in self.alternatives) + ")"
        return f"{'NOT ' if self.excluded else ''}{self.name}[{self.tag or self.role.value}]"


def author_keys(authors: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The keys an article's authors are found by (see the module doc), in author order,
    each once.

    Args:
        authors: The ``authors`` column's entries (``last_name``, ``fore_name``,
            ``initials``, ``collective_name``); anything else is skipped.

    Example:
        >>> keys = author_keys([{"last_name": "Smith", "fore_name": "John Paul",
        ...                      "initials": "JP"}, {"collective_name": "ATLAS Collaboration"}])
        >>> keys  # doctest: +NORMALIZE_WHITESPACE
        ('smith', 'smith j', 'smith jp', 'smith john', 'smith john paul', '^smith',
         '^smith j', '^smith jp', '^smith john', '^smith john paul',
         'atlas collaboration', '$atlas collaboration')
    """
    named = [f for f in (_forms(a) for a in authors if isinstance(a, Mapping)) if f]
    keys: dict[str, None] = {}
    for i, forms in enumerate(named):
        marks = [""] + ["^"] * (i == 0) + ["$"] * (i == len(named) - 1)
        for mark in marks:
            keys.update((mark + f, None) for f in forms)
    return tuple(keys)


def _forms(author: Mapping[str, Any]) -> list[str]:
    """The folded forms of one author's name (without marks)."""
    last = fold_term(_text(author.get("last_name")))
    if not last:
        collective = fold_term(_text(author.get("collective_name")))
        return [collective] if collective else []
    fore = fold_term(_text(author.get("fore_name")))
    initials = "".join(fold_term(_text(author.get("initials"))).split())
    if not initials and fore:  # PubMed gives initials; a record without them: the forename's
        initials = "".join(w[0] for w in re.split(r"[\s.\-]+", fold(_text(author.get("fore_name"))))
                           if w[:1].isalnum())  # fmt: skip
    forms = [last, *(f"{last} {initials[:j]}" for j in range(1, len(initials) + 1))]
    words = fore.split()
    forms += [f"{last} {' '.join(words[:j])}" for j in range(1, len(words) + 1)]
    return list(dict.fromkeys(forms))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


#: PubMed's author tags, after the name or a space after it (``Smith J[au]``, ``Smith J
#: [au]``; ``[AU]`` too, as PubMed's own pages write it, but not ``[Au]``: gold). Group 1
#: is the tag.
_TAG = re.compile(
    r"(?<=[^\s\[])\s?\[\s*(au|AU|1au|1AU|lastau|LASTAU|fau|FAU|cn|CN|(?i:author|"
    r"full author name|first author name|last author name|corporate author|"
    r"author\s*-\s*(?:first|last|full|corporate)))\s*\]"
)
#: Where a problem's text names the tag as typed (``[au]``, ``[cn]``): a control
#: character, which no query holds (:func:`ranking.search.checked_query` refuses them), so
#: a name typed with braces (``x{tag}y``) is shown as it was typed.
_TAG_MARK = "\x1f"
_ROLES = {"au": Role.ANY, "fau": Role.ANY, "author": Role.ANY, "full author name": Role.ANY,
          "cn": Role.ANY, "corporate author": Role.ANY, "author-full": Role.ANY,
          "author-corporate": Role.ANY,
          "1au": Role.FIRST, "first author name": Role.FIRST, "author-first": Role.FIRST,
          "lastau": Role.LAST, "last author name": Role.LAST, "author-last": Role.LAST}  # fmt: skip
#: Where the text a tag names begins, at the latest: an operator, a bracket, a comma or
#: semicolon, a quote (a closing one right before the tag quotes the name instead).
_BOUNDARY = re.compile(rf"(?<![\w-])(?:AND|OR|NOT)(?![\w-])|[()\[\];,{QUOTES}]")
#: Lower-case words that come before a surname (``van der Berg``, ``de la Cruz``).
_PARTICLES = frozenset(
    "van von der den de del della delle dello degli dei des di da dal do dos das du le la "
    "les ten ter el al bin ben ibn mac st san dela vander zu zum zur af av e y i".split()
)
_WORD = re.compile(r"[^\W\d_][\w'\u2019.-]*")
#: Brackets an author clause leaves empty, and an AND it leaves first or last.
_EMPTY = re.compile(r"\(\s*\)|\[\s*\]")
_LEFT_OVER = re.compile(
    r"^[)\]\s]*(?:AND(?![\w-])\s*)+|(?:(?<![\w-])AND\s*)+[(\[\s]*$"  # first or last
    r"|(?<=[(\[])\s*AND(?![\w-])|(?<![\w-])AND\s*(?=[)\]])"  # first or last in brackets
)


@functools.lru_cache(maxsize=256)
def split_authors(query: str) -> tuple[str, tuple[AuthorClause, ...], tuple[str, ...]]:
    """``query`` without its author clauses (each replaced by a space, with the ``AND``
    or ``NOT`` that joins it), the clauses in query order, and what could not be read
    (messages saying what to write instead).

    Example:
        >>> rest, clauses, problems = split_authors("asthma AND Smith J[au] NOT Li X[1au]")
        >>> rest.split(), [c.shown for c in clauses], [c.key for c in clauses], problems
        (['asthma'], ['Smith J[au]', 'NOT Li X[1au]'], ['smith j', '^li x'], ())
    """
    tags = list(_TAG.finditer(query))
    if not tags:
        return query, (), ()
    bare = blank_quoted(query)  # operators outside quotes
    problems: list[str] = []
    spans: list[tuple[int, int]] = []
    reads: list[_Read] = []
    floor = 0
    for tag in tags:
        role = _ROLES[re.sub(r"\s*-\s*", "-", tag.group(1).lower())]
        typed_tag = tag.group(1).lower()
        full = "f" in typed_tag  # [fau], [full author name], [Author - Full]
        collective = typed_tag == "cn" or "corporate" in typed_tag
        shown_tag = "cn" if collective else "fau" if full and role is Role.ANY else ""
        label = f"[{shown_tag or role.value}]"
        start, name, problem = _name_before(query, floor, tag.start(), full, collective)
        floor = end = tag.end()
        key = fold_term(name)
        if problem is None and not key:
            problem = (f"{name!r}{_TAG_MARK} names no author: write a surname and its initials, "
                       "as Smith J[au]")  # fmt: skip
        if problem is not None:
            problems.append(problem.replace(_TAG_MARK, label))
            spans.append((start, end))
            continue
        before = query[:start].rstrip()
        inner = before.rstrip("([ \t")  # NOT (Smith J[au]): NOT takes the bracketed name
        opened = len(before[len(inner):].replace(" ", "").replace("\t", ""))  # fmt: skip
        excluded = _ends_with(inner, "NOT")
        if excluded or _ends_with(before, "AND"):
            start = len(inner if excluded else before) - 3
            for _ in range(opened if excluded else 0):  # and the brackets it opened
                close = _CLOSE_BRACKET.match(query, end)
                if close is None:  # NOT (Smith J[au] AND children): a group
                    opened = -1
                    break
                end = close.end()
        words = name.split()
        also: tuple[str, ...] = ()  # Jane A Smith: natural order, read inverted too
        if len(words) > 1 and not collective and not (
            _initials(words[-1]) and words[-1].isupper()
        ):
            also = (_MARKS[role] + fold_term(" ".join([words[-1], *words[:-1]])),)
        clause = AuthorClause(name, _MARKS[role] + key, role, excluded, also, shown_tag)
        reads.append(_Read(clause, start, end, opened < 0))
    clauses: list[AuthorClause] = []
    reads = _excluded_alternatives(bare, reads)
    # the ORs inside NOT (… OR …) are that exclusion's own: no other clause is beside them
    # (square brackets too, which the OR checks below do not count: tags are bracketed)
    outside = bare
    for a, b in {r.within for r in reads if r.within is not None}:
        outside = outside[:a] + " " * (b - a) + outside[b:]
    for group in _alternatives(bare, reads):
        first = group[0]
        start, end = first.start, group[-1].end
        clause = first.clause
        shown = f"{clause.name}[{clause.tag or clause.role.value}]"
        if len(group) > 1:  # Smith J[au] OR Li X[au]: one clause met by any of them
            start, end = _group_span(bare, group)
            problem = _alone_or_bracketed(query, bare, start, end)
            alternatives = tuple(r.clause for r in group)
            clause = AuthorClause(" OR ".join(c.name for c in alternatives), clause.key,
                                  clause.role, alternatives=alternatives)  # fmt: skip
            shown = clause.shown
            if problem is not None:
                problems.append(problem.replace("{group}", shown))
        if first.within is not None:  # NOT (Smith J[au] OR Li X[au]): the bracket is the term
            start, end = first.within
        before = query[:start].rstrip()
        if first.within is None and (first.in_group or _in_not_group(bare, start, end)):
            # NOT (children AND Smith J[au])
            problems.append(f"an author inside a group after NOT cannot be read one way: "
                            f"exclude each on its own (asthma NOT {shown} NOT children)")
        elif _ends_with(before, "OR") or _or_beside(outside, start, end):
            problems.append(
                "an author cannot be one of alternatives (OR) beside other terms: "
                + (f"exclude each on its own (asthma NOT {shown} NOT …)" if clause.excluded else
                   f"search {shown} with the topic's words (asthma AND {shown}), and put "
                   "the topic's alternatives in brackets before it"
                   + ("" if len(group) > 1 else "; alternative authors go in brackets of "
                      f"their own (asthma AND ({shown} OR …))"))
            )  # fmt: skip
        after = _LOWER_AFTER.match(query, group[-1].end)
        if after is not None:  # Smith J[au] not copd: NOT meant, or a stop word?
            problems.append(_capitals(query, *after.span(1)))
        clauses.append(clause)
        spans.append((first.start, first.end) if first.within is not None else (start, end))
    spans.sort()
    kept, last = [], 0
    for a, b in spans:
        kept.append(query[last:a])
        last = b
    kept.append(query[last:])
    # (Smith J[au]) AND asthma: the brackets and the AND held only the author
    rest = tidy_left_over(" ".join(kept))
    return rest, tuple(clauses), tuple(dict.fromkeys(problems))


def tidy_left_over(text: str) -> str:
    """``text`` once clauses were cut out of it (authors here, exclusions in
    :func:`ranking.lexical.split_exclusions`): without the brackets they left empty and
    an ``AND`` they left first or last, in the whole or in a bracket (no word to search).

    Example:
        >>> tidy_left_over("( AND wheeze) AND  ( )")
        '( wheeze)'
    """
    text = " ".join(text.split())
    while True:
        tidy = _LEFT_OVER.sub("", _EMPTY.sub(" ", text)).strip()
        if tidy == text:
            return text
        text = tidy


@dataclass(frozen=True)
class _Read:
    """An author clause as read at ``start:end`` of the query (its ``AND`` or ``NOT`` and
    the brackets ``NOT`` takes included); ``in_group``: inside a group after ``NOT``."""

    clause: AuthorClause
    start: int
    end: int
    in_group: bool
    #: the whole ``NOT (… OR …)`` it is one exclusion of (:func:`_excluded_alternatives`)
    within: tuple[int, int] | None = None


#: Only an ``OR`` (and brackets) between two author clauses: they are alternatives.
_OR_ONLY = re.compile(r"[\s()\[\]]*(?<![\w-])OR(?![\w-])[\s()\[\]]*")
_OPENING, _CLOSING = "([", ")]"


def _alternatives(bare: str, reads: list[_Read]) -> list[list[_Read]]:
    """The clauses in query order, those joined by ``OR`` alone (``Smith J[au] OR Li
    X[au]``, ``(Smith J[au] OR Li X[au]) OR Wu Y[au]``) in one group whose brackets
    balance (:func:`_group_span`); an excluded clause or one inside a group after ``NOT``
    stays alone (and is refused when an ``OR`` is beside it), and so do the clauses of a
    group whose brackets hold other terms too (``(asthma AND Smith J[au]) OR Li X[au]``)."""
    groups: list[list[_Read]] = []
    for read in reads:
        prev = groups[-1][-1] if groups else None
        if (
            prev is not None
            and not (prev.clause.excluded or prev.in_group)
            and not (read.clause.excluded or read.in_group)
            and _OR_ONLY.fullmatch(bare, prev.end, read.start)
            and not bare.startswith("AND", read.start)  # Smith J[au] OR AND Li X[au]
        ):
            groups[-1].append(read)
        else:
            groups.append([read])
    out: list[list[_Read]] = []
    for group in groups:
        if len(group) == 1 or _group_span(bare, group) != (-1, -1):
            out.append(group)
        else:
            out.extend([read] for read in group)
    return out


#: What joins two authors in a bracket after NOT: an OR alone.
_OR_ALONE = re.compile(r"\s*(?<![\w-])OR(?![\w-])\s*")


def _excluded_alternatives(bare: str, reads: list[_Read]) -> list[_Read]:
    """``NOT (Smith J[au] OR Li X[au])`` — neither author, as PubMed reads it: each author
    of a bracket that NOT opens and that holds authors joined by OR alone, closing right
    after the last, becomes an exclusion of its own, as ``NOT Smith J[au] NOT Li X[au]``
    (the first's span from NOT, each next one's from the end of the one before, the last's
    to the closing bracket; ``within``: the whole). Any other group after NOT stays as
    read (refused: ``NOT (children AND Smith J[au])``)."""
    out: list[_Read] = []
    i = 0
    while i < len(reads):
        first, j = reads[i], i
        if first.clause.excluded and first.in_group:
            while (
                j + 1 < len(reads)
                and not (reads[j + 1].clause.excluded or reads[j + 1].in_group)
                and _OR_ALONE.fullmatch(bare, reads[j].end, reads[j + 1].start)
                and not bare.startswith("AND", reads[j + 1].start)  # OR AND Li X[au]
            ):
                j += 1
        close = _CLOSE_BRACKET.match(bare, reads[j].end) if j > i else None
        if close is not None and _depth(bare[first.start : close.end()]) != 0:
            close = None  # NOT ((Smith J[au] OR Li X[au]) …): more than the one bracket
        if close is None:
            out.append(first)
            i += 1
            continue
        whole = (first.start, close.end())
        for k in range(i, j + 1):
            r = reads[k]
            out.append(_Read(
                replace(r.clause, excluded=True),
                r.start if k == i else reads[k - 1].end,
                close.end() if k == j else r.end,
                False,
                whole,
            ))  # fmt: skip
        i = j + 1
    return out


def _depth(text: str) -> int:
    """Brackets ``text`` opens less those it closes."""
    return sum(1 if m.group(0) in _OPENING else -1 for m in _GROUP_TOKENS.finditer(text))


def _group_span(bare: str, group: list[_Read]) -> tuple[int, int]:
    """Where alternative authors lie in ``bare``, over the brackets their ``OR``s leave
    open (``(Smith J[au] OR Li X[au]) OR Wu Y[au]`` whole); ``(-1, -1)`` when those
    brackets close or open beyond what lies right beside the group (other terms share
    them)."""
    depth = low = 0
    for prev, read in zip(group, group[1:], strict=False):
        for ch in bare[prev.end : read.start]:
            depth += 1 if ch in _OPENING else -1 if ch in _CLOSING else 0
            low = min(low, depth)
    start, end = group[0].start, group[-1].end
    for _ in range(-low):  # brackets closed inside that opened before the first
        start = len(bare[:start].rstrip())
        if not start or bare[start - 1] not in _OPENING:
            return -1, -1
        start -= 1
    for _ in range(depth - low):  # brackets opened inside that close after the last
        end += len(bare[end:]) - len(bare[end:].lstrip())
        if end >= len(bare) or bare[end] not in _CLOSING:
            return -1, -1
        end += 1
    return start, end


def _alone_or_bracketed(query: str, bare: str, start: int, end: int) -> str | None:
    """``None`` when alternative authors at ``start:end`` are read as one group: in
    brackets of their own, or first in the query (read left to right: ``Smith J[au] OR
    Li X[au] AND asthma``; a quoted phrase before them is a term too); else the problem
    (with ``{group}``)."""
    before, after = bare[:start].rstrip(), bare[end:].lstrip()
    if not query[:start].strip() or (before.endswith(tuple(_OPENING))
                                     and after.startswith(tuple(_CLOSING))):  # fmt: skip
        return None
    return ("alternative authors beside other terms need brackets of their own: "
            "asthma AND {group}")  # fmt: skip


#: A closing bracket, and the tokens :func:`_or_beside` reads (in the query with its
#: quoted phrases blanked: their operators are words of them).
_CLOSE_BRACKET = re.compile(r"\s*[)\]]")
_OR_TOKENS = re.compile(r"\(|\)|(?<![\w-])OR(?![\w-])")
_GROUP_TOKENS = re.compile(r"[(\[]|[)\]]")


def _in_not_group(bare: str, start: int, end: int) -> bool:
    """Whether the clause at ``start:end`` (its NOT and brackets included when NOT takes
    it) lies inside a bracket that a NOT opens (``NOT (children AND Smith J[au])``):
    the group's other terms would be excluded or searched unlike what it says."""
    depth = 0
    for m in reversed(list(_GROUP_TOKENS.finditer(bare, 0, start))):
        depth += 1 if m.group(0) in ")]" else -1
        if depth < 0:  # a bracket holding the clause
            if _ends_with(bare[: m.start()].rstrip(), "NOT"):
                return True
            depth = 0
    return False


def _or_beside(bare: str, start: int, end: int) -> bool:
    """Whether the clause at ``start:end`` of ``bare`` (quotes blanked) is one side of an
    OR, read left to right as PubMed does: an OR after it at its level or outside its
    brackets (``asthma AND Smith J[au] OR copd``: (asthma AND Smith J) OR copd), or one
    beside a bracket holding it (``copd OR (asthma AND Smith J[au])``). An OR before it
    at its level joins what comes before (``"a" OR "b" AND Smith J[au]``: (a OR b) AND
    Smith J), which is searched so."""
    depth = low = 0
    for m in _OR_TOKENS.finditer(bare, end):
        token = m.group(0)
        depth += 1 if token == "(" else -1 if token == ")" else 0
        low = min(low, depth)
        if token == "OR" and depth <= low:  # not inside a bracket opened after it
            return True
    depth = 0
    for m in reversed(list(_OR_TOKENS.finditer(bare, 0, start))):
        token = m.group(0)
        depth += 1 if token == ")" else -1 if token == "(" else 0
        if token == "OR" and depth < 0:
            return True
    return False


def _ends_with(text: str, word: str) -> bool:
    return text.endswith(word) and (len(text) == len(word) or not text[-len(word) - 1].isalnum())


def _name_before(
    query: str, floor: int, end: int, full: bool = False, collective: bool = False
) -> tuple[int, str, str | None]:
    """The author name before a tag at ``end`` (no further back than ``floor``): where it
    starts, the name (initials joined: ``J.A.``, ``J-H``, ``J A`` → ``JA``; PubMed's
    inverted ``Smith, J.A.`` and, for a full name tag (``full``), ``Smith, John``, without
    the comma), and a problem (a message with :data:`_TAG_MARK` where the tag goes) if it
    cannot be read. A
    ``collective`` tag (``[cn]``) takes the text before it whole as a group's name."""
    if end > floor and query[end - 1] in CLOSE:  # "van der Berg J"[au]
        opening = max(query.rfind(q, floor, end - 1) for q in OPEN)
        if opening >= 0:
            return opening, " ".join(_joined(query[opening + 1 : end - 1].split())), None
    start, explicit = floor, False
    for m in _BOUNDARY.finditer(query, floor, end):
        start, explicit = m.end(), m.group(0) in _EXPLICIT
    text = query[start:end]
    start += len(text) - len(text.lstrip())
    typed = text.split()
    name = " ".join(typed)
    if not typed:
        return start, name, (f"{_TAG_MARK} follows no name: write the author before it, as "
                             "Smith J[au]")
    if not all(_WORD.fullmatch(w) for w in typed):
        return start, name, (f"is {name!r} an author's name? Write the author before {_TAG_MARK} "
                             f"as a surname and its initials (Smith J{_TAG_MARK}), or in quotes")
    ops = [i for i, w in enumerate(typed[:-1]) if w in _LOWER_OPERATORS]
    if ops and not collective:  # asthma and Smith J[au], Smith J[au] or Li X[au]
        a, b = [m.span() for m in re.finditer(r"\S+", query[start:end])][ops[-1]]
        return start, name, _capitals(query, start + a, start + b)
    words = _joined(typed)
    if query[:start].rstrip().endswith(","):  # Smith, J.A.[au], Smith, John[fau]
        comma = query.rindex(",", floor, start)
        back = floor
        for m in _BOUNDARY.finditer(query, floor, comma):
            back, explicit = m.end(), m.group(0) in _EXPLICIT
        surname = query[back:comma].split()
        initials = len(words) == 1 and _initials(words[0]) and words[0].isupper()
        named = bool(surname) and all(_WORD.fullmatch(w) for w in surname) and \
            not _plain(surname[-1]) and len(words) <= 2  # fmt: skip
        if named and (initials or full):
            start = back + len(query[back:comma]) - len(query[back:comma].lstrip())
            typed = words = [*surname, *words]
            name = " ".join(typed)
        elif named:
            other = " ".join(surname)
            return start, name, (f"is {other!r} part of the author's name? Write it without "
                                 f"the comma ({other} {name}{_TAG_MARK}), or put AND before the "
                                 f"author ({other} AND {name}{_TAG_MARK})")
    if collective:  # a group's name: whole, but for words in lower case before it
        return _group_name(query, start, typed, explicit)
    core = words[next((i for i, w in enumerate(words) if w.lower() not in _PARTICLES),
                      len(words)):]  # fmt: skip
    # a word in lower case or capitals before a capitalised one (asthma Smith, COPD Smith)
    # is a topic's; after an AND, NOT or comma the rest names the author (Garcia Lopez M);
    # first, or after a bracket, a surname and its initials at most (Smith J)
    mixed = any(_plain(a) and _titled(b) for a, b in zip(core, core[1:], strict=False)
                if a.lower() not in _PARTICLES)  # fmt: skip
    loose = len(core) > 2 or (len(core) == 2 and not _initials(core[1]))
    if mixed or (loose and not explicit):
        guess = 2 if _initials(words[-1]) and len(words) > 2 else 1
        topic, author = " ".join(typed[:-guess]), " ".join(words[-guess:])
        split = f"put AND between the topic and the author ({topic} AND {author}{_TAG_MARK})"
        whole = f"quote the whole name (\"{' '.join(words)}\"{_TAG_MARK})"
        first, second = (split, whole) if mixed else (whole, split)
        return start, name, (f"which words of {name!r} name the author? "
                             f"{first[0].upper()}{first[1:]}, or {second}")
    return start, " ".join(words), None


def _group_name(
    query: str, start: int, typed: list[str], explicit: bool
) -> tuple[int, str, str | None]:
    """A ``[cn]`` name (``ATLAS Collaboration``, ``Society for Maternal-Fetal Medicine``):
    the text before the tag whole; first or after a bracket, words in lower case before
    its first capitalised one are a topic's (``asthma World Health Organization``), and a
    bracket just before it may be the name's own (``… (COG-UK) Consortium``)."""
    name = " ".join(typed)
    if query[:start].rstrip().endswith(")"):
        return start, name, (f"does the bracket before {name!r} belong to the group's "
                             "name? Quote the whole name (\"… (COG-UK) Consortium\"[cn])")
    lead = next((i for i, w in enumerate(typed) if not w.islower()), len(typed))
    if lead and not explicit and lead < len(typed):
        topic, group = " ".join(typed[:lead]), " ".join(typed[lead:])
        return start, name, (f"which words of {name!r} name the group? Put AND between the "
                             f"topic and the group ({topic} AND {group}[cn]), or quote the "
                             f"whole name (\"{name}\"[cn])")
    return start, name, None


#: Boundaries after which the text before a tag is the name whole.
_EXPLICIT = frozenset({"AND", "OR", "NOT", ",", ";"})
#: PubMed's operators typed in lower case: words, which a name never starts after.
_LOWER_OPERATORS = frozenset({"and", "or", "not"})
#: A lower-case ``or`` or ``not`` right after an author clause (``Smith J[au] not copd``):
#: a stop word to the search, so the clause would silently mean AND.
_LOWER_AFTER = re.compile(r"[)\]\s]*?\s(or|not)\s+(?=\S)")


def _capitals(query: str, a: int, b: int) -> str:
    """The problem of a lower-case operator at ``a:b`` of ``query``: the query with it in
    capitals when that is read (the advice is a query that works), else why that is
    refused too."""
    word = query[a:b]
    fixed = query[:a] + word.upper() + query[b:]
    rest = split_authors(fixed)[2]
    if not rest:
        return f"is {word!r} an operator? PubMed's are capitals: {fixed}"
    return f"is {word!r} an operator? PubMed's are in capitals, and as {word.upper()}: {rest[0]}"


#: A name's last word that is its suffix, not initials (``Smith J Jr``; ``Smith JR`` is
#: J. R. Smith).
_SUFFIXES = frozenset({"Jr", "Jr.", "Sr", "Sr.", "jr.", "sr."})


def _joined(words: list[str]) -> list[str]:
    """``words`` with initials joined as PubMed writes them: ``J.A.`` and ``J-H`` one word
    (``JA``, ``JH``), trailing single letters one (``Smith J A`` → ``Smith JA``); a last
    ``Jr`` or ``Sr`` left out (PubMed's author keys hold no suffix; ``JR`` is initials)."""
    if len(words) > 2 and words[-1] in _SUFFIXES:  # not JR, SR: initials; Smith Jr kept
        words = words[:-1]
    out = []
    for w in words:
        bits = [b for b in re.split(r"[.\-]", w) if b]
        if bits and all(len(b) == 1 and b.isalpha() for b in bits) and len(w) > 1:
            w = "".join(bits)  # J.A. / J-H / J.
        out.append(w)
    k = len(out)
    while k > 0 and len(out[k - 1]) == 1 and out[k - 1].isalpha():
        k -= 1
    return out[:k] + ["".join(out[k:])] if len(out) - k > 1 else out


def _initials(word: str) -> bool:
    return word.isalpha() and len(word) <= 3


def _plain(word: str) -> bool:
    return word.islower() or (word.isupper() and len(word) > 3)


def _titled(word: str) -> bool:
    return len(word) > 1 and word[0].isupper() and not word[1:].isupper() and word[1:] != ""
