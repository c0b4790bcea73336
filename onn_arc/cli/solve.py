"""`onn-arc solve`: solve one task with a checkpoint and show the two attempts (and, with --explain, why), or solve
several (a split, a folder, a Kaggle challenges file) one after the other and write their Kaggle submission."""

import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Group
from rich.markup import escape
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)  # fmt: skip
from rich.text import Text

from onn_arc import data, render
from onn_arc.checkpoint import default_checkpoint, load_checkpoint
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
    OutFileOpt,
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
    out,
    solve_config,
)
from onn_arc.config import SolveConfig
from onn_arc.errors import ConfigError, TaskNotFound
from onn_arc.model import TinyONN
from onn_arc.scoring import Scorer, TaskScore, TwoAttempts, kaggle_json, score_task, write_submission
from onn_arc.solve import Answer, Solution, solve_or_copy, solve_task
from onn_arc.train import resolve_device

TasksArg = Annotated[
    str,
    typer.Argument(
        help="One task: an id (007bbfb7), SPLIT:INDEX (arc1-eval:0) or a task JSON file. Several: a split, a folder "
        "of task files, or a Kaggle challenges file (CHALLENGES.json[,SOLUTIONS.json]).",
        show_default=False,
    ),
]


ExplainOpt = Annotated[
    bool,
    typer.Option(
        help="Show every candidate's votes and scores, and attempt 1's per-cell confidence and SBL activation rate."
    ),
]


def load_tasks(spec: str) -> list[data.Task]:
    """The tasks `spec` names: a split, a comma pair or an existing path through `data.load_source`, anything else
    (a task id, SPLIT:INDEX, a missing file) through `data.resolve_task`."""
    if spec in data.SPLITS or "," in spec or Path(spec).exists():
        tasks = data.load_source(spec)
        if not tasks:
            raise TaskNotFound(f"{spec}: holds no tasks")
        return tasks
    return [data.resolve_task(spec)]


def _candidates(test: Answer, test_input: data.Grid, views: int, ranking: str) -> Text:
    """Every candidate of a test input, ranked, with its votes, log-probability over the views that produced it and
    product-of-experts score (log-probability summed over every view); a copy of the input marked."""
    lines = [
        f"{len(test.candidates)} candidate(s), ranked by {ranking} (a copy of the input last)",
        f"log p: summed over the views that found the grid; PoE: over all {views} views",
    ]
    for k, c in enumerate(test.candidates, start=1):
        poe = "–" if c.poe is None else f"{c.poe:.2f}"
        votes = f"{c.votes} vote{'s' * (c.votes != 1)}"
        copy = "  (the test input)" if c.grid == test_input else ""
        lines.append(f"{k:>3}. {render.size(c.grid):>5}  {votes:>8}  log p {c.logprob:8.2f}  PoE {poe:>8}{copy}")
    return Text("\n".join(lines))


def _explain(task: data.Task, solution: Solution, ranking: str) -> Group:
    parts = []
    for i, (test, pair) in enumerate(zip(solution.tests, task.test, strict=True)):
        parts.append(Text(f"test {i + 1}: why attempt 1", style="bold underline"))
        if test.confidence is None:
            parts.append(Text("no grid decoded: the attempts are the test input", style="dim italic"))
            continue
        parts.append(_candidates(test, pair.input, len(solution.views), ranking))
        maps = [render.heatmap(test.confidence, "confidence"), render.heatmap(test.activation, "activation rate")]
        parts.append(render.Flow(maps, [render.GAP]))
    return Group(*parts)


def _details(solution: Solution) -> Text:
    lines = ["test-time training: off"]
    if solution.ttt_steps:
        lines = [
            f"test-time training: {solution.ttt_steps} steps in {solution.ttt_seconds:.1f} s "
            f"(last loss {solution.ttt_loss:.3f})"
        ]
    for i, test in enumerate(solution.tests):
        ranked = ", ".join(
            f"{render.size(c.grid)} ({c.votes} vote{'s' * (c.votes != 1)}, log p {c.logprob:.2f})"
            for c in test.candidates[:4]
        )
        found = f"{len(test.candidates)} candidate(s) from {len(solution.views)} views"
        lines.append(f"test {i + 1}: {found}: {ranked or 'none'}")
    return Text("\n".join(lines), style="dim")


def _progress(*columns: ProgressColumn) -> Progress:
    return Progress(*columns, console=err, refresh_per_second=2, transient=True, disable=not err.is_terminal)


STAGES = {"ttt": "test-time training", "decode": "decoding", "greedy": "decoding greedily (nothing above --min-prob)"}


def _solve_one(model: TinyONN, task: data.Task, cfg: SolveConfig) -> Solution:
    """`solve_task` with a bar for test-time training and one for decoding."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with _progress(*columns) as progress:
        bars: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(STAGES[stage], total=total)
            progress.update(bars[stage], completed=done)

        return solve_task(model, task, cfg, on_progress)


def _show_one(task: data.Task, solution: Solution, explain: bool, ranking: str) -> None:
    known = task.has_test_outputs
    out.print(render.task_view(task, show_answer=known, predictions=solution.attempts))
    out.print()
    out.print(_details(solution))
    if known:
        score = score_task(solution.attempts, task.test, task.id)
        verdict = "[bold green]solved ✓[/]" if score.solved else "[bold red]not solved ✗[/]"
        solved = sum(o.solved for o in score.outputs)
        out.print(f"{verdict}  score {score.pass_at_2:.2f} ({solved}/{score.n_tests} tests)")
    if explain:
        out.print()
        out.print(_explain(task, solution, ranking))


def _task_line(
    task_id: str, attempts: list[TwoAttempts], seconds: float, score: TaskScore | None, error: str | None
) -> str:
    """`id  1.2 s  3×3 3×3 ✓ · 2×2 2×2 ✗`: each test's attempts' shapes, marked when the truth is known."""
    tests = []
    for i, pair in enumerate(attempts):
        mark = "" if score is None else " [green]✓[/]" if score.outputs[i].solved else " [red]✗[/]"
        tests.append(" ".join(render.size(grid) for grid in pair) + mark)
    line = f"{escape(task_id)}  {seconds:.1f} s  {' · '.join(tests)}"
    return line + (f"  [red]failed, copied the input:[/] {escape(error)}" if error else "")


def _solve_many(
    model: TinyONN, tasks: list[data.Task], cfg: SolveConfig, out_file: Path | None, lines: bool
) -> dict[str, list[TwoAttempts]]:
    """Solve every task in turn (one that cannot be solved submits the copy of its inputs), a bar with ETA on stderr
    and, with `lines`, a line per task and the score where the truth is known on stdout; `out_file` is rewritten
    atomically after every task, so an interrupted run leaves a valid submission of the tasks done."""
    submission: dict[str, list[TwoAttempts]] = {}
    scorer = Scorer()
    columns = (
        TextColumn("[bold]solve"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
    )  # fmt: skip
    with _progress(*columns) as progress:
        bar = progress.add_task("solve", total=len(tasks), info="")
        for task in tasks:
            progress.update(bar, info=task.id)
            started = time.perf_counter()
            solution, error = solve_or_copy(model, task, cfg)
            seconds = time.perf_counter() - started
            submission[task.id] = solution.attempts
            if out_file is not None:
                write_submission(out_file, submission)
            score = scorer.update(task.id, solution.attempts, task.test) if task.has_test_outputs else None
            if lines:
                out.print(_task_line(task.id, solution.attempts, seconds, score, error), soft_wrap=True)
            progress.advance(bar)
    summary = scorer.result()
    if lines and summary.n_tasks:
        out.print(
            f"pass@2 {summary.pass_at_2:.3f}  pass@1 {summary.pass_at_1:.3f}  "
            f"solved {summary.solved_tasks}/{summary.n_tasks} tasks with test outputs",
            soft_wrap=True,
        )
        out.print(leading_indicators(summary.to_json()), soft_wrap=True)
    return submission


@app.command()
def solve(
    task: TasksArg,
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
    as_json: JsonOpt = False,
    out_file: OutFileOpt = None,
    explain: ExplainOpt = False,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Solve a task: test-time training on its demos, decoding in several views, two attempts ranked by PoE.

    By default the candidate grids are ranked by their log-probability summed over every view (a product of experts,
    PoE); --ranking votes ranks them by the views that produced them.

    When the task has its test outputs, each attempt is marked ✓/✗ with its wrong cells. Given several tasks, solve
    each in turn and print a line per task; --out writes the Kaggle submission of them all.
    """
    if threads:
        torch.set_num_threads(threads)
    cfg = solve_config(
        ttt_steps, ttt_seconds, ttt_optimizer, views, sampler, min_prob, seed, precision, ttt_params, task_code_init,
        colours, dihedral, keep_background, ranking, search_seconds, greedy_fallback,
    )  # fmt: skip
    tasks = load_tasks(task)
    if explain and len(tasks) > 1:
        raise ConfigError(f"--explain draws one task; {task} holds {len(tasks)}")
    loaded = load_checkpoint(checkpoint or default_checkpoint(), device=resolve_device(device))
    if leaked := loaded.meta.data.leaks_into(tasks):
        shown = ", ".join(leaked[:5]) + (", ..." if len(leaked) > 5 else "")
        err.print(f"warning: {loaded.folder} was trained on the test outputs of {shown}", markup=False, soft_wrap=True)

    if len(tasks) == 1:
        (found,) = tasks
        solution = _solve_one(loaded.model, found, cfg)
        submission = {found.id: solution.attempts}
        if out_file is not None:
            write_submission(out_file, submission)
    else:
        submission = _solve_many(loaded.model, tasks, cfg, out_file, lines=not as_json)
    if out_file is not None:
        n = len(submission)
        err.print(f"wrote {out_file} ({n} task{'s' * (n != 1)})", markup=False, soft_wrap=True)
    if as_json:
        out.print_json(data=kaggle_json(submission))
    elif len(tasks) == 1:
        _show_one(found, solution, explain, cfg.ranking)
