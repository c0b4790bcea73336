"""`onn-arc show` and `onn-arc tasks` through Typer's CliRunner."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import onn_arc.cli.show  # noqa: F401  (registers the command)
import onn_arc.cli.tasks  # noqa: F401
from onn_arc.cli.app import app
from onn_arc.data import load_task_file

DATA = Path(__file__).resolve().parents[1] / "data"


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def _ok(*args: str) -> str:
    result = _run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def _fails(*args: str) -> str:
    result = _run(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_show_task_id_hides_the_answer_by_default():
    text = _ok("show", "007bbfb7")
    assert "007bbfb7  5 demos, 1 test" in text
    assert "demo 5" in text and "input 3×3" in text and "output 9×9" in text
    assert "0 7 7" in text  # digits, as output is not a terminal
    assert "test 1" in text and "hidden" in text
    assert "7 0 7 0 0 0 7 0 7" not in text  # a row of the test output


def test_show_split_index_with_answer():
    text = _ok("show", "arc1-eval:0", "--answer")
    assert text.startswith("00576224")
    assert "hidden" not in text and text.count("output") == 3  # 2 demos + the test output


def test_show_file(tmp_path):
    text = _ok("show", str(DATA / "007bbfb7.json"), "--answer")
    assert "7 0 7 0 0 0 7 0 7" in text
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}))
    text = _ok("show", str(path), "--answer")
    assert "mine  1 demo, 1 test" in text and "unknown" in text


def _submission(tmp_path: Path, obj: object) -> str:
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(obj))
    return str(path)


def test_show_predictions_right_and_wrong(tmp_path):
    truth = [list(row) for row in load_task_file(DATA / "007bbfb7.json").test[0].output]
    wrong = [row[:] for row in truth]
    wrong[0][1] = 5
    path = _submission(tmp_path, {"007bbfb7": [{"attempt_1": wrong, "attempt_2": truth}]})
    text = _ok("show", "007bbfb7", "--predictions", path)
    assert "attempt 1 ✗" in text and "1 of 81 cells wrong" in text and "7 5×7" in text
    assert "attempt 2 ✓" in text and "exact" in text
    hidden = _ok("show", "007bbfb7", "--predictions", path, "--no-answer")
    assert "attempt 1 9×9" in hidden and "✓" not in hidden and "✗" not in hidden


def test_show_predictions_shape_mismatch(tmp_path):
    path = _submission(tmp_path, {"007bbfb7": [{"attempt_1": [[7, 0]], "attempt_2": None}]})
    text = _ok("show", "007bbfb7", "--predictions", path)
    assert "shape 1×2, expected 9×9" in text and "attempt 2 ✗ none given" in text


def test_show_task_missing_from_predictions(tmp_path):
    path = _submission(tmp_path, {"other": [{"attempt_1": [[1]], "attempt_2": [[1]]}]})
    assert "no predictions for task 007bbfb7" in _fails("show", "007bbfb7", "--predictions", path)


def test_show_bad_predictions_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    assert "not JSON" in _fails("show", "007bbfb7", "--predictions", str(path))


@pytest.mark.parametrize(
    "spec, words",
    [
        ("deadbeef", "none of the bundled splits"),
        ("arc1-eval:400", "out of range"),
        ("arc1-eval:x", "not a non-negative integer"),
        ("nosuch:0", "unknown split"),
        ("missing.json", "no such file"),
    ],
)
def test_show_bad_task(spec, words):
    assert words in _fails("show", spec)


def test_show_invalid_task_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": [{"input": [[12]], "output": [[1]]}], "test": [{"input": [[1]]}]}))
    assert "colour 12" in _fails("show", str(path))


def test_tasks_split_table():
    text = _ok("tasks", "arc1-eval")
    rows = re.findall(r"^│\s+(\d+) │ ([0-9a-f]{8}) ", text, flags=re.M)
    assert len(rows) == 400 and rows[0] == ("0", "00576224") and rows[-1][0] == "399"
    assert re.search(r"400 tasks · tokens median \d+(\.5)?, max \d+", text)


def test_tasks_json_matches_the_files():
    report = json.loads(_ok("tasks", str(DATA), "--json"))
    by_id = {row["id"]: row for row in report["tasks"]}
    assert report["n_tasks"] == len(by_id) == len(list(DATA.glob("*.json")))
    first = by_id["007bbfb7"]
    assert (first["demos"], first["tests"], first["largest_grid"]) == (5, 1, [9, 9])
    # the longest pair: BOS, IN, 3×4 tokens, OUT, 9×10 tokens, EOS
    assert first["tokens"] == 2 + 12 + 1 + 90 + 1
    assert report["tokens_max"] == max(row["tokens"] for row in report["tasks"])
    # no test output: the test pair stops after its OUT marker, so a demo of 3×3 grids is the longest
    assert by_id["puzzle-no-answer"]["tokens"] == 2 + 12 + 1 + 12 + 1


def test_tasks_bad_source(tmp_path):
    assert "not a split" in _fails("tasks", "nowhere")
    empty = tmp_path / "challenges.json"
    empty.write_text("{}")
    assert "holds no tasks" in _fails("tasks", str(empty))
