"""Search at test time (issue #31): how many views, which sampler, which ranking? The dev table.

    python bench/search.py [--root runs/search] [--checkpoint checkpoints/default] [--limit N] [--workers 2]
                           [--min-prob 0.1] [--max-candidates 4]                                  (make bench-search)

Per arc1-dev task (`--split` for another source; tasks without test outputs are skipped), solve settings at their
defaults otherwise:
1. test-time training once: with one code per task it does not depend on the views (a checkpoint with codes per copy,
   whose test-time training does, is refused);
2. the task's first 32 views (`solve.views_of`; 6 and 16 views are the first 6 and 16 of them) decoded greedily and by
   depth-first search (every grid of probability >= --min-prob, at most --max-candidates per view: a greedy grid
   below the floor is not among them), each sampler in chunks of views [0, 6), [6, 16), [16, 32) timed apart (each
   chunk batched as `solve.decode_views` batches, one thread);
3. each arm, views {6, 16, 32} × sampler {greedy, dfs} × ranking {votes, poe}, ranks the candidates of its first V
   views with `solve.vote` (poe: every candidate scored under those V views, `solve.poe_scores`), timed.
Only the main process reads the tasks' test outputs, to score attempts already fixed.

Per arm: coverage (the true output among the candidates of its V views, per test input, averaged over tasks as pass@2
is: a ceiling for any ranking), pass@2, pass@1, solved tasks, changed-cell accuracy of attempt 1 (scoring.py), and
seconds per task (median, max): test-time training + the arm's decode chunks + its ranking. Chunks decoded apart cost
a little more than one batch of all V views, so the seconds of 16 and 32 views are slight overestimates. No search
budget (`SolveConfig.search_seconds`) cuts anything here: the max column shows which arms fit 120 s. A copy-the-input
row is the baseline.

Each finished task is one line of ROOT/results.jsonl (appended, so an interrupted run resumes: rerun the same
command); `--workers` processes of one torch thread each. Ends with a table and one `RESULT arm=... coverage=...`
line per arm. Tune on the dev set only. Cost, shipped checkpoint, one thread, with other work on the second core
(2026-12-06): 1.9 min per task on the first two dev tasks (20×20 and 21×21 outputs: test-time training 29–44 s,
decoding 32 views 14 s greedy and 7–14 s dfs, PoE over 32 views of the greedy grids 17–59 s).
"""

import argparse
import itertools
import json
import sys
import time
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from onn_arc import evaluate, solve  # evaluate: its task runner (workers) and crash-safe results file
from onn_arc.checkpoint import MODEL_FILE, default_checkpoint, load_checkpoint
from onn_arc.cli.common import number
from onn_arc.config import SolveConfig
from onn_arc.data import Grid, Task, load_source
from onn_arc.errors import TaskError
from onn_arc.model import TinyONN
from onn_arc.scoring import Scorer, ScoreSummary

VIEWS = (6, 16, 32)  # view counts compared; each is the first of the next
SAMPLERS = ("greedy", "dfs")
RANKINGS = ("votes", "poe")
console = Console(width=None if sys.stdout.isatty() else 160)


def arm(views: int, sampler: str, ranking: str) -> str:
    return f"{sampler}-{views}-{ranking}"


ARMS = [(arm(v, s, r), v, s, r) for s in SAMPLERS for v in VIEWS for r in RANKINGS]


def _json(grid: Grid) -> list[list[int]]:
    return [list(row) for row in grid]


def _grid(rows: list[list[int]]) -> Grid:
    return tuple(tuple(row) for row in rows)


def search_task(model: TinyONN, task: Task, cfg: SolveConfig) -> dict[str, Any]:
    """One task's record: every arm's attempts and ranking seconds, each sampler's chunk seconds and candidates (every
    distinct grid of the 32 views with the first view that produced it), test-time training. Never reads the task's
    test outputs; a test input that cannot fit the context gives every arm the copy-the-input guess."""
    record: dict[str, Any] = {"task_id": task.id, "error": None}
    try:
        solve.check_fits(task, model.cfg.max_len)
    except TaskError as e:
        copy = [[_json(pair.input)] * 2 for pair in task.test]
        return record | {"error": str(e), "ttt_seconds": 0.0, "ttt_steps": 0, "decode_seconds": {}, "candidates": {},
                         "arms": {name: {"attempts": copy, "rank_seconds": 0.0} for name, *_ in ARMS}}  # fmt: skip
    views = solve.views_of(model.cfg, task, cfg.model_copy(update={"views": max(VIEWS)}))
    model = solve.with_task_code(model, task, cfg.task_code_init, views)
    tuned, steps, seconds, _ = solve.fine_tune(model, task, cfg, views=views)
    seen = [(view.apply(task), solve.code_of(tuned, task, view)) for view in views]
    record |= {"ttt_seconds": seconds, "ttt_steps": steps, "decode_seconds": {}, "candidates": {}, "arms": {}}
    for sampler in SAMPLERS:
        sampled = cfg.model_copy(update={"sampler": sampler})
        found, chunks = [], []
        for low, high in zip((0, *VIEWS), VIEWS):
            started = time.perf_counter()
            found += solve.decode_views(tuned, seen[low:high], sampled)  # [view][test] -> candidates
            chunks.append(time.perf_counter() - started)
        record["decode_seconds"][sampler] = chunks
        for n in VIEWS:
            for ranking in RANKINGS:
                started = time.perf_counter()
                answers = [
                    solve.vote(views[:n], [f[i] for f in found[:n]], pair.input,
                               partial(solve.poe_scores, tuned, task, views[:n], i) if ranking == "poe" else None,
                               ranking)  # fmt: skip
                    for i, pair in enumerate(task.test)
                ]
                record["arms"][arm(n, sampler, ranking)] = {
                    "attempts": [[_json(grid) for grid in a.attempts] for a in answers],
                    "rank_seconds": time.perf_counter() - started,
                }
        record["candidates"][sampler] = [
            [{"grid": _json(c.grid), "first_view": min(c.views)} for c in answer.candidates] for answer in answers
        ]  # the last answers: 32 views
    return record


def run(tasks: list[Task], model: TinyONN, folder: Path, cfg: SolveConfig, path: Path, workers: int) -> None:
    """Search every task not yet in `path`, appending each record as it finishes; one torch thread per task."""
    done = evaluate.read_results(path)
    pending = [t for t in tasks if t.id not in done]
    console.print(f"{len(tasks) - len(pending)} of {len(tasks)} tasks done before; searching {len(pending)}")
    counted = itertools.count(1)

    def finished(record: dict[str, Any]) -> None:
        evaluate.append_result(path, record)
        decoded = ", ".join(f"{s} {sum(record['decode_seconds'].get(s, [0])):.1f}" for s in SAMPLERS)
        poe = record["arms"][arm(max(VIEWS), "dfs", "poe")]["rank_seconds"]
        console.print(
            f"[{next(counted)}/{len(pending)}] {record['task_id']}: ttt {record['ttt_seconds']:.1f} s, decode "
            f"{decoded} s, poe (dfs, {max(VIEWS)} views) {poe:.1f} s"
            + (f" ({record['error']})" if record["error"] else ""),
            soft_wrap=True,
        )

    torch.set_num_threads(1)
    evaluate.run_tasks(pending, partial(search_task, cfg=cfg), finished, model, folder, workers, threads=1)


def coverage(tasks: list[Task], records: dict[str, dict], sampler: str, views: int) -> float:
    """Per task, the fraction of test inputs whose true output is among the candidates of the first `views` views;
    the mean over tasks."""
    per_task = []
    for task in tasks:
        found = records[task.id]["candidates"].get(sampler) or [[] for _ in task.test]  # none where solving failed
        hits = [
            any(c["first_view"] < views and _grid(c["grid"]) == pair.output for c in candidates)
            for candidates, pair in zip(found, task.test, strict=True)
        ]
        per_task.append(sum(hits) / len(hits))
    return sum(per_task) / len(per_task)


def score(tasks: list[Task], records: dict[str, dict], name: str) -> ScoreSummary:
    scorer = Scorer()
    for task in tasks:
        attempts = [tuple(map(_grid, pair)) for pair in records[task.id]["arms"][name]["attempts"]]
        scorer.update(task.id, attempts, task.test)
    return scorer.result()


def arm_seconds(record: dict[str, Any], name: str, views: int, sampler: str) -> float:
    """Test-time training, the decode chunks of the first `views` views, the arm's ranking."""
    chunks = record["decode_seconds"].get(sampler, [])[: VIEWS.index(views) + 1]
    return record["ttt_seconds"] + sum(chunks) + record["arms"][name]["rank_seconds"]


def report(tasks: list[Task], records: dict[str, dict]) -> None:
    """The table and the RESULT lines."""
    table = Table(title=f"search at test time on {len(tasks)} tasks", box=None, pad_edge=False)
    for column in ("arm", "views", "sampler", "ranking", "coverage", "pass@2", "pass@1", "solved", "changed-cell",
                   "s/task", "max s"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("arm", "sampler", "ranking") else "right")
    rows = []
    for name, views, sampler, ranking in ARMS:
        s = score(tasks, records, name)
        seconds = [arm_seconds(records[t.id], name, views, sampler) for t in tasks]
        rows.append((name, str(views), sampler, ranking, coverage(tasks, records, sampler, views), s, seconds))
    copied = score(tasks, records, ARMS[0][0]).copy_baseline
    rows.append(("copy", "-", "-", "-", copied.pass_at_2, copied, None))
    for name, views, sampler, ranking, covered, s, seconds in rows:
        timing = ("-", "-") if seconds is None else (f"{median(seconds):.1f}", f"{max(seconds):.1f}")
        table.add_row(
            name, views, sampler, ranking, f"{covered:.4f}", f"{s.pass_at_2:.4f}", f"{s.pass_at_1:.4f}",
            str(s.solved_tasks), number(s.changed_cell_accuracy), *timing,
        )  # fmt: skip
    console.print(table)
    for name, views, sampler, ranking, covered, s, seconds in rows:
        timing = "" if seconds is None else f" sec_median={median(seconds):.1f} sec_max={max(seconds):.1f}"
        print(
            f"RESULT arm={name} views={views} sampler={sampler} ranking={ranking} coverage={covered:.4f} "
            f"pass_at_2={s.pass_at_2:.4f} pass_at_1={s.pass_at_1:.4f} solved={s.solved_tasks} "
            f"changed_cell={number(s.changed_cell_accuracy, 4)}{timing} tasks={len(tasks)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/search"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    parser.add_argument("--split", default="arc1-dev", help="tasks: a split, a folder or a task file")
    parser.add_argument("--limit", type=int, default=None, help="the first N tasks only")
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    parser.add_argument("--ttt-steps", type=int, default=SolveConfig().ttt_steps)
    parser.add_argument("--min-prob", type=float, default=0.1, help="dfs: a grid's probability floor")
    parser.add_argument("--max-candidates", type=int, default=4, help="dfs: grids per view at most")
    args = parser.parse_args()
    folder = args.checkpoint or default_checkpoint()
    loaded = load_checkpoint(folder)
    tasks = [t for t in load_source(args.split) if t.has_test_outputs][: args.limit]
    if loaded.model.cfg.copies:
        sys.exit(f"error: {folder} has codes per copy: its test-time training depends on the views; not supported")
    if leaked := loaded.meta.data.leaks_into(tasks):
        sys.exit(f"error: {folder} was trained on the test outputs of {', '.join(leaked[:3])}: choose other tasks")
    cfg = SolveConfig(ttt_steps=args.ttt_steps, min_prob=args.min_prob, max_candidates=args.max_candidates)
    settings = {"weights_sha256": loaded.meta.files[MODEL_FILE], "solve": cfg.model_dump(mode="json"), "views": VIEWS}
    args.root.mkdir(parents=True, exist_ok=True)
    saved = args.root / "settings.json"
    if not saved.exists():
        saved.write_text(json.dumps(settings, indent=2))
    elif json.loads(saved.read_text()) != json.loads(json.dumps(settings)):
        sys.exit(f"error: {args.root} holds a run with other settings ({saved}); choose another --root")
    run(tasks, loaded.model, loaded.folder, cfg, args.root / "results.jsonl", args.workers)
    records = evaluate.read_results(args.root / "results.jsonl")
    report(tasks, records)


if __name__ == "__main__":
    main()
