"""``bench.ingest``'s summary of repeated runs: each round's ratio to the anchor of that round."""

from __future__ import annotations

from bench import ingest as bench


def test_each_round_is_paired_with_the_anchor_run_of_the_same_round() -> None:
    runs: dict[str, list[dict[str, float] | str]] = {
        "postgresql-w2": [{"n": 20_000, "wall": 4.0}, {"n": 20_000, "wall": 4.0}, "failed"],
        bench.ANCHOR: [{"n": 20_000, "wall": 8.0}, {"n": 20_000, "wall": 10.0},
                       {"n": 20_000, "wall": 9.0}],  # fmt: skip
        "sqlite-w2": [{"n": 20_000, "wall": 5.0}, {"n": 20_000, "wall": 4.0},
                      {"n": 20_000, "wall": 3.0}],  # fmt: skip
    }
    lines = bench._paired(runs).splitlines()
    # a path twice as fast as the anchor in round 1 and 2.5x in round 2 (the anchor slowed):
    # paired round by round, not against one median run; a failed round is left out
    assert lines[1] == f"- {bench.LABELS['postgresql-w2']}: 2.00, 2.50 (2.25×)"
    assert lines[2] == f"- {bench.LABELS['sqlite-w2']}: 1.60, 2.50, 3.00 (2.50×)"


def test_one_round_or_no_anchor_gives_no_summary() -> None:
    one: dict[str, list[dict[str, float] | str]] = {
        bench.ANCHOR: [{"n": 1, "wall": 1.0}], "sqlite": [{"n": 1, "wall": 1.0}],
    }  # fmt: skip
    assert bench._paired(one) == ""
    assert bench._paired({"sqlite": [{"n": 1, "wall": 1.0}, {"n": 1, "wall": 1.0}]}) == ""
