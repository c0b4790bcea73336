"""MuonAdamW: torch's Muon on the weight matrices, AdamW on every other parameter, stepped as one optimizer.

Muon (torch.optim.Muon) orthogonalises each matrix's Nesterov momentum with a few Newton–Schulz iterations (in
bf16) and steps along it; it is only defined for 2-D weights, so embeddings, norms, SBL sigma/gate (the model's
"other" group) take AdamW's step. Both read the same `lr`: Muon's step is scaled with `adjust_lr_fn=
"match_rms_adamw"` (lr · 0.2 · sqrt(max(d_out, d_in)), Moonshot's rule, "Muon is Scalable for LLM Training"),
which gives the orthogonalised update the RMS of a typical AdamW update, so one lr grid serves both optimizers.
"""

import torch
from torch.optim.optimizer import Optimizer


class MuonAdamW(Optimizer):
    r"""Muon on the groups whose ``kind`` is ``"matrix"``, AdamW on the others.

    For a matrix W with gradient g (torch.optim.Muon's defaults: momentum μ = 0.95, Nesterov, 5 Newton–Schulz
    steps NS₅):

    .. math::
        B \leftarrow \mu B + (1-\mu) g, \qquad O = \mathrm{NS}_5(g + \mu (B - g)), \qquad
        W \leftarrow (1 - \gamma\lambda) W - 0.2\,\gamma \sqrt{\max(d_{out}, d_{in})}\, O

    Every other parameter: ``torch.optim.AdamW`` with ``betas`` and its group's weight decay. The two inner
    optimizers share this one's parameter groups (the same dicts: setting a group's ``lr`` reaches them) and its
    ``state`` (their parameters are disjoint), so ``state_dict``/``load_state_dict`` are Optimizer's own.
    """

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float]) -> None:
        matrices = [g for g in groups if g.get("kind") == "matrix"]
        others = [g for g in groups if g.get("kind") != "matrix"]
        if not matrices or not others:
            raise ValueError("MuonAdamW needs groups of kind 'matrix' (Muon) and of another kind (AdamW)")
        self.muon = torch.optim.Muon(matrices, lr=lr, adjust_lr_fn="match_rms_adamw")  # momentum 0.95, Nesterov
        self.adamw = torch.optim.AdamW(others, lr=lr, betas=betas)
        super().__init__(groups, defaults={})  # the same group dicts, already completed by their own optimizer
        self._share()

    def _share(self) -> None:
        """Point the inner optimizers at this one's groups and state (again after `load_state_dict` replaces them)."""
        for inner in (self.muon, self.adamw):
            inner.state = self.state
        self.muon.param_groups = [g for g in self.param_groups if g["kind"] == "matrix"]
        self.adamw.param_groups = [g for g in self.param_groups if g["kind"] != "matrix"]

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss
