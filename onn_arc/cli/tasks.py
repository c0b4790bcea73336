"""`onn-arc tasks`: list a split's tasks with their sizes and their longest sequence in tokens."""

import statistics
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from onn_arc import data
from onn_arc.cli.app import app
from onn_arc.cli.common import JsonOpt, out
from onn_arc.errors import TaskNotFound
from onn_arc.tokens import encode_pair

SourceArg = Annotated[
    str,
    typer.Argument(
        help="A split (arc1-train, arc1-eval, arc2-train, arc2-eval), a folder or file of tasks, "
        "or CHALLENGES.json[,SOLUTIONS.json].",
        show_default=False,
    ),
]


def _largest(task: data.Task) -> tuple[int, int]:
    """(H, W) of the task's grid with the most cells."""
    grids = [g for pair in (*task.train, *task.test) for g in (pair.input, pair.output) if g is not None]
    return max(((len(g), len(g[0])) for g in grids), key=lambda hw: hw[0] * hw[1])


def _row(index: int, task: data.Task) -> dict:
    height, width = _largest(task)
    return {
        "index": index,
        "id": task.id,
        "demos": len(task.train),
        "tests": len(task.test),
        "largest_grid": [height, width],
        "tokens": max(len(encode_pair(p, answer=p.output is not None)) for p in (*task.train, *task.test)),
    }


@app.command()
def tasks(split: SourceArg, as_json: JsonOpt = False) -> None:
    """List tasks: demos, tests, the largest grid, and the tokens of its longest pair (what the context must hold)."""
    rows = [_row(i, task) for i, task in enumerate(data.load_source(split))]
    if not rows:
        raise TaskNotFound(f"{split}: holds no tasks")
    lengths = [row["tokens"] for row in rows]
    summary = {"source": split, "n_tasks": len(rows), "tokens_median": statistics.median(lengths), "tokens_max": max(lengths)}
    if as_json:
        out.print_json(data={**summary, "tasks": rows})
        return
    table = Table(
        title=escape(split),
        caption=f"{len(rows)} tasks · tokens median {summary['tokens_median']:g}, max {summary['tokens_max']}",
    )
    for name in ("#", "id", "demos", "tests", "largest grid", "tokens"):
        table.add_column(name, justify="left" if name == "id" else "right")
    for row in rows:
        height, width = row["largest_grid"]
        cells = (row["index"], escape(row["id"]), row["demos"], row["tests"], f"{height}×{width}", row["tokens"])
        table.add_row(*map(str, cells))
    out.print(table)
