"""The `onn-arc` command: a Typer app whose commands live one per module.

Every `OnnArcError` becomes one line on stderr and exit 1; usage errors exit 2; any other exception is reported in one line too, with the
traceback only when ONN_ARC_DEBUG=1. Output into a pipe that its reader closed (`onn-arc eval --help | head`) ends
quietly with 141, as a shell reports a command that SIGPIPE ended.
"""

import importlib
import os
import signal

import typer
from typer.core import TyperGroup

from onn_arc.cli.common import err
from onn_arc.errors import OnnArcError


def _debug() -> bool:
    return os.environ.get("ONN_ARC_DEBUG", "") not in ("", "0")


class _Group(TyperGroup):
    """Maps exceptions raised by commands to one-line messages and exit codes."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, BrokenPipeError):  # a closed pipe: see main()
            raise
        except OnnArcError as e:
            if _debug():
                raise
            err.print(f"[bold red]error[/] ({e.kind}): {e}", markup=True, soft_wrap=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            err.print("interrupted")
            ctx.exit(130)
        except Exception as e:  # a bug: still one line unless debugging
            if _debug():
                raise
            err.print(
                f"[bold red]internal error[/]: {type(e).__name__}: {e} (ONN_ARC_DEBUG=1 shows the traceback)",
                markup=True,
                soft_wrap=True,
            )
            ctx.exit(1)


app = typer.Typer(
    cls=_Group,
    name="onn-arc",
    help="Train and run a Tiny-ONN (Sparse Bayesian Layers, dynamic sparsity) on ARC-AGI puzzles.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root() -> None:
    """Train and run a Tiny-ONN (Sparse Bayesian Layers, dynamic sparsity) on ARC-AGI puzzles."""


def main() -> None:
    try:
        app()
    except SystemExit as e:  # Typer and rich end a write into a closed pipe quietly but with 1, our user-error code
        if isinstance(e.__context__, BrokenPipeError):
            raise SystemExit(128 + signal.SIGPIPE) from None
        raise


# Each command module adds itself to `app` with @app.command(); importing them registers them.
COMMANDS = ["show", "tasks", "train", "solve", "eval", "score", "inspect", "version"]
for _name in COMMANDS:
    importlib.import_module(f"onn_arc.cli.{_name}")
