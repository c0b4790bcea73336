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


def _candidate(grid, votes, logprob):
    return {"grid": [list(row) for row in grid], "votes": votes, "logprob": logprob, "views": list(range(votes))}


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
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = subprocess.run(
        [sys.executable, str(RERANK), str(tmp_path), "--split", "arc1-dev"], capture_output=True, text=True, check=True
    )
    lines = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    rows = {d["rule"]: d for d in (dict(pair.split("=", 1) for pair in line) for line in lines)}
    assert set(rows) == {"votes", "copy-last", "mean-logprob", "oracle"}
    assert (rows["votes"]["pass_at_2"], rows["votes"]["pass_at_1"], rows["votes"]["copies"]) == ("0.5000", "0.0000", "1")
    assert (rows["copy-last"]["pass_at_2"], rows["copy-last"]["pass_at_1"], rows["copy-last"]["copies"]) == (
        "0.5000", "0.5000", "0",
    )  # fmt: skip
    assert rows["mean-logprob"]["pass_at_2"] == "0.0000"  # a's truth has the lowest mean log-prob of the three
    assert (rows["oracle"]["pass_at_2"], rows["oracle"]["solved"], rows["oracle"]["tasks"]) == ("1.0000", "2", "2")
