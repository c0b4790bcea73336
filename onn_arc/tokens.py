"""Grid tokens: the vocabulary and the two sequence layouts (DESIGN §3, §3b), chosen by `ModelConfig.format`.

"context": a task becomes one causal sequence

    BOS, [IN, input grid, OUT, output grid] per demo, IN, test input, OUT, test output, EOS

where a grid is written row by row, each row's cells followed by one ROW token.
Every token carries its (row, column) inside its grid (markers sit at (0, 0); the
ROW token of a row of width W sits at column W) and a role (marker, input cell,
output cell). Its third coordinate `pos` is its index in the sequence.

"pairs": each input -> output pair is its own sequence, conditioned on its task by the model's task code:

    BOS, IN, input grid, OUT, output grid, EOS

with no sequence index: every token sits at (row, column, plane). The grids are laid out as above in two parallel
planes, so output cell (r, c) lines up with input cell (r, c) one plane offset away; each marker sits at (0, 0) of
a plane of its own, in sequence order (PLANES: BOS 0, IN 1, input 2, OUT 3, output 4, EOS 5). The third
coordinate `pos` is the plane.

The loss is on output grids: every output-grid token and the token that closes
the grid (the IN or EOS after it), so the model learns when a grid ends; the pair
format can put it on the input grid too (its cells, row ends and the OUT after it).
Tasks longer than the context lose demos from the end, never the test pair.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from onn_arc.data import Grid, Pair, Task, as_array, from_array
from onn_arc.errors import GridError, TaskError

N_COLOURS = 10
PAD, BOS, EOS, IN, OUT, ROW = range(N_COLOURS, N_COLOURS + 6)
VOCAB_SIZE = N_COLOURS + 6
NAMES = [str(c) for c in range(N_COLOURS)] + ["<pad>", "<bos>", "<eos>", "<in>", "<out>", "<row>"]

MARKER, INPUT, OUTPUT = 0, 1, 2  # roles
MAX_COORD = 30  # a row token of a 30-wide row sits at column 30
BOS_PLANE, IN_PLANE, INPUT_PLANE, OUT_PLANE, OUTPUT_PLANE, EOS_PLANE = range(6)  # the pair format's planes
N_PLANES = 6
Format = Literal["context", "pairs"]  # the sequence layout, `ModelConfig.format`


@dataclass(frozen=True)
class Sequence:
    """One encoded task (context format) or pair (pair format); every array has shape (T,)."""

    tokens: np.ndarray  # int64 token ids
    rows: np.ndarray  # int64 row inside the token's grid
    cols: np.ndarray  # int64 column inside the token's grid
    pos: np.ndarray  # int64 third coordinate: index in the sequence (context) or plane (pairs)
    roles: np.ndarray  # int64 MARKER / INPUT / OUTPUT
    targets: np.ndarray  # bool: the loss predicts this token (from position t-1)
    n_demos: int  # demos kept after the context policy (0 in the pair format)
    task: int = 0  # the task's code index (pair format; 0 and unused in the context format)

    def __len__(self) -> int:
        return len(self.tokens)


def grid_length(grid: Grid) -> int:
    """Tokens a grid takes: one per cell plus one per row end."""
    return len(grid) * (len(grid[0]) + 1)


def grid_room(grid: Grid) -> int:
    """Tokens a grid takes in its longest orientation (a transposed grid has one row end per column)."""
    return len(grid) * len(grid[0]) + max(len(grid), len(grid[0]))


def pair_room(pair: Pair) -> int:
    """Tokens `encode_pair(pair)` takes (without an output: `answer=False`), in the pair's longest orientation."""
    answer = 0 if pair.output is None else grid_room(pair.output) + 1  # output EOS
    return 3 + grid_room(pair.input) + answer  # BOS IN input OUT, answer


def task_room(task: Task, test_index: int = 0) -> int:
    """Tokens `encode_task(task, test_index)` takes with every demo, in the task's longest orientation: its test
    pair's `pair_room`, and each demo's without the BOS and EOS a pair of its own would have."""
    return pair_room(task.test[test_index]) + sum(pair_room(p) - 2 for p in task.train)


def _grid_parts(grid: Grid, role: int, plane: int = 0) -> tuple[np.ndarray, ...]:
    """(tokens, rows, cols, planes, roles) of a grid, each (H * (W + 1),)."""
    a = as_array(grid)  # (H, W)
    h, w = a.shape
    tokens = np.concatenate([a, np.full((h, 1), ROW)], axis=1).ravel()  # (H * (W + 1),)
    rows = np.repeat(np.arange(h), w + 1)
    cols = np.tile(np.arange(w + 1), h)
    return tokens, rows, cols, np.full(h * (w + 1), plane), np.full(h * (w + 1), role)


def _marker(token: int, plane: int = 0) -> tuple[np.ndarray, ...]:
    return np.array([token]), np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([plane]), np.array([MARKER])


def _targets(roles: np.ndarray, scored: tuple[int, ...]) -> np.ndarray:
    """(T,) bool: the tokens of the `scored` roles and the token right after each (the grid's closer)."""
    is_scored = np.isin(roles, scored)
    return is_scored | np.concatenate([[False], is_scored[:-1]])


def encode_task(task: Task, test_index: int = 0, max_len: int | None = None, answer: bool = True) -> Sequence:
    """Encode `task` with its test pair `test_index` last.

    answer=True appends the test output and EOS (training, teacher-forced scoring);
    answer=False stops right after the test pair's OUT marker: a prompt to decode from.
    """
    test = task.test[test_index]
    if answer and test.output is None:
        raise TaskError(f"{task.id}: test[{test_index}] has no output to encode")
    test_len = 3 + grid_length(test.input) + (grid_length(test.output) + 1 if answer else 0)  # BOS IN .. OUT .. [EOS]
    demo_lens = [2 + grid_length(p.input) + grid_length(p.output) for p in task.train]
    n_demos = len(task.train)
    if max_len is not None:
        if test_len > max_len:
            raise TaskError(f"{task.id}: test pair needs {test_len} tokens, the context holds {max_len}")
        while test_len + sum(demo_lens[:n_demos]) > max_len:
            n_demos -= 1

    parts = [_marker(BOS)]
    for pair in task.train[:n_demos]:
        parts += [_marker(IN), _grid_parts(pair.input, INPUT), _marker(OUT), _grid_parts(pair.output, OUTPUT)]
    parts += [_marker(IN), _grid_parts(test.input, INPUT), _marker(OUT)]
    if answer:
        parts += [_grid_parts(test.output, OUTPUT), _marker(EOS)]
    tokens, rows, cols, _, roles = (np.concatenate(x).astype(np.int64) for x in zip(*parts))
    return Sequence(tokens, rows, cols, np.arange(len(tokens)), roles, _targets(roles, (OUTPUT,)), n_demos)


def only_test_output(seq: Sequence) -> Sequence:
    """`seq`, an `encode_task` with its answer, with its targets on the test output alone (its cells, row ends and
    the closing EOS): the demos' outputs become context."""
    targets = seq.targets.copy()
    targets[: np.flatnonzero(seq.tokens == OUT)[-1] + 1] = False  # everything up to the test pair's OUT marker
    return replace(seq, targets=targets)


def encode_pair(
    pair: Pair, task: int = 0, answer: bool = True, input_loss: bool = False, max_len: int | None = None
) -> Sequence:
    """Encode one pair in the pair format (module docstring) for the task whose code index is `task`.

    answer=True: `BOS IN input OUT output EOS`, the loss on the output grid and EOS (and, with input_loss, on the
    input grid and the OUT after it). answer=False stops right after OUT: a prompt to decode from, or, with
    input_loss, a test input trained on without its output. TaskError when the output to encode is missing or
    the sequence is longer than `max_len`.
    """
    if answer and pair.output is None:
        raise TaskError("the pair has no output to encode")
    parts = [_marker(BOS, BOS_PLANE), _marker(IN, IN_PLANE), _grid_parts(pair.input, INPUT, INPUT_PLANE)]
    parts += [_marker(OUT, OUT_PLANE)]
    if answer:
        parts += [_grid_parts(pair.output, OUTPUT, OUTPUT_PLANE), _marker(EOS, EOS_PLANE)]
    tokens, rows, cols, planes, roles = (np.concatenate(x).astype(np.int64) for x in zip(*parts))
    if max_len is not None and len(tokens) > max_len:
        raise TaskError(f"the pair needs {len(tokens)} tokens, the context holds {max_len}")
    targets = _targets(roles, (OUTPUT, INPUT) if input_loss else (OUTPUT,))
    return Sequence(tokens, rows, cols, planes, roles, targets, n_demos=0, task=task)


def decode_grid(tokens: list[int]) -> Grid:
    """Turn generated output tokens (cells and ROW ends, optionally a closer) into a grid.

    Raises GridError when the stream is not a rectangular grid of 1..30 rows and columns.
    """
    rows: list[list[int]] = []
    current: list[int] = []
    for t in tokens:
        if t < N_COLOURS:
            current.append(int(t))
            if len(current) > MAX_COORD:
                raise GridError(f"row {len(rows)} has more than {MAX_COORD} cells")
        elif t == ROW:
            if not current:
                raise GridError(f"row {len(rows)} is empty")
            if rows and len(current) != len(rows[0]):
                raise GridError(f"row {len(rows)} has {len(current)} cells, row 0 has {len(rows[0])}")
            rows.append(current)
            current = []
            if len(rows) > MAX_COORD:
                raise GridError(f"more than {MAX_COORD} rows")
        else:  # a closer (IN, EOS, ...) ends the grid
            break
    if current:
        raise GridError(f"row {len(rows)} is not closed by a row end")
    if not rows:
        raise GridError("no cells were generated")
    return from_array(np.array(rows))


def next_coordinate(generated: list[int]) -> tuple[int, int]:
    """(row, column) of the next token of an output grid, given the tokens generated so far."""
    row = col = 0
    for t in generated:
        row, col = (row + 1, 0) if t == ROW else (row, col + 1)
    return row, col


def next_position(fmt: Format, prompt_len: int, generated: list[int]) -> tuple[int, int, int]:
    """(row, column, third coordinate) of the next output-grid token after a prompt of `prompt_len` tokens and the
    tokens generated so far, as `fmt` lays out a known output: third = the next sequence index (context) or the
    output plane (pairs)."""
    row, col = next_coordinate(generated)
    return row, col, OUTPUT_PLANE if fmt == "pairs" else prompt_len + len(generated)


@dataclass(frozen=True)
class Batch:
    """Right-padded sequences as tensors, each (B, T) (`task` (B,)); causal attention makes padding harmless."""

    tokens: torch.Tensor  # int64
    rows: torch.Tensor  # int64
    cols: torch.Tensor  # int64
    pos: torch.Tensor  # int64 third coordinate: index in the sequence (context) or plane (pairs)
    targets: torch.Tensor  # bool, False on padding
    task: torch.Tensor | None = None  # (B,) int64 each sequence's task code index (pair format)

    def to(self, device: torch.device | str) -> "Batch":
        fields = (self.tokens, self.rows, self.cols, self.pos, self.targets, self.task)
        return Batch(*(None if t is None else t.to(device) for t in fields))

    @property
    def n_tokens(self) -> int:
        return self.tokens.numel()


def collate(seqs: list[Sequence], length: int | None = None) -> Batch:
    """Stack sequences into a batch padded to `length` (default: the longest)."""
    t = max(len(s) for s in seqs) if length is None else length
    b = len(seqs)
    out = {k: np.zeros((b, t), np.int64) for k in ("tokens", "rows", "cols", "pos")}
    out["tokens"][:] = PAD
    targets = np.zeros((b, t), bool)
    for i, s in enumerate(seqs):
        n = len(s)
        for k, v in out.items():
            v[i, :n] = getattr(s, k)
        targets[i, :n] = s.targets
    task = np.array([s.task for s in seqs], np.int64)
    return Batch(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (*out.values(), targets, task)))


def batches(seqs: list[Sequence], batch_tokens: int) -> Iterator[tuple[list[int], Batch]]:
    """The sequences, shortest first, packed into batches of at most `batch_tokens` padded tokens (or one sequence),
    each with the indices in `seqs` of its rows."""
    group: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda i: len(seqs[i])):
        if group and len(seqs[i]) * (len(group) + 1) > batch_tokens:
            yield group, collate([seqs[k] for k in group])
            group = []
        group.append(i)
    if group:
        yield group, collate([seqs[k] for k in group])
