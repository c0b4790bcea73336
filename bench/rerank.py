"""Ranking rules for the candidates an evaluation already decoded: what would pass@2 be with another rule? Offline:
no model runs, it re-reads the candidates `onn-arc eval` stored (results.jsonl) and rescores them.

    python bench/rerank.py runs/chain/stage-3/eval --split arc1-dev

Rules (each ranks the distinct grids of one test input; the top two are the attempts, through `two_attempts`):
- votes: the views that produced the grid, then their summed log-probability (`solve.vote` until 2026-12-04);
- copy-last: votes, with the grid equal to the test input (the copy guess) ranked last: an ARC output almost
  never equals its input, so the copy is submitted only when nothing else was found (`solve.vote` since);
- mean-logprob: the log-probability per producing view, votes ignored;
- poe: the product-of-experts score (the log-probability summed over every view, `solve.poe_scores`), the copy
  last, as `SolveConfig.ranking="poe"` ranks; only for runs that stored the scores (solved since), else skipped;
- oracle: the right grid wherever it is among the candidates (a ceiling for every rule, not a rule).

Tune rules on a dev split only (arc1-dev, drawn from the training data); score evaluation splits with the default.
Prints a table and one `RESULT rule=... pass_at_2=...` line per rule.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onn_arc.data import Grid, Task, load_split
from onn_arc.scoring import Scorer, ScoreSummary
from onn_arc.solve import Ranked, rank_key, two_attempts

Candidate = dict  # {"grid", "votes", "logprob", "views", "poe"}, as evaluate.py stores them ("poe" since PoE scoring)
Rule = Callable[[list[Candidate], Grid, Grid], list[Grid]]  # (candidates, test input, true output) -> ranked grids


def _grid(rows: list[list[int]]) -> Grid:
    return tuple(tuple(row) for row in rows)


def by_votes(found: list[Candidate], test_input: Grid, truth: Grid) -> list[Grid]:
    return [_grid(c["grid"]) for c in sorted(found, key=lambda c: (-c["votes"], -c["logprob"]))]


def copy_last(found: list[Candidate], test_input: Grid, truth: Grid) -> list[Grid]:
    return sorted(by_votes(found, test_input, truth), key=lambda g: g == test_input)  # stable: votes order kept


def mean_logprob(found: list[Candidate], test_input: Grid, truth: Grid) -> list[Grid]:
    return [_grid(c["grid"]) for c in sorted(found, key=lambda c: -c["logprob"] / c["votes"])]


def poe(found: list[Candidate], test_input: Grid, truth: Grid) -> list[Grid]:
    return [r.grid for r in sorted(map(Ranked.from_json, found), key=rank_key("poe", test_input))]


def oracle(found: list[Candidate], test_input: Grid, truth: Grid) -> list[Grid]:
    grids = by_votes(found, test_input, truth)
    return [truth] if truth in grids else grids


RULES: dict[str, Rule] = {
    "votes": by_votes, "copy-last": copy_last, "mean-logprob": mean_logprob, "poe": poe, "oracle": oracle,
}  # fmt: skip


def without_poe(records: list[dict]) -> int:
    """How many of `records` have a candidate without a stored PoE score (solved before they were stored)."""
    return sum(any("poe" not in c for found in r.get("candidates") or [] for c in found) for r in records)


def rescore(rule: Rule, tasks: list[Task], records: dict[str, dict]) -> tuple[ScoreSummary, int]:
    """The split's score under `rule`, and the test inputs whose first attempt is the input itself."""
    scorer, copies = Scorer(), 0
    for task in tasks:
        attempts = []
        found_per_test = records[task.id].get("candidates") or [[] for _ in task.test]  # none where solving failed
        for found, pair in zip(found_per_test, task.test, strict=True):
            first, second = two_attempts(rule(found, pair.input, pair.output), pair.input)
            copies += first == pair.input
            attempts.append((first, second))
        scorer.update(task.id, attempts, task.test)
    return scorer.result(), copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("eval", type=Path, help="an `onn-arc eval --out` folder (its results.jsonl)")
    parser.add_argument("--split", required=True, help="the split it scored (its tasks' true outputs)")
    args = parser.parse_args()
    path = args.eval / "results.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} not found: give the folder an `onn-arc eval --out` wrote")
    records = {r["task_id"]: r for r in map(json.loads, path.read_text().splitlines())}
    tasks = [t for t in load_split(args.split) if t.id in records]
    tests = sum(len(t.test) for t in tasks)

    table = Table(title=f"ranking rules on {len(tasks)} {args.split} tasks ({tests} test inputs) from {args.eval}")
    for column in ["rule", "pass@2", "pass@1", "solved", "changed", "attempt 1 = input"]:
        table.add_column(column, justify="right")
    lines = []
    for name, rule in RULES.items():
        if name == "poe" and (missing := without_poe([records[t.id] for t in tasks])):
            print(f"poe: skipped: {missing} of {len(tasks)} tasks have no stored PoE scores (solved before they were "
                  "stored); rerun `onn-arc eval` into a new folder")  # fmt: skip
            continue
        s, copies = rescore(rule, tasks, records)
        changed = "-" if s.changed_cell_accuracy is None else f"{s.changed_cell_accuracy:.3f}"
        table.add_row(name, f"{s.pass_at_2:.4f}", f"{s.pass_at_1:.4f}", str(s.solved_tasks), changed, str(copies))
        lines.append(
            f"RESULT rule={name} pass_at_2={s.pass_at_2:.4f} pass_at_1={s.pass_at_1:.4f} solved={s.solved_tasks} "
            f"changed_cell_accuracy={changed} copies={copies} tasks={len(tasks)}"
        )
    Console().print(table)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
