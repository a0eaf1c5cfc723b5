"""The parser's whole output pinned: every field of every item over fixed inputs.

``tests/fixtures/parse_golden.json.gz`` holds a canonical dump of every Record, Deletion
and QuarantineEntry that the parser produced (at the commit that wrote it) from:

* ``pubmed_edge_cases.xml`` (hand-written edge cases, broken records included);
* ``pubmed_generated_120.xml.gz`` (120 generated records: books, deletions, revisions,
  malformed records, retractions, inline markup, MedlineDate and season dates);
* the same generated file with a small ``max_text_chars`` (text-cap quarantines);
* the same file read through the incremental pull parser (root renamed).

Any speed work on the parser must leave this dump unchanged. After an intended change of
the output, rewrite the golden with ``python -m tests.ingest.test_parse_golden`` and
review the diff of the dump (``zcat`` it) before committing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import io
import json
from pathlib import Path
from typing import Any

from ingest.parse import ParseLimits, iter_items
from ingest.records import Item, SourceRef

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = FIXTURES / "parse_golden.json.gz"
EDGE = FIXTURES / "pubmed_edge_cases.xml"
GENERATED = FIXTURES / "pubmed_generated_120.xml.gz"
REF = SourceRef("file", "golden", 1, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def canonical(item: Item) -> dict[str, Any]:
    """One item as a JSON-ready dict: its type and every field (the source left out)."""
    out: dict[str, Any] = {"type": type(item).__name__}
    for f in dataclasses.fields(item):
        if f.name != "source":
            out[f.name] = _plain(getattr(item, f.name))
    if hasattr(item, "source"):
        assert item.source == REF
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    return value


def _pull_document() -> bytes:
    """The generated file with another root element: read by the pull parser."""
    data = gzip.decompress(GENERATED.read_bytes())
    return data.replace(b"PubmedArticleSet", b"PubmedArticleSetX")


def dumps() -> dict[str, list[dict[str, Any]]]:
    """The canonical dump of every golden input."""
    return {
        "edge": [canonical(i) for i in iter_items(EDGE, source_ref=REF)],
        "generated": [canonical(i) for i in iter_items(GENERATED, source_ref=REF)],
        "generated_text_cap": [
            canonical(i)
            for i in iter_items(GENERATED, source_ref=REF, limits=ParseLimits(max_text_chars=1800))
        ],
    }


def test_parser_output_matches_the_golden_dump() -> None:
    golden = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    now = json.loads(json.dumps(dumps()))
    assert sorted(now) == sorted(golden)
    for name, items in golden.items():
        got = now[name]
        for i, (want, have) in enumerate(zip(items, got, strict=False)):
            assert have == want, f"{name}: item {i} differs"
        assert len(got) == len(items), name


def test_golden_inputs_cover_every_kind_of_item() -> None:
    golden = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    kinds = {item["type"] for items in golden.values() for item in items}
    assert kinds == {"Record", "Deletion", "QuarantineEntry"}
    generated = golden["generated"]
    assert any(i["type"] == "Record" and i["is_book"] for i in generated)
    capped = golden["generated_text_cap"]
    assert any("LITPULSE_MAX_TEXT_CHARS" in i.get("reason", "") for i in capped)


def test_pull_parser_gives_the_same_items() -> None:
    golden = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    pulled = [canonical(i) for i in iter_items(io.BytesIO(_pull_document()), source_ref=REF)]
    assert json.loads(json.dumps(pulled)) == golden["generated"]


if __name__ == "__main__":  # rewrite the golden (review the diff before committing)
    text = json.dumps(dumps(), ensure_ascii=False, sort_keys=True, indent=0)
    GOLDEN.write_bytes(gzip.compress(text.encode(), mtime=0))
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
