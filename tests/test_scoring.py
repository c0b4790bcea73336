"""Official ARC scoring on hand-made cases, submission files, and the `score` command."""

import json

import pytest
from typer.testing import CliRunner

import onn_arc.cli.score  # noqa: F401  (registers the command)
from onn_arc.cli.app import app
from onn_arc.errors import SubmissionError
from onn_arc.scoring import Scorer, load_submission, score_task, write_submission

A = ((1, 2), (3, 4))
B = ((1, 2), (3, 5))  # A with one cell wrong
C = ((7,),)
WIDE = ((1, 2, 3, 4),)  # the cells of A, wrong shape


def test_either_attempt_solves_but_only_the_first_counts_for_pass_at_1():
    score = score_task([[B, A]], [A])
    (output,) = score.outputs
    assert (output.attempt_1, output.attempt_2) == (False, True)
    assert score.pass_at_1 == 0.0
    assert score.pass_at_2 == 1.0
    assert score.solved


def test_partial_credit_over_test_outputs():
    score = score_task([[A, None], [C, B]], [A, A])
    assert score.pass_at_2 == 0.5
    assert score.pass_at_1 == 0.5
    assert not score.solved
    assert score.cell_accuracy == (1.0 + 0.75) / 2


def test_duplicate_attempts_are_one_answer():
    assert score_task([[A, A]], [A]).pass_at_2 == 1.0
    assert score_task([[B, B]], [A]).pass_at_2 == 0.0


def test_missing_test_entries_and_attempts_are_wrong():
    score = score_task([[A]], [A, B, C])
    assert [o.solved for o in score.outputs] == [True, False, False]
    assert score.pass_at_2 == pytest.approx(1 / 3)
    missing = score.outputs[1]
    assert (missing.shape_correct, missing.cell_accuracy) == (False, 0.0)
    assert score_task([[None, None]], [A]).pass_at_2 == 0.0


def test_extra_test_entries_are_ignored():
    assert score_task([[A], [A]], [A]).pass_at_2 == 1.0


def test_wrong_shape_has_zero_cell_accuracy_and_best_attempt_is_reported():
    (wrong,) = score_task([[WIDE, None]], [A]).outputs
    assert (wrong.shape_correct, wrong.cell_accuracy) == (False, 0.0)
    (best,) = score_task([[WIDE, B]], [A]).outputs
    assert (best.solved, best.shape_correct, best.cell_accuracy) == (False, True, 0.75)


def test_list_grids_compare_equal_to_tuple_grids():
    assert score_task([[[[1, 2], [3, 4]]]], [A]).solved


def test_more_than_two_attempts_is_a_bug():
    with pytest.raises(ValueError, match="at most 2 attempts"):
        score_task([[A, B, C]], [A])


def test_scorer_means_fractional_task_scores_and_counts_missing_tasks():
    scorer = Scorer()
    scorer.update("full", [[B, A]], [A])  # pass@2 1, pass@1 0
    scorer.update("half", [[A, None], [B, None]], [A, A])  # pass@2 0.5, pass@1 0.5
    scorer.update("gone", [], [A], submitted=False)
    summary = scorer.result()
    assert summary.n_tasks == 3
    assert summary.pass_at_2 == pytest.approx(1.5 / 3)
    assert summary.pass_at_1 == pytest.approx(0.5 / 3)
    assert summary.solved_tasks == 1
    assert summary.shape_correct == pytest.approx((1 + 1 + 0) / 3)
    assert summary.cell_accuracy == pytest.approx((1 + (1 + 0.75) / 2 + 0) / 3)

    record = json.loads(json.dumps(summary.to_json()))
    assert record["pass_at_2"] == pytest.approx(0.5)
    assert [t["task_id"] for t in record["tasks"]] == ["full", "half", "gone"]
    assert record["tasks"][2]["submitted"] is False
    assert record["tasks"][1]["tests"][1]["cell_accuracy"] == 0.75

    with pytest.raises(ValueError, match="scored twice"):
        scorer.update("full", [[A]], [A])
    scorer.begin()
    assert scorer.result().n_tasks == 0
    assert scorer.result().pass_at_2 == 0.0


def test_submission_round_trip_is_atomic_and_missing_attempts_load_as_none(tmp_path):
    path = tmp_path / "submission.json"
    path.write_text("stale")
    submission = {"t1": [(A, None), (C, B)], "t2": [(B,)]}
    write_submission(path, submission)
    assert [p.name for p in tmp_path.iterdir()] == ["submission.json"]
    raw = json.loads(path.read_text())
    assert raw["t1"][0] == {"attempt_1": [[1, 2], [3, 4]], "attempt_2": None}
    assert load_submission(path) == {"t1": [(A, None), (C, B)], "t2": [(B, None)]}


def test_empty_list_attempt_is_missing_not_an_error(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"t1": [{"attempt_1": [], "attempt_2": [[7]]}]}))
    assert load_submission(path) == {"t1": [(None, C)]}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not JSON"),
        ("[]", "expected an object"),
        ('{"t1": {"attempt_1": [[1]]}}', "task t1: expected a list"),
        ('{"t1": [[[1]]]}', "task t1 test 0: expected an object"),
        ('{"t1": [{"attempt_1": [[1]], "attempt_2": [[1]]}, {"attempt_1": [[1]]}]}', "task t1 test 1: missing attempt_2"),
        ('{"t1": [{"attempt_1": [[1]], "attempt_2": [[1, 2], [3]]}]}', "task t1 test 0 attempt_2: "),
        ('{"t1": [{"attempt_1": [[12]], "attempt_2": null}]}', "task t1 test 0 attempt_1: "),
        ('{"t1": [{"attempt_1": "[[1]]", "attempt_2": null}]}', "task t1 test 0 attempt_1: "),
    ],
)
def test_malformed_submission_names_the_problem(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SubmissionError) as info:
        load_submission(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_missing_submission_file(tmp_path):
    with pytest.raises(SubmissionError, match="no such file"):
        load_submission(tmp_path / "nope.json")


# --- the `score` command ---------------------------------------------------------------------------------------


def _task(*tests: tuple) -> dict:
    """A task JSON whose test pairs are (input, output-or-None)."""
    pairs = [{"input": [list(r) for r in i]} | ({} if o is None else {"output": [list(r) for r in o]}) for i, o in tests]
    return {"train": [{"input": [[0]], "output": [[1]]}], "test": pairs}


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name, task in {"aaa": _task((C, A)), "bbb": _task((C, A), (C, C)), "ccc": _task((C, B))}.items():
        (folder / f"{name}.json").write_text(json.dumps(task))
    return folder


def _submission(tmp_path, obj) -> str:
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture
def submission(tmp_path):
    """aaa solved by attempt 2 only, bbb 1 of 2 tests, ccc missing, zzz not in the split."""
    entry = {"attempt_1": [[1, 2], [3, 5]], "attempt_2": [[1, 2], [3, 4]]}
    wrong = {"attempt_1": [[5]], "attempt_2": None}
    return _submission(tmp_path, {"aaa": [entry], "bbb": [entry, wrong], "zzz": [entry]})


def test_cli_scores_a_submission(source, submission):
    result = CliRunner().invoke(app, ["score", submission, "--split", str(source)])
    assert result.exit_code == 0, result.output
    assert "pass@2 0.500  pass@1 0.000  solved 1/3 tasks" in result.stdout
    assert "aaa" in result.stdout and "ccc" in result.stdout
    assert "zzz" in result.stderr and "not scored" in result.stderr
    assert "ccc" in result.stderr and "score 0" in result.stderr


def test_cli_json_summary(source, submission):
    result = CliRunner().invoke(app, ["score", submission, "--split", str(source), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["n_tasks"], summary["solved_tasks"]) == (3, 1)
    assert summary["pass_at_2"] == pytest.approx(0.5)
    tasks = {t["task_id"]: t for t in summary["tasks"]}
    assert tasks["bbb"]["pass_at_2"] == 0.5
    assert tasks["ccc"]["submitted"] is False
    assert "zzz" not in tasks


def test_cli_bad_submission_is_one_line(source, tmp_path):
    bad = _submission(tmp_path, {"aaa": [{"attempt_1": [[1]]}]})
    result = CliRunner().invoke(app, ["score", bad, "--split", str(source)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "missing attempt_2" in result.stderr


def test_cli_split_without_test_outputs(tmp_path, submission):
    folder = tmp_path / "puzzles"
    folder.mkdir()
    (folder / "aaa.json").write_text(json.dumps(_task((C, None))))
    result = CliRunner().invoke(app, ["score", submission, "--split", str(folder)])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no task has test outputs" in result.stderr
