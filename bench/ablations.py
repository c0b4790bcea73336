"""Ablations on one budget and one task subset: which parts of Tiny-ONN matter?

    python bench/ablations.py [--root runs/ablations] [--jobs 2] [--steps 2000] [--limit 20]        (make ablations)

Every variant is trained by `onn-arc train` with the same budget (the `small` preset, `--steps` steps of 4096 padded
tokens, seed 0, the 320 ARC-AGI-1 training tasks outside the dev set), then scored by `onn-arc eval` on the first
`--limit` dev tasks (`arc1-dev`, never an evaluation split: recipes are chosen on the dev set alone; each gets a fresh
task code) with the default solve settings (test-time training on each task's demos, 6 views). Until 2026-12-06 it
trained on all of ARC-AGI-1 training and scored the first 20 `arc1-eval` tasks (the README's table, commit 22d6a91);
until the in-context format was retired (after commit 841b775) it trained that format, so its tables before then
are of in-context models.
Variants change one thing against `onn-gn`:

    onn-gn        Tiny-ONN (Sparse Bayesian Layers), Gauss-Newton preconditioned updates: the reference
    dense-gn      the dense baseline of the same width and depth
    onn-adamw     AdamW instead of Gauss-Newton, at its own best lr in bench/optim.py (1e-2; GN: 3e-3)
    onn-nogate    SML gate loss off (--gate-weight 0)
    onn-nokl      adaptive-prior KL off (--kl-weight 0)
    ttt-off       onn-gn's checkpoint, solved without test-time training (--ttt-steps 0)
    views-1/8     onn-gn's checkpoint, solved in 1 or 8 views instead of 6

The CLI commands are printed as they start; each job runs with one torch thread, `--jobs` at a time. Everything
resumes: a finished training run or evaluation is reused, an interrupted one continues (rerun the same command).
Ends with a table and one `RESULT key=value ...` line per variant.
"""

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import onn_arc  # bench/common.py, beside this script

TRAINED = {  # variant -> `onn-arc train` flags beyond the shared budget
    "onn-gn": ["--optimizer", "gn"],
    "dense-gn": ["--optimizer", "gn", "--arch", "dense"],
    "onn-adamw": ["--optimizer", "adamw", "--lr", "1e-2"],
    "onn-nogate": ["--optimizer", "gn", "--gate-weight", "0"],
    "onn-nokl": ["--optimizer", "gn", "--kl-weight", "0"],
}
SOLVED = {  # variant -> (trained variant, `onn-arc eval` flags beyond the defaults)
    **{name: (name, []) for name in TRAINED},
    "ttt-off": ("onn-gn", ["--ttt-steps", "0"]),
    "views-1": ("onn-gn", ["--views", "1"]),
    "views-8": ("onn-gn", ["--views", "8"]),
}
TAIL = 100  # training steps averaged for the final loss and activation rate

console = Console(width=None if sys.stdout.isatty() else 150)  # the table's 11 columns in a log


def train(root: Path, name: str, steps: int) -> None:
    out = root / name
    resume = ["--resume"] if (out / "checkpoint").exists() else []
    budget = ["--size", "small", "--source", "arc1-train-nodev", "--steps", str(steps)]
    budget += ["--batch-tokens", "4096"]
    budget += ["--checkpoint-every", "200"]
    args = ["train", "--out", str(out), *budget, "--seed", "0", "--threads", "1", *TRAINED[name], *resume]
    onn_arc(args, root / f"{name}.train.log", console)


def evaluate(root: Path, name: str, limit: int) -> None:
    trained, flags = SOLVED[name]
    args = [
        "eval", "--split", "arc1-dev", "--limit", str(limit), "--checkpoint", str(root / trained / "checkpoint"),
        "--out", str(root / name / "eval"), "--threads", "1", *flags,
    ]  # fmt: skip
    onn_arc(args, root / f"{name}.eval.log", console)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--jobs", type=int, default=2, help="jobs at once, one torch thread each")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per variant")
    parser.add_argument("--limit", type=int, default=20, help="first N arc1-dev tasks")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda name: train(args.root, name, args.steps), TRAINED))
        list(pool.map(lambda name: evaluate(args.root, name, args.limit), SOLVED))

    table = Table(title=f"ablations: small preset, {args.steps} steps × 4096 tokens; first {args.limit} arc1-dev tasks")
    columns = ["variant", "pass@2", "solved", "shape", "cells", "tf loss", "s/task", "train loss", "act", "tok/s", "train min"]
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, (trained, _) in SOLVED.items():
        t = training_summary(args.root / trained, TAIL)
        s = json.loads((args.root / name / "eval" / "report.json").read_text())["summary"]
        table.add_row(
            name, f"{s['pass_at_2']:.3f}", f"{s['solved_tasks']}/{s['scored_tasks']}", f"{s['shape_correct']:.2f}",
            f"{s['cell_accuracy']:.3f}", f"{s['tf_loss']:.3f}", f"{s['seconds_per_task']:.1f}",
            f"{t['train_loss']:.3f}", f"{t['activation_rate']:.3f}", f"{t['tok_s']:.0f}", f"{t['train_min']:.1f}",
        )  # fmt: skip
        values = {"pass2": s["pass_at_2"], "shape": s["shape_correct"], "cells": s["cell_accuracy"]}
        values |= {"tf_loss": s["tf_loss"], "sec_per_task": s["seconds_per_task"], **t}
        console.print(f"RESULT variant={name} " + " ".join(f"{k}={v:.4g}" for k, v in values.items()), soft_wrap=True)
    console.print(table)


if __name__ == "__main__":
    main()
