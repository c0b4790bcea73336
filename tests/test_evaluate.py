"""Evaluation: resumable runs give the same report, leakage and changed settings are refused, failed tasks are
recorded, the teacher-forced loss, and `onn-arc eval` through CliRunner."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import onn_arc.cli.eval  # noqa: F401  (registers the command)
from onn_arc.checkpoint import TrainingData, load_checkpoint, save_checkpoint
from onn_arc.cli.app import app
from onn_arc.config import AugmentConfig, LossConfig, ModelConfig, OptimizerConfig, SolveConfig
from onn_arc.data import Task, load_source
from onn_arc.errors import ConfigError, LeakageError
from onn_arc import evaluate as evaluate_module
from onn_arc.evaluate import REPORT, RESULTS, TIMING, evaluate, run_task, teacher_forced_loss
from onn_arc.model import TinyONN
from onn_arc.scoring import BASELINE_KEYS, load_submission
from onn_arc.solve import solve_task, with_task_code
from onn_arc.tokens import encode_pair, grid_length

DATA = Path(__file__).resolve().parents[1] / "data"
TASKS = load_source(str(DATA))  # 007bbfb7 (too long for a 64-token context), 25ff71a9 (2 tests), 6150a2bd, puzzle-no-answer
CFG = SolveConfig(ttt_steps=2, ttt_batch_tokens=256, views=2, optimizer=OptimizerConfig(name="adamw", lr=1e-3))
TRAINED_ON = TrainingData(
    sources=["arc1-train"], test_outputs_from=["arc1-train"], demos_only=[], task_ids_with_test_outputs=["x"], n_tasks=1
)


def make_checkpoint(folder: Path, data: TrainingData = TRAINED_ON, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(folder, TinyONN(ModelConfig.preset("tiny", max_len=64)), data, step=0, metrics={})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def uninterrupted(checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("full")
    evaluation = evaluate(checkpoint, TASKS, CFG, out)
    return out, evaluation.report


def test_report_submission_and_failed_tasks(uninterrupted):
    out, report = uninterrupted
    assert json.loads((out / REPORT).read_text()) == report
    rows = {row["task_id"]: row for row in report["tasks"]}
    assert list(rows) == [t.id for t in TASKS]
    assert "needs" in rows["007bbfb7"]["error"] and "context holds 64" in rows["007bbfb7"]["error"]
    given = [[list(row) for row in TASKS[0].test[0].input]] * 2
    assert rows["007bbfb7"]["pass_at_2"] == 0 and rows["007bbfb7"]["attempts"] == [given]  # copy the input
    assert rows["25ff71a9"]["error"] is None and len(rows["25ff71a9"]["tests"]) == 2
    assert rows["6150a2bd"]["ttt_steps"] == 2 and len(rows["6150a2bd"]["views"]) == 2
    assert "tests" not in rows["puzzle-no-answer"] and rows["puzzle-no-answer"]["tf_loss"] == [None]
    assert rows["puzzle-no-answer"]["tuned_tf_loss"] == [None] and rows["007bbfb7"]["tuned_tf_loss"] == [None]
    summary = report["summary"]
    assert (summary["n_tasks"], summary["scored_tasks"], summary["failed"]) == (4, 3, 1)
    assert summary["tf_loss"] > 0 and summary["tuned_tf_loss"] > 0 and summary["seconds_per_task"] > 0
    submission = load_submission(out / "submission.json")
    assert list(submission) == [t.id for t in TASKS]
    assert submission["007bbfb7"] == [(TASKS[0].test[0].input,) * 2] and len(submission["25ff71a9"]) == 2
    assert [list(map(list, g)) for g in submission["6150a2bd"][0]] == rows["6150a2bd"]["attempts"][0]
    assert all(None not in attempts for entries in submission.values() for attempts in entries)


def test_the_tuned_loss_is_the_true_outputs_loss_under_the_model_that_decodes(checkpoint):
    model, task = load_checkpoint(checkpoint).model, TASKS[1]  # 25ff71a9: two tests
    untuned = run_task(model, task, CFG.model_copy(update={"ttt_steps": 0}))
    assert untuned["tuned_tf_loss"] == pytest.approx(untuned["tf_loss"])
    row, decoder = run_task(model, task, CFG), []
    solve_task(model, task, CFG, on_tuned=decoder.append)  # the same seeded test-time training
    assert row["tuned_tf_loss"] == pytest.approx([teacher_forced_loss(decoder[0], task, i, CFG.precision) for i in range(2)])
    assert row["tuned_tf_loss"] != pytest.approx(row["tf_loss"])


def test_a_task_is_scored_and_solved_with_one_copy_of_the_model_with_its_fresh_code(monkeypatch):
    torch.manual_seed(0)
    model = TinyONN(ModelConfig.preset("tiny", max_len=64, task_ids=("x",))).eval()
    task = TASKS[1]  # 25ff71a9: two tests, no code in the model
    made, add = [], TinyONN.add_task_code

    def counted(self: TinyONN, task_id: str, init: str = "mean") -> int:
        made.append(task_id)
        return add(self, task_id, init)

    monkeypatch.setattr(TinyONN, "add_task_code", counted)
    row = run_task(model, task, CFG)
    assert made == [task.id]  # not one for each test's tf_loss, then another to solve with
    monkeypatch.undo()
    solved = solve_task(model, task, CFG).to_json()  # what solving the model itself gives: the same
    assert {k: row[k] for k in solved if k != "ttt_seconds"} == {k: v for k, v in solved.items() if k != "ttt_seconds"}
    assert row["tf_loss"] == [teacher_forced_loss(model, task, i, CFG.precision, CFG.task_code_init) for i in range(2)]
    assert model.cfg.task_ids == ("x",)  # the model given is never changed


def test_the_report_carries_changed_cell_accuracy_and_the_copy_baseline(uninterrupted):
    _, report = uninterrupted
    scored = [t for t in TASKS if t.has_test_outputs]
    rows = {row["task_id"]: row for row in report["tasks"]}

    def copy_accuracy(task) -> float:  # the copy's cell accuracy, counted here with numpy
        given, truth = [np.array(p.input) for p in task.test], [np.array(p.output) for p in task.test]
        return np.mean([(g == t).mean() if g.shape == t.shape else 0 for g, t in zip(given, truth)])

    for task in scored:
        assert rows[task.id]["copy_baseline"]["cell_accuracy"] == pytest.approx(copy_accuracy(task))
        assert rows[task.id]["copy_baseline"]["pass_at_2"] == 0
    assert rows["007bbfb7"]["changed_cell_accuracy"] is None  # 3×3 -> 9×9: no same-shape test
    assert 0 <= rows["6150a2bd"]["changed_cell_accuracy"] <= 1 and "copy_baseline" not in rows["puzzle-no-answer"]
    summary = report["summary"]
    assert summary["copy_baseline"]["cell_accuracy"] == pytest.approx(np.mean([copy_accuracy(t) for t in scored]))
    assert summary["copy_baseline"]["shape_correct"] == pytest.approx(2 / 3)
    changed = [rows[t]["changed_cell_accuracy"] for t in ("25ff71a9", "6150a2bd")]
    assert summary["changed_cell_accuracy"] == pytest.approx(np.mean(changed))


def test_an_old_report_folder_is_rescored_without_solving(uninterrupted, checkpoint, tmp_path, monkeypatch):
    """Records of an older run: a failed task without attempts, a task with one attempt per test."""
    folder, report = uninterrupted
    (tmp_path / "settings.json").write_text((folder / "settings.json").read_text())
    old = [json.loads(line) for line in (folder / RESULTS).read_text().splitlines()]
    for record in old:
        record["attempts"] = [[] if record["error"] else attempts[:1] for attempts in record["attempts"]]
    (tmp_path / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in old))
    monkeypatch.setattr(evaluate_module, "run_task", lambda *args: pytest.fail("solved again"))
    rescored = evaluate(checkpoint, TASKS, CFG, tmp_path).report
    rows = {row["task_id"]: row for row in rescored["tasks"]}
    assert rows["007bbfb7"]["attempts"] == [[[list(r) for r in TASKS[0].test[0].input]] * 2]
    assert all(len(attempts) == 2 for row in rows.values() for attempts in row["attempts"])
    assert rescored["summary"]["copy_baseline"] == report["summary"]["copy_baseline"]
    assert all(None not in a for entries in load_submission(tmp_path / "submission.json").values() for a in entries)


def test_a_run_resumed_after_limit_1_gives_the_same_report(checkpoint, uninterrupted, tmp_path):
    evaluate(checkpoint, TASKS[:1], CFG, tmp_path)  # like `--limit 1`
    seen = []
    report = evaluate(checkpoint, TASKS, CFG, tmp_path, on_task=seen.append).report
    assert [(d.record["task_id"], d.resumed) for d in seen][0] == ("007bbfb7", True)
    assert sorted(d.record["task_id"] for d in seen if not d.resumed) == sorted(t.id for t in TASKS[1:])
    assert without_timing(report) == without_timing(uninterrupted[1])
    assert len((tmp_path / RESULTS).read_text().splitlines()) == 4


def test_a_run_killed_mid_task_and_mid_line_resumes_to_the_same_report(checkpoint, uninterrupted, tmp_path):
    def crash(done):
        if not done.resumed and done.record["task_id"] == "6150a2bd":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(checkpoint, TASKS, CFG, tmp_path, on_task=crash)
    results = tmp_path / RESULTS
    assert len(results.read_text().splitlines()) == 3 and not (tmp_path / REPORT).exists()
    with open(results, "a") as f:
        f.write('{"task_id": "puzzle-no-answer", "attem')  # a write cut short by the kill
    report = evaluate(checkpoint, TASKS, CFG, tmp_path).report
    assert without_timing(report) == without_timing(uninterrupted[1])
    assert [json.loads(line)["task_id"] for line in results.read_text().splitlines()] == [t.id for t in TASKS]


def test_a_rerun_with_other_settings_is_refused(checkpoint, tmp_path):
    evaluate(checkpoint, TASKS[:1], CFG, tmp_path)
    with pytest.raises(ConfigError, match=r"settings.json: .*\(solve.views was 2, now 3\)"):
        evaluate(checkpoint, TASKS[:1], CFG.model_copy(update={"views": 3}), tmp_path)
    evaluate(make_checkpoint(tmp_path / "copy"), TASKS[:1], CFG, tmp_path)  # the same weights elsewhere: allowed
    with pytest.raises(ConfigError, match=r"\(weights_sha256 was '[0-9a-f]+', now '[0-9a-f]+'\)"):
        evaluate(make_checkpoint(tmp_path / "other", seed=1), TASKS[:1], CFG, tmp_path)
    with pytest.raises(ConfigError, match=r"\(solve.loss.kl_weight was 0.001, now 0.5\)"):  # nested settings too
        evaluate(checkpoint, TASKS[:1], CFG.model_copy(update={"loss": LossConfig(kl_weight=0.5)}), tmp_path)


def test_a_run_from_before_a_new_solve_setting_still_resumes(checkpoint, tmp_path):
    evaluate(checkpoint, TASKS[:1], CFG, tmp_path)
    settings = json.loads((tmp_path / "settings.json").read_text())
    del settings["solve"]["loss"]["gate_form"], settings["solve"]["ttt_params"]  # fields added after such a run
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    evaluate(checkpoint, TASKS, CFG, tmp_path)  # their defaults are what the old run did
    median = CFG.model_copy(update={"loss": LossConfig(gate_form="median")})
    with pytest.raises(ConfigError, match=r"\(solve.loss.gate_form was 'softmax', now 'median'\)"):
        evaluate(checkpoint, TASKS, median, tmp_path)


def test_a_run_from_before_a_default_changed_is_not_resumed_under_the_new_default(checkpoint, tmp_path):
    """A run of 2026-12-04 recorded neither colour_scope nor ranking: it permuted every colour and ranked by votes,
    not what today's defaults (input colours, poe) do."""
    old = CFG.model_copy(update={"augment": AugmentConfig(colour_scope="all"), "ranking": "votes"})
    evaluate(checkpoint, TASKS[:1], old, tmp_path)
    settings = json.loads((tmp_path / "settings.json").read_text())
    del settings["solve"]["augment"]["colour_scope"], settings["solve"]["ranking"]
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    evaluate(checkpoint, TASKS[:1], old, tmp_path)  # what the old run did: resumed
    with pytest.raises(ConfigError, match=r"\(solve.augment.colour_scope was 'all', now 'inputs'\)"):
        evaluate(checkpoint, TASKS[:1], CFG.model_copy(update={"augment": AugmentConfig(colour_scope="inputs")}), tmp_path)
    with pytest.raises(ConfigError, match=r"\(solve.ranking was 'votes', now 'poe'\)"):
        evaluate(checkpoint, TASKS[:1], old.model_copy(update={"ranking": "poe"}), tmp_path)


def test_settings_name_the_checkpoint_relative_to_the_working_directory_below_it(checkpoint, tmp_path, monkeypatch):
    def recorded(out: Path) -> str:
        evaluate(checkpoint, TASKS[:1], CFG, out)  # 007bbfb7 does not fit the context: nothing to solve
        return json.loads((out / "settings.json").read_text())["checkpoint"]

    above, elsewhere = checkpoint.parent.parent, tmp_path  # the checkpoint lies below the one, not the other
    monkeypatch.chdir(above)
    assert recorded(tmp_path / "below") == str(checkpoint.relative_to(above))
    monkeypatch.chdir(elsewhere)
    assert recorded(tmp_path / "outside") == str(checkpoint.resolve())
    assert recorded(tmp_path / "below") == str(checkpoint.relative_to(above))  # resumed: the weights are the same
    monkeypatch.chdir(above)
    assert recorded(tmp_path / "outside") == str(checkpoint.resolve())  # an absolute path (older runs) resumes too


def test_a_checkpoint_trained_on_the_test_outputs_is_refused(tmp_path):
    leaky = TrainingData(
        sources=["mine"], test_outputs_from=["mine"], demos_only=[],
        task_ids_with_test_outputs=["6150a2bd", "25ff71a9"], n_tasks=2,
    )  # fmt: skip
    folder = make_checkpoint(tmp_path / "leaky", leaky)
    with pytest.raises(LeakageError) as info:
        evaluate(folder, TASKS, CFG, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "2 of these 4 tasks" in message and "25ff71a9" in message and "mine" in message
    assert not (tmp_path / "out").exists()
    fit = evaluate(folder, TASKS[:2], CFG, tmp_path / "fit", allow_seen=True).report["summary"]  # measured on purpose
    assert fit["seen_tasks"] == 1 and fit["n_tasks"] == 2


def test_teacher_forced_loss_scores_the_true_test_output_alone_with_the_tasks_code():
    torch.manual_seed(0)
    model = TinyONN(ModelConfig.preset("tiny", max_len=64, task_ids=("x", "25ff71a9"))).eval()
    task = TASKS[1]  # 25ff71a9, code 1

    def expected(m: TinyONN, task: Task, code: int, i: int) -> float:
        seq = encode_pair(task.test[i], code)
        args = [torch.as_tensor(a)[None] for a in (seq.tokens, seq.rows, seq.cols, seq.pos)]
        with torch.no_grad():
            logits = m(*args, task=torch.tensor([code]))[0]  # (T, V)
        start = len(seq) - grid_length(task.test[i].output) - 1  # the output's first token; EOS is last
        return F.cross_entropy(logits[start - 1 : -1], torch.as_tensor(seq.tokens[start:])).item()

    for i in range(2):
        assert teacher_forced_loss(model, task, i) == pytest.approx(expected(model, task, 1, i), rel=1e-5)
    new = TASKS[2]  # 6150a2bd: no code, so a fresh one as solve makes it; the model keeps its two
    fresh = {init: teacher_forced_loss(model, new, 0, code_init=init) for init in ("mean", "zero")}
    for init in ("mean", "zero"):
        assert fresh[init] == pytest.approx(expected(with_task_code(model, new, init), new, 2, 0), rel=1e-5)
    assert fresh["mean"] != fresh["zero"] and model.cfg.task_ids == ("x", "25ff71a9")
    assert teacher_forced_loss(model, TASKS[3], 0) is None  # no output
    assert teacher_forced_loss(model, TASKS[0], 0) is None  # does not fit the context


def test_the_report_says_whether_the_checkpoint_trained_on_the_tasks_demos(uninterrupted, checkpoint, tmp_path):
    summary = uninterrupted[1]["summary"]
    assert (summary["mode"], summary["transductive_tasks"]) == ("inductive", 0)
    assert summary["training"] == load_checkpoint(checkpoint).meta.totals() and summary["training"]["steps"] == 0
    source = str(DATA / "6150a2bd.json")
    demos = TrainingData(sources=[source], test_outputs_from=[], demos_only=[source], task_ids_with_test_outputs=[], n_tasks=1)
    folder = make_checkpoint(tmp_path / "demos", demos)
    quick = CFG.model_copy(update={"ttt_steps": 0, "views": 1})
    report = evaluate(folder, load_source(source), quick, tmp_path / "a", source=source).report
    assert (report["summary"]["mode"], report["summary"]["transductive_tasks"]) == ("transductive", 1)
    # by another name a model without the task's code cannot tell
    report = evaluate(folder, TASKS[2:], quick, tmp_path / "b", source=str(DATA)).report
    assert (report["summary"]["mode"], report["summary"]["transductive_tasks"]) == ("inductive", 0)


@pytest.mark.slow
def test_two_worker_processes_give_the_same_report(checkpoint, uninterrupted, tmp_path):
    report = evaluate(checkpoint, TASKS, CFG, tmp_path, workers=2).report
    assert without_timing(report) == without_timing(uninterrupted[1])


ORPHAN = """
import multiprocessing, os, signal, sys
from onn_arc.evaluate import _exit_with

if __name__ == "__main__":
    worker = multiprocessing.get_context("spawn").Process(target=_exit_with, args=(os.getpid(),))
    worker.start()
    open(sys.argv[1], "w").write(str(worker.pid))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")  # a zombie has exited
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_exits_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(ORPHAN)
    subprocess.run([sys.executable, str(script), str(tmp_path / "pid")], timeout=60)
    worker = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 30
    while not _gone(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(worker)


# ---------------------------------------------------------------- the CLI


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_eval_prints_a_table_and_a_summary(checkpoint, tmp_path):
    args = ["eval", "--split", str(DATA), "--checkpoint", str(checkpoint), "--ttt-steps", "1", "--ttt-optimizer", "adamw"]
    result = _run(*args, "--tasks", "6150a2bd,25ff71a9", "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert "6150a2bd" in result.stdout and "25ff71a9" in result.stdout and "007bbfb7" not in result.stdout
    assert "pass@2" in result.stdout and "solved" in result.stdout and "/2 " in result.stdout
    assert "changed-cell accuracy" in result.stdout and "copy the input: pass@2 0.000" in result.stdout
    result = _run(*args, "--limit", "1", "--out", str(tmp_path / "b"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_tasks"] == 1 and summary["failed"] == 1 and summary["pass_at_2"] == 0
    assert summary["seen_tasks"] == 0
    assert summary["changed_cell_accuracy"] is None and set(summary["copy_baseline"]) == set(BASELINE_KEYS)


def test_cli_eval_without_test_outputs_says_nothing_was_scored(checkpoint, tmp_path):
    args = ["eval", "--split", str(DATA / "puzzle-no-answer.json"), "--checkpoint", str(checkpoint), "--ttt-steps", "0"]
    result = _run(*args, "--out", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert "nothing scored: none of these 1 tasks has test outputs" in result.stdout
    assert str(tmp_path / "a" / "submission.json") in result.stdout.replace("\n", "")
    assert "pass@2" not in result.stdout and "solved" not in result.stdout
    summary = json.loads(_run(*args, "--out", str(tmp_path / "a"), "--json").stdout)  # rescored, not solved again
    assert (summary["n_tasks"], summary["scored_tasks"]) == (1, 0)
    assert summary["pass_at_2"] is None and summary["copy_baseline"] is None


def test_cli_eval_errors_are_one_line(checkpoint, tmp_path):
    leaky = make_checkpoint(
        tmp_path / "leaky",
        TrainingData(sources=["s"], test_outputs_from=["s"], demos_only=[], task_ids_with_test_outputs=["6150a2bd"], n_tasks=1),
    )
    for args, words in [
        (["--checkpoint", str(leaky)], "leakage"),
        (["--checkpoint", str(checkpoint), "--tasks", "nope"], "has no task nope"),
        (["--checkpoint", str(tmp_path / "missing")], "no such checkpoint"),
    ]:
        result = _run("eval", "--split", str(DATA), "--out", str(tmp_path / "o"), *args)
        assert result.exit_code == 1, result.output
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _run("eval", "--workers", "0").exit_code == 2
    fit = ["--checkpoint", str(leaky), "--ttt-steps", "1", "--ttt-optimizer", "adamw", "--tasks", "6150a2bd"]
    result = _run("eval", "--split", str(DATA), "--out", str(tmp_path / "fit"), "--allow-seen", *fit)
    assert result.exit_code == 0, result.output
    assert "fit, not a score" in result.stdout and "1 of these 1 tasks" in result.stdout
