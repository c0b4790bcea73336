"""Tiny-ONN: a small causal transformer whose linear maps are Sparse Bayesian Layers (DESIGN §4).

Read bottom-up: SBL -> Linear -> Attention (DynSIHA) -> FFN (MoIE) -> Block -> TinyONN. What is unusual:

- SBL: each output unit (a row of `mu`, a "micro-expert") decides per token whether and how strongly it fires:
      keys = mu * softplus(sigma);  route = relu(x @ keys.T / sqrt(d_in) - gate);  y = route * (x @ mu.T)
  Values and route logits come from ONE matmul of x with cat([mu, keys / sqrt(d_in)]) (bias cat([0, -gate])).
  A unit that does not fire gets no gradient through route * value; the gate loss (losses.py) works on the
  pre-ReLU `route_logits` and can reopen it.
  Init: softplus(sigma) = 1 and gate = -1, so route = 1 + x @ mu.T / sqrt(d_in) ~ 1: every unit fires and an SBL
  starts as its dense counterpart, with a small content-dependent modulation; routing and sparsity are learned
  (the design notes expect near-dense behaviour early in training). Inits where half the units fire at first
  trained clearly worse: keys share mu's signs (softplus > 0), so a unit opens mostly when its value is
  positive and the layer's outputs start out one-signed.
- Every SBL keeps `last_rate`, the fraction of its units that fired, per token (detached); `tap`, when set, sees
  (x, z = x @ mu.T) for the Gauss-Newton optimizer.
- Weight-tied depth (`cfg.loops` = R): the stack of blocks runs R times with the same weights, so every SBL is applied
  R times per forward. Each application is one `loop` of it: `last_rate` is the mean over the loops of the last
  forward, forward hooks and the tap fire once per loop (the gate loss gets a record per loop, losses.py; GN adds
  every loop's rows to its curvature statistics, like more positions sharing the weight), and the KV cache holds
  one slot per loop and block.
- Dropout (`cfg.dropout`, training only): on the summed embeddings and on each residual branch (attention and MoIE
  outputs) before it is added; in eval mode (decoding, scoring) it does nothing.
- DynSIHA attention: one SBL emits Q, K and V; one full-width head by default (`n_heads` is a variant); an SBL is the
  output projection. MoIE feed-forward: SBL -> GELU -> SBL. Blocks are pre-norm residual (RMSNorm).
- Positions are role-free: token + learned row + learned column embeddings at the input, and rotary embeddings whose
  pairs of head dims are split among three axes, so attention sees relative offsets along each: the plane (a
  quarter, base 10: planes are 0..5), row and column (the rest, split evenly, base 100: coordinates go to 30). No
  sequence index: within a pair, (row, column, plane) place every token, and output cell (r, c) sits one plane
  offset from input cell (r, c) (tokens.py).
- The model conditions on the task: a learned code per task (`task_codes`, one row per `cfg.task_ids`) is added to
  every token of the sequence, looked up by the sequence's task index. `add_task_code` grows the table for a task
  the model never saw (test-time training learns its code).
- arch="dense" is the baseline: every SBL becomes a plain Linear, everything else stays.
- KVCache is preallocated per loop and layer; keep(rows) drops finished sequences of a batch, gather(index)
  rearranges each row's tokens (a search compacting the branches it keeps, or backtracking to a prefix).
  Cached decoding computes exactly what the full forward computes (same positions, same maths), one token at a time
  or in chunks.
- Positions are never implied by where a token sits, so a batch of sequences of different lengths can be left-padded:
  `attention_mask` (B, past + T) marks the real tokens, and padding is seen by no token but itself.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onn_arc.config import ModelConfig
from onn_arc.tokens import MAX_COORD


SIGMA_INIT = 1.0  # softplus(sigma) at init: keys = mu, scores = value / sqrt(d_in), small
GATE_INIT = -1.0  # route = relu(scores + 1) ~ 1 at init: every unit fires, the SBL starts as its dense Linear


class SBL(nn.Module):
    """Sparse Bayesian Layer: a linear map whose output units fire per token, by content (DESIGN §4)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        bound = 1 / math.sqrt(d_in)  # nn.Linear's init
        self.mu = nn.Parameter(torch.empty(d_out, d_in).uniform_(-bound, bound))
        self.sigma = nn.Parameter(torch.full((d_out, d_in), SIGMA_INIT + math.log(-math.expm1(-SIGMA_INIT))))
        self.gate = nn.Parameter(torch.full((d_out,), GATE_INIT))
        self.tap = None  # Callable[[Tensor, Tensor], None] | None: sees (x, z) on every forward when set
        self.last_rate: Tensor | None = None  # (...,) fraction of units that fired, per token, over the last loops
        self._frozen: tuple[tuple, tuple[Tensor, Tensor]] | None = None  # `_fused` kept for no-grad forwards

    @property
    def weight_matrix(self) -> nn.Parameter:
        return self.mu

    def _keys(self, mu: Tensor) -> Tensor:
        return mu * F.softplus(self.sigma)  # (d_out, d_in)

    def route_logits(self, x: Tensor, train_mu: bool = True) -> Tensor:
        """Pre-ReLU route logits scores - gate, (..., d_out). train_mu=False keeps their gradient out of mu."""
        return F.linear(x, self._keys(self.mu if train_mu else self.mu.detach())) / math.sqrt(self.d_in) - self.gate

    def _fused(self) -> tuple[Tensor, Tensor]:
        """Weight cat([mu, keys / sqrt(d_in)]) (2 d_out, d_in) and bias cat([0, -gate]) (2 d_out,) of the one product
        x @ weight.T + bias = [z, scores - gate]. Without autograd (decoding) they are kept until mu, sigma or gate
        change (in-place updates bump their version counters), so one-token steps do not redo the keys."""
        if torch.is_grad_enabled():
            self._frozen = None
            return self._build_fused()
        stamp = tuple((p.device, p.data_ptr(), p._version) for p in (self.mu, self.sigma, self.gate))
        if self._frozen is None or self._frozen[0] != stamp:
            self._frozen = (stamp, self._build_fused())
        return self._frozen[1]

    def _build_fused(self) -> tuple[Tensor, Tensor]:
        weight = torch.cat([self.mu, self._keys(self.mu) / math.sqrt(self.d_in)])
        return weight, torch.cat([torch.zeros_like(self.gate), -self.gate])

    def forward(self, x: Tensor, loop: int = 0) -> Tensor:
        """`loop`: which pass through the model's weight-tied stack this is; `last_rate` becomes the mean rate over
        loops 0..loop of this forward."""
        z, logits = F.linear(x, *self._fused()).split(self.d_out, dim=-1)  # (..., d_out) each: z + 0, scores - gate
        if self.tap is not None:
            self.tap(x, z)
        route = F.relu(logits)
        rate = route.detach().sign().mean(-1)  # (...,) route >= 0: its sign says whether a unit fired
        self.last_rate = rate if loop == 0 else self.last_rate + (rate - self.last_rate) / (loop + 1)
        return route * z

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}"


class Linear(nn.Linear):
    """The dense baseline's linear map (no bias), with the SBL's `weight_matrix` / `tap` contract."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__(d_in, d_out, bias=False)
        self.tap = None  # Callable[[Tensor, Tensor], None] | None

    @property
    def weight_matrix(self) -> nn.Parameter:
        return self.weight

    def forward(self, x: Tensor, loop: int = 0) -> Tensor:  # `loop` as the SBL's: a plain map has no rate to average
        z = super().forward(x)
        if self.tap is not None:
            self.tap(x, z)
        return z


def linear_map(cfg: ModelConfig, d_in: int, d_out: int) -> SBL | Linear:
    """The one place the architecture switch acts."""
    return SBL(d_in, d_out) if cfg.arch == "onn" else Linear(d_in, d_out)


class KVCache:
    """Keys and values of every attention slot (one per loop and layer) for the tokens seen so far, preallocated to
    the model's max_len (uninitialised: only what was stored is ever read)."""

    def __init__(self, n_slots: int, max_len: int):
        self.max_len = max_len
        self.length = 0  # tokens cached
        self._k: list[Tensor | None] = [None] * n_slots
        self._v: list[Tensor | None] = [None] * n_slots

    def update(self, slot: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one slot's keys/values (B, H, T, hd) of the new tokens; return all cached (B, H, length + T, hd)."""
        if self._k[slot] is None:
            b, h, _, hd = k.shape
            self._k[slot], self._v[slot] = k.new_empty(b, h, self.max_len, hd), v.new_empty(b, h, self.max_len, hd)
        cache_k, cache_v = self._k[slot], self._v[slot]
        end = self.length + k.shape[2]
        cache_k[:, :, self.length : end] = k
        cache_v[:, :, self.length : end] = v
        return cache_k[:, :, :end], cache_v[:, :, :end]

    def keep(self, rows: Tensor) -> None:
        """Keep only these batch rows (B',) of every slot, in this order."""
        for store in (self._k, self._v):
            for slot, old in enumerate(store):
                if old is not None:
                    store[slot] = old.new_empty(len(rows), *old.shape[1:])
                    store[slot][:, :, : self.length] = old[rows, :, : self.length]

    def gather(self, index: Tensor) -> None:
        """Keep in each row b the cached tokens at index[b] (B, n), in that order: n tokens cached."""
        for store in (self._k, self._v):
            for old in store:
                if old is not None:
                    at = index[:, None, :, None].expand(-1, old.shape[1], -1, old.shape[3])  # (B, H, n, hd)
                    old[:, :, : index.shape[1]] = old.gather(2, at)
        self.length = index.shape[1]

    def advance(self, n: int) -> None:
        """Count n new tokens as cached (after every slot stored them)."""
        self.length += n


def _freqs(n: int, base: float) -> Tensor:
    """(n,) rotary frequencies base^(-i/n): from one radian per step down to nearly 1/base."""
    return base ** (-torch.arange(n) / n)


class Rotary(nn.Module):
    """Rotary angles from (plane, row, column), with the head's dim pairs split among the three axes as the module
    docstring says."""

    def __init__(self, head_dim: int):
        super().__init__()
        pairs = head_dim // 2
        n_plane = pairs // 4
        n_row = (pairs - n_plane + 1) // 2
        self.register_buffer("plane_freqs", _freqs(n_plane, 10.0), persistent=False)
        self.register_buffer("row_freqs", _freqs(n_row, 100.0), persistent=False)
        self.register_buffer("col_freqs", _freqs(pairs - n_plane - n_row, 100.0), persistent=False)

    def forward(self, planes: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
        axes = ((planes, self.plane_freqs), (rows, self.row_freqs), (cols, self.col_freqs))
        angles = torch.cat([coord[..., None] * freqs for coord, freqs in axes], -1)  # (B, T, hd / 2)
        return angles.cos()[:, :, None], angles.sin()[:, :, None]  # (B, T, 1, hd / 2) each: broadcast over heads


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Turn each pair (x[i], x[i + hd/2]) of x (B, T, H, hd) by its angle."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, hd / 2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_mask(t: int, past: int, real: Tensor | None, device: torch.device) -> Tensor | None:
    """Which keys (the `past` cached tokens, then the T new ones) each new token attends to: the real tokens up to
    itself; padding (`real` (B, past + T) False) is seen by no token but itself, so no row of the softmax is empty.
    (T, past + T) or, with `real`, (B, 1, T, past + T) bool; None where SDPA needs no mask (a single new token sees
    every cached one) or its own causal mask is exact (nothing cached)."""
    if real is None and (t == 1 or not past):
        return None
    new = torch.arange(past, past + t, device=device)[:, None]  # (T, 1) index of each new token
    keys = torch.arange(past + t, device=device)  # (past + T,)
    if real is None:
        return new >= keys
    return ((new >= keys) & real[:, None] | (new == keys))[:, None]  # (B, 1, T, past + T)


class Attention(nn.Module):
    """DynSIHA: one map emits Q, K, V; causal scaled-dot-product attention; one output map."""

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        self.index, self.n_layers, self.n_heads, self.head_dim = index, cfg.n_layers, cfg.n_heads, cfg.head_dim
        self.qkv = linear_map(cfg, cfg.d_model, 3 * cfg.d_model)
        self.out = linear_map(cfg, cfg.d_model, cfg.d_model)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: KVCache | None, loop: int = 0
    ) -> Tensor:  # fmt: skip
        """`mask`: `causal_mask`'s; None means causal attention over the new tokens and everything cached."""
        b, t, d = x.shape
        q, k, v = self.qkv(x, loop).view(b, t, 3, self.n_heads, self.head_dim).unbind(2)  # (B, T, H, hd) each
        q, k = rotate(q, *rope), rotate(k, *rope)
        q, k, v = (u.transpose(1, 2) for u in (q, k, v))  # (B, H, T, hd)
        if cache is not None:
            k, v = cache.update(loop * self.n_layers + self.index, k, v)  # (B, H, past + T, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1)  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(b, t, d), loop)  # (B, T, D)


class FFN(nn.Module):
    """MoIE: map up to ffn_mult * d_model, GELU, map down."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = linear_map(cfg, cfg.d_model, cfg.ffn_mult * cfg.d_model)
        self.down = linear_map(cfg, cfg.ffn_mult * cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor, loop: int = 0) -> Tensor:
        return self.down(F.gelu(self.up(x, loop)), loop)


class Block(nn.Module):
    """Pre-norm residual block: x + dropout(attention(norm x)), then x + dropout(ffn(norm x))."""

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        self.attn_norm, self.attn = nn.RMSNorm(cfg.d_model), Attention(cfg, index)
        self.ffn_norm, self.ffn = nn.RMSNorm(cfg.d_model), FFN(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: KVCache | None, loop: int = 0
    ) -> Tensor:  # fmt: skip
        x = x + self.drop(self.attn(self.attn_norm(x), rope, mask, cache, loop))
        return x + self.drop(self.ffn(self.ffn_norm(x), loop))


class TinyONN(nn.Module):
    """Token + grid-coordinate + task-code embeddings, `n_layers` blocks run `loops` times, a final norm and a linear
    head over the vocabulary."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.row_emb = nn.Embedding(MAX_COORD + 1, d)
        self.col_emb = nn.Embedding(MAX_COORD + 1, d)
        self.task_codes = nn.Embedding(cfg.n_task_codes, d)
        embeddings = [self.tok_emb, self.row_emb, self.col_emb, self.task_codes]
        for emb in embeddings:
            nn.init.normal_(emb.weight, std=len(embeddings) ** -0.5)  # their sum starts with unit variance
        self.drop = nn.Dropout(cfg.dropout)
        self.rotary = Rotary(cfg.head_dim)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)

    def new_cache(self, max_len: int | None = None) -> KVCache:
        """A cache for the context (`max_len` tokens: a left-padded batch also holds its padding)."""
        return KVCache(self.cfg.loops * self.cfg.n_layers, max_len or self.cfg.max_len)

    def forward(
        self, tokens: Tensor, rows: Tensor, cols: Tensor, pos: Tensor, cache: KVCache | None = None,
        task: Tensor | None = None, attention_mask: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """Logits (B, T, V) for inputs (B, T); `pos` is the plane (`tokens.py`) and `task` (B,) the task-code index of
        each sequence. With a cache, the new tokens attend to the cached ones and join them. `attention_mask`
        (B, past + T) bool: False at the padding of a left-padded batch, cached or new (None: no padding)."""
        t = tokens.shape[1]
        past = 0 if cache is None else cache.length
        max_len = self.cfg.max_len if cache is None else cache.max_len
        if past + t > max_len:
            raise ValueError(f"{past} cached + {t} new tokens exceed the context max_len={max_len}")
        if task is None:
            raise ValueError("the model needs each sequence's task-code index (task=)")
        x = self.tok_emb(tokens) + self.row_emb(rows) + self.col_emb(cols)  # (B, T, D)
        x = self.drop(x + self.task_codes(task)[:, None])  # the code (B, 1, D) broadcast over the sequence
        rope = self.rotary(pos, rows, cols)
        mask = causal_mask(t, past, attention_mask, x.device)
        for loop in range(self.cfg.loops):
            for block in self.blocks:
                x = block(x, rope, mask, cache, loop)
        if cache is not None:
            cache.advance(t)
        return self.head(self.norm(x))  # (B, T, V)

    def add_task_code(self, task_id: str, init: Literal["mean", "zero"] = "mean") -> int:
        """Append a code for a task the model never saw, initialised to the mean of the trained codes (zero when
        there are none) or to zero; returns its index. Build the optimizer afterwards: the table is a new tensor."""
        if task_id in self.cfg.task_ids:
            raise ValueError(f"task '{task_id}' already has code {self.cfg.task_ids.index(task_id)}")
        old = self.task_codes.weight.detach()  # (N, D)
        new = old.mean(0, keepdim=True) if init == "mean" and len(old) else old.new_zeros(1, old.shape[1])  # (1, D)
        self.task_codes = nn.Embedding.from_pretrained(torch.cat([old, new]), freeze=False)
        self.cfg = self.cfg.model_copy(update={"task_ids": (*self.cfg.task_ids, task_id)})
        return len(self.cfg.task_ids) - 1

    def routed_layers(self) -> list[tuple[str, SBL]]:
        """Every SBL with its name (empty for the dense baseline)."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, SBL)]

    def tapped_layers(self) -> list[SBL | Linear]:
        """Every SBL (onn) or Linear (dense) inside the blocks: the maps the Gauss-Newton optimizer preconditions."""
        return [m for m in self.blocks.modules() if isinstance(m, (SBL, Linear))]

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups, each with a "kind". Decay pulls weights towards 0, so it goes where 0 means "nothing"
        and the weights serve every token:
        "matrix", decayed: the weight matrices of the tapped layers (SBL mu / Linear weight; Muon's matrices).
        "other", not decayed:
          - embeddings of tokens, rows, columns and task codes: a row gets gradient only when its token, coordinate
            or task is in the batch, but decay shrinks it every step, so rare ones (a task's code, seen once every
            few hundred steps) would fade between their uses;
          - the output head (an untied mirror of the token embedding): decay would act as a logit temperature the
            softmax already regularises; the recipes were tuned without it, so it stays out;
          - RMSNorm gains: their neutral value is 1, not 0;
          - SBL sigma: a pre-softplus scale whose neutral value is SIGMA_INIT, not 0 (0 is softplus 0.69); the KL loss
            is its regulariser;
          - SBL gate: a firing threshold; decay would move every unit's firing level rather than simplify it.
        There are no biases (the maps have none; an SBL's gate is its bias).
        """
        matrices = [m.weight_matrix for m in self.tapped_layers()]
        in_matrices = {id(p) for p in matrices}
        other = [p for p in self.parameters() if id(p) not in in_matrices]
        groups = [
            {"params": matrices, "weight_decay": weight_decay, "kind": "matrix"},
            {"params": other, "weight_decay": 0.0, "kind": "other"},
        ]
        grouped = [id(p) for g in groups for p in g["params"]]
        assert len(grouped) == len(set(grouped)) and set(grouped) == {id(p) for p in self.parameters()}, (
            "every parameter must be in exactly one group"
        )
        return groups

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
