import copy

import pytest
import torch

from onn_arc.config import ModelConfig
from onn_arc.model import TinyONN
from onn_arc.optim import MuonAdamW


def _model_with_grads() -> TinyONN:
    """A tiny model, each parameter with a seeded random gradient (the same ones on every call)."""
    torch.manual_seed(0)
    model = TinyONN(ModelConfig.preset("tiny", max_len=64, task_ids=("a", "b")))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


def test_muon_adamw_is_muon_on_matrices_and_adamw_on_the_rest():
    combined_model, separate_model, lr, betas = _model_with_grads(), _model_with_grads(), 3e-3, (0.9, 0.95)
    before = copy.deepcopy(combined_model)
    combined = MuonAdamW(combined_model.param_groups(0.1), lr=lr, betas=betas)
    matrix, other = separate_model.param_groups(0.1)
    muon = torch.optim.Muon([matrix], lr=lr, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([other], lr=lr, betas=betas)
    for _ in range(3):
        for opt in (combined, muon, adamw):
            opt.step()
    for (name, a), b in zip(combined_model.named_parameters(), separate_model.parameters()):
        assert torch.equal(a, b), name
    moved = [not torch.equal(a, b) for a, b in zip(combined_model.parameters(), before.parameters())]
    assert all(moved)  # every parameter stepped, matrices and the rest


def test_a_group_lr_set_on_the_combined_optimizer_reaches_both_inner_ones():
    opt = MuonAdamW(_model_with_grads().param_groups(0.1), lr=1e-3, betas=(0.9, 0.95))
    for g in opt.param_groups:
        g["lr"] = 0.5
    assert [g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups] == [0.5, 0.5]


def test_muon_adamw_needs_both_kinds_of_group():
    matrix, _ = _model_with_grads().param_groups(0.1)
    with pytest.raises(ValueError, match="kind 'matrix'"):
        MuonAdamW([matrix], lr=1e-3, betas=(0.9, 0.95))
