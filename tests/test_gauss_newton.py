"""GaussNewton: AdamW equivalence, exact Newton steps, exact GGN factors, schedules, resumption."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from onn_arc.optim import GaussNewton, TappedLayer, in_curvature_pass
from onn_arc.optim.curvature import graft_norm, precondition_kronecker, relative_damping

torch.set_num_threads(1)

D_IN, HIDDEN, VOCAB = 3, 4, 5


class TapLinear(nn.Module):
    """The smallest tapped layer: z = x Wᵀ, tapped, then an optional bias."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(d_out)) if bias else None
        self.tap = None

    @property
    def weight_matrix(self) -> nn.Parameter:
        return self.weight

    def forward(self, x: Tensor) -> Tensor:
        z = x @ self.weight.T
        if self.tap is not None:
            self.tap(x, z)
        return z if self.bias is None else z + self.bias


class TinyNet(nn.Module):
    """Two tapped layers, tanh, a causal running mean across positions (a stand-in for attention), a gain."""

    def __init__(self) -> None:
        super().__init__()
        self.first = TapLinear(D_IN, HIDDEN, bias=True)
        self.gain = nn.Parameter(torch.ones(HIDDEN))
        self.second = TapLinear(HIDDEN, VOCAB)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D_IN) -> (B, T, VOCAB)
        h = torch.tanh(self.first(x))  # (B, T, HIDDEN)
        positions = torch.arange(1, x.shape[1] + 1, dtype=h.dtype, device=x.device).unsqueeze(-1)  # (T, 1)
        h = h.cumsum(dim=1) / positions * self.gain  # (B, T, HIDDEN)
        return self.second(h)

    def tapped(self) -> list[TappedLayer]:
        return [self.first, self.second]


def make_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def batch(step: int, batch_size: int = 3, length: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(batch_size, length, D_IN, generator=gen)
    labels = torch.randint(0, VOCAB, (batch_size, length), generator=gen)
    mask = torch.rand(batch_size, length, generator=gen) < 0.7
    return x, labels, mask


def masked_ce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    losses = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), reduction="none")  # (B*T,)
    return (losses * mask.reshape(-1)).sum() / mask.sum()


def train(model: TinyNet, opt: torch.optim.Optimizer, steps: range, seeded_sampling: bool = True) -> None:
    """The trainer's loop; `seeded_sampling` draws labels from a per-step generator instead of the global RNG."""
    for step in steps:
        x, labels, mask = batch(step)
        if isinstance(opt, GaussNewton):
            with opt.capture():
                logits = model(x)
            generator = torch.Generator().manual_seed(step) if seeded_sampling else None
            opt.accumulate_curvature(logits, mask, generator=generator)
        else:
            logits = model(x)
        masked_ce(logits, labels, mask).backward()
        opt.step()
        opt.zero_grad()


def groups(model: TinyNet) -> list[dict]:
    decay = [model.first.weight, model.second.weight]
    return [{"params": decay}, {"params": [model.first.bias, model.gain], "weight_decay": 0.0}]


def assert_same_as_adamw(model: TinyNet, opt: GaussNewton, reference: TinyNet, adamw: torch.optim.AdamW) -> None:
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], adamw.state[q][key]), key


def test_without_preconditioning_matches_adamw_exactly() -> None:
    model, reference = make_model(), make_model()
    hyper = dict(lr=3e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.05)
    opt = GaussNewton(groups(model), layers=model.tapped(), preconditioning=False, **hyper)
    adamw = torch.optim.AdamW(groups(reference), foreach=False, **hyper)
    train(model, opt, range(6))
    train(reference, adamw, range(6))
    assert_same_as_adamw(model, opt, reference, adamw)
    assert all(set(state) == {"step", "exp_avg", "exp_avg_sq"} for state in opt.state.values())


def test_before_start_step_it_is_adamw_and_then_it_is_not() -> None:
    model, reference = make_model(), make_model()
    opt = GaussNewton(groups(model), layers=model.tapped(), lr=3e-2, start_step=4, curvature_every=1)
    adamw = torch.optim.AdamW(groups(reference), foreach=False, lr=3e-2, betas=(0.9, 0.95), weight_decay=0.1)
    train(model, opt, range(3))
    train(reference, adamw, range(3))
    assert_same_as_adamw(model, opt, reference, adamw)
    train(model, opt, range(3, 4))
    train(reference, adamw, range(3, 4))
    assert not torch.equal(model.first.weight, reference.first.weight)
    assert torch.equal(model.gain, reference.gain)  # not tapped: AdamW all along


def test_step_is_the_exact_newton_step_on_least_squares() -> None:
    """One output unit and squared loss: the GGN is the Hessian, (XᵀX/N) ⊗ [1], exactly Kronecker."""
    torch.manual_seed(0)
    layer = TapLinear(4, 1)
    x = torch.randn(32, 4)
    targets = torch.randn(32, 1)

    def loss_of(weight: Tensor) -> Tensor:
        return 0.5 * ((x @ weight.T - targets) ** 2).mean()

    start = layer.weight.detach().clone()
    hessian = jacrev(torch.func.grad(loss_of))(start).reshape(4, 4)
    gradient = torch.func.grad(loss_of)(start).reshape(4)
    newton = start - torch.linalg.solve(hessian, gradient).reshape(1, 4)

    newton_settings = dict(lr=1.0, betas=(0.0, 0.999), weight_decay=0.0, damping=0.0, graft=False)
    schedule = dict(start_step=1, curvature_every=1, precondition_every=1)
    opt = GaussNewton([layer.weight], layers=[layer], **newton_settings, **schedule)
    with opt.capture():
        z = layer(x)  # (N, 1)
    opt.accumulate_output_curvature(z.sum(), num_terms=x.shape[0])  # squared loss: b = ∂z/∂z = 1
    (0.5 * ((z - targets) ** 2).mean()).backward()
    opt.step()

    torch.testing.assert_close(layer.weight.detach(), newton, rtol=1e-4, atol=1e-5)
    least_squares = torch.linalg.lstsq(x, targets).solution.T  # the quadratic's minimiser, one step away
    torch.testing.assert_close(layer.weight.detach(), least_squares, rtol=1e-4, atol=1e-5)


def exact_ggn_block(model: TinyNet, layer: TapLinear, x: Tensor) -> Tensor:
    """Jᵀ H J for one layer's weight at one token x (D_IN,), H the softmax cross-entropy Hessian."""
    name = next(n for n, p in model.named_parameters() if p is layer.weight)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def logits_of(weight: Tensor) -> Tensor:
        return functional_call(model, {**params, name: weight}, (x.reshape(1, 1, -1),)).reshape(VOCAB)

    jacobian = jacrev(logits_of)(layer.weight.detach()).reshape(VOCAB, -1)  # (V, d_out*d_in), row-major vec
    probs = torch.softmax(logits_of(layer.weight.detach()), dim=-1)
    hessian = torch.diag(probs) - torch.outer(probs, probs)  # (V, V)
    return jacobian.T @ hessian @ jacobian


def collect_once(model: TinyNet, opt: GaussNewton, x: Tensor, accumulate) -> None:
    """One step with lr=0 whose only effect is to store the curvature statistics."""
    with opt.capture():
        logits = model(x)
    accumulate(logits)
    logits.sum().backward()
    opt.step()
    opt.zero_grad()


def test_kronecker_factors_equal_the_exact_ggn_for_one_token() -> None:
    """Label c on the c-th copy of one token, weighted √(V p_c): the exact expectation over labels."""
    model = make_model(1)
    token = torch.randn(D_IN)
    x = token.expand(VOCAB, 1, D_IN)  # (V, 1, D_IN): one copy per label
    opt = GaussNewton(model.parameters(), layers=model.tapped(), lr=0.0, start_step=1, curvature_every=1)

    def exact_expectation(logits: Tensor) -> None:
        flat = logits.reshape(VOCAB, VOCAB)  # (copy, V)
        labels = torch.arange(VOCAB)
        weights = (VOCAB * torch.softmax(flat.detach(), dim=-1)[labels, labels]).sqrt()  # √(V p_c) on copy c
        probe = (weights * F.cross_entropy(flat, labels, reduction="none")).sum()
        opt.accumulate_output_curvature(probe, num_terms=VOCAB)

    collect_once(model, opt, x, exact_expectation)
    for layer in model.tapped():
        state = opt.state[layer.weight]
        kfac = torch.kron(state["G"], state["A"])
        torch.testing.assert_close(kfac, exact_ggn_block(model, layer, token), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(opt.state[model.first.weight]["A"], torch.outer(token, token))


def test_sampled_labels_estimate_the_exact_output_factor() -> None:
    model = make_model(2)
    token = torch.randn(D_IN)
    x = token.expand(8192, 1, D_IN)  # (B, 1, D_IN)
    mask = torch.rand(8192, 1, generator=torch.Generator().manual_seed(0)) < 0.5
    opt = GaussNewton(model.parameters(), layers=model.tapped(), lr=0.0, start_step=1, curvature_every=1)
    generator = torch.Generator().manual_seed(0)
    collect_once(model, opt, x, lambda logits: opt.accumulate_curvature(logits, mask, generator))
    with torch.no_grad():
        hidden = torch.tanh(model.first(token)) * model.gain  # the second layer's input
    for layer, layer_input in ((model.first, token), (model.second, hidden)):
        state = opt.state[layer.weight]
        torch.testing.assert_close(state["A"], torch.outer(layer_input, layer_input), rtol=1e-3, atol=1e-5)
        exact = exact_ggn_block(model, layer, token)
        kfac = torch.kron(state["G"], state["A"])
        assert torch.linalg.matrix_norm(kfac - exact) < 0.05 * torch.linalg.matrix_norm(exact)


def test_curvature_pass_leaves_gradients_alone_and_flags_itself() -> None:
    x, labels, mask = batch(0)
    plain = make_model()
    masked_ce(plain(x), labels, mask).backward()

    model = make_model()
    opt = GaussNewton(model.parameters(), layers=model.tapped(), start_step=1)
    seen = []
    with opt.capture():
        logits = model(x)
    logits.register_hook(lambda grad: seen.append(in_curvature_pass()))
    opt.accumulate_curvature(logits, mask)
    masked_ce(logits, labels, mask).backward()

    assert seen == [True, False]
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def fixed_label_probe(opt: GaussNewton, logits: Tensor, labels: Tensor, mask: Tensor) -> None:
    """G from the training labels instead of sampled ones: deterministic, for comparing pooled statistics."""
    losses = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), reduction="none")  # (B*T,)
    opt.accumulate_output_curvature((losses * mask.reshape(-1)).sum(), mask.sum())


def test_all_reduced_step_statistics_give_every_rank_the_global_batch() -> None:
    x, labels, mask = batch(0, batch_size=4)
    whole_model = make_model()
    whole = GaussNewton(whole_model.parameters(), layers=whole_model.tapped(), lr=0.0, start_step=1)
    ranks = [make_model() for _ in range(2)]
    opts = [GaussNewton(m.parameters(), layers=m.tapped(), lr=0.0, start_step=1) for m in ranks]
    for model, opt, rows in ((whole_model, whole, slice(0, 4)), *zip(ranks, opts, (slice(0, 2), slice(2, 4)))):
        with opt.capture():
            logits = model(x[rows])
        fixed_label_probe(opt, logits, labels[rows], mask[rows])
        masked_ce(logits, labels[rows], mask[rows]).backward()
    for tensors in zip(*(opt.step_statistics() for opt in opts), strict=True):  # an all-reduce mean by hand
        mean = torch.stack(tensors).mean(0)
        for t in tensors:
            t.copy_(mean)
    for opt in (whole, *opts):
        opt.step()
        assert opt.step_statistics() == []
    for model, opt in zip(ranks, opts):
        for layer, reference in zip(model.tapped(), whole_model.tapped()):
            for key in ("A", "G"):
                torch.testing.assert_close(opt.state[layer.weight][key], whole.state[reference.weight][key])


def test_a_skipped_step_discards_its_statistics() -> None:
    model = make_model()
    opt = GaussNewton(model.parameters(), layers=model.tapped(), start_step=1, curvature_every=1)
    x, labels, mask = batch(0)
    with opt.capture():
        logits = model(x)
    opt.accumulate_curvature(logits, mask)
    assert len(opt.step_statistics()) == 8  # 2 layers x [Σ x xᵀ, rows, Σ b bᵀ, terms]
    opt.discard_step_statistics()  # the trainer skips this step (say, a non-finite loss)
    assert opt.step_statistics() == []
    train(model, opt, range(1))  # the same step number collects again, from scratch
    assert torch.equal(opt.state[model.first.weight]["step"], torch.tensor(1.0))
    assert "A_eigenvectors" in opt.state[model.first.weight]


def test_micro_batches_pool_into_the_statistics_of_the_whole_batch() -> None:
    x, labels, mask = batch(0, batch_size=4)
    factors = []
    for parts in (1, 2):
        model = make_model()
        opt = GaussNewton(model.parameters(), layers=model.tapped(), lr=0.0, start_step=1)
        for chunk in range(parts):
            rows = slice(chunk * 4 // parts, (chunk + 1) * 4 // parts)
            with opt.capture():
                logits = model(x[rows])
            fixed_label_probe(opt, logits, labels[rows], mask[rows])
            masked_ce(logits, labels[rows], mask[rows]).backward()
        opt.step()
        factors.append([opt.state[layer.weight][key] for layer in model.tapped() for key in ("A", "G")])
    for whole, pooled in zip(*factors, strict=True):
        torch.testing.assert_close(pooled, whole)


def test_running_averages_blend_collections_with_stat_decay() -> None:
    def factors_after(steps: range) -> list[Tensor]:
        model = make_model()
        opt = GaussNewton(
            model.parameters(), layers=model.tapped(), lr=0.0, stat_decay=0.75, start_step=1, curvature_every=1
        )
        train(model, opt, steps)
        return [opt.state[layer.weight][key] for layer in model.tapped() for key in ("A", "G")]

    both, first, second = factors_after(range(2)), factors_after(range(1)), factors_after(range(1, 2))
    for blended, a, b in zip(both, first, second, strict=True):
        torch.testing.assert_close(blended, 0.75 * a + 0.25 * b)


def test_preconditioned_step_follows_the_documented_rule() -> None:
    """W <- W (1 - lr wd) - lr D ||u|| / ||D||, D = (G ⊗ A + δI)⁻¹ m̂: the momentum, not the gradient."""
    lr, wd, betas = 1e-2, 0.1, (0.9, 0.95)
    model = make_model()
    opt = GaussNewton(
        model.parameters(), layers=model.tapped(), lr=lr, weight_decay=wd, betas=betas, start_step=1, curvature_every=1
    )
    train(model, opt, range(2))
    before = model.second.weight.detach().clone()
    train(model, opt, range(2, 3))
    state = opt.state[model.second.weight]
    momentum = state["exp_avg"] / (1 - betas[0] ** 3)
    adam = momentum / ((state["exp_avg_sq"] / (1 - betas[1] ** 3)).sqrt() + 1e-8)
    eig_in, eig_out = state["A_eigenvalues"], state["G_eigenvalues"]
    damping = relative_damping(eig_out, eig_in, 0.1)
    direction = precondition_kronecker(
        momentum, eig_out, state["G_eigenvectors"], eig_in, state["A_eigenvectors"], damping
    )
    expected = before * (1 - lr * wd) - lr * graft_norm(direction, adam)
    torch.testing.assert_close(model.second.weight.detach(), expected, rtol=1e-5, atol=1e-7)


def test_schedule_taps_only_on_collection_steps() -> None:
    model = make_model()
    opt = GaussNewton(model.parameters(), layers=model.tapped(), start_step=2, curvature_every=3, precondition_every=4)
    collected, refreshed = [], []
    for step in range(1, 10):
        x, labels, mask = batch(step)
        with opt.capture():
            collected.append(model.first.tap is not None)
            logits = model(x)
        assert model.first.tap is None
        before = opt.state[model.first.weight].get("A_eigenvectors")
        opt.accumulate_curvature(logits, mask)
        masked_ce(logits, labels, mask).backward()
        opt.step()
        opt.zero_grad()
        refreshed.append(opt.state[model.first.weight].get("A_eigenvectors") is not before)
    assert [s for s, c in zip(range(1, 10), collected) if c] == [2, 5, 8]
    assert [s for s, r in zip(range(1, 10), refreshed) if r] == [2, 6]


def test_step_refuses_a_collection_step_without_statistics() -> None:
    x, labels, mask = batch(0)
    for captured in (True, False):
        model = make_model()
        opt = GaussNewton(model.parameters(), layers=model.tapped(), start_step=1)
        if captured:
            with opt.capture():
                logits = model(x)  # ... but no accumulate_curvature()
        else:
            logits = model(x)
        masked_ce(logits, labels, mask).backward()
        with pytest.raises(RuntimeError, match="step 1 collects curvature .* call accumulate_curvature"):
            opt.step()
        assert len(opt.state) == 0  # refused before touching anything


def test_state_dict_round_trip_resumes_bit_identically() -> None:
    settings = dict(lr=3e-2, start_step=2, curvature_every=2, precondition_every=3)
    uninterrupted = make_model()
    train(uninterrupted, GaussNewton(uninterrupted.parameters(), layers=uninterrupted.tapped(), **settings), range(10))

    model = make_model()
    opt = GaussNewton(model.parameters(), layers=model.tapped(), **settings)
    train(model, opt, range(5))
    assert {"A", "G", "A_eigenvectors", "G_eigenvalues"} <= set(opt.state[model.second.weight])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    resumed = make_model(seed=123)
    resumed.load_state_dict(saved["model"])
    resumed_opt = GaussNewton(resumed.parameters(), layers=resumed.tapped(), **settings)
    resumed_opt.load_state_dict(saved["optimizer"])
    train(resumed, resumed_opt, range(5, 10))
    for p, q in zip(resumed.parameters(), uninterrupted.parameters(), strict=True):
        assert torch.equal(p, q)


def test_same_seed_gives_bit_identical_training() -> None:
    runs = []
    for _ in range(2):
        model = make_model()
        opt = GaussNewton(model.parameters(), layers=model.tapped(), lr=3e-2, start_step=1, curvature_every=1)
        torch.manual_seed(7)  # the labels are sampled from the global RNG
        train(model, opt, range(5), seeded_sampling=False)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*runs, strict=True))


def test_grafted_step_has_the_adamw_step_norm() -> None:
    model, reference = make_model(), make_model()
    opt = GaussNewton(model.parameters(), layers=model.tapped(), lr=1e-2, weight_decay=0.0, start_step=1)
    adamw = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0, foreach=False)
    before = model.first.weight.detach().clone()
    train(model, opt, range(1))
    train(reference, adamw, range(1))
    step, adam_step = model.first.weight - before, reference.first.weight - before
    torch.testing.assert_close(torch.linalg.matrix_norm(step), torch.linalg.matrix_norm(adam_step))
    assert not torch.allclose(step, adam_step, rtol=0.1)


INVALID = [
    {"lr": -1.0},
    {"betas": (1.0, 0.9)},
    {"eps": -1e-8},
    {"weight_decay": -1.0},
    {"damping": -0.1},
    {"stat_decay": 1.0},
    {"curvature_every": 0},
    {"precondition_every": 2.5},
    {"start_step": 0},
]


@pytest.mark.parametrize("override", INVALID)
def test_invalid_hyperparameters_are_refused(override: dict) -> None:
    model = make_model()
    key = next(iter(override))
    with pytest.raises(ValueError, match=key):
        GaussNewton(model.parameters(), layers=model.tapped(), **override)
    with pytest.raises(ValueError, match=key):  # a group's override is checked too
        GaussNewton([{"params": list(model.parameters()), **override}], layers=model.tapped())


def test_layers_must_be_optimized_once() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="not among"):
        GaussNewton([model.second.weight], layers=model.tapped())
    with pytest.raises(ValueError, match="twice"):
        GaussNewton(model.parameters(), layers=[model.first, model.first])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    results = []
    for device in ("cpu", "cuda"):
        model = make_model().to(device)
        opt = GaussNewton(model.parameters(), layers=model.tapped(), lr=3e-2, start_step=1, curvature_every=1)
        for step in range(4):
            x, labels, mask = (t.to(device) for t in batch(step))
            with opt.capture():
                logits = model(x)
            losses = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), reduction="none")
            opt.accumulate_output_curvature((losses * mask.reshape(-1)).sum(), mask.sum())  # no RNG: comparable
            masked_ce(logits, labels, mask).backward()
            opt.step()
            opt.zero_grad()
        assert all(t.device.type == device for t in opt.state[model.first.weight].values() if t.dim() > 0)
        results.append([p.detach().cpu() for p in model.parameters()])
    for p, q in zip(*results, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
