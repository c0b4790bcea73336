"""`onn-arc solve`: solve one task with a checkpoint and show the two attempts (and, with --explain, why)."""

from typing import Annotated

import torch
import typer
from rich.console import Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from onn_arc import data, render
from onn_arc.checkpoint import default_checkpoint, load_checkpoint
from onn_arc.cli.app import app
from onn_arc.cli.common import (
    CheckpointOpt,
    DEFAULT,
    DeviceOpt,
    JsonOpt,
    MinProbOpt,
    OutFileOpt,
    SamplerOpt,
    SeedOpt,
    TaskArg,
    ThreadsOpt,
    TttOptimizerOpt,
    TttSecondsOpt,
    TttStepsOpt,
    ViewsOpt,
    err,
    out,
    solve_config,
)
from onn_arc.scoring import kaggle_json, score_task, write_submission
from onn_arc.solve import Solution, solve_task
from onn_arc.train import resolve_device


def _explain(solution: Solution) -> Group:
    parts = []
    for i, test in enumerate(solution.tests):
        parts.append(Text(f"test {i + 1}: why attempt 1", style="bold underline"))
        if test.confidence is None:
            parts.append(Text("no grid decoded: the attempts are the test input", style="dim italic"))
            continue
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


@app.command()
def solve(
    task: TaskArg,
    checkpoint: CheckpointOpt = None,
    ttt_steps: TttStepsOpt = DEFAULT.ttt_steps,
    ttt_seconds: TttSecondsOpt = DEFAULT.ttt_seconds,
    ttt_optimizer: TttOptimizerOpt = DEFAULT.optimizer.name,
    views: ViewsOpt = DEFAULT.views,
    sampler: SamplerOpt = DEFAULT.sampler,
    min_prob: MinProbOpt = DEFAULT.min_prob,
    seed: SeedOpt = DEFAULT.seed,
    as_json: JsonOpt = False,
    out_file: OutFileOpt = None,
    explain: Annotated[bool, typer.Option(help="Show attempt 1's per-cell confidence and SBL activation rate.")] = False,
    threads: ThreadsOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Solve a task: test-time training on its demos, decoding in several views, two attempts by vote.

    When the task has its test outputs, each attempt is marked ✓/✗ with its wrong cells.
    """
    if threads:
        torch.set_num_threads(threads)
    cfg = solve_config(ttt_steps, ttt_seconds, ttt_optimizer, views, sampler, min_prob, seed)
    found = data.resolve_task(task)
    loaded = load_checkpoint(checkpoint or default_checkpoint(), device=resolve_device(device))
    if loaded.meta.data.leaks_into([found]):
        warning = f"warning: {loaded.folder} was trained on the test outputs of {found.id}"
        err.print(warning, markup=False, soft_wrap=True)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        bars: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task("test-time training" if stage == "ttt" else "decoding", total=total)
            progress.update(bars[stage], completed=done)

        solution = solve_task(loaded.model, found, cfg, on_progress)

    entry = kaggle_json({found.id: solution.attempts})
    if out_file is not None:
        write_submission(out_file, {found.id: solution.attempts})
        err.print(f"wrote {out_file}", markup=False)
    if as_json:
        out.print_json(data=entry)
        return
    known = found.has_test_outputs
    out.print(render.task_view(found, show_answer=known, predictions=solution.attempts))
    out.print()
    out.print(_details(solution))
    if known:
        score = score_task(solution.attempts, found.test, found.id)
        verdict = "[bold green]solved ✓[/]" if score.solved else "[bold red]not solved ✗[/]"
        solved = sum(o.solved for o in score.outputs)
        out.print(f"{verdict}  score {score.pass_at_2:.2f} ({solved}/{score.n_tests} tests)")
    if explain:
        out.print()
        out.print(_explain(solution))
