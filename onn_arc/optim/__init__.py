"""Optimizers: GaussNewton (Kronecker-factored GGN preconditioning + AdamW) and its linear algebra; MuonAdamW."""

from onn_arc.optim.gauss_newton import GaussNewton, TappedLayer, in_curvature_pass
from onn_arc.optim.muon import MuonAdamW

__all__ = ["GaussNewton", "MuonAdamW", "TappedLayer", "in_curvature_pass"]
