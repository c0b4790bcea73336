"""The training-length curve: what does more CPU time buy the shipped recipe? Trains the pair format in stages,
each stage starting from the previous one's weights (`onn-arc train --init`, a fresh optimizer and lr schedule),
and scores every stage on dev tasks it never trained on.

    python bench/curve.py [--root runs/curve] [--stages 1800 1800 3600 7200 14400] [--limit 20]     (make curve)

Data: training on `arc1-train-nodev` (320 ARC-AGI-1 training tasks), scoring on the first `--limit` tasks of
`arc1-dev` (the 80 held out of it; the formats bench scores the same tasks). Training: `onn-arc train`, pair format,
base preset, `--stages` seconds of wall-clock each (the defaults end at 0.5, 1, 2, 4 and 8 hours in all), all CPU
threads, `--precision auto`, seed = stage number. Scoring: `onn-arc eval` with the default solve settings (test-time
training, 6 views, greedy), two workers of one thread each.

Everything resumes: a finished stage or evaluation is reused, an interrupted one continues where its last periodic
checkpoint left it (rerun the same command; a later session can add stages). The last stage is the one to ship
(`make ship RUN=runs/curve/stage-N`). Ends with a table and one `RESULT key=value ...` line per stage.
"""

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onn_arc.cli.common import number

sys.path.insert(0, str(Path(__file__).parent))
from common import onn_arc, training_summary  # bench/common.py, beside this script

TRAIN_SOURCE, DEV = "arc1-train-nodev", "arc1-dev"
console = Console(width=None if sys.stdout.isatty() else 160)


def train(root: Path, stage: int, seconds: float) -> Path:
    """Train stage `stage` (1-based) for `seconds` from the previous stage's weights; its run folder."""
    out, log = root / f"stage-{stage}", root / f"stage-{stage}.train.log"
    if (out / "checkpoint").exists():  # started before: its saved config has everything
        onn_arc(["train", "--out", str(out), "--resume"], log, console)
        return out
    args = [
        "train", "--out", str(out), "--format", "pairs", "--size", "base", "--source", TRAIN_SOURCE,
        "--seconds", str(seconds), "--steps", "1000000", "--checkpoint-every", "200", "--seed", str(stage),
    ]  # fmt: skip
    if stage > 1:
        args += ["--init", str(root / f"stage-{stage - 1}" / "checkpoint")]
    onn_arc(args, log, console)
    return out


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
    parser.add_argument("--limit", type=int, default=20, help="first N arc1-dev tasks (80: all of them)")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)

    title = f"training-length curve: pair format, base preset, {TRAIN_SOURCE}; first {args.limit} {DEV} tasks"
    table = Table(title=title)
    columns = ["stage", "hours", "steps", "train loss", "pass@2", "solved", "changed", "shape", "cells", "tuned loss"]
    columns.append("s/task")
    for column in columns:
        table.add_column(column, justify="right")
    hours = 0.0
    for stage, seconds in enumerate(args.stages, start=1):
        run = train(args.root, stage, seconds)
        s, t = evaluate(run, args.limit), training_summary(run)
        hours += t["train_min"] / 60
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
        "hours: training wall-clock, summed over the stages so far; tuned loss: the true outputs' teacher-forced "
        "loss under the model after test-time training"
    )
    console.print(table)


if __name__ == "__main__":
    main()
