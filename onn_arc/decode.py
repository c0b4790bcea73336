"""Decoding an output grid from a prompt over the model's KV cache (DESIGN §7).

The prompt is a test input encoded up to the OUT marker (`tokens.encode_pair(..., answer=False)`, which carries its
task-code index). The model then writes the grid one token at a time: colours, a ROW after each row, and any other
token ends the grid. Which token ends it does not matter, so "end" is one choice whose log-probability sums every
such token's (logsumexp); a candidate records it as EOS. Generated tokens get their (row, column, plane) from
`tokens.next_position`, exactly as a known output is laid out.

Only tokens that keep the prefix a possible grid are chosen (no row longer than 30 cells or than the first row,
no row end on an empty or short row, no 31st row, no end in the middle of a row), so every finished sequence is a
valid grid; probabilities are the model's own, never renormalised over the allowed tokens.

- `greedy`: the most probable allowed token at every step.
- `greedy_batch`: `greedy` for many prompts at once (a batched matrix product costs a CPU little more than one row):
  the prompts are left-padded to the longest, one KV-cache row each (`TinyONN.forward`'s `attention_mask` hides the
  padding), all rows take their next token together, and a row leaves the batch once its grid ends or its room runs
  out. Each row decodes what `greedy` decodes from its prompt alone; `greedy` is the batch of one.
- `dfs`: depth-first search over every continuation whose cumulative probability stays >= `min_prob`, most probable
  child first. At most 1 / min_prob grids can qualify.
- `dfs_batch`: `dfs` for many prompts at once, one KV-cache row per prompt. Every step each row pops its own stack,
  exactly as `dfs` alone would, down to its next node to expand, and all rows' nodes go through one forward pass,
  each at its own depth: a token is always written at the end of the cache, and a row that backtracked hides the
  tokens of its abandoned branch from itself with the attention mask, as it hides padding (positions come from
  (row, column, plane), never from where a token sits in the cache). When the cache is full, each row's branch is
  moved back next to its prompt (`KVCache.gather`). Each row finds what `dfs` finds from its prompt alone; `dfs` is
  the batch of one.

Both samplers take an optional `deadline` (a `time.perf_counter()` value): past it no more tokens are fed, so greedy
rows still writing give no grid and a search keeps the grids it found.

Every candidate carries, per cell, the probability of its colour and the mean SBL activation rate (fraction of
units that fired, averaged over the routed layers; 1.0 for the dense baseline) of the forward pass whose logits
chose it: the evidence `onn-arc solve --explain` draws.
"""

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from onn_arc.data import Grid
from onn_arc.model import KVCache, TinyONN
from onn_arc.tokens import (
    EOS, MAX_COORD, N_COLOURS, PAD, ROW, VOCAB_SIZE, Sequence, batches, decode_grid, next_position,
)  # fmt: skip

END = EOS  # the token a candidate records for "the grid ends here"
CHOICES = (*range(N_COLOURS), ROW, END)  # what the decoder can write next, in the order of `_choice_logprobs`
GRID_TOKENS = MAX_COORD * (MAX_COORD + 1) + 1  # the longest grid: 30 rows of 30 cells and a row end, then its end
SCORED_TOKENS = 8192  # padded tokens per forward pass of `teacher_forced`
DFS_ROOM = 256  # dfs: cache room beyond the longest branch, for abandoned tokens until the cache is compacted

Shape = tuple[int, int, int]  # a prefix's (finished rows, row width or 0 before the first row end, cells in this row)
Choices = tuple[list[float], float]  # log-probabilities of CHOICES next, activation rate of the pass that gave them


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
    """The model and a KV cache holding prompts, left-padded to the longest, then each row's current branch.

    Row b holds prompt `index[b]`. Each step feeds one token per row at the end of the cache, whatever the depth of
    its node; `seen` (B, capacity) marks what row b's next token may attend to: its prompt's real tokens and its
    branch (`branch[b]`: the cache index of each of its tokens), so a row that backtracked no longer sees the tokens
    it abandoned. `room` is the cache's capacity beyond the longest branch a row can hold; when it is used up,
    `_compact` moves each branch back next to its prompt."""

    def __init__(self, model: TinyONN, prompts: list[Sequence], max_tokens: int, room: int = 0):
        self.model = model
        self.device = next(model.parameters()).device
        self.lengths = [len(p) for p in prompts]
        if max(self.lengths) > model.cfg.max_len:
            raise ValueError(f"a prompt of {max(self.lengths)} tokens fills the context max_len={model.cfg.max_len}")
        self.start = max(self.lengths)  # cache index of the first generated token, in every row
        self.limits = [min(max_tokens, model.cfg.max_len - n + 1) for n in self.lengths]  # tokens a row may generate
        self.index = list(range(len(prompts)))
        capacity = self.start + max(self.limits) - 1 + room  # a row's last token, the end, is never fed back
        self.cache: KVCache = model.new_cache(capacity)
        self.layers = [layer for _, layer in model.routed_layers()]
        self.task = torch.tensor([p.task for p in prompts], device=self.device)  # (B,)
        arrays = np.zeros((4, len(prompts), self.start), np.int64)  # tokens, rows, cols, pos: (B, P) each
        arrays[0] = PAD
        for b, p in enumerate(prompts):
            arrays[:, b, self.start - len(p) :] = p.tokens, p.rows, p.cols, p.pos
        pad = self.start - np.array(self.lengths)[:, None]  # (B, 1) padding before each prompt
        self.seen = torch.as_tensor(np.arange(capacity) >= pad, device=self.device)  # (B, capacity)
        self.seen[:, self.start :] = False
        self.masked = bool(pad.any())  # False while no row hides anything: attention needs no mask
        self.branch: list[list[int]] = [[] for _ in prompts]
        self.first = self._forward(*torch.as_tensor(arrays, device=self.device))  # (B, P) each

    def _forward(self, tokens: Tensor, rows: Tensor, cols: Tensor, pos: Tensor) -> list[Choices]:
        """Feed new tokens (B, T); each row's choices after its last one."""
        mask = self.seen[:, : self.cache.length + tokens.shape[1]] if self.masked else None  # (B, past + T)
        logits = self.model(tokens, rows, cols, pos, cache=self.cache, task=self.task, attention_mask=mask)  # (B, T, V)
        if self.layers:
            rates = torch.stack([layer.last_rate[:, -1] for layer in self.layers]).mean(0).tolist()  # (B,)
        else:
            rates = [1.0] * len(tokens)
        return list(zip(_choice_logprobs(logits[:, -1]).tolist(), rates))

    def after(self, nodes: list[_Node]) -> list[Choices]:
        """Choices after each row's node, a child of a node on the row's branch: the branch is cut back to the
        node's parent, and the node's token is fed after it."""
        if self.cache.length == self.cache.max_len:
            self._compact()
        end = self.cache.length
        for b, node in enumerate(nodes):
            branch = self.branch[b]
            if len(branch) >= node.depth:  # backtracked: hide the abandoned tokens
                self.seen[b, branch[node.depth - 1 :]] = False
                del branch[node.depth - 1 :]
                self.masked = True
            branch.append(end)
        self.seen[:, end] = True
        new = [(n.token, *next_position(n.tokens()[:-1])) for n in nodes]
        return self._forward(*torch.tensor(new, device=self.device).T[..., None])  # (B, 1) each

    def _compact(self) -> None:
        """Move each row's branch back next to its prompt, dropping the tokens no row sees."""
        width = max(map(len, self.branch))
        index = torch.zeros(len(self.branch), self.start + width, dtype=torch.long)  # (B, P + width)
        index[:, : self.start] = torch.arange(self.start)
        seen = torch.zeros_like(self.seen)
        seen[:, : self.start] = self.seen[:, : self.start]
        for b, branch in enumerate(self.branch):
            index[b, self.start : self.start + len(branch)] = torch.tensor(branch)  # beyond: index 0, unseen
            seen[b, self.start : self.start + len(branch)] = True
            self.branch[b] = list(range(self.start, self.start + len(branch)))
        self.cache.gather(index.to(self.device))
        self.seen = seen

    def keep(self, rows: list[int]) -> None:
        """Drop every row but `rows` (positions in the current rows)."""
        self.index = [self.index[b] for b in rows]
        self.branch = [self.branch[b] for b in rows]
        at = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.cache.keep(at)
        self.task = self.task[at]
        self.seen = self.seen[at]


def _choice_logprobs(logits: Tensor) -> Tensor:
    """(..., len(CHOICES)) log-probabilities of the colours, ROW, and the end (every other token) from logits (..., V)."""
    lp = logits.float().log_softmax(-1)  # (..., V)
    other = torch.ones(lp.shape[-1], dtype=torch.bool, device=lp.device)
    other[:N_COLOURS] = False
    other[ROW] = False
    return torch.cat([lp[..., :N_COLOURS], lp[..., ROW : ROW + 1], lp[..., other].logsumexp(-1, keepdim=True)], -1)


def _children(parent: _Node | None, choices: Choices) -> list[_Node]:
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
    return greedy_batch(model, [prompt], max_tokens)[0]


def greedy_batch(
    model: TinyONN,
    prompts: list[Sequence],
    max_tokens: int = GRID_TOKENS,
    on_done: Callable[[int], None] | None = None,
    deadline: float | None = None,
) -> list[list[Candidate]]:
    """`greedy` of each prompt, decoded together; `on_done` gets each prompt's index as its decoding ends. Past
    `deadline` (a `time.perf_counter()` value) every row still writing ends without a grid."""
    found: list[list[Candidate]] = [[] for _ in prompts]
    if not prompts:
        return found
    with torch.inference_mode():
        decoder = _Decoder(model, prompts, max_tokens)
        nodes = [_children(None, choices)[0] for choices in decoder.first]  # each row's latest token
        while nodes:
            late = _past(deadline)
            ended = [late or n.token == END or n.depth >= decoder.limits[i] for i, n in zip(decoder.index, nodes)]
            for i, node in itertools.compress(zip(decoder.index, nodes), ended):
                if node.token == END:
                    found[i] = [_candidate(node)]
                if on_done is not None:
                    on_done(i)
            if any(ended):
                going = [b for b, end in enumerate(ended) if not end]
                decoder.keep(going)
                nodes = [nodes[b] for b in going]
            if nodes:
                nodes = [_children(n, choices)[0] for n, choices in zip(nodes, decoder.after(nodes))]
    return found


def dfs(
    model: TinyONN, prompt: Sequence, min_prob: float = 0.1, max_candidates: int = 8, max_tokens: int = GRID_TOKENS
) -> list[Candidate]:
    """Every grid of probability >= `min_prob` and at most `max_tokens` generated tokens (END included), most
    probable first; the search stops early once it has found `max_candidates` of them."""
    return dfs_batch(model, [prompt], min_prob, max_candidates, max_tokens)[0]


def dfs_batch(
    model: TinyONN,
    prompts: list[Sequence],
    min_prob: float = 0.1,
    max_candidates: int = 8,
    max_tokens: int = GRID_TOKENS,
    on_done: Callable[[int], None] | None = None,
    deadline: float | None = None,
) -> list[list[Candidate]]:
    """`dfs` of each prompt, searched together (module docstring); `on_done` gets each prompt's index as its search
    ends. Past `deadline` (a `time.perf_counter()` value) every search ends with the grids it has found."""
    if not 0 < min_prob <= 1:
        raise ValueError(f"min_prob must be in (0, 1], got {min_prob}")
    floor = math.log(min_prob)
    found: list[list[Candidate]] = [[] for _ in prompts]
    if not prompts:
        return found

    def push(stack: list[_Node], parent: _Node | None, choices: Choices) -> None:
        stack += [n for n in reversed(_children(parent, choices)) if n.logprob >= floor]  # most probable on top

    def pop(stack: list[_Node], i: int) -> _Node | None:
        """Pop prompt i's stack down to its next node to expand, keeping the grids that end; None when done."""
        while stack and len(found[i]) < max_candidates:
            node = stack.pop()
            if node.token == END:
                found[i].append(_candidate(node))
            elif node.depth < decoder.limits[i]:
                return node
        return None

    with torch.inference_mode():
        decoder = _Decoder(model, prompts, max_tokens, room=DFS_ROOM)
        stacks: list[list[_Node]] = [[] for _ in prompts]
        for stack, choices in zip(stacks, decoder.first):
            push(stack, None, choices)
        while stacks:
            nodes = [pop(stack, i) for stack, i in zip(stacks, decoder.index)]
            if _past(deadline):
                nodes = [None] * len(nodes)
            if None in nodes:
                for i, node in zip(decoder.index, nodes):
                    if node is None and on_done is not None:
                        on_done(i)
                going = [b for b, node in enumerate(nodes) if node is not None]
                decoder.keep(going)
                stacks, nodes = [stacks[b] for b in going], [nodes[b] for b in going]
            if stacks:
                for stack, node, choices in zip(stacks, nodes, decoder.after(nodes)):
                    push(stack, node, choices)
    return [sorted(f, key=lambda c: -c.logprob) for f in found]


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() >= deadline


@torch.inference_mode()
def teacher_forced(
    model: TinyONN, seqs: list[Sequence], batch_tokens: int = SCORED_TOKENS, deadline: float | None = None
) -> list[float | None] | None:
    """Each sequence's summed log-probability of its target tokens (`Sequence.targets`: a grid's cells, row ends and
    the token that ends it) given every token before, counted as a `Candidate`'s: a colour or row end by its own
    probability, the end by every ending token's together (`_choice_logprobs`), never renormalised. Full forward
    passes without autocast (fp32, as decoding) over batches of at most `batch_tokens` padded tokens; None for a
    sequence that does not fit the context (its last token, which is never fed, aside). None when `deadline` (a
    `time.perf_counter()` value) passes before every batch was scored."""
    device = next(model.parameters()).device
    choice = torch.full((VOCAB_SIZE,), len(CHOICES) - 1, device=device)  # each token's place in CHOICES: the end...
    choice[list(CHOICES[:-1])] = torch.arange(len(CHOICES) - 1, device=device)  # ...but for the colours and ROW
    fits = [i for i, seq in enumerate(seqs) if len(seq) - 1 <= model.cfg.max_len]
    scores: list[float | None] = [None] * len(seqs)
    for rows, batch in batches([seqs[i] for i in fits], batch_tokens):
        if _past(deadline):
            return None
        b = batch.to(device)
        fed = [x[:, :-1] for x in (b.tokens, b.rows, b.cols, b.pos)]  # (B, T - 1) each: the last token predicts nothing
        logits = model(*fed, task=b.task)  # (B, T - 1, V): position t predicts token t + 1
        lp = _choice_logprobs(logits).gather(-1, choice[b.tokens[:, 1:, None]])[..., 0]  # (B, T - 1)
        lp = torch.where(b.targets[:, 1:], lp, 0.0).sum(1)  # (B,)
        for row, value in zip(rows, lp.tolist()):
            scores[fits[row]] = value
    return scores
