"""Official ARC scoring and Kaggle-style submissions (DESIGN §8).

Rules: every test output gets up to two attempts; it is solved when either
attempt equals it exactly (two equal attempts are still one answer); a task
scores (solved test outputs) / (test outputs); a split scores the mean over its
tasks. A missing attempt, a missing test entry and a missing task are all wrong.

Beside the official pass@2 we report pass@1 (attempt 1 alone), all-or-nothing
solved tasks, and leading indicators:
- shape correct: the better attempt has the output's shape;
- cell accuracy: the better attempt's fraction of equal cells (0 when its shape is wrong);
- changed-cell accuracy, on same-shape tests only (the true output has the test
  input's shape, and differs from it): of the cells where the true output differs from the input, the
  fraction attempt 1 gets right (0 when its shape is wrong);
- the copy-the-input baseline: each test input submitted as both attempts, scored
  like any submission (its changed-cell accuracy is 0 by definition).
Every indicator is aggregated like the official score: a task's value is the mean
over its test outputs, a split's the mean over its tasks. Changed-cell accuracy
averages only over the same-shape tests, and a split's only over the tasks that
have one (None where there are none).

A submission is `{task_id: [{"attempt_1": G, "attempt_2": G}, ...]}` with one
entry per test input in order. We always write two grids (Kaggle's scorer accepts
nothing else); when reading one, `null` or `[]` stands for a missing attempt.
"""

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onn_arc.data import Grid, Pair, json_kind, parse_grid
from onn_arc.errors import SubmissionError

Attempts = Sequence[Grid | None]  # (attempt_1, attempt_2); None where missing
TwoAttempts = tuple[Grid, Grid]  # what we submit for a test input: always two grids
ATTEMPT_KEYS = ("attempt_1", "attempt_2")
BASELINE_KEYS = ("pass_at_2", "shape_correct", "cell_accuracy")  # what the copy baseline reports


@dataclass(frozen=True)
class OutputScore:
    """How the attempts for one test output fared."""

    attempt_1: bool  # attempt 1 equals the output exactly
    attempt_2: bool  # attempt 2 equals the output exactly
    shape_correct: bool  # the better attempt has the output's shape
    cell_accuracy: float  # equal cells / cells of the better attempt; 0 when its shape is wrong
    changed_cell_accuracy: float | None  # attempt 1 right / cells the output changes; None unless input-shaped

    @property
    def solved(self) -> bool:
        return self.attempt_1 or self.attempt_2

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt_1": self.attempt_1,
            "attempt_2": self.attempt_2,
            "solved": self.solved,
            "shape_correct": self.shape_correct,
            "cell_accuracy": self.cell_accuracy,
            "changed_cell_accuracy": self.changed_cell_accuracy,
        }


@dataclass(frozen=True)
class TaskScore:
    """One task's score: one `OutputScore` per test output, in order, and the same for the copy baseline."""

    task_id: str
    outputs: tuple[OutputScore, ...]
    copied: tuple[OutputScore, ...]  # the copy-the-input baseline: each test input as both attempts
    extra: dict[str, Any] = field(default_factory=dict)  # caller's notes (e.g. submitted=False), kept in the JSON

    @property
    def n_tests(self) -> int:
        return len(self.outputs)

    @property
    def pass_at_1(self) -> float:
        return _mean([o.attempt_1 for o in self.outputs])

    @property
    def pass_at_2(self) -> float:
        """The official task score: solved test outputs / test outputs."""
        return _mean([o.solved for o in self.outputs])

    @property
    def solved(self) -> bool:
        return all(o.solved for o in self.outputs)

    @property
    def shape_correct(self) -> float:
        return _mean([o.shape_correct for o in self.outputs])

    @property
    def cell_accuracy(self) -> float:
        return _mean([o.cell_accuracy for o in self.outputs])

    @property
    def changed_cell_accuracy(self) -> float | None:
        """Mean over the same-shape tests; None when the task has none."""
        return _mean_defined([o.changed_cell_accuracy for o in self.outputs])

    @property
    def copy_baseline(self) -> "TaskScore":
        """The copy-the-input baseline scored as a task of its own (its own baseline is itself)."""
        return TaskScore(self.task_id, self.copied, self.copied)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "pass_at_1": self.pass_at_1,
            "pass_at_2": self.pass_at_2,
            "solved": self.solved,
            "shape_correct": self.shape_correct,
            "cell_accuracy": self.cell_accuracy,
            "changed_cell_accuracy": self.changed_cell_accuracy,
            "copy_baseline": _baseline_json(self.copy_baseline),
            "tests": [o.to_json() for o in self.outputs],
            **self.extra,
        }


@dataclass(frozen=True)
class ScoreSummary:
    """A split's score: every number is a mean over tasks of the task's fraction."""

    tasks: tuple[TaskScore, ...]

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def pass_at_1(self) -> float:
        return _mean([t.pass_at_1 for t in self.tasks])

    @property
    def pass_at_2(self) -> float:
        """The official split score."""
        return _mean([t.pass_at_2 for t in self.tasks])

    @property
    def solved_tasks(self) -> int:
        return sum(t.solved for t in self.tasks)

    @property
    def shape_correct(self) -> float:
        return _mean([t.shape_correct for t in self.tasks])

    @property
    def cell_accuracy(self) -> float:
        return _mean([t.cell_accuracy for t in self.tasks])

    @property
    def changed_cell_accuracy(self) -> float | None:
        """Mean over the tasks that have a same-shape test; None when none has."""
        return _mean_defined([t.changed_cell_accuracy for t in self.tasks])

    @property
    def copy_baseline(self) -> "ScoreSummary":
        """The copy-the-input baseline on the same tasks."""
        return ScoreSummary(tuple(t.copy_baseline for t in self.tasks))

    def to_json(self) -> dict[str, Any]:
        return {
            "n_tasks": self.n_tasks,
            "pass_at_2": self.pass_at_2,
            "pass_at_1": self.pass_at_1,
            "solved_tasks": self.solved_tasks,
            "shape_correct": self.shape_correct,
            "cell_accuracy": self.cell_accuracy,
            "changed_cell_accuracy": self.changed_cell_accuracy,
            "copy_baseline": _baseline_json(self.copy_baseline),
            "tasks": [t.to_json() for t in self.tasks],
        }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _mean_defined(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    defined = [v for v in values if v is not None]
    return _mean(defined) if defined else None


def _baseline_json(baseline: TaskScore | ScoreSummary) -> dict[str, float]:
    return {key: getattr(baseline, key) for key in BASELINE_KEYS}


def _two(attempts: Attempts) -> tuple[Grid | None, Grid | None]:
    """Pads a test's attempts to exactly (attempt_1, attempt_2)."""
    if len(attempts) > 2:
        raise ValueError(f"at most 2 attempts per test output, got {len(attempts)}")
    first, second = (*attempts, None, None)[:2]
    return first, second


def _as_grid(grid: Sequence[Sequence[int]]) -> Grid:
    """Tuple form, so a list-of-lists grid compares equal to the same tuple grid."""
    return tuple(tuple(row) for row in grid)


def _same_shape(a: Grid, b: Grid) -> bool:
    return len(a) == len(b) and len(a[0]) == len(b[0])


def _indicators(attempt: Grid, truth: Grid) -> tuple[bool, float]:
    """(shape correct, equal cells / cells); accuracy is 0 when the shape is wrong."""
    if not _same_shape(attempt, truth):
        return False, 0.0
    return True, _mean([x == y for row_a, row_t in zip(attempt, truth) for x, y in zip(row_a, row_t)])


def _changed_cell_accuracy(attempt: Grid | None, test: Pair) -> float | None:
    """Of the cells where the true output differs from the test input, the fraction `attempt` gets right (0 when it
    is missing or has the wrong shape); None when the output's shape differs from the input's or nothing changes."""
    truth = _as_grid(test.output)
    if not _same_shape(test.input, truth):
        return None
    changed = [(r, c) for r, row in enumerate(truth) for c, y in enumerate(row) if test.input[r][c] != y]
    if not changed:
        return None
    if attempt is None or not _same_shape(attempt, truth):
        return 0.0
    return _mean([attempt[r][c] == truth[r][c] for r, c in changed])


def _score_output(attempts: Attempts, test: Pair) -> OutputScore:
    truth = _as_grid(test.output)
    given = [None if a is None else _as_grid(a) for a in _two(attempts)]
    shape_correct, cell_accuracy = max(
        (_indicators(a, truth) for a in given if a is not None), default=(False, 0.0)
    )
    changed = _changed_cell_accuracy(given[0], test)
    return OutputScore(given[0] == truth, given[1] == truth, shape_correct, cell_accuracy, changed)


def score_task(attempts_per_test: Sequence[Attempts], tests: Sequence[Pair], task_id: str = "") -> TaskScore:
    """Scores one task against its test pairs (each with its output); test outputs without an entry in
    `attempts_per_test` count as wrong, extra entries are ignored."""
    if not tests:
        raise ValueError(f"task {task_id!r}: no test outputs to score against")
    if any(test.output is None for test in tests):
        raise ValueError(f"task {task_id!r}: a test pair without an output cannot be scored")
    missing: Attempts = ()
    outputs = tuple(
        _score_output(attempts_per_test[i] if i < len(attempts_per_test) else missing, test)
        for i, test in enumerate(tests)
    )
    copied = tuple(_score_output((test.input, test.input), test) for test in tests)
    return TaskScore(task_id, outputs, copied)


class Scorer:
    """Accumulates task scores: `begin()`, one `update()` per task, then `result()`.

    A task missing from a submission is scored with `update(task_id, [], tests)`: 0, and counted.
    """

    def __init__(self) -> None:
        self.begin()

    def begin(self) -> None:
        self._tasks: dict[str, TaskScore] = {}

    def update(
        self, task_id: str, attempts_per_test: Sequence[Attempts], tests: Sequence[Pair], **extra: Any
    ) -> TaskScore:
        if task_id in self._tasks:
            raise ValueError(f"task {task_id!r} scored twice")
        score = replace(score_task(attempts_per_test, tests, task_id), extra=extra)
        self._tasks[task_id] = score
        return score

    def result(self) -> ScoreSummary:
        return ScoreSummary(tuple(self._tasks.values()))


def _parse_attempt(value: object, where: str) -> Grid | None:
    if value is None or value == []:
        return None
    return parse_grid(value, where, SubmissionError)


def _parse_entry(entry: object, where: str) -> tuple[Grid | None, Grid | None]:
    if not isinstance(entry, dict):
        raise SubmissionError(f"{where}: expected an object with attempt_1 and attempt_2, got {json_kind(entry)}")
    for key in ATTEMPT_KEYS:
        if key not in entry:
            raise SubmissionError(f"{where}: missing {key}")
    first, second = (_parse_attempt(entry[key], f"{where} {key}") for key in ATTEMPT_KEYS)
    return first, second


def load_submission(path: str | Path) -> dict[str, list[tuple[Grid | None, Grid | None]]]:
    """Reads a Kaggle-style submission; `SubmissionError` names the file, task, test index and problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SubmissionError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SubmissionError(f"{path}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(obj, dict):
        raise SubmissionError(f"{path}: expected an object {{task_id: [...]}}, got {json_kind(obj)}")
    submission = {}
    for task_id, entries in obj.items():
        where = f"{path}: task {task_id}"
        if not isinstance(entries, list):
            raise SubmissionError(f"{where}: expected a list of {{attempt_1, attempt_2}} objects, got {json_kind(entries)}")
        submission[task_id] = [_parse_entry(entry, f"{where} test {i}") for i, entry in enumerate(entries)]
    return submission


def kaggle_json(submission: Mapping[str, Sequence[TwoAttempts]]) -> dict[str, list[dict[str, list[list[int]]]]]:
    """`{task_id: [two attempts per test]}` in the Kaggle shape; a missing attempt is a bug (see solve.two_attempts)."""
    obj = {}
    for task_id, per_test in submission.items():
        if any(len(attempts) != 2 or None in attempts for attempts in per_test):
            raise ValueError(f"task {task_id!r}: every test input needs exactly two attempts, got {per_test!r}")
        obj[task_id] = [
            {key: [list(row) for row in grid] for key, grid in zip(ATTEMPT_KEYS, attempts)} for attempts in per_test
        ]
    return obj


def write_submission(path: str | Path, submission: Mapping[str, Sequence[TwoAttempts]]) -> None:
    """Writes `kaggle_json(submission)` atomically (temporary file, then rename)."""
    obj = kaggle_json(submission)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
