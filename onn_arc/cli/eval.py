"""`onn-arc eval`: solve and score a split (or any tasks) with a checkpoint, resumably, with a live pass@2."""

import re
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from onn_arc import data
from onn_arc.checkpoint import default_checkpoint
from onn_arc.cli.app import app
from onn_arc.cli.common import (
    CheckpointOpt,
    BackgroundOpt,
    CodeInitOpt,
    ColoursOpt,
    DEFAULT,
    DEFAULT_COLOURS,
    DeviceOpt,
    DihedralOpt,
    GreedyFallbackOpt,
    JsonOpt,
    MinProbOpt,
    PrecisionOpt,
    RankingOpt,
    SamplerOpt,
    SearchSecondsOpt,
    SeedOpt,
    ThreadsOpt,
    TttOptimizerOpt,
    TttParamsOpt,
    TttSecondsOpt,
    TttStepsOpt,
    ViewsOpt,
    err,
    leading_indicators,
    number,
    out,
    solve_config,
    training_counts,
)
from onn_arc.errors import TaskNotFound
from onn_arc.evaluate import Evaluation, TaskDone, evaluate
from onn_arc.train import resolve_device

Opt = typer.Option
SplitOpt = Annotated[str, Opt(help="Tasks: a split, a folder or file of tasks, or CHALLENGES.json[,SOLUTIONS.json].")]
LimitOpt = Annotated[int | None, Opt(min=1, help="Only the first N tasks, in order.", show_default=False)]
TasksOpt = Annotated[str | None, Opt("--tasks", help="Only these task ids (comma-separated).", show_default=False)]
WorkersOpt = Annotated[int, Opt(min=1, help="Tasks solved in parallel processes (each with cores / workers threads).")]
AllowSeenOpt = Annotated[
    bool,
    Opt(
        "--allow-seen",
        help="Also score tasks whose test outputs the checkpoint was trained on: a fit measurement, never a score.",
    ),
]
OutDirOpt = Annotated[
    Path | None,
    Opt("--out", help="Run folder (default: runs/eval-<split>-<checkpoint>); rerun to resume.", show_default=False),
]


def select(tasks: list[data.Task], ids: str | None, limit: int | None, source: str) -> list[data.Task]:
    """The tasks named by `ids` (comma-separated, in that order) or all, then the first `limit` of them."""
    if ids:
        by_id = {t.id: t for t in tasks}
        wanted = list(dict.fromkeys(i.strip() for i in ids.split(",") if i.strip()))
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise TaskNotFound(f"{source}: has no task {', '.join(missing)}")
        tasks = [by_id[i] for i in wanted]
    return tasks[:limit] if limit is not None else tasks


def default_out(split: str, checkpoint: Path) -> Path:
    """runs/eval-<split>-<checkpoint name> (a run's `checkpoint/` folder is named after its run)."""
    name = checkpoint.resolve().parent.name if checkpoint.name == "checkpoint" else checkpoint.name
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(split.split(",")[0]).stem if split not in data.SPLITS else split)
    return Path("runs") / f"eval-{label}-{name}"


def _mode_line(summary: dict[str, Any]) -> str:
    """One line: whether the checkpoint trained on these tasks' demos (the summary's `mode`), and its training cost
    over all its stages."""
    n, trained = summary["n_tasks"], summary["transductive_tasks"]
    mode = {
        "inductive": "inductive: the checkpoint never trained on these tasks' demos",
        "transductive": f"transductive: the checkpoint trained on the demos of these {n} tasks (all of them)",
        "mixed": f"mixed: the checkpoint trained on the demos of {trained} of these {n} tasks",
    }[summary["mode"]]
    return f"{mode} · its training, all stages: {training_counts(summary['training'])}"


def _marks(hits: list[bool]) -> str:
    return " ".join("[green]✓[/]" if hit else "[red]✗[/]" for hit in hits)


def _mean_of(values: list[float | None]) -> float | None:
    known = [x for x in values if x is not None]
    return sum(known) / len(known) if known else None


def _table(evaluation: Evaluation, title: str) -> Table:
    caption = (
        "cell accuracy: of the better attempt (cells), of attempt 1 on the cells the output changes (changed), "
        "of the input (copy); the true output's teacher-forced loss before and after test-time training (tf, tuned)"
    )
    table = Table(title=escape(title), caption=caption, box=None, pad_edge=False)
    table.add_column("task", no_wrap=True)
    for name in ("att 1", "att 2", "score", "cells", "changed", "copy", "tf", "tuned", "ttt", "s"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in evaluation.report["tasks"]:
        tests = row.get("tests")
        table.add_row(
            f"[red]{escape(row['task_id'])}[/]" if row["error"] else escape(row["task_id"]),
            _marks([t["attempt_1"] for t in tests]) if tests else "[dim]–[/]",
            _marks([t["attempt_2"] for t in tests]) if tests else "[dim]–[/]",
            number(row.get("pass_at_2"), 2),
            number(row.get("cell_accuracy"), 2),
            number(row.get("changed_cell_accuracy"), 2),
            number(row["copy_baseline"]["cell_accuracy"] if tests else None, 2),
            number(_mean_of(row["tf_loss"])),
            number(_mean_of(row.get("tuned_tf_loss", []))),
            str(row["ttt_steps"]),
            f"{row['seconds']:.1f}",
        )
    return table


@app.command("eval")
def eval_command(
    split: SplitOpt = "arc1-eval",
    limit: LimitOpt = None,
    tasks: TasksOpt = None,
    checkpoint: CheckpointOpt = None,
    ttt_steps: TttStepsOpt = DEFAULT.ttt_steps,
    ttt_seconds: TttSecondsOpt = DEFAULT.ttt_seconds,
    ttt_optimizer: TttOptimizerOpt = DEFAULT.optimizer.name,
    ttt_params: TttParamsOpt = DEFAULT.ttt_params,
    task_code_init: CodeInitOpt = DEFAULT.task_code_init,
    views: ViewsOpt = DEFAULT.views,
    colours: ColoursOpt = DEFAULT_COLOURS,
    dihedral: DihedralOpt = DEFAULT.augment.dihedral,
    keep_background: BackgroundOpt = DEFAULT.augment.keep_background,
    sampler: SamplerOpt = DEFAULT.sampler,
    min_prob: MinProbOpt = DEFAULT.min_prob,
    greedy_fallback: GreedyFallbackOpt = DEFAULT.greedy_fallback,
    ranking: RankingOpt = DEFAULT.ranking,
    search_seconds: SearchSecondsOpt = DEFAULT.search_seconds,
    seed: SeedOpt = DEFAULT.seed,
    precision: PrecisionOpt = DEFAULT.precision,
    workers: WorkersOpt = 1,
    allow_seen: AllowSeenOpt = False,
    out_dir: OutDirOpt = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Evaluate a checkpoint: solve every task, score pass@2 with the official rules, write submission.json and
    report.json. Interrupted runs resume where they stopped (same --out, same options).

    Each task is solved as `onn-arc solve` solves it: two attempts ranked by PoE (the candidates' log-probability
    summed over every view) by default, or by votes with --ranking votes."""
    if threads:
        torch.set_num_threads(threads)
    cfg = solve_config(
        ttt_steps, ttt_seconds, ttt_optimizer, views, sampler, min_prob, seed, precision, ttt_params, task_code_init,
        colours, dihedral, keep_background, ranking, search_seconds, greedy_fallback,
    )  # fmt: skip
    chosen = select(data.load_source(split), tasks, limit, split)
    folder = checkpoint or default_checkpoint()
    out_dir = out_dir or default_out(split, folder)

    columns = (
        TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
    )  # fmt: skip
    with Progress(*columns, console=err, refresh_per_second=2, transient=True, disable=not err.is_terminal) as progress:
        bar = progress.add_task("eval", total=len(chosen), info="")
        scores: list[float] = []

        def on_task(done: TaskDone) -> None:
            if done.score is not None:
                scores.append(done.score.pass_at_2)
            if done.resumed:  # the bar and its ETA count only the tasks solved now
                progress.update(bar, total=progress.tasks[bar].total - 1)
            else:
                progress.advance(bar)
            running = f"pass@2 {sum(scores) / len(scores):.3f} on {len(scores)}" if scores else ""
            progress.update(bar, info=f"{running}  last {done.record['task_id']}")

        dev = resolve_device(device)
        evaluation = evaluate(
            folder, chosen, cfg, out_dir, workers=workers, on_task=on_task, device=dev, allow_seen=allow_seen,
            source=split,
        )

    summary = evaluation.report["summary"]
    if as_json:
        out.print_json(data=summary)
        return
    out.print(escape(_mode_line(summary)), soft_wrap=True)
    out.print(_table(evaluation, f"{folder.name} on {split} ({len(chosen)} tasks)"))
    for row in evaluation.report["tasks"]:
        if row["error"]:
            out.print(f"[red]failed[/] {escape(row['error'])}", soft_wrap=True)
    tf_loss, tuned = number(summary["tf_loss"]), number(summary["tuned_tf_loss"])
    seconds = number(summary["seconds_per_task"], 1)
    costs = f"tf loss {tf_loss} (tuned {tuned})  {seconds} s/task  failed {summary['failed']}"
    if summary["scored_tasks"]:
        out.print(
            f"pass@2 {summary['pass_at_2']:.3f}  pass@1 {summary['pass_at_1']:.3f}  "
            f"solved {summary['solved_tasks']}/{summary['scored_tasks']}  {costs}",
            soft_wrap=True,
        )
        out.print(leading_indicators(summary), soft_wrap=True)
    else:
        out.print(
            f"nothing scored: none of these {len(chosen)} tasks has test outputs; the attempts are in "
            f"{Path(out_dir) / 'submission.json'}  ({costs})",
            soft_wrap=True,
        )
    if summary["seen_tasks"]:
        out.print(
            f"[yellow]fit, not a score:[/] the checkpoint was trained on the test outputs of {summary['seen_tasks']} "
            f"of these {len(chosen)} tasks",
            soft_wrap=True,
        )
    out.print(f"report: {Path(out_dir) / 'report.json'}  submission: {Path(out_dir) / 'submission.json'}")
