"""``bench.filtered``: the exact fallback of a filtered search past an IVF's probed lists."""

from __future__ import annotations

import pytest

from bench import filtered


def test_the_table_measures_both_paths_and_the_fallback_answers_every_passing_article(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert filtered.main(["--sizes", "5000", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.strip("| ").split(" | ") for line in out.splitlines()
            if line.startswith("| 5,000 |")]  # fmt: skip
    assert len(rows) == 2 * len(filtered.SHARES)
    for _n, share, passing, asked, answered, path, ms, _per, projected in rows:
        passing_n, asked_n, answered_n = (int(v.replace(",", "")) for v in (passing, asked,
                                                                           answered))
        assert float(ms) >= 0
        if path == "IVF":  # within the probed lists: the index's own answer, unfiltered
            assert asked_n == answered_n == 200 and projected == "—"
        else:  # past them: every passing article scored, the best `asked` of them
            assert path == "exact"
            assert answered_n == min(passing_n, asked_n), (share, passing, asked, answered)
    projections = {r[1]: r[8] for r in rows if r[5] == "exact"}
    assert projections["0.1 %"].endswith("from the first page")
    assert projections["1 %"].endswith("on deep pages")
    assert projections["20 %"] == "never falls back"
    assert "exact path costs" in out
