"""GaussNewton: AdamW with Kronecker-factored Gauss-Newton preconditioning of linear maps.

Each *tapped layer* (see `TappedLayer`) has its weight matrix W (d_out, d_in)
preconditioned by a Kronecker-factored estimate G ⊗ A of its block of the
generalised Gauss-Newton matrix (GGN); every other parameter (embeddings,
norms, biases, SBL `sigma`/`gate`) is updated by plain AdamW in the same
optimizer. The trainer drives the curvature statistics:

    with opt.capture():                     # taps record A on steps that collect curvature
        logits = model(tokens)              # (B, T, V)
    opt.accumulate_curvature(logits, mask)  # sampled-label pass records G (no-op on other steps)
    loss.backward()
    opt.step()
    opt.zero_grad()

`accumulate_curvature` backpropagates through the forward's graph: call it
before `loss.backward()` (it retains the graph), or after
`loss.backward(retain_graph=True)`. It never touches `.grad`: it asks
autograd only for the gradients at the tapped outputs. Tensor hooks on
activations do fire during its pass; a hook that records the training loss's
gradient should return early while `in_curvature_pass()` is true.

Scaling (sequences: every position is an example sharing the weights, the
"expand" setting of Kronecker-factored curvature). For a training loss that is
the mean of N per-token cross-entropies (N = mask.sum()), a forward pass whose
tapped layer saw R input rows x_r (all B·T positions), and sampled labels
ŷ ~ softmax(logits):

    Â = (1/R) Σ_r x_r x_rᵀ
    Ĝ = (1/N) Σ_r b_r b_rᵀ,    b_r = ∂/∂z_r Σ_{n ∈ mask} CE(logits_n, ŷ_n)

so b_r is the gradient of the *summed* sampled loss (per-token scale) and
Â ⊗ Ĝ estimates the GGN of the *mean* loss: E_ŷ[∇ℓ ∇ℓᵀ] equals the GGN for a
softmax cross-entropy, and where one token drives one loss term the estimate
is exact in expectation. Micro-batches (several capture/accumulate rounds
before one step) pool their sums, so the step's statistics are those of the
whole batch. A layer applied several times in one forward (weight-tied depth:
the model's `loops`) taps once per application: every application's rows x_r
and gradients b_r (∂/∂z at that application, through everything after it)
enter the sums, the applications counting as more positions sharing the
weight, as the expand setting treats positions; R counts them all.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import Optimizer, ParamsT

from onn_arc.optim.curvature import ema_, graft_norm, precondition_kronecker, psd_eigh, relative_damping

_curvature_pass = False


def in_curvature_pass() -> bool:
    """True while the optimizer backpropagates sampled labels (inside `accumulate_output_curvature`)."""
    return _curvature_pass


class TappedLayer(Protocol):
    """A linear map whose weight matrix GaussNewton preconditions.

    `weight_matrix` is the 2-D parameter W (d_out, d_in) (an SBL's `mu`, a
    Linear's `weight`). When `tap` is set, the layer's forward calls
    `self.tap(x, z)` with its input x (..., d_in) and the linear product
    z = x @ W.T (..., d_out), before routing or bias, with z in the autograd
    graph and used downstream (for an SBL, y = route * z).
    """

    tap: Callable[[Tensor, Tensor], None] | None

    @property
    def weight_matrix(self) -> nn.Parameter: ...


@dataclass
class _StepStats:
    """Curvature sums one tapped layer gathers during the current step (not optimizer state)."""

    weight: Tensor
    input_sum: Tensor | None = None  # Σ x xᵀ, (d_in, d_in)
    input_rows: Tensor | None = None  # rows summed into input_sum (a tensor, so ranks can all-reduce it)
    outputs: list[Tensor] = field(default_factory=list)  # z of each captured forward, awaiting their gradients
    output_sum: Tensor | None = None  # Σ b bᵀ, (d_out, d_out)
    output_terms: Tensor | None = None  # loss terms the probes summed over

    def record(self, x: Tensor, z: Tensor) -> None:
        """The layer's tap: add the input Gram matrix now, keep z for the sampled-label pass."""
        d_out, d_in = self.weight.shape
        if x.shape[-1] != d_in or z.shape[-1] != d_out:
            raise ValueError(f"tap got x {tuple(x.shape)} and z {tuple(z.shape)} for a weight of shape {(d_out, d_in)}")
        if not z.requires_grad:
            raise RuntimeError("capture() needs a forward pass with autograd enabled: the tapped z has no graph")
        rows = x.detach().reshape(-1, d_in).to(torch.float32)  # (R, d_in)
        with torch.autocast(rows.device.type, enabled=False):  # the tap runs inside the forward's autocast
            gram = rows.T @ rows  # (d_in, d_in), fp32
        count = torch.tensor(float(rows.shape[0]), device=gram.device)
        self.input_sum = gram if self.input_sum is None else self.input_sum.add_(gram)
        self.input_rows = count if self.input_rows is None else self.input_rows.add_(count)
        self.outputs.append(z)

    def add_output_gradients(self, grads: list[Tensor], num_terms: Tensor | float) -> None:
        """Add Σ b bᵀ over the gradients b at every recorded z, and the probe's number of loss terms."""
        d_out = self.weight.shape[0]
        for grad in grads:
            rows = grad.reshape(-1, d_out).to(torch.float32)  # (R, d_out)
            gram = rows.T @ rows  # (d_out, d_out)
            self.output_sum = gram if self.output_sum is None else self.output_sum.add_(gram)
        terms = torch.as_tensor(num_terms, dtype=torch.float32, device=self.weight.device)
        self.output_terms = terms if self.output_terms is None else self.output_terms + terms
        self.outputs.clear()

    def sums(self) -> list[Tensor] | None:
        """[Σ x xᵀ, rows, Σ b bᵀ, terms] once both passes are recorded, else None."""
        if self.outputs or self.input_sum is None or self.output_sum is None:
            return None
        return [self.input_sum, self.input_rows, self.output_sum, self.output_terms]

    def averages(self) -> tuple[Tensor, Tensor]:
        """(Â, Ĝ) for this step; an empty loss mask gives Ĝ = 0 rather than 0/0."""
        input_sum, input_rows, output_sum, output_terms = self.sums()
        return input_sum / input_rows, output_sum / output_terms.clamp_min(1.0)


class GaussNewton(Optimizer):
    r"""AdamW with Kronecker-factored Gauss-Newton (GGN) preconditioning of tapped weight matrices.

    For every parameter p with gradient g at step t (counted per parameter, from 1):

    .. math::
        p &\leftarrow p - \gamma \lambda_{wd}\, p \qquad \text{(decoupled weight decay)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \hat m &= m / (1-\beta_1^t), \qquad \hat v = v / (1-\beta_2^t), \qquad
        u = \hat m / (\sqrt{\hat v} + \epsilon) \qquad \text{(the Adam direction)}

    Plain parameters, every parameter of a group with ``preconditioning=False``, and
    tapped weights before ``start_step``: :math:`p \leftarrow p - \gamma u` (exactly AdamW).

    A tapped weight W (d_out, d_in) from ``start_step`` s on. On collection steps
    (:math:`(t-s) \bmod \text{curvature\_every} = 0`) the step's statistics Â, Ĝ (module
    docstring) enter running averages (the first collection initialises them):

    .. math::
        A \leftarrow \rho A + (1-\rho) \hat A, \qquad G \leftarrow \rho G + (1-\rho) \hat G

    On refresh steps (:math:`(t-s) \bmod \text{precondition\_every} = 0`) the eigenbases
    of the running averages are recomputed:
    :math:`A = Q_A \operatorname{diag}(\lambda_A) Q_A^\top`, :math:`G = Q_G \operatorname{diag}(\lambda_G) Q_G^\top`.
    Every step then preconditions the momentum :math:`\hat m` (not the raw gradient):

    .. math::
        \delta &= \text{damping} \cdot \operatorname{mean}(\lambda_G)\operatorname{mean}(\lambda_A) \\
        D &= Q_G \big[(Q_G^\top \hat m\, Q_A) \oslash (\lambda_G \lambda_A^\top + \delta)\big] Q_A^\top
           = (G \otimes A + \delta I)^{-1} \operatorname{vec}(\hat m) \\
        W &\leftarrow W - \gamma\, D\, \lVert u \rVert / \lVert D \rVert \quad \text{(graft=True)},
        \qquad W \leftarrow W - \gamma D \quad \text{(graft=False)}

    Grafting gives each tapped weight the Frobenius norm of the AdamW step it would
    have taken, so ``lr`` means what it means for AdamW. With ``betas[0]=0``,
    ``graft=False``, ``damping=0`` and ``lr=1`` the step is the Newton step
    :math:`-(G \otimes A)^{-1} \nabla` of the Kronecker-factored GGN.

    Defaults are chosen for a 1–5M-parameter transformer trained on batches of a
    few thousand tokens: ``betas=(0.9, 0.95)``, ``weight_decay=0.1`` (the usual
    small-transformer AdamW settings); statistics every 10 steps (a collection
    costs about 1.5 forward+backward passes at d=256: the sampled-label pass plus
    the Gram matrices) averaged with ``stat_decay=0.8`` (a memory of ~5 collections
    ≈ 50 steps); eigenbases every 50 steps (one 1024×1024 ``eigh`` is ~90 ms on 2
    CPU cores); ``damping=0.1`` of the mean curvature (0.1–0.3 did best on a toy
    MLP; 0.001 was clearly worse); 10 AdamW steps before the first preconditioned
    one. With grafting, GN tolerated a larger ``lr`` than AdamW on that toy.

    Args:
        params: parameters or parameter groups (as for AdamW). Every hyperparameter
            below may be overridden per group.
        layers: the tapped layers whose ``weight_matrix`` to precondition; each
            weight must be in ``params``.
        lr, betas, eps, weight_decay: as in ``torch.optim.AdamW``.
        preconditioning: False makes the group plain AdamW (no statistics either).
        damping: δ relative to the mean eigenvalue of G ⊗ A (≥ 0).
        stat_decay: ρ, the running-average decay of A and G per collection, in [0, 1).
        curvature_every: collect statistics every this many steps (≥ 1).
        precondition_every: recompute eigenbases every this many steps (≥ 1).
        start_step: first step that collects statistics and preconditions (≥ 1).
        graft: rescale each preconditioned step to the norm of the AdamW step.
    """

    def __init__(
        self,
        params: ParamsT,
        layers: Iterable[TappedLayer] = (),
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        *,
        preconditioning: bool = True,
        damping: float = 0.1,
        stat_decay: float = 0.8,
        curvature_every: int = 10,
        precondition_every: int = 50,
        start_step: int = 10,
        graft: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            preconditioning=preconditioning,
            damping=damping,
            stat_decay=stat_decay,
            curvature_every=curvature_every,
            precondition_every=precondition_every,
            start_step=start_step,
            graft=graft,
        )
        super().__init__(params, defaults)
        self._layers = list(layers)
        self._weights = [layer.weight_matrix for layer in self._layers]
        self._weight_ids = {id(w) for w in self._weights}
        self._stats: dict[Tensor, _StepStats] = {}  # this step's curvature sums, by weight
        optimized = {id(p) for group in self.param_groups for p in group["params"]}
        for layer, weight in zip(self._layers, self._weights, strict=True):
            name = type(layer).__name__
            if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
                raise ValueError(f"{name}.weight_matrix must be a 2-D nn.Parameter, got {type(weight).__name__}")
            if id(weight) not in optimized:
                raise ValueError(f"{name}.weight_matrix {tuple(weight.shape)} is not among the optimizer's params")
            if not hasattr(layer, "tap"):
                raise ValueError(f"{name} has no `tap` attribute: it is not a tapped layer")
        if len(self._weight_ids) != len(self._weights):
            raise ValueError("layers: the same weight_matrix is listed twice")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (also called by __init__ for each group) and validate its hyperparameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        beta1, beta2 = group["betas"]
        checks = {
            "lr": group["lr"] >= 0.0,
            "betas": 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0,
            "eps": group["eps"] >= 0.0,
            "weight_decay": group["weight_decay"] >= 0.0,
            "damping": group["damping"] >= 0.0,
            "stat_decay": 0.0 <= group["stat_decay"] < 1.0,
            "curvature_every": isinstance(group["curvature_every"], int) and group["curvature_every"] >= 1,
            "precondition_every": isinstance(group["precondition_every"], int) and group["precondition_every"] >= 1,
            "start_step": isinstance(group["start_step"], int) and group["start_step"] >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid GaussNewton hyperparameter {key}={group[key]!r}")

    # ---- curvature statistics (driven by the trainer around the forward pass) ----

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Install taps on the layers whose next step collects curvature; remove them on exit.

        Inside, each forward through such a layer adds its inputs' Gram matrix and
        keeps its z for `accumulate_curvature`. A no-op on steps that collect nothing.
        """
        due = [(layer, weight) for layer, weight in zip(self._layers, self._weights) if self._collects_next(weight)]
        for layer, weight in due:
            if layer.tap is not None:
                raise RuntimeError(f"{type(layer).__name__} already has a tap: capture() is not re-entrant")
            if weight in self._stats and self._stats[weight].outputs:
                raise RuntimeError("capture() entered again before accumulate_curvature() used the last capture")
        for layer, weight in due:
            layer.tap = self._stats.setdefault(weight, _StepStats(weight)).record
        try:
            yield
        finally:
            for layer, _ in due:
                layer.tap = None

    def accumulate_curvature(self, logits: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> None:
        """Record G from cross-entropy with labels sampled from the model's own predictions.

        logits (B, T, V) from the forward inside `capture()`; mask (B, T), 1 where the
        training loss scores logits[b, t]. Samples ŷ ~ softmax(logits) (with `generator`,
        on the logits' device, else the global RNG) and passes the masked sum of
        CE(logits, ŷ), with N = mask.sum() terms, to `accumulate_output_curvature`.
        A no-op when nothing was captured.
        """
        if not any(stats.outputs for stats in self._stats.values()):
            return
        flat_logits = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
        with torch.no_grad():
            probs = torch.softmax(flat_logits.detach(), dim=-1)  # (B*T, V)
            labels = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B*T,)
        weights = mask.reshape(-1).to(logits.dtype)  # (B*T,)
        with torch.enable_grad():
            losses = F.cross_entropy(flat_logits, labels, reduction="none")  # (B*T,)
            probe = (losses * weights).sum()
        self.accumulate_output_curvature(probe, weights.sum())

    def accumulate_output_curvature(self, probe: Tensor, num_terms: Tensor | float) -> None:
        """Record G = Σ_r b_r b_rᵀ / num_terms from b_r = ∂probe/∂z_r at every captured z.

        `probe` is a scalar summing `num_terms` per-example losses whose gradients'
        outer products estimate the output curvature: sampled-label cross-entropy
        (see `accumulate_curvature`), or for a regression output z with squared loss
        the plain sum of z. Gradients come from `torch.autograd.grad` with the graph
        retained: parameters' `.grad` are left as they were.
        """
        global _curvature_pass
        pending = [stats for stats in self._stats.values() if stats.outputs]
        if not pending:
            return
        outputs = [z for stats in pending for z in stats.outputs]
        _curvature_pass = True
        try:
            grads = torch.autograd.grad(probe, outputs, retain_graph=True, allow_unused=True)
        finally:
            _curvature_pass = False
        start = 0
        with torch.no_grad():
            for stats in pending:
                layer_grads = grads[start : start + len(stats.outputs)]
                start += len(stats.outputs)
                if any(grad is None for grad in layer_grads):
                    raise RuntimeError(
                        "a tapped layer's z does not reach the probe: the tap must get the z used downstream, "
                        "and each capture() needs its own accumulate_curvature()"
                    )
                stats.add_output_gradients(list(layer_grads), num_terms)

    def step_statistics(self) -> list[Tensor]:
        """This step's curvature sums, in a fixed order, for data-parallel training to all-reduce in place.

        Averaging every tensor across ranks (between `accumulate_curvature` and `step`)
        gives each rank the statistics of the global batch: Â and Ĝ are ratios of
        sums, so a mean of numerators over a mean of denominators is exact. Empty on
        steps that collect nothing.
        """
        sums = (self._stats[w].sums() for w in self._weights if w in self._stats)
        return [tensor for layer_sums in sums if layer_sums is not None for tensor in layer_sums]

    def discard_step_statistics(self) -> None:
        """Forget this step's statistics (for a step that is skipped); the next step collects afresh."""
        self._stats = {}

    # ---- the update ----

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stats = self._take_step_stats()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)  # on the CPU, as AdamW keeps it
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                if p in stats:
                    self._update_factors(state, group, stats[p])
                if self._preconditions(p, group) and self._due(t, group, "precondition_every") and "A" in state:
                    state["A_eigenvalues"], state["A_eigenvectors"] = psd_eigh(state["A"])
                    state["G_eigenvalues"], state["G_eigenvectors"] = psd_eigh(state["G"])
                self._update_parameter(p, state, group, t)
        return loss

    def _update_parameter(self, p: Tensor, state: dict[str, Tensor], group: dict[str, Any], t: float) -> None:
        """Weight decay, Adam moments, then the AdamW or the preconditioned step (class docstring)."""
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        if not (self._preconditions(p, group) and t >= group["start_step"] and "A_eigenvectors" in state):
            p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
            return
        momentum = exp_avg / bias_correction1
        eig_in, eig_out = state["A_eigenvalues"], state["G_eigenvalues"]
        damping = relative_damping(eig_out, eig_in, group["damping"])
        direction = precondition_kronecker(
            momentum, eig_out, state["G_eigenvectors"], eig_in, state["A_eigenvectors"], damping
        )
        if group["graft"]:
            direction = graft_norm(direction, momentum / denom)
        p.add_(direction, alpha=-lr)

    def _update_factors(self, state: dict[str, Tensor], group: dict[str, Any], stats: _StepStats) -> None:
        """Fold this step's Â, Ĝ into the running A, G (the first collection initialises them)."""
        input_factor, output_factor = stats.averages()
        if "A" not in state:
            state["A"], state["G"] = input_factor, output_factor
        else:
            ema_(state["A"], input_factor, group["stat_decay"])
            ema_(state["G"], output_factor, group["stat_decay"])

    def _take_step_stats(self) -> dict[Tensor, _StepStats]:
        """This step's statistics, after checking the trainer gathered all that was due."""
        for weight in self._weights:
            if weight.grad is None or not self._collects_next(weight):
                continue
            if weight not in self._stats or self._stats[weight].sums() is None:
                group = self._group_of(weight)
                raise RuntimeError(
                    f"step {self._steps_done(weight) + 1} collects curvature for a {tuple(weight.shape)} weight "
                    f"(start_step={group['start_step']}, curvature_every={group['curvature_every']}) but none "
                    "was gathered: run the forward inside capture() and call accumulate_curvature() before step()"
                )
        stats, self._stats = self._stats, {}
        return stats

    # ---- schedules ----

    def _group_of(self, p: Tensor) -> dict[str, Any]:
        return next(group for group in self.param_groups if any(q is p for q in group["params"]))

    def _preconditions(self, p: Tensor, group: dict[str, Any]) -> bool:
        return group["preconditioning"] and id(p) in self._weight_ids

    def _steps_done(self, p: Tensor) -> int:
        state = self.state.get(p)
        return int(state["step"].item()) if state and "step" in state else 0

    @staticmethod
    def _due(t: float, group: dict[str, Any], every: str) -> bool:
        """Whether step t (1-based) is on the schedule `group[every]` that starts at start_step."""
        start = group["start_step"]
        return t >= start and (int(t) - start) % group[every] == 0

    def _collects_next(self, weight: Tensor) -> bool:
        """Whether the next step of this tapped weight collects curvature statistics."""
        group = self._group_of(weight)
        return group["preconditioning"] and self._due(self._steps_done(weight) + 1, group, "curvature_every")
