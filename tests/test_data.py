"""Task model, validation messages, bundled splits, look-ups and sources (files, directories, Kaggle pairs)."""

import json
from pathlib import Path

import numpy as np
import pytest

from onn_arc.data import (
    DEV_IDS,
    SPLITS,
    Pair,
    Task,
    as_array,
    find_task,
    from_array,
    load_source,
    load_split,
    load_task_file,
    parse_grid,
    parse_task,
    resolve_task,
)
from onn_arc.errors import GridError, SubmissionError, TaskError, TaskNotFound

EXAMPLES = Path(__file__).resolve().parent.parent / "data"
G = [[1, 2], [3, 4]]


def task_json(**changes) -> dict:
    """A valid two-demo task, with top-level keys replaced by `changes`."""
    obj = {"train": [{"input": G, "output": G}, {"input": G, "output": [[0]]}], "test": [{"input": G, "output": G}]}
    return {**obj, **changes}


def write(tmp_path: Path, obj: object, name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def failure(exc_type: type[Exception], fn, *args) -> str:
    with pytest.raises(exc_type) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- validation messages

BAD_TASKS = [
    (
        task_json(train=[{"input": G, "output": G}, {"input": G, "output": [[1, 2, 3], [1, 2, 3], [1, 2, 3, 4]]}]),
        "train[1].output: ragged rows (row 2 has 4 cells, row 0 has 3)",
    ),
    (task_json(test=[{"input": [[0] * 6] * 3 + [[0, 0, 0, 0, 0, 12]]}]), "test[0].input: colour 12 at row 3 col 5"),
    (task_json(test=[{"input": [[-1]]}]), "test[0].input: colour -1 at row 0 col 0"),
    (task_json(test=[{"input": [[1, 2]] * 31}]), "test[0].input: 31×2 grid, at most 30×30"),
    (task_json(test=[{"input": [[1] * 31]}]), "test[0].input: 1×31 grid, at most 30×30"),
    (task_json(test=[{"input": []}]), "test[0].input: empty grid"),
    (task_json(test=[{"input": [[]]}]), "test[0].input: empty rows"),
    (task_json(train=[]), "train: empty, needs at least 1 pair"),
    (task_json(test=[]), "test: empty, needs at least 1 pair"),
    (task_json(train=[{"input": "abc", "output": G}]), "train[0].input: expected a grid (a list of rows), got string"),
    (task_json(train=[{"input": [1, 2], "output": G}]), "train[0].input: row 0: expected a list of colours, got int"),
    (task_json(train=[{"input": [[1, 1.5]], "output": G}]), "train[0].input: row 0 col 1: float 1.5 is not a colour"),
    (task_json(train=[{"input": [[1.0]], "output": G}]), "train[0].input: row 0 col 0: float 1.0 is not a colour"),
    (task_json(train=[{"input": [[True]], "output": G}]), "train[0].input: row 0 col 0: bool true is not a colour"),
    (task_json(train=[{"input": [["3"]], "output": G}]), 'train[0].input: row 0 col 0: string "3" is not a colour'),
    (task_json(train=[{"output": G}]), "train[0]: missing 'input'"),
    (task_json(train=[{"input": G, "output": G}, {"input": G}]), "train[1]: missing 'output' (every train pair needs one)"),
    (task_json(train=[{"input": G, "output": None}]), "train[0]: missing 'output'"),
    (task_json(train=[[G, G]]), "train[0]: expected an object, got list"),
    (task_json(train={"input": G}), "train: expected a list of pairs, got object"),
    ({"train": [{"input": G, "output": G}]}, "missing 'test'"),
]


@pytest.mark.parametrize(("obj", "problem"), BAD_TASKS)
def test_bad_task_json_gives_one_line_naming_file_and_problem(tmp_path, obj, problem):
    path = write(tmp_path, obj)
    message = failure(TaskError, load_task_file, path)
    assert message.startswith(f"{path}: {problem}")


def test_only_the_first_problem_is_spelled_out():
    obj = task_json(train=[{"input": [[10]], "output": [[11]]}])
    assert failure(TaskError, parse_task, obj, "x", "src") == "src: train[0].input: colour 10 at row 0 col 0 (and 1 more problem)"


def test_task_must_be_an_object(tmp_path):
    assert failure(TaskError, load_task_file, write(tmp_path, [1, 2])).endswith(
        "t.json: expected a JSON object with 'train' and 'test', got list"
    )


def test_file_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"train": [')
    assert failure(TaskError, load_task_file, path).startswith(f"{path}: not valid JSON (line 1")
    path.write_bytes(b"\xff\xfe\x00")
    assert failure(TaskError, load_task_file, path).startswith(f"{path}: not valid JSON")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    assert failure(TaskNotFound, load_task_file, path) == f"{path}: no such file"
    assert failure(TaskNotFound, resolve_task, str(path)) == f"{path}: no such file"


def test_directory_is_not_a_task_file(tmp_path):
    assert failure(TaskError, load_task_file, tmp_path) == f"{tmp_path}: is a directory, not a JSON file"


def test_file_too_large_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.json"
    with path.open("wb") as f:  # sparse: 11 MB of nothing, and not JSON either
        f.truncate(11_000_000)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read a file that is too large"))
    assert failure(TaskError, load_task_file, path) == f"{path}: file is 11.0 MB, at most 10 MB"


# ---------------------------------------------------------------- the model


def test_valid_task_round_trips_through_json(tmp_path):
    obj = task_json(test=[{"input": G}, {"input": [[5]], "output": [[6]]}])
    task = load_task_file(write(tmp_path, obj, "abc123.json"))
    assert task.id == "abc123"
    assert task.train[1].output == ((0,),)
    assert task.test[0].output is None and not task.has_test_outputs
    assert task.to_json() == obj
    assert parse_task(task.to_json(), "abc123", "again") == task


def test_models_are_frozen_and_hashable():
    pair = Pair(input=G, output=G)
    with pytest.raises(Exception):
        pair.input = ((0,),)
    task = Task(id="x", train=(pair,), test=(Pair(input=G),))
    assert hash(task) == hash(Task(id="x", train=(pair,), test=(Pair(input=G),)))


def test_array_conversion():
    grid = from_array(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32))
    assert grid == ((1, 2, 3), (4, 5, 6))
    a = as_array(grid)
    assert a.dtype == np.int64 and a.shape == (2, 3)
    assert from_array(a) == grid


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((2, 2, 2), dtype=int), "grid: expected a 2-D array, got shape (2, 2, 2)"),
        (np.zeros((2, 2)), "grid: expected integer colours, got dtype float64"),
        (np.zeros((2, 2), dtype=bool), "grid: expected integer colours, got dtype bool"),
        (np.full((2, 3), 10), "grid: colour 10 at row 0 col 0 (and 5 more problems)"),
        (np.zeros((31, 1), dtype=int), "grid: 31×1 grid, at most 30×30"),
        (np.zeros((0, 3), dtype=int), "grid: empty grid (no rows)"),
    ],
)
def test_from_array_rejects_invalid_grids(array, problem):
    assert failure(GridError, from_array, array) == problem


def test_parse_grid_raises_the_callers_error_class():
    assert parse_grid([[0, 9]], "g") == ((0, 9),)
    assert failure(SubmissionError, parse_grid, [[0], [9, 9]], "sub.json: t[0]", SubmissionError) == (
        "sub.json: t[0]: ragged rows (row 1 has 2 cells, row 0 has 1)"
    )


# ---------------------------------------------------------------- bundled splits and look-ups


@pytest.mark.parametrize(("name", "count"), [("arc1-train", 400), ("arc1-eval", 400), ("arc2-train", 1000), ("arc2-eval", 120)])
def test_bundled_splits_load_with_the_right_count(name, count):
    tasks = load_split(name)
    assert len(tasks) == count
    assert [t.id for t in tasks] == sorted(t.id for t in tasks)
    assert all(t.has_test_outputs for t in tasks)
    assert load_split(name) == tasks and load_split(name) is not tasks  # cached, but callers get their own list


def test_unknown_split_lists_the_valid_names():
    message = failure(TaskNotFound, load_split, "arc3")
    assert "'arc3'" in message and all(name in message for name in SPLITS)


def test_find_and_resolve():
    task = find_task("007bbfb7")
    assert task.id == "007bbfb7" and len(task.train) == 5
    assert task.train[0].input == ((0, 7, 7), (7, 7, 7), (0, 7, 7))
    assert resolve_task("007bbfb7") == task
    assert resolve_task("arc1-train:0") == task
    assert resolve_task("arc1-eval:399") == load_split("arc1-eval")[399]
    assert resolve_task(str(EXAMPLES / "007bbfb7.json")) == task


def test_resolve_errors():
    assert "unknown split 'arc9'" in failure(TaskNotFound, resolve_task, "arc9:0")
    assert failure(TaskNotFound, resolve_task, "arc1-eval:400") == (
        "arc1-eval:400: index 400 out of range, arc1-eval has 400 tasks (0..399)"
    )
    assert "is not a non-negative integer" in failure(TaskNotFound, resolve_task, "arc1-eval:-1")
    assert "task 'ffffffff' is in none of the bundled splits" in failure(TaskNotFound, resolve_task, "ffffffff")


# ---------------------------------------------------------------- sources


def test_example_files_load():
    tasks = {t.id: t for t in load_source(str(EXAMPLES))}
    assert set(tasks) == {"007bbfb7", "6150a2bd", "25ff71a9", "puzzle-no-answer"}
    assert all(t.has_test_outputs for name, t in tasks.items() if name != "puzzle-no-answer")
    assert not tasks["puzzle-no-answer"].has_test_outputs
    for task in tasks.values():
        grids = [g for p in task.train + task.test for g in (p.input, p.output) if g is not None]
        assert max(max(len(g), len(g[0])) for g in grids) <= 10
    assert load_source(str(EXAMPLES / "6150a2bd.json")) == [tasks["6150a2bd"]]


def test_source_split_and_errors(tmp_path):
    assert len(load_source("arc1-eval")) == 400
    assert failure(TaskNotFound, load_source, str(tmp_path)) == f"{tmp_path}: no .json task files in this directory"
    assert "not a split (arc1-train" in failure(TaskNotFound, load_source, "no-such-thing")


def kaggle_files(tmp_path: Path, solutions: object) -> str:
    challenges = {
        "aaaa0001": {"train": [{"input": G, "output": G}], "test": [{"input": G}, {"input": [[7]]}]},
        "aaaa0002": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]},
    }
    spec = str(write(tmp_path, challenges, "challenges.json"))
    if solutions is not None:
        spec += "," + str(write(tmp_path, solutions, "solutions.json"))
    return spec


def test_kaggle_pair_merges_solutions(tmp_path):
    tasks = load_source(kaggle_files(tmp_path, {"aaaa0001": [G, [[8]]], "aaaa0002": [[[4]]]}))
    assert [t.id for t in tasks] == ["aaaa0001", "aaaa0002"]
    assert [p.output for p in tasks[0].test] == [((1, 2), (3, 4)), ((8,),)]
    assert tasks[1].test[0].output == ((4,),) and all(t.has_test_outputs for t in tasks)


def test_kaggle_challenges_alone(tmp_path):
    spec = kaggle_files(tmp_path, None)
    for tasks in (load_source(spec), load_source(spec + ",")):
        assert [t.id for t in tasks] == ["aaaa0001", "aaaa0002"]
        assert not any(t.has_test_outputs for t in tasks)


@pytest.mark.parametrize(
    ("solutions", "problem"),
    [
        ({"aaaa0001": [G], "aaaa0002": [[[4]]]}, "solutions.json: aaaa0001: 1 solutions for 2 test inputs in"),
        ({"aaaa0001": [G, [[8]]]}, "solutions.json: aaaa0002: missing (every challenge needs its solutions)"),
        ({"aaaa0001": [G, [[8]]], "aaaa0002": [[[4]]], "bbbb": []}, "solutions.json: task 'bbbb' is not in"),
        ({"aaaa0001": [G, [[18]]], "aaaa0002": [[[4]]]}, "solutions.json: aaaa0001[1]: colour 18 at row 0 col 0"),
        ({"aaaa0001": G, "aaaa0002": [[[4]]]}, "solutions.json: aaaa0001[0]: row 0: expected a list of colours, got int"),
        ({"aaaa0001": "x", "aaaa0002": [[[4]]]}, "solutions.json: aaaa0001: expected a list of output grids, got string"),
        ([G], "solutions.json: expected an object {task id: [output grids]}, got list"),
    ],
)
def test_kaggle_solution_errors(tmp_path, solutions, problem):
    message = failure(TaskError, load_source, kaggle_files(tmp_path, solutions))
    assert message.startswith(str(tmp_path / problem.split(":")[0])) and problem in message


def test_kaggle_challenge_error_names_the_task(tmp_path):
    path = write(tmp_path, {"cccc0003": {"train": [{"input": [[1, 2], [3]], "output": G}], "test": [{"input": G}]}})
    assert failure(TaskError, load_source, str(path)) == (
        f"{path}: cccc0003: train[0].input: ragged rows (row 1 has 1 cells, row 0 has 2)"
    )


def test_the_dev_split_and_its_complement_partition_arc1_train():
    train, dev, rest = (load_split(n) for n in ("arc1-train", "arc1-dev", "arc1-train-nodev"))
    assert len(dev) == len(DEV_IDS) == 80 and len(rest) == 320
    assert {t.id for t in dev} == DEV_IDS and sorted(t.id for t in dev + rest) == [t.id for t in train]


def test_the_new_arc2_training_tasks_are_in_no_arc1_split():
    new = {t.id for t in load_split("arc2-train-new")}
    arc1 = {t.id for name in ("arc1-train", "arc1-eval") for t in load_split(name)}
    assert len(new) == 233 and not new & arc1 and new < {t.id for t in load_split("arc2-train")}
