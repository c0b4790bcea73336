"""The Kronecker preconditioner's linear algebra against dense references."""

import pytest
import torch

from onn_arc.optim.curvature import ema_, graft_norm, precondition_kronecker, psd_eigh, relative_damping

torch.set_num_threads(1)


def random_spd(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    factor = torch.randn(n, 2 * n, generator=generator, dtype=dtype)
    return factor @ factor.T / (2 * n)


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_precondition_matches_dense_damped_inverse(damping: float) -> None:
    gen = torch.Generator().manual_seed(0)
    d_out, d_in = 4, 3
    input_factor, output_factor = random_spd(d_in, gen), random_spd(d_out, gen)
    matrix = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    eig_in, basis_in = psd_eigh(input_factor)
    eig_out, basis_out = psd_eigh(output_factor)
    got = precondition_kronecker(matrix, eig_out, basis_out, eig_in, basis_in, damping)
    dense = torch.kron(output_factor, input_factor) + damping * torch.eye(d_out * d_in, dtype=torch.float64)
    expected = torch.linalg.solve(dense, matrix.reshape(-1)).reshape(d_out, d_in)  # row-major vec(W)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_precondition_in_float32_is_close_to_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    input_factor, output_factor = random_spd(16, gen), random_spd(8, gen)
    matrix = torch.randn(8, 16, generator=gen, dtype=torch.float64)

    def direction(dtype: torch.dtype) -> torch.Tensor:
        eig_in, basis_in = psd_eigh(input_factor.to(dtype))
        eig_out, basis_out = psd_eigh(output_factor.to(dtype))
        damping = relative_damping(eig_out, eig_in, 1e-2)
        return precondition_kronecker(matrix.to(dtype), eig_out, basis_out, eig_in, basis_in, damping)

    torch.testing.assert_close(direction(torch.float32).double(), direction(torch.float64), rtol=1e-4, atol=1e-5)


def test_psd_eigh_reconstructs_and_clamps_negative_eigenvalues() -> None:
    gen = torch.Generator().manual_seed(2)
    matrix = random_spd(5, gen)
    eigenvalues, eigenvectors = psd_eigh(matrix)
    torch.testing.assert_close(eigenvectors @ torch.diag(eigenvalues) @ eigenvectors.T, matrix)
    indefinite = torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64))
    assert psd_eigh(indefinite)[0].tolist() == [0.0, 2.0, 3.0]


def test_relative_damping_makes_the_direction_scale_free() -> None:
    gen = torch.Generator().manual_seed(3)
    input_factor, output_factor = random_spd(3, gen), random_spd(4, gen)
    matrix = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    eig_in, basis_in = psd_eigh(input_factor)

    def direction(scale: float) -> torch.Tensor:
        eig_out, basis_out = psd_eigh(scale * output_factor)
        damping = relative_damping(eig_out, eig_in, 0.1)
        return precondition_kronecker(matrix, eig_out, basis_out, eig_in, basis_in, damping)

    torch.testing.assert_close(direction(1000.0) * 1000.0, direction(1.0))
    eig_out = psd_eigh(output_factor)[0]
    torch.testing.assert_close(relative_damping(eig_out, eig_in, 0.1), 0.1 * eig_out.mean() * eig_in.mean())


def test_ema_blends_in_place() -> None:
    running = torch.tensor([1.0, 2.0])
    result = ema_(running, torch.tensor([3.0, 6.0]), 0.75)
    assert result is running
    torch.testing.assert_close(running, torch.tensor([1.5, 3.0]))


def test_graft_norm_takes_the_reference_norm_and_keeps_zero() -> None:
    direction = torch.tensor([[3.0, 4.0]])
    reference = torch.tensor([[0.0, 10.0], [0.0, 0.0]])
    torch.testing.assert_close(graft_norm(direction, reference), torch.tensor([[6.0, 8.0]]))
    zero = graft_norm(torch.zeros(2, 2), reference)
    assert torch.equal(zero, torch.zeros(2, 2))
