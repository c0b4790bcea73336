"""The training-length curve: what does more CPU time buy the shipped recipe? Trains the model in stages,
each stage starting from the previous one's weights (`onn-arc train --init`, a fresh optimizer and lr schedule),
and scores every stage on dev tasks it never trained on.

    python bench/curve.py [--root runs/curve] [--stages 1800 1800 3600 7200 14400] [--limit 80]     (make curve)
    python bench/curve.py --root runs/chain --stages 7200 --source arc1-train-nodev arc2-train-new     # the chain to ship:
    make ship RUN=runs/chain/stage-1                                                                    # stage 1, shipped;
    python bench/curve.py --root runs/chain --init checkpoints/default --stages 9000 --source ...       # then stage 2, ...

Data: training on `--source` (default `arc1-train-nodev`, the 320 ARC-AGI-1 training tasks outside the dev set),
scoring on the first `--limit` tasks of `arc1-dev` (all 80 held out by default).
Training: `onn-arc train`, base preset, `--stages` seconds of wall-clock each (the defaults end at 0.5,
1, 2, 4 and 8 hours in all), all CPU threads, `--precision auto`, seed = stage number. The first stage starts from
`--init`'s weights when given (stages are then numbered after its chain). Scoring: `onn-arc eval` with the default
solve settings (test-time training, 6 views, greedy), two workers of one thread each.

Everything resumes: a finished stage or evaluation is reused, an interrupted one continues where its last periodic
checkpoint left it (rerun the same command; a later session can add stages, and a larger `--limit` extends the
evaluations). The last stage is the one to ship (`make ship RUN=runs/curve/stage-N`). Ends with a table and one
`RESULT key=value ...` line per stage; hours are the checkpoint's training step-time over its whole chain.
"""

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onn_arc.checkpoint import load_checkpoint
from onn_arc.cli.common import number

sys.path.insert(0, str(Path(__file__).parent))
from common import onn_arc, train_pairs, training_summary  # bench/common.py, beside this script

DEV = "arc1-dev"
console = Console(width=None if sys.stdout.isatty() else 160)


def evaluate(run: Path, limit: int) -> dict:
    args = [
        "eval", "--split", DEV, "--limit", str(limit), "--checkpoint", str(run / "checkpoint"),
        "--out", str(run / "eval"), "--workers", "2",
    ]  # fmt: skip
    onn_arc(args, run.with_name(f"{run.name}.eval.log"), console)
    return json.loads((run / "eval" / "report.json").read_text())["summary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/curve"))
    parser.add_argument("--stages", type=float, nargs="+", default=[1800, 1800, 3600, 7200, 14400],
                        help="training seconds of each stage, in order")  # fmt: skip
    parser.add_argument("--source", nargs="+", default=["arc1-train-nodev"], help="training data of every stage")
    parser.add_argument("--init", type=Path, help="the first stage starts from this checkpoint's weights")
    parser.add_argument("--limit", type=int, default=80, help="first N arc1-dev tasks (80: all of them)")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)

    sources = " + ".join(args.source)
    title = f"training-length curve: base preset, {sources}; first {args.limit} {DEV} tasks"
    table = Table(title=title)
    columns = ["stage", "hours", "steps", "train loss", "pass@2", "solved", "changed", "shape", "cells", "tuned loss"]
    for column in [*columns, "s/task"]:
        table.add_column(column, justify="right")
    init, first = args.init, 1 + (len(load_checkpoint(args.init).meta.stages) if args.init else 0)
    for stage, seconds in enumerate(args.stages, start=first):
        run = args.root / f"stage-{stage}"
        train_pairs(run, seconds, args.source, ["--seed", str(stage), *(["--init", str(init)] if init else [])], console)
        init = run / "checkpoint"
        s, t = evaluate(run, args.limit), training_summary(run)
        hours = load_checkpoint(init).meta.totals()["seconds"] / 3600
        table.add_row(
            str(stage), f"{hours:.2f}", str(t["steps"]), f"{t['train_loss']:.3f}", f"{s['pass_at_2']:.3f}",
            f"{s['solved_tasks']}/{s['scored_tasks']}", f"{s['changed_cell_accuracy']:.3f}",
            f"{s['shape_correct']:.2f}", f"{s['cell_accuracy']:.3f}", number(s.get("tuned_tf_loss")),
            f"{s['seconds_per_task']:.1f}",
        )  # fmt: skip
        values = {"hours": hours, "pass2": s["pass_at_2"], "changed": s["changed_cell_accuracy"]}
        values |= {"shape": s["shape_correct"], "cells": s["cell_accuracy"], "steps": t["steps"]}
        console.print(f"RESULT stage={stage} " + " ".join(f"{k}={v:.4g}" for k, v in values.items()), soft_wrap=True)
    table.caption = (
        "hours: training step-time of the stage's checkpoint, all its stages; tuned loss: the true outputs' "
        "teacher-forced loss under the model after test-time training"
    )
    console.print(table)


if __name__ == "__main__":
    main()
