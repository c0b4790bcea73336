"""Which augmentations may test-time training and the views use without changing what the task code means?

A task's rule lives only in its code. A colour permutation that moves a colour only the outputs bring ("fill the
holes with yellow") gives one code contradictory targets; a permutation of the task's input colours among themselves
(`--colours inputs`) keeps every output-only colour fixed. Each arm solves all 80 dev tasks with the
shipped checkpoint, only the solve settings changed, and the table splits every arm by whether a test output holds a
colour absent from its test input ("new colour").

    python bench/colours.py [--root runs/colours] [--checkpoint checkpoints/default] [--arms default inputs ...]
                                                                                                   (make bench-colours)

Every arm is `onn-arc eval --split arc1-dev --workers 2` (two workers of one thread each) with the arm's flags, into
`ROOT/ARM`; an interrupted arm resumes where it stopped (rerun the same command). Ends with a table and one
`RESULT arm=... pass_at_2=...` line per arm. Tune on the dev set only; score evaluation splits once, at the end.
"""

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onn_arc.cli.common import number
from onn_arc.data import load_split

sys.path.insert(0, str(Path(__file__).parent))
from common import new_colour_split, onn_arc  # bench/common.py, beside this script

DEV = "arc1-dev"
ARMS: dict[str, list[str]] = {
    "default": ["--colours", "all"],  # every colour but 0 permuted (the default until 2026-12-06)
    "off": ["--colours", "off"],  # rotations and reflections only
    "inputs": ["--colours", "inputs"],  # the task's input colours among themselves, 0 fixed
    "inputs-bg": ["--colours", "inputs", "--move-background"],  # the same, 0 permuted too when an input holds it
    "inputs-12": ["--colours", "inputs", "--views", "12"],  # more views
}
console = Console(width=None if sys.stdout.isatty() else 160)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/colours"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped one")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)

    tasks = {t.id: t for t in load_split(DEV)}
    table = Table(title=f"solve-time colour augmentations on {DEV} ({len(tasks)} tasks)", box=None, pad_edge=False)
    for name in ("arm", "flags", "new colour: solved", "changed", "other: solved", "changed", "pass@2", "pass@1",
                 "changed-cell", "s/task", "max s"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("arm", "flags") else "right")
    for arm in args.arms:
        out = args.root / arm
        flags = ["eval", "--split", DEV, "--workers", "2", "--out", str(out), *ARMS[arm]]
        onn_arc(flags + (["--checkpoint", str(args.checkpoint)] if args.checkpoint else []), args.root / f"{arm}.log", console)
        report = json.loads((out / "report.json").read_text())
        rows = report["tasks"]
        (new_solved, new_changed), (other_solved, other_changed) = new_colour_split(rows, tasks)
        s, seconds = report["summary"], [r["seconds"] for r in rows]
        table.add_row(
            arm, " ".join(ARMS[arm]), new_solved, number(new_changed), other_solved, number(other_changed),
            number(s["pass_at_2"]), number(s["pass_at_1"]), number(s["changed_cell_accuracy"]),
            f"{sorted(seconds)[len(seconds) // 2]:.1f}", f"{max(seconds):.1f}",
        )  # fmt: skip
        console.print(
            f"RESULT arm={arm} pass_at_2={s['pass_at_2']:.4f} pass_at_1={s['pass_at_1']:.4f} "
            f"solved={s['solved_tasks']} new_colour={new_solved} other={other_solved} "
            f"changed_cell={number(s['changed_cell_accuracy'], 4)} new_changed={number(new_changed, 4)} "
            f"other_changed={number(other_changed, 4)} tasks={len(rows)}",
            soft_wrap=True,
        )
    console.print(table)


if __name__ == "__main__":
    main()
