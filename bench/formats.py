"""The format comparison: which sequence format, and which of its parts, make a Tiny-ONN solve tasks it never
trained on? Every recipe gets the same CPU time for training.

    python bench/formats.py [--root runs/formats] [--seconds 600] [--limit 20] [--jobs 2]      (make bench-formats)

Data: training on `arc1-train-nodev` (320 ARC-AGI-1 training tasks), scoring on the first `--limit` tasks of
`arc1-dev` (the 80 training tasks held out of it): recipes are chosen without ever looking at an evaluation task.
Training: `onn-arc train`, base preset, `--seconds` of wall-clock per recipe on one torch thread (`--precision
auto`: bf16 where the CPU has it), seed 0. Scoring: `onn-arc eval` with the default solve settings (test-time
training on each task's demos, 6 views, greedy) unless the recipe says otherwise. Recipes:

    context             today's in-context format: the demos and the test input in one sequence
    pairs               the pair format (DESIGN §3b): one sequence per pair, (row, column, plane) positions, a learned
                        code per task; a new task gets a fresh code (the mean of the trained ones) and test-time
                        training of code + weights
    pairs-nocode        pairs without task codes (model.task_codes = false)
    pairs-2d            pairs without the plane in the positions (model.planes = false)
    pairs-inputloss     pairs with the loss on input grids as well as outputs (--input-loss)
    pairs-codettt       pairs' checkpoint, test-time training of the task's code alone (--ttt-params code)
    pairs-zeroinit      pairs' checkpoint, a new task's code starts at zero (--task-code-init zero)
    transductive        pairs trained jointly with arc1-dev's demos (never its test outputs: --demo-source
                        arc1-dev), then solved with those tasks' trained codes (and test-time training as usual)
    transductive-inputloss   the same from pairs-inputloss: also arc1-dev's test inputs, with the loss on inputs

Each `onn-arc` command is printed as it starts; `--jobs` run at a time, one torch thread each. Everything resumes:
a finished training or evaluation is reused, an interrupted one continues (rerun the same command). Ends with a
table and one `RESULT key=value ...` line per recipe. Changed-cell accuracy is the headline indicator: of the cells
where the true output differs from the test input, the fraction attempt 1 gets right (copying the input scores 0).
"""

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import onn_arc, training_summary  # bench/common.py, beside this script

TRAIN_SOURCE, DEV = "arc1-train-nodev", "arc1-dev"
TRAINED = {  # recipe -> (`onn-arc train` flags beyond the shared budget, [model] settings of a config file)
    "context": (["--format", "context"], {}),
    "pairs": (["--format", "pairs"], {}),
    "pairs-nocode": (["--format", "pairs"], {"task_codes": False}),
    "pairs-2d": (["--format", "pairs"], {"planes": False}),
    "pairs-inputloss": (["--format", "pairs", "--input-loss"], {}),
    "transductive": (["--format", "pairs", "--demo-source", DEV], {}),
    "transductive-inputloss": (["--format", "pairs", "--input-loss", "--demo-source", DEV], {}),
}
SOLVED = {  # recipe -> (trained recipe, `onn-arc eval` flags beyond the defaults)
    **{name: (name, []) for name in TRAINED},
    "pairs-codettt": ("pairs", ["--ttt-params", "code"]),
    "pairs-zeroinit": ("pairs", ["--task-code-init", "zero"]),
}

console = Console(width=None if sys.stdout.isatty() else 160)


def train(root: Path, name: str, seconds: float) -> None:
    out, log = root / name, root / f"{name}.train.log"
    if (out / "checkpoint").exists():  # its saved config has everything
        onn_arc(["train", "--out", str(out), "--resume", "--threads", "1"], log, console)
        return
    flags, model = TRAINED[name]
    if model:
        config = root / f"{name}.json"
        config.write_text(json.dumps({"model": model}))
        flags = [*flags, "--config", str(config)]
    budget = ["--size", "base", "--seconds", str(seconds), "--steps", "1000000", "--checkpoint-every", "200"]
    optimizer = ["--optimizer", "gn", "--lr", "3e-3"]  # what the README's table measured (train's default until Muon)
    args = ["train", "--out", str(out), "--source", TRAIN_SOURCE, *optimizer, *budget, "--seed", "0", "--threads", "1", *flags]
    onn_arc(args, log, console)


def evaluate(root: Path, name: str, limit: int) -> None:
    trained, flags = SOLVED[name]
    args = [
        "eval", "--split", DEV, "--limit", str(limit), "--checkpoint", str(root / trained / "checkpoint"),
        "--out", str(root / name / "eval"), "--threads", "1", *flags,
    ]  # fmt: skip
    onn_arc(args, root / f"{name}.eval.log", console)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/formats"))
    parser.add_argument("--jobs", type=int, default=2, help="jobs at once, one torch thread each")
    parser.add_argument("--seconds", type=float, default=600, help="training seconds per recipe")
    parser.add_argument("--limit", type=int, default=20, help="first N arc1-dev tasks (80: all of them)")
    parser.add_argument("--only", nargs="+", choices=list(SOLVED), help="these recipes (and what they need) only")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    solved = args.only or list(SOLVED)
    trained = list(dict.fromkeys(SOLVED[name][0] for name in solved))

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda name: train(args.root, name, args.seconds), trained))
        list(pool.map(lambda name: evaluate(args.root, name, args.limit), solved))

    title = f"formats: base preset, {args.seconds / 60:g} min of training each on {TRAIN_SOURCE}; first {args.limit} {DEV} tasks"
    table = Table(title=title)
    columns = ["recipe", "pass@2", "solved", "changed", "shape", "cells", "tf loss", "train loss", "steps", "s/task"]
    for column in columns:
        table.add_column(column, justify="left" if column == "recipe" else "right")
    copy = None
    for name in solved:
        t = training_summary(args.root / SOLVED[name][0])
        s = json.loads((args.root / name / "eval" / "report.json").read_text())["summary"]
        copy = s["copy_baseline"]
        table.add_row(
            name, f"{s['pass_at_2']:.3f}", f"{s['solved_tasks']}/{s['scored_tasks']}",
            f"{s['changed_cell_accuracy']:.3f}", f"{s['shape_correct']:.2f}", f"{s['cell_accuracy']:.3f}",
            f"{s['tf_loss']:.3f}", f"{t['train_loss']:.3f}", f"{t['steps']}", f"{s['seconds_per_task']:.1f}",
        )  # fmt: skip
        values = {"pass2": s["pass_at_2"], "changed": s["changed_cell_accuracy"], "shape": s["shape_correct"]}
        values |= {"cells": s["cell_accuracy"], "tf_loss": s["tf_loss"], "sec_per_task": s["seconds_per_task"], **t}
        console.print(f"RESULT recipe={name} " + " ".join(f"{k}={v:.4g}" for k, v in values.items()), soft_wrap=True)
    if copy is not None:
        table.caption = (
            f"copy the input (same tasks): pass@2 {copy['pass_at_2']:.3f}, shape {copy['shape_correct']:.2f}, "
            f"cells {copy['cell_accuracy']:.3f}, changed 0 by definition"
        )
    console.print(table)


if __name__ == "__main__":
    main()
