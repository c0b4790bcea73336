"""Optimizers: GaussNewton (Kronecker-factored GGN preconditioning + AdamW) and its linear algebra."""

from onn_arc.optim.gauss_newton import GaussNewton, TappedLayer, in_curvature_pass

__all__ = ["GaussNewton", "TappedLayer", "in_curvature_pass"]
