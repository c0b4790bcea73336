"""Grid tokens: the vocabulary and the sequence layout (DESIGN §3b).

Each input -> output pair is its own sequence, conditioned on its task by the model's task code:

    BOS, IN, input grid, OUT, output grid, EOS

where a grid is written row by row, each row's cells followed by one ROW token. Every token carries its
(row, column, plane) and a role (marker, input cell, output cell): a grid's tokens their (row, column) inside it (the
ROW token of a row of width W sits at column W), the input grid and the output grid in two parallel planes, so output
cell (r, c) lines up with input cell (r, c) one plane offset away; each marker sits at (0, 0) of a plane of its own,
in sequence order (PLANES: BOS 0, IN 1, input 2, OUT 3, output 4, EOS 5). There is no sequence index.

The loss is on the output grid: every output-grid token and the EOS that closes the grid, so the model learns when
a grid ends; `input_loss` puts it on the input grid too (its cells, row ends and the OUT after it).
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from onn_arc.data import Grid, Pair, as_array, from_array
from onn_arc.errors import GridError, TaskError

N_COLOURS = 10
PAD, BOS, EOS, IN, OUT, ROW = range(N_COLOURS, N_COLOURS + 6)
VOCAB_SIZE = N_COLOURS + 6
NAMES = [str(c) for c in range(N_COLOURS)] + ["<pad>", "<bos>", "<eos>", "<in>", "<out>", "<row>"]

MARKER, INPUT, OUTPUT = 0, 1, 2  # roles
MAX_COORD = 30  # a row token of a 30-wide row sits at column 30
BOS_PLANE, IN_PLANE, INPUT_PLANE, OUT_PLANE, OUTPUT_PLANE, EOS_PLANE = range(6)  # the planes, in sequence order


@dataclass(frozen=True)
class Sequence:
    """One encoded pair; every array has shape (T,)."""

    tokens: np.ndarray  # int64 token ids
    rows: np.ndarray  # int64 row inside the token's grid
    cols: np.ndarray  # int64 column inside the token's grid
    pos: np.ndarray  # int64 plane
    roles: np.ndarray  # int64 MARKER / INPUT / OUTPUT
    targets: np.ndarray  # bool: the loss predicts this token (from position t-1)
    task: int = 0  # the task's code index

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


def _grid_parts(grid: Grid, role: int, plane: int) -> tuple[np.ndarray, ...]:
    """(tokens, rows, cols, planes, roles) of a grid, each (H * (W + 1),)."""
    a = as_array(grid)  # (H, W)
    h, w = a.shape
    tokens = np.concatenate([a, np.full((h, 1), ROW)], axis=1).ravel()  # (H * (W + 1),)
    rows = np.repeat(np.arange(h), w + 1)
    cols = np.tile(np.arange(w + 1), h)
    return tokens, rows, cols, np.full(h * (w + 1), plane), np.full(h * (w + 1), role)


def _marker(token: int, plane: int) -> tuple[np.ndarray, ...]:
    return np.array([token]), np.zeros(1, np.int64), np.zeros(1, np.int64), np.array([plane]), np.array([MARKER])


def _targets(roles: np.ndarray, scored: tuple[int, ...]) -> np.ndarray:
    """(T,) bool: the tokens of the `scored` roles and the token right after each (the grid's closer)."""
    is_scored = np.isin(roles, scored)
    return is_scored | np.concatenate([[False], is_scored[:-1]])


def encode_pair(
    pair: Pair, task: int = 0, answer: bool = True, input_loss: bool = False, max_len: int | None = None
) -> Sequence:
    """Encode one pair (module docstring) for the task whose code index is `task`.

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
    return Sequence(tokens, rows, cols, planes, roles, targets, task)


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


def next_position(generated: list[int]) -> tuple[int, int, int]:
    """(row, column, plane) of the next output-grid token, given the tokens generated so far."""
    return *next_coordinate(generated), OUTPUT_PLANE


@dataclass(frozen=True)
class Batch:
    """Right-padded sequences as tensors, each (B, T) (`task` (B,)); causal attention makes padding harmless."""

    tokens: torch.Tensor  # int64
    rows: torch.Tensor  # int64
    cols: torch.Tensor  # int64
    pos: torch.Tensor  # int64 plane
    targets: torch.Tensor  # bool, False on padding
    task: torch.Tensor | None = None  # (B,) int64 each sequence's task code index

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
