"""Decoding an output grid from a prompt over the model's KV cache (DESIGN §7).

The prompt is a task (context format) or a test input (pair format) encoded up to the OUT marker
(`tokens.encode_task(..., answer=False)`, `tokens.encode_pair(..., answer=False)`, which carries its task-code index).
The model then writes the grid one token at a time: colours, a ROW after each row, and any other token ends the grid.
Which token ends it does not matter, so "end" is one choice whose log-probability sums every such token's
(logsumexp); a candidate records it as EOS. Generated tokens get their (row, column, third coordinate) from
`tokens.next_position`, exactly as the model's format lays out a known output: the next sequence index (context) or
the output plane (pairs).

Only tokens that keep the prefix a possible grid are chosen (no row longer than 30 cells or than the first row,
no row end on an empty or short row, no 31st row, no end in the middle of a row), so every finished sequence is a
valid grid; probabilities are the model's own, never renormalised over the allowed tokens.

- `greedy`: the most probable allowed token at every step.
- `dfs`: depth-first search over every continuation whose cumulative probability stays >= `min_prob`, most probable
  child first; backtracking crops the cache to the branching point. At most 1 / min_prob grids can qualify.

Every candidate carries, per cell, the probability of its colour and the mean SBL activation rate (fraction of
units that fired, averaged over the routed layers; 1.0 for the dense baseline) of the forward pass whose logits
chose it: the evidence `onn-arc solve --explain` draws.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from onn_arc.data import Grid
from onn_arc.model import KVCache, TinyONN
from onn_arc.tokens import EOS, MAX_COORD, N_COLOURS, ROW, Sequence, decode_grid, next_position

END = EOS  # the token a candidate records for "the grid ends here"
CHOICES = (*range(N_COLOURS), ROW, END)  # what the decoder can write next, in the order of `_choice_logprobs`
GRID_TOKENS = MAX_COORD * (MAX_COORD + 1) + 1  # the longest grid: 30 rows of 30 cells and a row end, then its end

Shape = tuple[int, int, int]  # a prefix's (finished rows, row width or 0 before the first row end, cells in this row)


@dataclass(frozen=True)
class Candidate:
    """One decoded grid and the evidence behind it."""

    tokens: tuple[int, ...]  # generated tokens: cells and row ends, then END
    grid: Grid
    logprob: float  # summed log-probability of the tokens
    confidence: np.ndarray  # (H, W) probability of each cell's colour when it was chosen
    activation: np.ndarray  # (H, W) mean SBL activation rate of the forward pass that chose each cell


def extend(shape: Shape, token: int) -> Shape | None:
    """The prefix shape after `token`, or None when no valid grid (see `tokens.decode_grid`) starts that way.

    Every prefix it accepts can still be finished, so a search never reaches a dead end.
    """
    rows, width, cells = shape
    if token < N_COLOURS:
        return (rows, width, cells + 1) if rows < MAX_COORD and cells < (width or MAX_COORD) else None
    if token == ROW:
        return (rows + 1, cells, 0) if cells and cells == (width or cells) and rows < MAX_COORD else None
    return shape if rows and not cells else None  # the end


@dataclass(frozen=True)
class _Node:
    """A generated token in the search tree; its ancestors are the tokens before it."""

    parent: "_Node | None"
    token: int
    logprob: float  # cumulative, this token included
    prob: float  # this token's probability
    rate: float  # activation rate of the forward pass that chose it
    shape: Shape
    depth: int  # tokens generated up to and including this one

    def path(self) -> list["_Node"]:
        nodes, node = [], self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def tokens(self) -> list[int]:
        return [n.token for n in self.path()]


class _Decoder:
    """The model and a KV cache holding the prompt plus the current branch's tokens."""

    def __init__(self, model: TinyONN, prompt: Sequence):
        self.model = model
        self.device = next(model.parameters()).device
        self.start = len(prompt)
        self.room = model.cfg.max_len - self.start + 1  # tokens that can be generated (the end is never fed back)
        if self.room < 1:
            raise ValueError(f"a prompt of {self.start} tokens fills the context max_len={model.cfg.max_len}")
        self.cache: KVCache = model.new_cache()
        self.layers = [layer for _, layer in model.routed_layers()]
        self.task = torch.tensor([prompt.task], device=self.device)  # (1,)
        arrays = (prompt.tokens, prompt.rows, prompt.cols, prompt.pos)
        self.first = self._forward(*(torch.as_tensor(a, device=self.device)[None] for a in arrays))  # (1, P) each

    def _forward(self, tokens: Tensor, rows: Tensor, cols: Tensor, pos: Tensor) -> tuple[list[float], float]:
        """Feed new tokens; (log-probabilities of CHOICES after the last one, its activation rate)."""
        logits = self.model(tokens, rows, cols, pos, cache=self.cache, task=self.task)  # (1, T, V)
        rate = torch.stack([layer.last_rate[0, -1] for layer in self.layers]).mean().item() if self.layers else 1.0
        return _choice_logprobs(logits[0, -1]).tolist(), rate

    def after(self, node: _Node) -> tuple[list[float], float]:
        """Choices after `node`: the cache is cropped to its parent's branch, then its token is fed."""
        generated = node.tokens()
        self.cache.crop(self.start + len(generated) - 1)
        new = (node.token, *next_position(self.model.cfg.format, self.start, generated[:-1]))
        return self._forward(*(torch.tensor([[v]], device=self.device) for v in new))  # (1, 1) each


def _choice_logprobs(logits: Tensor) -> Tensor:
    """(len(CHOICES),) log-probabilities of the colours, ROW, and the end (every other token) from logits (V,)."""
    lp = logits.float().log_softmax(-1)  # (V,)
    other = torch.ones_like(lp, dtype=torch.bool)
    other[: N_COLOURS] = False
    other[ROW] = False
    return torch.cat([lp[:N_COLOURS], lp[ROW : ROW + 1], lp[other].logsumexp(0, keepdim=True)])


def _children(parent: _Node | None, choices: tuple[list[float], float]) -> list[_Node]:
    """Every allowed next token after `parent` (None: the root), most probable first."""
    logprobs, rate = choices
    base, shape, depth = (0.0, (0, 0, 0), 0) if parent is None else (parent.logprob, parent.shape, parent.depth)
    nodes = []
    for token, lp in zip(CHOICES, logprobs):
        after = extend(shape, token)
        if after is not None:
            nodes.append(_Node(parent, token, base + lp, math.exp(lp), rate, after, depth + 1))
    return sorted(nodes, key=lambda n: -n.logprob)


def _candidate(leaf: _Node) -> Candidate:
    path = leaf.path()
    grid = decode_grid([n.token for n in path])
    cells = [n for n in path if n.token < N_COLOURS]
    shape = (len(grid), len(grid[0]))
    return Candidate(
        tokens=tuple(n.token for n in path),
        grid=grid,
        logprob=leaf.logprob,
        confidence=np.array([n.prob for n in cells]).reshape(shape),
        activation=np.array([n.rate for n in cells]).reshape(shape),
    )


def greedy(model: TinyONN, prompt: Sequence, max_tokens: int = GRID_TOKENS) -> list[Candidate]:
    """The most probable allowed token at each step: one candidate, or none if `max_tokens` (or the context)
    runs out first."""
    with torch.inference_mode():
        decoder = _Decoder(model, prompt)
        limit = min(max_tokens, decoder.room)
        node = _children(None, decoder.first)[0]
        while node.token != END:
            if node.depth >= limit:
                return []
            node = _children(node, decoder.after(node))[0]
        return [_candidate(node)]


def dfs(
    model: TinyONN, prompt: Sequence, min_prob: float = 0.1, max_candidates: int = 8, max_tokens: int = GRID_TOKENS
) -> list[Candidate]:
    """Every grid of probability >= `min_prob` and at most `max_tokens` generated tokens (END included), most
    probable first; the search stops early once it has found `max_candidates` of them."""
    if not 0 < min_prob <= 1:
        raise ValueError(f"min_prob must be in (0, 1], got {min_prob}")
    floor = math.log(min_prob)
    found: list[Candidate] = []
    with torch.inference_mode():
        decoder = _Decoder(model, prompt)
        limit = min(max_tokens, decoder.room)
        stack = [n for n in reversed(_children(None, decoder.first)) if n.logprob >= floor]
        while stack and len(found) < max_candidates:
            node = stack.pop()
            if node.token == END:
                found.append(_candidate(node))
            elif node.depth < limit:
                stack += [n for n in reversed(_children(node, decoder.after(node))) if n.logprob >= floor]
    return sorted(found, key=lambda c: -c.logprob)
