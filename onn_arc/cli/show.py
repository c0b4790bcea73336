"""`onn-arc show`: draw a task's demos and test pairs, optionally with a submission's attempts."""

from pathlib import Path
from typing import Annotated

import typer

from onn_arc import data, render
from onn_arc.cli.app import app
from onn_arc.cli.common import TaskArg, err, out
from onn_arc.errors import SubmissionError
from onn_arc.scoring import load_submission

AnswerOpt = Annotated[
    bool | None,
    typer.Option(
        "--answer/--no-answer",
        help="Show the test outputs. Default: hidden, except with --predictions, where attempts are compared with them.",
        show_default=False,
    ),
]
PredictionsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Submission JSON {task_id: [{attempt_1: G, attempt_2: G}, ...]}: draw each attempt next to the true "
        "output, wrong cells marked ×, with ✓/✗.",
        show_default=False,
    ),
]


@app.command()
def show(task: TaskArg, answer: AnswerOpt = None, predictions: PredictionsOpt = None) -> None:
    """Draw a task: each demo and test pair as input → output, grid sizes in the headers."""
    found = data.resolve_task(task)
    if predictions is None:
        out.print(render.task_view(found, show_answer=bool(answer)))
        return
    submission = load_submission(predictions)
    if found.id not in submission:
        raise SubmissionError(f"{predictions}: no predictions for task {found.id}")
    attempts = submission[found.id]
    if len(attempts) != len(found.test):
        err.print(
            f"warning: {predictions}: {len(attempts)} entries for the {len(found.test)} test inputs of {found.id}; "
            "missing ones are drawn as no attempt, extra ones are ignored",
            markup=False,
            soft_wrap=True,
        )
    out.print(render.task_view(found, show_answer=answer is not False, predictions=attempts))
