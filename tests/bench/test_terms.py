"""``bench.terms``: the retired (kind, term) index's cost, on a tiny table."""

from __future__ import annotations

import random

import pytest

from bench import terms as bench


def test_term_rows_are_unique_keys_with_a_language_types_and_descriptors() -> None:
    rows = bench.term_rows(1, 2000, random.Random(3))
    keys = [(pmid, kind, term) for pmid, kind, term, _ in rows]
    assert len(keys) == len(set(keys))  # the primary key holds
    by_kind: dict[str, set[int]] = {}
    for pmid, kind, _, _ in rows:
        by_kind.setdefault(kind, set()).add(pmid)
    assert all(len(by_kind[k]) == 2000 for k in ("lang", "ptype", "mesh"))
    assert 5.0 < len(rows) / 2000 < 7.5
    top = sum(1 for _, kind, term, _ in rows if kind == "mesh" and term == "Descriptor 00001")
    assert top > 2000 // 2  # a Humans-like descriptor on most records


def test_the_table_writes_both_stores_stretch_by_stretch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench.main(["--records", "12000", "--stretches", "2", "--only", "sqlite"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| sqlite")]
    assert [r.split(" | ")[1] for r in rows] == ["0–10,000", "10,000–12,000"]
    for r in rows:
        with_s, without_s, ratio = (float(c.strip(" |×")) for c in r.split(" | ")[3:6])
        assert with_s > 0 and without_s > 0 and ratio == pytest.approx(with_s / without_s, 0.02)
