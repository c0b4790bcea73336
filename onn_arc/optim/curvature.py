"""Pure linear algebra behind the Kronecker-factored Gauss-Newton preconditioner.

No state and no schedules here: each function takes tensors and returns
tensors, so each can be tested against a dense reference on its own.

Conventions. A weight matrix W has shape (d_out, d_in) and is vectorised row
by row, so index (o, i) of W is entry o * d_in + i of vec(W). With input
factor A (d_in, d_in) and output factor G (d_out, d_out), the curvature block
is the Kronecker product G ⊗ A in that ordering, and

    (G ⊗ A) vec(M) = vec(G M A)        (A and G symmetric).
"""

import torch
from torch import Tensor


def ema_(running: Tensor, sample: Tensor, decay: float) -> Tensor:
    """In place: running <- decay * running + (1 - decay) * sample; returns running."""
    return running.lerp_(sample, 1.0 - decay)


def psd_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a symmetric positive semi-definite matrix.

    Returns (eigenvalues, eigenvectors) with matrix = Q diag(λ) Qᵀ, λ ascending.
    Rounding can make the smallest eigenvalues of a PSD matrix slightly
    negative; they are clamped to zero so that the damping alone decides how
    far those directions are trusted. Only the lower triangle is read.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return eigenvalues.clamp_min(0.0), eigenvectors


def relative_damping(eig_out: Tensor, eig_in: Tensor, damping: float) -> Tensor:
    """Damping δ = damping · mean(λ_G ⊗ λ_A) = damping · mean(λ_G) · mean(λ_A).

    Relative to the mean eigenvalue of the Kronecker product, so the damped
    direction does not depend on the overall scale of the factors: scaling G
    by c scales the direction by 1/c, which grafting then removes. A 0-dim
    tensor on the factors' device (no host synchronisation).
    """
    return damping * eig_out.mean() * eig_in.mean()


def precondition_kronecker(
    matrix: Tensor,
    eig_out: Tensor,
    basis_out: Tensor,
    eig_in: Tensor,
    basis_in: Tensor,
    damping: Tensor | float,
) -> Tensor:
    """Apply (G ⊗ A + δ I)⁻¹ to `matrix` (d_out, d_in) through the factors' eigenbases.

    With G = Q_G diag(λ_G) Q_Gᵀ and A = Q_A diag(λ_A) Q_Aᵀ:

        P(M) = Q_G [(Q_Gᵀ M Q_A) ⊘ (λ_G λ_Aᵀ + δ)] Q_Aᵀ

    where ⊘ divides elementwise. Four matrix products; no inverse is formed.
    """
    rotated = basis_out.T @ matrix @ basis_in  # (d_out, d_in) in the eigenbases
    scaled = rotated / (torch.outer(eig_out, eig_in) + damping)  # (d_out, d_in)
    return basis_out @ scaled @ basis_in.T  # (d_out, d_in)


def graft_norm(direction: Tensor, reference: Tensor) -> Tensor:
    """`direction` rescaled to the Frobenius norm of `reference` (a zero direction stays zero)."""
    direction_norm = torch.linalg.vector_norm(direction)
    scale = torch.linalg.vector_norm(reference) / direction_norm  # inf or nan when the direction is zero
    return direction * torch.where(direction_norm > 0, scale, torch.zeros_like(scale))
