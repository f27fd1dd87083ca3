"""docs/reliability.md cannot drift: its matrix rows are exactly the cases the suite tries, and the table it is
generated from reads back as written. No root needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapport.faults import POINTS
from tests.faults import reliability
from tests.faults.cases import CASES, OFF_FLOW, ONE, TWO


def test_the_doc_has_one_row_per_case_of_the_matrix() -> None:
    rows = reliability.doc_rows()
    assert rows, f"{reliability.DOC} has no table; regenerate it (see its first lines)"
    matrix = {r.key for r in rows if r.fault in POINTS}  # the adversity rows name their faults in words
    assert matrix == set(CASES), {
        "in the doc, not tried": sorted(matrix - set(CASES)),
        "tried, not in the doc": sorted(set(CASES) - matrix),
    }


def test_the_doc_names_the_points_off_the_flow() -> None:
    text = reliability.DOC.read_text(encoding="utf-8")
    assert all(f"`{point}`" in text for point in OFF_FLOW)


def test_rows_merge_by_key_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results, doc = tmp_path / "results.jsonl", tmp_path / "reliability.md"
    monkeypatch.setenv(reliability.RESULTS_ENV, str(results))  # not the session's results: this row is made up
    old = reliability.Row("a.b", "kill", ONE, "ok", {"thawed": True}, "old")
    kept = reliability.Row("c.d", "raise", TWO, "X|Y", {"thawed": False, "no_leftovers": True}, "kept")
    doc.write_text(reliability.render([old, kept], "# title"))
    assert reliability.write_doc("# title", results, doc) == 0  # nothing recorded: the doc is left alone
    reliability.record("a.b", "kill", {"thawed": False}, "new | piped", process=ONE, outcome="JOB_INTERRUPTED")
    assert reliability.write_doc("# title", results, doc) == 1
    by_key = {r.key: r for r in reliability.doc_rows(doc)}
    assert by_key[old.key] == reliability.Row("a.b", "kill", ONE, "JOB_INTERRUPTED", {"thawed": False}, "new | piped")
    assert by_key[kept.key] == kept
    assert doc.read_text().startswith("# title")


def test_a_note_shows_no_test_temporary_directory() -> None:
    note = "hook /tmp/pytest-of-root/pytest-462/t_0/hooks/h.sh failed; repo /tmp/pytest-of-root/pytest-9/r0/repo"
    row = reliability.Row("a.b", "kill", ONE, "ok", {}, note)
    assert row.cells([])[-1] == "hook $TMP/hooks/h.sh failed; repo $TMP/repo"
