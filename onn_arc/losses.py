"""Training losses (DESIGN §5): main next-token loss, surprise, the SML gate loss and the adaptive KL loss.

- Main: cross-entropy of the logits at t against token t+1, counted where token t+1 is a target
  (output-grid cells, row ends and the grid's closer; `loss_mask` marks the scored logits).
- Surprise: S = |dL_main/dy| at every SBL output y, per token and unit, read by tensor hooks during the main
  backward (no double backprop), on a random subset of the batch's tokens (`LossConfig.gate_tokens`). With
  weight-tied depth an SBL is applied once per loop: each application has its own input, y and S.
- Gate loss (SML), per SBL and sampled token, with S a detached target and r the SBL's pre-ReLU route logits
  recomputed from its detached input with mu detached (the gate loss trains the routing, sigma and gate;
  the main loss alone trains the values mu; its backward costs one small matmul per layer), in one of the
  `LossConfig.gate_form`s, each averaged over tokens the main loss reached (S not all 0) and over layers (their
  applications: every loop's routing is trained):
    "softmax" (the default):
      p = softmax(-S / mean(S))            dividing by the token's mean S makes p independent of the loss scale
      L = CE(r, argmin S) + KL(p || softmax(r))
      The CE pulls up the least surprising unit (exploit), the KL matches the whole ranking (explore); both reach
      every unit, closed ones too. Both see r only through softmax(r), which is blind to a shift of all of a
      token's logits: the gradients on a token's logits sum to 0, so this form cannot move the firing level.
    "median": a per-unit target, firing or not:
      t_i = [S_i <= median_j S_j]          the less surprising half of the token's units (lower median: exactly
                                           half of them when the S_i are distinct)
      L = mean_i BCE(sigmoid(r_i), t_i)    r_i > 0 is "unit i fires" (route = relu(r))
      Each unit is pushed open where it is among the less surprising half and closed where it is not, so the
      firing level can fall (towards 1/2 where a unit's surprise rank varies with the token) or rise.
- KL loss: KL(N(mu, σ²) || N(0, s²)) per SBL weight, σ = softplus(sigma), averaged over all SBL weights.
  Prior scale s = SIGMA_INIT · u (σ's initial value, 1), with u = clamp(H / log V, 0.1, 1) and H the mean
  predictive entropy on scored positions (detached): an uncertain model keeps a prior as wide as the init, a
  confident one pulls σ, the scale of the routing keys, and (weakly, through mu² / 2s²) mu towards 0.
- Nothing here masks or zeroes a parameter's gradient.
"""

import contextlib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor

from onn_arc.config import GateForm, LossConfig
from onn_arc.model import SBL, SIGMA_INIT, TinyONN
from onn_arc.precision import Precision, autocast
from onn_arc.tokens import PAD, Batch

MIN_UNCERTAINTY = 0.1  # floor of u in the KL prior scale


def loss_mask(targets: Tensor) -> Tensor:
    """(B, T) bool: the logits the main loss scores, i.e. where the next token is a target."""
    return F.pad(targets[:, 1:], (0, 1), value=False)


def main_loss(logits: Tensor, tokens: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy on target tokens, logits at t predicting token t+1; (loss, token accuracy)."""
    mask = loss_mask(targets)
    if not mask.any():
        raise ValueError("main_loss: the batch has no target tokens")
    pred = logits[mask]  # (N, V)
    gold = tokens.roll(-1, dims=1)[mask]  # (N,) the token after each scored position
    accuracy = (pred.detach().argmax(-1) == gold).float().mean()
    return F.cross_entropy(pred, gold), accuracy


def uncertainty(logits: Tensor, mask: Tensor) -> float:
    """Mean predictive entropy on the scored positions over its maximum log V, clamped to [MIN_UNCERTAINTY, 1]."""
    log_p = F.log_softmax(logits.detach()[mask], dim=-1)  # (N, V)
    entropy = -(log_p.exp() * log_p).sum(-1).mean().item()
    return min(max(entropy / math.log(logits.shape[-1]), MIN_UNCERTAINTY), 1.0)


class SurpriseRecorder:
    """Around a forward pass (a context manager): each application of an SBL (one per loop of the model's weight-tied
    stack) keeps its detached input on the tokens `index` (flat positions in B*T) and hooks its output y; while
    `collecting`, a backward stores |dL/dy| there."""

    def __init__(self, layers: list[SBL], index: Tensor):
        self.layers, self.index = layers, index
        self.collecting = False
        self._inputs: dict[SBL, list[Tensor]] = {layer: [] for layer in layers}  # by layer, one per application
        self._surprise: dict[tuple[SBL, int], Tensor] = {}  # by (layer, application)
        self._handles: list = []

    def __enter__(self) -> "SurpriseRecorder":
        self._handles = [layer.register_forward_hook(self._keep) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _keep(self, layer: SBL, inputs: tuple[Tensor, ...], y: Tensor) -> None:
        if not y.requires_grad:
            return
        use = (layer, len(self._inputs[layer]))
        self._inputs[layer].append(inputs[0].detach().flatten(0, -2)[self.index].float())  # (K, d_in)

        def store(grad: Tensor) -> None:
            if self.collecting:
                self._surprise[use] = grad.flatten(0, -2)[self.index].abs().float()  # (K, d_out)

        y.register_hook(store)

    def records(self) -> list[tuple[SBL, Tensor, Tensor]]:
        """(layer, input (K, d_in), surprise (K, d_out)) for every application whose surprise was collected."""
        return [
            (layer, x, self._surprise[layer, i])
            for layer in self.layers
            for i, x in enumerate(self._inputs[layer])
            if (layer, i) in self._surprise
        ]


def sample_tokens(valid: Tensor, k: int) -> Tensor:
    """Up to k random flat positions (global RNG) among the True ones of `valid` (B, T), in order."""
    positions = valid.flatten().nonzero().squeeze(1)  # (n,)
    if len(positions) > k:
        positions = positions[torch.randperm(len(positions), device=valid.device)[:k].sort().values]
    return positions


def softmax_gate(logits: Tensor, surprise: Tensor) -> Tensor:
    """CE(r, argmin S) + KL(softmax(-S / mean S) || softmax(r)), averaged over tokens; (K, d_out) each."""
    log_q = F.log_softmax(logits, dim=-1)  # (K, d_out)
    log_p = F.log_softmax(-surprise / surprise.mean(-1, keepdim=True), dim=-1)  # (K, d_out)
    ce = F.nll_loss(log_q, surprise.argmin(-1))
    return ce + F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def median_gate(logits: Tensor, surprise: Tensor) -> Tensor:
    """BCE of sigmoid(r) against [S <= the token's median S], averaged over units and tokens; (K, d_out) each."""
    target = (surprise <= surprise.median(-1, keepdim=True).values).float()  # (K, d_out)
    return F.binary_cross_entropy_with_logits(logits, target)


GATE_FORMS: dict[GateForm, Callable[[Tensor, Tensor], Tensor]] = {"softmax": softmax_gate, "median": median_gate}


def gate_loss(records: list[tuple[SBL, Tensor, Tensor]], form: GateForm = "softmax") -> Tensor:
    """SML in `form` (see the module docstring) per SBL application on the tokens the main loss reached, averaged
    over them (over layers, and over loops with weight-tied depth)."""
    if not records:
        raise ValueError("gate_loss: no surprise was recorded")
    terms = []
    for layer, x, surprise in records:
        reached = surprise.sum(-1) > 0  # tokens the main loss depends on
        x, surprise = x[reached], surprise[reached]  # (K', d_in), (K', d_out)
        if len(x):
            terms.append(GATE_FORMS[form](layer.route_logits(x, train_mu=False), surprise))
    return torch.stack(terms).mean() if terms else records[0][1].new_zeros(())


def kl_loss(layers: list[SBL], u: float) -> Tensor:
    """Mean over all SBL weights of KL(N(mu, softplus(sigma)²) || N(0, (SIGMA_INIT · u)²))."""
    if not layers:
        raise ValueError("kl_loss: no SBL layers")
    s = SIGMA_INIT * u
    total, count = 0.0, 0
    for layer in layers:
        sd = F.softplus(layer.sigma)
        # per weight log(s / σ) + (σ² + μ²) / 2s² - 1/2, summed with one pass per term
        total = total - sd.log().sum() + (sd.norm().square() + layer.mu.norm().square()) / (2 * s * s)
        count += sd.numel()
    return total / count + math.log(s) - 0.5


def activation_rate(layers: list[SBL], valid: Tensor) -> float:
    """Mean fraction of firing units over the layers' last forward (all its loops), on the `valid` (B, T) tokens (1.0
    when dense)."""
    if not layers:
        return 1.0
    return torch.stack([layer.last_rate[valid].mean() for layer in layers]).mean().item()


def forward_backward(
    model: TinyONN,
    batch: Batch,
    cfg: LossConfig,
    capture: AbstractContextManager = contextlib.nullcontext(),
    curvature: Callable[[Tensor, Tensor], None] | None = None,
    precision: Precision = "fp32",
) -> dict[str, float]:
    """One training step's gradients, accumulated into .grad; returns every term as a detached float.

    Forward inside `capture`, in `precision` (the logits and everything after them are fp32); main loss; main
    backward (hooks collect the surprise); then, if given, `curvature(logits, loss_mask(targets))` on the retained
    graph; then the gate and KL losses' backward.
    """
    layers = [layer for _, layer in model.routed_layers()]
    valid = batch.tokens != PAD  # (B, T)
    recording = cfg.gate_weight > 0 and bool(layers)
    index = sample_tokens(valid, cfg.gate_tokens) if recording else valid.new_zeros(0, dtype=torch.long)
    recorder = SurpriseRecorder(layers if recording else [], index)
    with capture, recorder, autocast(precision, batch.tokens.device):
        logits = model(batch.tokens, batch.rows, batch.cols, batch.pos, task=batch.task).float()  # (B, T, V)
    main, accuracy = main_loss(logits, batch.tokens, batch.targets)
    recorder.collecting = True
    main.backward(retain_graph=curvature is not None)
    recorder.collecting = False
    mask = loss_mask(batch.targets)
    if curvature is not None:
        curvature(logits, mask)

    gate = gate_loss(recorder.records(), cfg.gate_form) if recording else None
    kl = None
    if layers:
        with torch.set_grad_enabled(cfg.kl_weight > 0):
            kl = kl_loss(layers, uncertainty(logits, mask))
    weighted = ((cfg.gate_weight, gate), (cfg.kl_weight, kl))
    aux = [w * t for w, t in weighted if t is not None and w > 0 and t.requires_grad]
    if aux:
        torch.stack(aux).sum().backward()
    gate_value = 0.0 if gate is None else gate.item()
    kl_value = 0.0 if kl is None else kl.item()
    return {
        "main": main.item(),
        "gate": gate_value,
        "kl": kl_value,
        "total": main.item() + cfg.gate_weight * gate_value + cfg.kl_weight * kl_value,
        "acc": accuracy.item(),
        "activation_rate": activation_rate(layers, valid),
        "tokens": float(mask.sum()),
    }
