"""Training recipes at equal CPU: does a recipe learn rules that transfer to tasks it never trained on?

Each arm trains a model from scratch on the same data (`--source`, default the 553 tasks the shipped chain
trains on) for the same wall-clock step-time (`--seconds`), seed 0, `train`'s default optimizer and precision, then
solves all 80 dev tasks (drawn from ARC-AGI-1 training, never trained on) with the default solve settings, two workers
of one thread each. The table splits every arm by whether a test output holds a colour absent from its test input.

    python bench/recipes.py [--root runs/recipes] [--seconds 7200] [--arms base copies-8 copies-32]   (make bench-recipes)
    python bench/recipes.py --root runs/shape --seconds 3600 \\
        --arms base looped deep regularised wide dense looped-regularised   (issue #30)

Arms (train flags beside `--size base` and `--common`):
- base: one code per task, every pair drawn with a fresh random rotation/reflection and colour permutation (the
  shipped recipe);
- inputs: the same, colours permuted only among each task's input colours (`--colours inputs`);
- copies-K: every task enters as K fixed augmented copies (the identity first), each with its own code
  (`--copies K`), so that a code never sees its rule under two colour maps;
- the model's shape (issue #30): deep (8 blocks), looped (4 blocks applied twice, weight-tied), wide (d=192),
  regularised (dropout 0.1 and an EMA of the weights, decay 0.995; weight decay 0.1 is the default), dense (no SBL),
  looped-regularised (the two that beat base at 1 hour, together), dense-looped (the dense baseline, looped).

Every command is printed; an interrupted arm resumes where its last periodic checkpoint left it (rerun the same
command), a finished one is reused. Compare arms only when they ran on the same idle machine: `--seconds` is
step-time, and a second heavy job halves every arm's steps. Across machines, match steps instead: `--steps N`
trains every arm N steps, e.g. the steps of an arm that trained by `--seconds` elsewhere. Ends with a table and
one `RESULT arm=...` line per arm.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onn_arc.checkpoint import load_checkpoint
from onn_arc.cli.common import number
from onn_arc.data import load_split

sys.path.insert(0, str(Path(__file__).parent))
from common import new_colour_split, onn_arc, train_pairs, training_summary  # bench/common.py, beside this script

DEV = "arc1-dev"
ARMS: dict[str, list[str]] = {
    "base": [],
    "inputs": ["--colours", "inputs"],
    "copies-8": ["--copies", "8"],
    "copies-32": ["--copies", "32"],
    "deep": ["--n-layers", "8"],
    "looped": ["--loops", "2"],
    "wide": ["--d-model", "192"],  # predicted the widest to solve within 120 s a task: a test-time training step
    # (solve.fine_tune, untrained models, dev task 1f0c79e5, one thread, 2 interleaved rounds of 4 steps beside a
    # running eval, 2026-12-06) costs 1.21x base's at d=160, 1.60x at 192, 3.05x at 256; base's slowest dev task ~70 s
    "regularised": ["--dropout", "0.1", "--ema", "0.995"],  # ~200 steps averaged: a 1-2 h arm takes 1,600-3,300
    # steps, so 0.999's ~1,000 (TRM's, over far longer runs) would reach back into the first half of the run
    "dense": ["--arch", "dense"],
    "looped-regularised": ["--loops", "2", "--dropout", "0.1", "--ema", "0.995"],  # arm g: the two that beat base
    "dense-looped": ["--arch", "dense", "--loops", "2"],  # the two that matched the best at 1 h (looped: 12.5, dense: 12)
}
console = Console(width=None if sys.stdout.isatty() else 160)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/recipes"))
    parser.add_argument("--seconds", type=float, default=7200, help="training step-time of every arm")
    parser.add_argument(
        "--steps", type=int, help="train every arm this many steps instead (the lr schedule over steps): equal compute "
        "on machines of different speeds, e.g. the steps an arm trained by --seconds took elsewhere"
    )  # fmt: skip
    parser.add_argument("--source", nargs="+", default=["arc1-train-nodev", "arc2-train-new"])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["base", "copies-8", "copies-32"])
    parser.add_argument("--size", default="base", help="model preset (tiny: a smoke test)")
    parser.add_argument("--limit", type=int, default=80, help="the first N dev tasks (80: all)")
    parser.add_argument("--common", default="", help="train flags every arm gets, e.g. '--copies 8' (quote them)")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)

    tasks = {t.id: t for t in load_split(DEV)}
    budget = f"{args.steps} steps" if args.steps else f"{args.seconds / 3600:g} h"
    title = f"recipes at {budget} of training each on {' + '.join(args.source)}; {args.limit} {DEV} tasks"
    table = Table(title=title, box=None, pad_edge=False)
    for name in ("arm", "flags", "params", "tok/s", "steps", "tokens", "train loss", "new colour: solved", "changed",
                 "other: solved", "changed", "pass@2", "pass@1", "changed-cell", "shape", "cells", "tuned loss",
                 "s/task"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("arm", "flags") else "right")
    for arm in args.arms:
        run = args.root / arm
        flags = ["--seed", "0", *shlex.split(args.common), *ARMS[arm]]
        seconds, steps = (None, args.steps) if args.steps else (args.seconds, 1_000_000)
        train_pairs(run, seconds, args.source, flags, console, args.size, steps)
        eval_args = [
            "eval", "--split", DEV, "--limit", str(args.limit), "--workers", "2", "--checkpoint", str(run / "checkpoint"),
            "--out", str(run / "eval"),
        ]  # fmt: skip
        onn_arc(eval_args, args.root / f"{arm}.eval.log", console)
        report = json.loads((run / "eval" / "report.json").read_text())
        (new_solved, new_changed), (other_solved, other_changed) = new_colour_split(report["tasks"], tasks)
        s, t = report["summary"], training_summary(run)
        params = load_checkpoint(run / "checkpoint").model.num_params()
        table.add_row(
            arm, " ".join(ARMS[arm]), f"{params / 1e6:.2f}M", f"{t['tok_s']:.0f}", str(t["steps"]),
            f"{s['training']['tokens'] / 1e6:.1f}M", f"{t['train_loss']:.3f}", new_solved, number(new_changed),
            other_solved, number(other_changed), number(s["pass_at_2"]), number(s["pass_at_1"]),
            number(s["changed_cell_accuracy"]), number(s["shape_correct"]), number(s["cell_accuracy"]),
            number(s.get("tuned_tf_loss")), f"{s['seconds_per_task']:.1f}",
        )  # fmt: skip
        copied = s["copy_baseline"]
        console.print(
            f"RESULT arm={arm} pass_at_2={s['pass_at_2']:.4f} solved={s['solved_tasks']} new_colour={new_solved} "
            f"other={other_solved} changed_cell={number(s['changed_cell_accuracy'], 4)} steps={t['steps']} "
            f"train_loss={t['train_loss']:.4f} tuned_loss={number(s.get('tuned_tf_loss'), 4)}",
            soft_wrap=True,
        )
    table.add_row(  # the same dev tasks for every arm: one copy-the-input row
        "copy", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", number(copied["pass_at_2"]), "-", "-",
        number(copied["shape_correct"]), number(copied["cell_accuracy"]), "-", "-",
    )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
