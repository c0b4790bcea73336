"""What every command shares: consoles and the option aliases defined once."""

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.console import Console

from onn_arc.config import CodeInit, OptimizerName, Ranking, SolveConfig, TttParams, one_line
from onn_arc.errors import ConfigError

# Results go to stdout, progress and logs to stderr. Consoles resolve sys.stdout at
# print time, so Typer's CliRunner captures them.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

TaskArg = Annotated[
    str,
    typer.Argument(help="A task id (007bbfb7), SPLIT:INDEX (arc1-eval:0) or a task JSON file.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for every random choice.")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", "-c", help="Checkpoint folder (default: the shipped one in checkpoints/).", show_default=False),
]
ThreadsOpt = Annotated[int, typer.Option(help="CPU threads for torch (default: all cores).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto.")]
PrecisionOpt = Annotated[
    Literal["auto", "fp32", "bf16"],
    typer.Option(help="auto: bf16 autocast where the CPU (avx512_bf16/amx_bf16) or GPU runs it fast, else fp32."),
]

DEFAULT = SolveConfig()
DEFAULT_COLOURS = DEFAULT.augment.colour_scope if DEFAULT.augment.colours else "off"  # --colours

# The solve options, shared by `onn-arc solve` and `onn-arc eval`.
TttStepsOpt = Annotated[int, typer.Option(min=0, help="Test-time training steps on the task's demos (0: off).")]
TttSecondsOpt = Annotated[
    float | None, typer.Option(help="Wall-clock bound on test-time training, in seconds.", show_default=False)
]
TttOptimizerOpt = Annotated[OptimizerName, typer.Option(help="Test-time training optimizer.")]
ViewsOpt = Annotated[
    int, typer.Option(min=1, help="Augmented views decoded and ranked over (view 1 is the task as given).")
]
SamplerOpt = Annotated[
    Literal["greedy", "dfs"], typer.Option(help="greedy: one grid per view; dfs: every grid above --min-prob.")
]
MinProbOpt = Annotated[float, typer.Option(help="dfs: a candidate grid's probability floor.")]
GreedyFallbackOpt = Annotated[
    bool,
    typer.Option(
        help="dfs: a test input for which no view finds a grid above --min-prob gets every view's greedy grid, not "
        "two copies of its input (off by default: on the dev set it solved no more tasks, up to 37 s slower)."
    ),
]
SearchSecondsOpt = Annotated[
    float | None,
    typer.Option(
        help="Wall-clock budget of decoding and scoring after test-time training, in seconds (grids found in time are "
        "kept; unscored ones ranked by votes). Default: none, so the result never depends on the machine's load.",
    ),
]
RankingOpt = Annotated[
    Ranking,
    typer.Option(
        help="Rank the candidate grids by their log-probability summed over every view (poe: a product of experts), "
        "or by votes (the views that produced them); a copy of the test input last either way."
    ),
]
TttParamsOpt = Annotated[
    TttParams, typer.Option(help="Test-time training updates every weight (all) or the task's code alone.")
]
CodeInitOpt = Annotated[
    CodeInit,
    typer.Option(help="A task without a trained code starts from the trained codes' mean or from zero."),
]
ColoursOpt = Annotated[
    Literal["all", "inputs", "off"],
    typer.Option(
        help="Colour permutations of test-time training and the views: every colour, only the task's input colours "
        "among themselves (colours only outputs bring keep their meaning), or none."
    ),
]
DihedralOpt = Annotated[
    bool, typer.Option(help="Rotations and reflections in test-time training and the views.")
]
BackgroundOpt = Annotated[
    bool, typer.Option("--keep-background/--move-background", help="Colour 0 stays fixed under colour permutations.")
]
OutFileOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Write the Kaggle submission {task_id: [...]} of the task(s) here.", show_default=False),
]


def solve_config(
    ttt_steps: int,
    ttt_seconds: float | None,
    ttt_optimizer: str,
    views: int,
    sampler: str,
    min_prob: float,
    seed: int,
    precision: str = DEFAULT.precision,
    ttt_params: str = DEFAULT.ttt_params,
    task_code_init: str = DEFAULT.task_code_init,
    colours: str = DEFAULT_COLOURS,
    dihedral: bool = DEFAULT.augment.dihedral,
    keep_background: bool = DEFAULT.augment.keep_background,
    ranking: str = DEFAULT.ranking,
    search_seconds: float | None = DEFAULT.search_seconds,
    greedy_fallback: bool = DEFAULT.greedy_fallback,
) -> SolveConfig:
    """The SolveConfig the shared options describe (everything else at its default)."""
    fields = dict(
        ttt_steps=ttt_steps, ttt_seconds=ttt_seconds, views=views, sampler=sampler, min_prob=min_prob, precision=precision,
        ttt_params=ttt_params, task_code_init=task_code_init, ranking=ranking, search_seconds=search_seconds,
        greedy_fallback=greedy_fallback,
    )  # fmt: skip
    optimizer = DEFAULT.optimizer.model_dump() | {"name": ttt_optimizer}
    augment = DEFAULT.augment.model_dump() | {"dihedral": dihedral, "keep_background": keep_background}
    augment |= {"colours": False} if colours == "off" else {"colours": True, "colour_scope": colours}
    try:
        return SolveConfig.model_validate(fields | {"optimizer": optimizer, "augment": augment, "seed": seed})
    except ValidationError as e:
        raise ConfigError(one_line(e, "solve options")) from None


def number(value: float | None, digits: int = 3) -> str:
    """A score to print; "–" where there is none."""
    return "–" if value is None else f"{value:.{digits}f}"


def training_counts(counts: dict[str, Any]) -> str:
    """Steps, tokens and seconds of a training stage or of a chain (`CheckpointMeta.totals()`'s keys; '?' where not
    recorded)."""

    def n(name: str, spec: str = ",") -> str:
        return "?" if counts[name] is None else format(counts[name], spec)

    return (
        f"{n('steps')} steps · {n('tokens')} tokens ({n('target_tokens')} target, {n('padded_tokens')} padded) · "
        f"{n('seconds', ',.1f')} s"
    )


def leading_indicators(summary: dict[str, Any]) -> str:
    """One line: a score summary's leading indicators (`ScoreSummary.to_json()`'s keys), then the copy-the-input
    baseline's on the same tasks."""
    copied = summary["copy_baseline"]
    return (
        f"shape correct {number(summary['shape_correct'])}  cell accuracy {number(summary['cell_accuracy'])}  "
        f"changed-cell accuracy {number(summary['changed_cell_accuracy'])}  ·  copy the input: "
        f"pass@2 {number(copied['pass_at_2'])}  shape correct {number(copied['shape_correct'])}  "
        f"cell accuracy {number(copied['cell_accuracy'])}"
    )
