"""bench/rerank.py: each ranking rule rescored on stored candidates whose right answers we place by hand."""

import json
import subprocess
import sys
from pathlib import Path

from onn_arc.data import load_split

RERANK = Path(__file__).resolve().parent.parent / "bench" / "rerank.py"


def _wrong(grid, k):
    rows = [list(row) for row in grid]
    rows[0][0] = (rows[0][0] + k) % 10
    return rows


def _candidate(grid, votes, logprob, **poe):
    return {"grid": [list(row) for row in grid], "votes": votes, "logprob": logprob, "views": list(range(votes))} | poe


def _rerank(folder: Path, records: list[dict]) -> tuple[dict[str, dict], str]:
    """The RESULT lines of bench/rerank.py on `records`, by rule, and its other output."""
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = subprocess.run(
        [sys.executable, str(RERANK), str(folder), "--split", "arc1-dev"], capture_output=True, text=True, check=True
    )
    lines = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return {d["rule"]: d for d in (dict(pair.split("=", 1) for pair in line) for line in lines)}, proc.stdout + proc.stderr


def test_rules_rank_the_stored_candidates(tmp_path):
    a, b = [t for t in load_split("arc1-dev") if len(t.test) == 1][:2]
    (pa,), (pb,) = a.test, b.test
    records = [
        # the copy has the most votes, the truth is second: votes submits it second, copy-last first
        {"task_id": a.id, "candidates": [[_candidate(pa.input, 3, -1.0), _candidate(pa.output, 2, -2.0),
                                          _candidate(_wrong(pa.output, 1), 1, -0.5)]]},
        # the truth is third: only the oracle finds it
        {"task_id": b.id, "candidates": [[_candidate(_wrong(pb.output, 1), 3, -1.0),
                                          _candidate(_wrong(pb.output, 2), 2, -1.0), _candidate(pb.output, 1, -9.0)]]},
    ]  # fmt: skip
    rows, output = _rerank(tmp_path, records)
    assert set(rows) == {"votes", "copy-last", "mean-logprob", "oracle"}  # no stored PoE scores: poe says so, once
    assert "poe: skipped: 2 of 2 tasks have no stored PoE scores" in output and "Traceback" not in output
    assert (rows["votes"]["pass_at_2"], rows["votes"]["pass_at_1"], rows["votes"]["copies"]) == ("0.5000", "0.0000", "1")
    assert (rows["copy-last"]["pass_at_2"], rows["copy-last"]["pass_at_1"], rows["copy-last"]["copies"]) == (
        "0.5000", "0.5000", "0",
    )  # fmt: skip
    assert rows["mean-logprob"]["pass_at_2"] == "0.0000"  # a's truth has the lowest mean log-prob of the three
    assert (rows["oracle"]["pass_at_2"], rows["oracle"]["solved"], rows["oracle"]["tasks"]) == ("1.0000", "2", "2")


def test_the_poe_rule_ranks_by_the_stored_score_with_a_copy_last(tmp_path):
    a, b = [t for t in load_split("arc1-dev") if len(t.test) == 1][:2]
    (pa,), (pb,) = a.test, b.test
    records = [
        # the copy has the best score, then the truth, with the fewest votes
        {"task_id": a.id, "candidates": [[_candidate(pa.input, 3, -1.0, poe=-2.0), _candidate(pa.output, 1, -2.0, poe=-3.0),
                                          _candidate(_wrong(pa.output, 1), 2, -0.5, poe=-9.0)]]},
        # an unscored grid (too long for the context in some view) ranks after the scored ones, the truth among them
        {"task_id": b.id, "candidates": [[_candidate(_wrong(pb.output, 1), 3, -1.0, poe=None),
                                          _candidate(_wrong(pb.output, 2), 2, -1.0, poe=-8.0),
                                          _candidate(pb.output, 1, -9.0, poe=-7.0)]]},
    ]  # fmt: skip
    rows, output = _rerank(tmp_path, records)
    assert "skipped" not in output
    assert (rows["poe"]["pass_at_2"], rows["poe"]["pass_at_1"], rows["poe"]["copies"]) == ("1.0000", "1.0000", "0")
    assert (rows["votes"]["pass_at_2"], rows["votes"]["pass_at_1"]) == ("0.0000", "0.0000")
