"""The `onn-arc` entry point: output into a pipe that its reader closed ends quietly with 141 (`... | head`)."""

import subprocess
import sys

import pytest

import onn_arc.cli.tasks as cli_tasks
from onn_arc.cli.app import main

CLOSED_PIPE = 141  # 128 + SIGPIPE, what a shell reports


@pytest.mark.parametrize("args", [["eval", "--help"], ["--help"], ["tasks", "data"]])
def test_output_into_a_closed_pipe_ends_quietly(args):
    proc = subprocess.Popen([sys.executable, "-m", "onn_arc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write (the command takes seconds to import torch)
    stderr = proc.stderr.read().decode()
    assert (proc.wait(), stderr) == (CLOSED_PIPE, "")


def test_a_broken_pipe_inside_a_command_is_no_internal_error(monkeypatch, capsys):
    def closed(*_, **__):  # a write that rich does not catch itself, like click's echo in `eval --help | head`
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli_tasks.out, "print", closed)
    monkeypatch.setattr(sys, "argv", ["onn-arc", "tasks", "data"])
    for stream in ("stdout", "stderr"):  # Typer wraps them on a closed pipe; put them back afterwards
        monkeypatch.setattr(sys, stream, getattr(sys, stream))
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == CLOSED_PIPE and capsys.readouterr().err == ""
