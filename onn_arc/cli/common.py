"""What every command shares: consoles and the option aliases defined once."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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
