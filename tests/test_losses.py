"""Main loss shift, surprise capture, gate and KL gradients, forward_backward, determinism, overfitting one task."""

import math

import pytest
import torch
import torch.nn.functional as F

from onn_arc.config import LossConfig, ModelConfig
from onn_arc.data import Pair, find_task
from onn_arc.losses import (
    GATE_FORMS,
    SurpriseRecorder,
    activation_rate,
    forward_backward,
    gate_loss,
    kl_loss,
    loss_mask,
    main_loss,
    sample_tokens,
    uncertainty,
)
from onn_arc.model import SBL, SIGMA_INIT, TinyONN
from onn_arc.tokens import BOS, EOS, N_COLOURS, OUT, PAD, ROW, collate, decode_grid, encode_pair, next_position

TASKS = ("6150a2bd", "d631b094")


@pytest.fixture(scope="module")
def batch():
    """Every pair of two real ARC-AGI-1 tasks (pairs of different lengths, right-padded), each with its task's code."""
    return collate([encode_pair(p, task=i) for i, t in enumerate(map(find_task, TASKS)) for p in (*t.train, *t.test)])


def tiny(arch: str = "onn", **overrides) -> TinyONN:
    return TinyONN(ModelConfig.preset("tiny", arch=arch, task_ids=TASKS, **overrides))


def forward(model: TinyONN, b) -> torch.Tensor:
    return model(b.tokens, b.rows, b.cols, b.pos, task=b.task)


def test_main_loss_is_shifted_next_token_cross_entropy():
    tokens = torch.tensor([[BOS, OUT, 3, 7, EOS]])
    targets = torch.tensor([[False, False, True, True, True]])
    logits = torch.full((1, 5, 16), -10.0)
    for t in range(4):  # position t is confident about token t + 1
        logits[0, t, tokens[0, t + 1]] = 10.0
    loss, acc = main_loss(logits, tokens, targets)
    assert loss < 1e-6 and acc == 1.0
    unshifted = F.cross_entropy(logits[targets], tokens[targets])  # the research code's copy task
    assert unshifted > 10
    assert torch.equal(loss_mask(targets), torch.tensor([[False, True, True, True, False]]))

    logits[0, 2] = torch.linspace(0, 1, 16)  # one uncertain prediction, of token 7
    loss, acc = main_loss(logits, tokens, targets)
    expected = F.cross_entropy(logits[0, 2:3], torch.tensor([7])) / 3
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert acc.item() == pytest.approx(2 / 3)  # argmax of the linspace row is 15, not 7


def recorded_step(model: TinyONN, batch, index: torch.Tensor):
    """Forward with a surprise recorder and hooks keeping each SBL's output; returns (recorder, outputs, loss)."""
    outputs = {}
    layers = [layer for _, layer in model.routed_layers()]
    handles = [layer.register_forward_hook(lambda m, i, y: outputs.__setitem__(m, y)) for layer in layers]
    with SurpriseRecorder(layers, index) as recorder:
        logits = forward(model, batch)
    for h in handles:
        h.remove()
    loss, _ = main_loss(logits, batch.tokens, batch.targets)
    return recorder, outputs, loss


def test_surprise_is_the_main_loss_gradient_at_each_sbl_output(batch):
    model = tiny()
    index = torch.arange(batch.tokens.numel())
    recorder, outputs, loss = recorded_step(model, batch, index)
    layers = list(outputs)
    grads = torch.autograd.grad(loss, [outputs[layer] for layer in layers], retain_graph=True)
    recorder.collecting = True
    loss.backward()
    records = {layer: (x, s) for layer, x, s in recorder.records()}
    assert set(records) == set(layers)
    for layer, grad in zip(layers, grads):
        x, surprise = records[layer]
        torch.testing.assert_close(surprise, grad.flatten(0, -2).abs())
        assert x.shape == (batch.tokens.numel(), layer.d_in) and not x.requires_grad
    assert all(s.sum() > 0 for _, _, s in recorder.records())


def test_with_loops_every_application_of_an_sbl_gets_its_own_surprise(batch):
    """Weight-tied depth applies each SBL once per loop: the recorder keeps each application's input and the main
    loss's gradient at that application's output, so the gate loss sees every loop's routing."""
    model = tiny(loops=2)
    layers = [layer for _, layer in model.routed_layers()]
    inputs, outputs = {layer: [] for layer in layers}, {layer: [] for layer in layers}

    def keep(layer, args, y):
        inputs[layer].append(args[0].detach().flatten(0, -2))
        outputs[layer].append(y)

    handles = [layer.register_forward_hook(keep) for layer in layers]
    with SurpriseRecorder(layers, torch.arange(batch.tokens.numel())) as recorder:
        logits = forward(model, batch)
    for h in handles:
        h.remove()
    loss, _ = main_loss(logits, batch.tokens, batch.targets)
    grads = torch.autograd.grad(loss, [y for layer in layers for y in outputs[layer]], retain_graph=True)
    recorder.collecting = True
    loss.backward()
    records = recorder.records()
    assert [layer for layer, _, _ in records] == [layer for layer in layers for _ in range(2)]
    for (layer, x, surprise), want_x, grad in zip(records, [x for layer in layers for x in inputs[layer]], grads):
        torch.testing.assert_close(x, want_x)
        torch.testing.assert_close(surprise, grad.flatten(0, -2).abs())
    assert not torch.equal(records[0][1], records[1][1])  # the two loops of a layer see different inputs
    assert gate_loss(records).requires_grad


def test_surprise_is_not_recorded_outside_collecting(batch):
    model = tiny()
    recorder, _, loss = recorded_step(model, batch, torch.arange(5))
    loss.backward()
    assert recorder.records() == []


def test_sample_tokens_picks_valid_positions_only():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    assert sample_tokens(valid, 10).tolist() == [0, 1, 3]
    picked = sample_tokens(valid, 2)
    assert len(picked) == 2 and set(picked.tolist()) <= {0, 1, 3} and picked.tolist() == sorted(picked.tolist())


def surprise_records(model: TinyONN, batch, k: int = 64) -> list:
    """The gate loss's input for `batch`: a forward and main backward recording the surprise on k valid tokens,
    the model's gradients cleared afterwards."""
    recorder, _, loss = recorded_step(model, batch, sample_tokens(batch.tokens != PAD, k))
    recorder.collecting = True
    loss.backward()
    model.zero_grad(set_to_none=True)
    return recorder.records()


@pytest.mark.parametrize("form", list(GATE_FORMS))
def test_gate_loss_alone_trains_sigma_and_gate_only(batch, form):
    model = tiny()
    gate = gate_loss(surprise_records(model, batch), form)
    assert gate > 0
    gate.backward()
    for _, layer in model.routed_layers():
        assert layer.sigma.grad is not None and layer.sigma.grad.abs().sum() > 0
        assert layer.gate.grad is not None and layer.gate.grad.abs().sum() > 0
        assert layer.mu.grad is None  # the values are the main loss's business


def test_gate_loss_can_reopen_a_closed_unit():
    layer = SBL(8, 4)
    with torch.no_grad():
        layer.gate[0] = 100.0  # unit 0 never fires
    x = torch.randn(16, 8)
    assert torch.all(layer(x)[:, 0] == 0)
    surprise = torch.ones(16, 4)
    surprise[:, 0] = 0.01  # ... but it is the least surprising unit
    gate_loss([(layer, x, surprise)]).backward()
    assert layer.gate.grad[0] > 0  # gradient descent lowers its threshold


@pytest.mark.parametrize("form", list(GATE_FORMS))
def test_gate_loss_ignores_tokens_the_main_loss_never_reached(form):
    layer = SBL(8, 4)
    x, surprise = torch.randn(6, 8), torch.rand(6, 4)
    surprise[3:] = 0  # e.g. padding after the last target
    loss = gate_loss([(layer, x, surprise)], form)
    torch.testing.assert_close(loss, gate_loss([(layer, x[:3], surprise[:3])], form))
    assert gate_loss([(layer, x[3:], surprise[3:])], form) == 0


def test_median_gate_targets_the_less_surprising_half_of_each_token():
    surprise = torch.tensor([[0.1, 0.4, 0.2, 0.3], [5.0, 1.0, 2.0, 3.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    logits = torch.randn(2, 4)
    expected = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(GATE_FORMS["median"](logits, surprise), expected)


def test_only_the_median_gate_form_can_shift_a_tokens_firing_level():
    """A shift of all of a layer's thresholds moves every route logit alike: the softmax form's gradient has no
    component along it (its per-token logit gradients sum to 0), the median form's does."""
    torch.manual_seed(0)
    layer = SBL(8, 6)
    x, surprise = torch.randn(16, 8), torch.rand(16, 6)
    shift = {}
    for form in GATE_FORMS:
        layer.zero_grad(set_to_none=True)
        gate_loss([(layer, x, surprise)], form).backward()
        shift[form] = layer.gate.grad.sum().item()
    assert abs(shift["softmax"]) < 1e-6
    assert shift["median"] < -0.1  # every logit starts ~1 (all units fire): descent raises the thresholds


def rate_after_gate_training(batch, form: str, steps: int = 40) -> float:
    """Activation rate of a tiny model after `steps` Adam steps on sigma and gate with the gate loss in `form`
    alone (the values mu stay put; the surprise is re-read each step)."""
    torch.manual_seed(0)
    model = tiny()
    routed = [p for _, layer in model.routed_layers() for p in (layer.sigma, layer.gate)]
    opt = torch.optim.Adam(routed, lr=0.05)
    for _ in range(steps):
        gate_loss(surprise_records(model, batch), form).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        forward(model, batch)
    return activation_rate([layer for _, layer in model.routed_layers()], batch.tokens != PAD)


def test_median_gate_loss_alone_lowers_the_activation_rate(batch):
    """The softmax form can only spread a token's logits (0.77 here); the median form closes about half the units."""
    median, softmax = rate_after_gate_training(batch, "median"), rate_after_gate_training(batch, "softmax")
    assert median < 0.6 and softmax - median > 0.2


def test_kl_loss_matches_torch_distributions_and_trains_sigma():
    layer = SBL(6, 3)
    with torch.no_grad():
        layer.sigma.normal_(2.0, 1.0)
    u = 0.4
    loss = kl_loss([layer], u)
    q = torch.distributions.Normal(layer.mu, F.softplus(layer.sigma))
    p = torch.distributions.Normal(torch.zeros(()), torch.tensor(SIGMA_INIT * u))
    torch.testing.assert_close(loss, torch.distributions.kl_divergence(q, p).mean())
    loss.backward()
    assert layer.sigma.grad.abs().sum() > 0


def test_uncertainty_follows_predictive_entropy():
    mask = torch.tensor([[True, True]])
    assert uncertainty(torch.zeros(1, 2, 16), mask) == pytest.approx(1.0)
    confident = torch.full((1, 2, 16), -30.0)
    confident[..., 3] = 30.0
    assert uncertainty(confident, mask) == pytest.approx(0.1)


@pytest.mark.parametrize("arch", ["onn", "dense"])
def test_forward_backward_reports_every_term_and_fills_gradients(batch, arch):
    model = tiny(arch)
    seen = []
    stats = forward_backward(model, batch, LossConfig(), curvature=lambda logits, mask: seen.append((logits, mask)))
    assert set(stats) == {"main", "gate", "kl", "total", "acc", "activation_rate", "tokens"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert stats["tokens"] == batch.targets.sum().item() == loss_mask(batch.targets).sum().item()
    (logits, mask), = seen
    assert torch.equal(mask, loss_mask(batch.targets))
    torch.autograd.grad(logits.sum(), logits)  # the curvature pass can still use the graph
    assert all(p.grad is not None for p in model.parameters() if p is not model.row_emb.weight)
    if arch == "dense":
        assert stats["gate"] == stats["kl"] == 0 and stats["activation_rate"] == 1.0
    else:
        assert stats["gate"] > 0 and stats["kl"] > 0 and 0 < stats["activation_rate"] <= 1
        cfg = LossConfig()
        expected = stats["main"] + cfg.gate_weight * stats["gate"] + cfg.kl_weight * stats["kl"]
        assert stats["total"] == pytest.approx(expected)


def test_a_later_backward_does_not_overwrite_the_surprise(batch):
    """forward_backward's curvature pass backpropagates through the same graph after the main backward."""
    model = tiny()
    recorder, outputs, loss = recorded_step(model, batch, torch.arange(batch.tokens.numel()))
    recorder.collecting = True
    loss.backward(retain_graph=True)
    recorder.collecting = False
    first = [s.clone() for _, _, s in recorder.records()]
    sum(y.square().sum() for y in outputs.values()).backward()  # another loss through every SBL output
    for before, (_, _, after) in zip(first, recorder.records()):
        assert torch.equal(before, after)


def train(arch: str, steps: int, batch, seed: int = 0) -> list[dict[str, float]]:
    torch.manual_seed(seed)
    model = tiny(arch)
    opt = torch.optim.AdamW(model.param_groups(0.01), lr=3e-3)
    history = []
    for _ in range(steps):
        history.append(forward_backward(model, batch, LossConfig()))
        opt.step()
        opt.zero_grad()
    return history


@pytest.mark.parametrize("arch", ["onn", "dense"])
def test_same_seed_gives_bit_identical_losses(batch, arch):
    first, second = train(arch, 3, batch), train(arch, 3, batch)
    assert first == second
    assert train(arch, 3, batch, seed=1) != first


def greedy(model: TinyONN, task, limit: int = 40) -> list[int]:
    """Greedy decoding of the test output under code 0 with the KV cache; returns the generated tokens, closer
    included."""
    prompt = collate([encode_pair(Pair(input=task.test[0].input), answer=False)])
    cache = model.new_cache()
    logits = model(prompt.tokens, prompt.rows, prompt.cols, prompt.pos, cache, prompt.task)
    generated: list[int] = []
    while len(generated) < limit:
        token = int(logits[0, -1].argmax())
        position = next_position(generated)
        generated.append(token)
        if token >= N_COLOURS and token != ROW:
            break
        step = [torch.tensor([[v]]) for v in (token, *position)]
        logits = model(*step, cache=cache, task=prompt.task)
    return generated


@pytest.mark.parametrize("arch", ["onn", "dense"])
def test_tiny_model_overfits_one_task_and_decodes_it_greedily(arch):
    task = find_task("6150a2bd")  # 3x3 grids: the output is the input turned by 180 degrees
    batch = collate([encode_pair(p) for p in (*task.train, *task.test)])  # code 0
    torch.manual_seed(0)
    model = tiny(arch)
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)
    for _ in range(300):
        stats = forward_backward(model, batch, LossConfig())
        opt.step()
        opt.zero_grad()
        if stats["main"] < 1e-2:
            break
    assert stats["main"] < 1e-2 and stats["acc"] == 1.0
    with torch.no_grad():
        generated = greedy(model.eval(), task)
    assert generated[-1] == EOS
    assert decode_grid(generated) == task.test[0].output
    assert len(set(generated[:-1]) - {ROW}) > 1  # not one colour
