"""`onn-arc score`: score a Kaggle-style submission against a split with the official ARC rules."""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from onn_arc import data
from onn_arc.cli.app import app
from onn_arc.cli.common import JsonOpt, err, leading_indicators, number, out
from onn_arc.errors import TaskError
from onn_arc.scoring import Scorer, ScoreSummary, TaskScore, load_submission

SubmissionArg = Annotated[
    Path, typer.Argument(help="Submission JSON: {task_id: [{attempt_1: G, attempt_2: G}, ...]}.", show_default=False)
]
SplitOpt = Annotated[
    str,
    typer.Option(help="Tasks with true outputs: a split, a folder or file of tasks, or CHALLENGES.json,SOLUTIONS.json."),
]


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")


def _warn(message: str) -> None:
    err.print(f"warning: {message}", markup=False, soft_wrap=True)


def _marks(task: TaskScore, attempt: int) -> str:
    if not task.extra["submitted"]:
        return "[dim]missing[/]"
    hits = [o.attempt_1 if attempt == 1 else o.attempt_2 for o in task.outputs]
    return " ".join("[green]✓[/]" if hit else "[red]✗[/]" for hit in hits)


def _table(summary: ScoreSummary, title: str) -> Table:
    table = Table(title=escape(title))
    table.add_column("task")
    for name in ("tests", "attempt 1", "attempt 2", "score", "cell acc", "changed", "copy"):
        table.add_column(name, justify="right")
    for task in summary.tasks:
        table.add_row(
            escape(task.task_id),
            str(task.n_tests),
            _marks(task, 1),
            _marks(task, 2),
            f"{task.pass_at_2:.2f}",
            f"{task.cell_accuracy:.2f}",
            number(task.changed_cell_accuracy, 2),
            f"{task.copy_baseline.cell_accuracy:.2f}",
        )
    return table


@app.command()
def score(submission: SubmissionArg, split: SplitOpt = "arc1-eval", as_json: JsonOpt = False) -> None:
    """Score a submission: a test output is solved if either attempt is exact; a task scores its solved fraction."""
    attempts = load_submission(submission)
    tasks = data.load_source(split)
    scored = [task for task in tasks if task.has_test_outputs]
    if not scored:
        raise TaskError(f"{split}: no task has test outputs to score against")
    if len(scored) < len(tasks):
        _warn(f"{len(tasks) - len(scored)} task(s) of {split} have no test outputs and are not scored")
    unknown = sorted(set(attempts) - {task.id for task in tasks})
    if unknown:
        _warn(f"{len(unknown)} task id(s) in {submission} are not in {split}, not scored: {_ids(unknown)}")
    missing = [task.id for task in scored if task.id not in attempts]
    if missing:
        _warn(f"{len(missing)} task(s) of {split} are missing from {submission} and score 0: {_ids(missing)}")
    surplus = [task.id for task in scored if len(attempts.get(task.id, ())) > len(task.test)]
    if surplus:
        _warn(f"{len(surplus)} task(s) have more entries than test inputs; extra entries ignored: {_ids(surplus)}")

    scorer = Scorer()
    for task in scored:
        scorer.update(task.id, attempts.get(task.id, []), task.test, submitted=task.id in attempts)
    summary = scorer.result()

    if as_json:
        out.print_json(data=summary.to_json())
        return
    out.print(_table(summary, f"{submission.name} on {split}"))
    out.print(
        f"pass@2 {summary.pass_at_2:.3f}  pass@1 {summary.pass_at_1:.3f}  "
        f"solved {summary.solved_tasks}/{summary.n_tasks} tasks",
        soft_wrap=True,
    )
    out.print(leading_indicators(summary.to_json()), soft_wrap=True)
