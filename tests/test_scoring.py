"""Official ARC scoring on hand-made cases, submission files, and the `score` command."""

import json

import pytest
from typer.testing import CliRunner

import onn_arc.cli.score  # noqa: F401  (registers the command)
from onn_arc.cli.app import app
from onn_arc.data import Pair
from onn_arc.errors import SubmissionError
from onn_arc.scoring import BASELINE_KEYS, Scorer, kaggle_json, load_submission, score_task, write_submission

A = ((1, 2), (3, 4))
B = ((1, 2), (3, 5))  # A with one cell wrong
C = ((7,),)
WIDE = ((1, 2, 3, 4),)  # the cells of A, wrong shape
X = ((1, 1, 1), (1, 1, 1))  # a test input
T = ((1, 2, 1), (3, 1, 4))  # its true output: 3 of 6 cells change
P = ((1, 2, 1), (0, 0, 4))  # gets 2 of the 3 changed cells and 4 of 6 cells right


def pairs(*outputs, given=((0, 0, 0),)) -> list[Pair]:
    """Test pairs with these outputs, all with the input `given` (by default of no output's shape)."""
    return [Pair(input=given, output=output) for output in outputs]


def test_either_attempt_solves_but_only_the_first_counts_for_pass_at_1():
    score = score_task([[B, A]], pairs(A))
    (output,) = score.outputs
    assert (output.attempt_1, output.attempt_2) == (False, True)
    assert score.pass_at_1 == 0.0
    assert score.pass_at_2 == 1.0
    assert score.solved


def test_partial_credit_over_test_outputs():
    score = score_task([[A, None], [C, B]], pairs(A, A))
    assert score.pass_at_2 == 0.5
    assert score.pass_at_1 == 0.5
    assert not score.solved
    assert score.cell_accuracy == (1.0 + 0.75) / 2


def test_duplicate_attempts_are_one_answer():
    assert score_task([[A, A]], pairs(A)).pass_at_2 == 1.0
    assert score_task([[B, B]], pairs(A)).pass_at_2 == 0.0


def test_missing_test_entries_and_attempts_are_wrong():
    score = score_task([[A]], pairs(A, B, C))
    assert [o.solved for o in score.outputs] == [True, False, False]
    assert score.pass_at_2 == pytest.approx(1 / 3)
    missing = score.outputs[1]
    assert (missing.shape_correct, missing.cell_accuracy) == (False, 0.0)
    assert score_task([[None, None]], pairs(A)).pass_at_2 == 0.0


def test_extra_test_entries_are_ignored():
    assert score_task([[A], [A]], pairs(A)).pass_at_2 == 1.0


def test_wrong_shape_has_zero_cell_accuracy_and_best_attempt_is_reported():
    (wrong,) = score_task([[WIDE, None]], pairs(A)).outputs
    assert (wrong.shape_correct, wrong.cell_accuracy) == (False, 0.0)
    (best,) = score_task([[WIDE, B]], pairs(A)).outputs
    assert (best.solved, best.shape_correct, best.cell_accuracy) == (False, True, 0.75)


def test_list_grids_compare_equal_to_tuple_grids():
    assert score_task([[[[1, 2], [3, 4]]]], pairs(A)).solved


def test_more_than_two_attempts_is_a_bug():
    with pytest.raises(ValueError, match="at most 2 attempts"):
        score_task([[A, B, C]], pairs(A))


def test_changed_cell_accuracy_counts_attempt_1_on_the_cells_the_output_changes():
    (output,) = score_task([[P, T]], pairs(T, given=X)).outputs
    assert output.solved and output.cell_accuracy == 1.0  # attempt 2 is right: the best attempt counts here
    assert output.changed_cell_accuracy == pytest.approx(2 / 3)  # attempt 1 only: 2 of the 3 changed cells
    assert score_task([[P]], pairs(T, given=X)).outputs[0].cell_accuracy == pytest.approx(4 / 6)
    assert score_task([[T]], pairs(T, given=X)).outputs[0].changed_cell_accuracy == 1.0
    assert score_task([[X, T]], pairs(T, given=X)).outputs[0].changed_cell_accuracy == 0.0  # the copy gets none
    assert score_task([[WIDE, T]], pairs(T, given=X)).outputs[0].changed_cell_accuracy == 0.0  # wrong shape
    assert score_task([[None, T]], pairs(T, given=X)).outputs[0].changed_cell_accuracy == 0.0  # missing
    assert score_task([], pairs(T, given=X)).outputs[0].changed_cell_accuracy == 0.0  # no entry
    assert score_task([[A]], pairs(A)).outputs[0].changed_cell_accuracy is None  # the output has another shape
    assert score_task([[X]], pairs(X, given=X)).outputs[0].changed_cell_accuracy is None  # nothing changes


def test_changed_cell_accuracy_is_a_mean_over_same_shape_tests_then_tasks():
    scorer = Scorer()
    mixed = scorer.update("mixed", [[P], [A]], pairs(T, given=X) + pairs(A))  # 2/3 and a test of another shape
    assert mixed.changed_cell_accuracy == pytest.approx(2 / 3)
    assert mixed.cell_accuracy == pytest.approx((4 / 6 + 1) / 2)  # cell accuracy counts every test
    other = scorer.update("other", [[A]], pairs(A))  # no same-shape test: left out of the mean
    assert other.changed_cell_accuracy is None and other.to_json()["changed_cell_accuracy"] is None
    scorer.update("right", [[T], [X]], pairs(T, T, given=X))  # 1 and 0
    summary = scorer.result()
    assert summary.changed_cell_accuracy == pytest.approx((2 / 3 + 0.5) / 2)
    assert summary.to_json()["changed_cell_accuracy"] == pytest.approx((2 / 3 + 0.5) / 2)
    scorer.begin()
    scorer.update("other", [[A]], pairs(A))
    assert scorer.result().changed_cell_accuracy is None


def test_the_copy_baseline_submits_each_test_input_twice():
    scorer = Scorer()
    copied = scorer.update("t", [[T]], pairs(T, given=X) + pairs(X, given=X) + pairs(A, given=X)).copy_baseline
    assert [(o.attempt_1, o.attempt_2) for o in copied.outputs] == [(False, False), (True, True), (False, False)]
    assert copied.pass_at_2 == pytest.approx(1 / 3) and copied.shape_correct == pytest.approx(2 / 3)
    assert copied.cell_accuracy == pytest.approx((3 / 6 + 1 + 0) / 3)  # X has the 3 unchanged cells of T
    scorer.update("u", [], pairs(A, given=A))  # a missing task still has its baseline: here the copy is right
    summary = scorer.result().to_json()
    expected = {"pass_at_2": (1 / 3 + 1) / 2, "shape_correct": (2 / 3 + 1) / 2, "cell_accuracy": (1 / 2 + 1) / 2}
    assert summary["copy_baseline"] == pytest.approx(expected)
    assert summary["pass_at_2"] == pytest.approx(1 / 3 / 2)  # the submission itself: T solves test 1 of "t"
    assert summary["tasks"][0]["copy_baseline"] == pytest.approx(
        {"pass_at_2": 1 / 3, "shape_correct": 2 / 3, "cell_accuracy": 1 / 2}
    )


def test_scorer_means_fractional_task_scores_and_counts_missing_tasks():
    scorer = Scorer()
    scorer.update("full", [[B, A]], pairs(A))  # pass@2 1, pass@1 0
    scorer.update("half", [[A, None], [B, None]], pairs(A, A))  # pass@2 0.5, pass@1 0.5
    scorer.update("gone", [], pairs(A), submitted=False)
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
        scorer.update("full", [[A]], pairs(A))
    scorer.begin()
    assert scorer.result().n_tasks == 0
    assert scorer.result().pass_at_2 == 0.0


def test_submission_round_trip_is_atomic(tmp_path):
    path = tmp_path / "submission.json"
    path.write_text("stale")
    submission = {"t1": [(A, A), (C, B)], "t2": [(B, C)]}
    write_submission(path, submission)
    assert [p.name for p in tmp_path.iterdir()] == ["submission.json"]
    raw = json.loads(path.read_text())
    assert raw == kaggle_json(submission)
    assert raw["t1"][0] == {"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[1, 2], [3, 4]]}
    assert load_submission(path) == submission


@pytest.mark.parametrize("entry", [(A, None), (A,), (None, None), (A, B, C)])
def test_a_submission_never_has_a_missing_attempt(tmp_path, entry):
    with pytest.raises(ValueError, match="exactly two attempts"):
        write_submission(tmp_path / "s.json", {"t1": [(A, B), entry]})
    assert not list(tmp_path.iterdir())


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
    assert "changed-cell accuracy" in result.stdout and "copy the input: pass@2 0.167" in result.stdout  # bbb test 2
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
    assert summary["copy_baseline"] == pytest.approx(dict.fromkeys(BASELINE_KEYS, 1 / 6))
    assert summary["changed_cell_accuracy"] is None  # no output has its input's shape and changes a cell


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
