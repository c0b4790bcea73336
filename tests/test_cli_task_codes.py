"""Task codes end to end through the CLI: `train` on one bundled task and the demos of another, then `eval` in
transductive mode (the trained codes, the leakage refusal, the mode and training cost in the report), the task-code
solve options, `solve`, `inspect` and `show --predictions` on what it made."""

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from onn_arc.checkpoint import TrainingData, load_checkpoint, save_checkpoint
from onn_arc.cli.app import app
from onn_arc.config import ModelConfig
from onn_arc.data import load_task_file
from onn_arc.evaluate import REPORT, SETTINGS, teacher_forced_loss
from onn_arc.model import TinyONN
from onn_arc.solve import with_task_code

DATA = Path(__file__).resolve().parents[1] / "data"
SEEN, DEMOS = str(DATA / "6150a2bd.json"), str(DATA / "25ff71a9.json")  # trained with test outputs / demos only
FAST = ["--ttt-steps", "1", "--ttt-optimizer", "adamw", "--views", "2", "--precision", "fp32", "--threads", "1", "--device", "cpu"]


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, words: str) -> None:
    assert result.exit_code == 1, result.output
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny checkpoint trained on SEEN (demos and test outputs) and the demos of DEMOS."""
    root = tmp_path_factory.mktemp("trained")
    args = ["--size", "tiny", "--max-len", "256", "--steps", "2", "--batch-tokens", "512", "--seed", "0"]
    result = run("train", "--source", SEEN, "--demo-source", DEMOS, "--input-loss", *args,
                 "--out", str(root / "run"), "--threads", "1", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    return root / "run" / "checkpoint"


def test_eval_on_the_demo_source_is_transductive_with_the_trained_codes(trained, tmp_path):
    result = run("eval", "--split", DEMOS, "-c", str(trained), "--out", str(tmp_path / "ev"), *FAST)
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(trained)
    totals = loaded.meta.totals()
    assert loaded.meta.model.task_ids == ("6150a2bd", "25ff71a9") and totals["steps"] == 2 and totals["tokens"] > 0
    header = result.stdout.splitlines()[0]
    assert header.startswith("transductive: the checkpoint trained on the demos of these 1 tasks")
    assert f"2 steps · {totals['tokens']:,} tokens" in header
    report = json.loads((tmp_path / "ev" / REPORT).read_text())
    summary = report["summary"]
    assert (summary["mode"], summary["transductive_tasks"], summary["seen_tasks"]) == ("transductive", 1, 0)
    assert summary["training"] == totals
    task = load_task_file(Path(DEMOS))
    assert with_task_code(loaded.model, task, "mean") is loaded.model  # solved with the code trained on its demos
    (row,) = report["tasks"]
    assert row["tf_loss"] == pytest.approx([teacher_forced_loss(loaded.model, task, i) for i in range(2)])
    assert json.loads((tmp_path / "ev" / SETTINGS).read_text())["solve"]["ttt_params"] == "all"

    shown = run("show", DEMOS, "--predictions", str(tmp_path / "ev" / "submission.json"))
    assert shown.exit_code == 0, shown.output
    assert "attempt 1" in shown.stdout and "attempt 2" in shown.stdout


def test_eval_refuses_the_task_whose_test_outputs_it_trained_on(trained, tmp_path):
    one_line_error(run("eval", "--split", SEEN, "-c", str(trained), "--out", str(tmp_path / "ev"), *FAST), "leakage")
    assert not (tmp_path / "ev").exists()


def test_a_folder_with_one_coded_task_is_mixed_and_takes_the_task_code_options(trained, tmp_path):
    options = ["--ttt-params", "code", "--task-code-init", "zero", "--json"]
    result = run("eval", "--split", str(DATA), "--tasks", "25ff71a9,puzzle-no-answer", "-c", str(trained),
                 "--out", str(tmp_path / "ev"), *FAST, *options)  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["mode"], summary["transductive_tasks"], summary["n_tasks"]) == ("mixed", 1, 2)
    solve_cfg = json.loads((tmp_path / "ev" / SETTINGS).read_text())["solve"]
    assert (solve_cfg["ttt_params"], solve_cfg["task_code_init"]) == ("code", "zero")


def test_solve_with_the_task_code_options(trained, tmp_path):
    out_file = tmp_path / "sub.json"
    result = run("solve", str(DATA / "puzzle-no-answer.json"), "-c", str(trained), "--ttt-params", "code",
                 "--out", str(out_file), *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "test-time training: 1 steps" in result.stdout and list(json.loads(out_file.read_text())) == ["puzzle-no-answer"]


def test_inspect_counts_the_codes_and_measures_activation_with_them(tmp_path):
    torch.manual_seed(0)
    ids = ("007bbfb7", *(f"task{i:04d}" for i in range(1, 300)))  # arc1-train's first task has a code, its second none
    model = TinyONN(ModelConfig.preset("tiny", task_ids=ids))
    data = TrainingData(sources=["s"], test_outputs_from=[], demos_only=["s"], task_ids_with_test_outputs=[], n_tasks=300)
    folder = save_checkpoint(tmp_path / "ck", model, data, 0, {})
    result = run("inspect", str(folder), "--tasks", "2", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "task0001" not in result.stdout
    assert re.search(r"task codes\s*│ 300 ", result.stdout) and not re.search(r"│ (format|planes) ", result.stdout)
    activation = json.loads(run("inspect", str(folder), "--tasks", "2", "--json").stdout)["activation"]
    assert activation["tasks"] == ["007bbfb7", "017c7c7b"] and activation["tokens"] > 0 and 0 < activation["mean_rate"] <= 1
