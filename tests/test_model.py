"""SBL against a naive loop and a dense layer, cached vs full decoding, parameter groups, configs."""

import math

import pytest
import torch
import torch.nn.functional as F

from onn_arc.config import LossConfig, ModelConfig
from onn_arc.data import find_task
from onn_arc.errors import ConfigError
from onn_arc.model import SBL, KVCache, Linear, TinyONN
from onn_arc.tokens import collate, encode_pair

def tiny(**overrides) -> ModelConfig:
    """The tiny preset with three task codes."""
    return ModelConfig.preset("tiny", **({"task_ids": ("a", "b", "c")} | overrides))


def pair_batch():
    """Two pairs of a real task (28 and 116 tokens) with task codes 2 and 0."""
    task = find_task("d23f8c26")
    return collate([encode_pair(task.train[0], task=2), encode_pair(task.test[0], task=0)])


@pytest.fixture(scope="module")
def batch():
    """A real ARC-AGI-1 test pair (116 tokens) with task code 1, as a batch of one."""
    return collate([encode_pair(find_task("d23f8c26").test[0], task=1)])


def naive_sbl(layer: SBL, x: torch.Tensor) -> torch.Tensor:
    """DESIGN §4 written unit by unit, for one token at a time."""
    out = torch.zeros(*x.shape[:-1], layer.d_out)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in x.shape[:-1])):
        xt = x[tuple(idx)]
        for j in range(layer.d_out):
            key = layer.mu[j] * F.softplus(layer.sigma[j])
            route = torch.relu(xt @ key / math.sqrt(layer.d_in) - layer.gate[j])
            out[tuple(idx) + (j,)] = route * (xt @ layer.mu[j])
    return out


def randomise(layer: SBL) -> SBL:
    with torch.no_grad():
        layer.sigma.normal_(2.0, 1.0)  # keys not parallel to mu
        layer.gate.normal_(0.0, 0.3)
    return layer


def test_sbl_matches_naive_loop():
    layer = randomise(SBL(6, 5))
    x = torch.randn(2, 3, 6)
    y = layer(x)
    assert y.shape == (2, 3, 5)
    torch.testing.assert_close(y, naive_sbl(layer, x), rtol=1e-5, atol=1e-6)
    fired = (layer.route_logits(x) > 0).float().mean(-1)
    assert layer.last_rate.shape == (2, 3) and torch.equal(layer.last_rate, fired)
    assert 0 < layer.last_rate.mean() < 1
    assert not layer.last_rate.requires_grad


def test_sbl_with_every_route_open_is_a_dense_layer_scaled_by_its_route():
    layer = randomise(SBL(8, 4))
    dense = Linear(8, 4)
    with torch.no_grad():
        layer.gate.fill_(-100.0)  # every route open: relu passes scores - gate through
        dense.weight.copy_(layer.mu)
    x = torch.randn(5, 8)
    y = layer(x)
    assert torch.all(layer.last_rate == 1)
    torch.testing.assert_close(y / layer.route_logits(x), dense(x))


def test_sbl_starts_as_its_dense_layer_with_a_small_modulation():
    layer = SBL(128, 256)
    x = F.rms_norm(torch.randn(512, 128), (128,))
    route = layer(x) / (x @ layer.mu.T)
    assert torch.all(layer.last_rate == 1)
    assert 0.99 < route.mean() < 1.01 and 0.01 < route.std() < 0.1


@pytest.mark.parametrize("cls", [SBL, Linear])
def test_tap_sees_input_and_value_product(cls):
    layer = cls(6, 4)
    seen = []
    layer.tap = lambda x, z: seen.append((x, z))
    x = torch.randn(3, 6)
    y = layer(x)
    (tx, tz), = seen
    assert tx is x
    torch.testing.assert_close(tz, x @ layer.weight_matrix.T)
    assert tz.requires_grad and torch.autograd.grad(y.sum(), tz)[0].abs().sum() > 0  # z is used downstream


def test_no_grad_forward_keeps_its_fused_weight_only_while_the_parameters_are_unchanged():
    layer = randomise(SBL(6, 4))
    x = torch.randn(3, 6)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first)
    torch.optim.SGD(layer.parameters(), lr=0.5).zero_grad()
    layer(x).square().sum().backward()
    torch.optim.SGD(layer.parameters(), lr=0.5).step()  # in-place update
    with torch.no_grad():
        after_step = layer(x)
    torch.testing.assert_close(after_step, layer(x).detach(), rtol=0, atol=0)
    assert not torch.equal(after_step, first)
    fresh = SBL(6, 4)
    layer.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), fresh(x), rtol=0, atol=0)


def feed(model: TinyONN, b, cache: KVCache, start: int, end: int) -> torch.Tensor:
    return model(b.tokens[:, start:end], b.rows[:, start:end], b.cols[:, start:end], b.pos[:, start:end], cache, b.task)


def forward(model: TinyONN, b) -> torch.Tensor:
    return model(b.tokens, b.rows, b.cols, b.pos, task=b.task)


@pytest.mark.parametrize(
    "arch,n_heads,loops", [("onn", 1, 1), ("dense", 1, 1), ("onn", 2, 1), ("onn", 1, 2), ("dense", 2, 3)]
)
def test_cached_decoding_matches_full_forward(arch, n_heads, loops):
    """Two pairs (right-padded) under two task codes: one token at a time, in chunks, and after cutting the cache back."""
    model = TinyONN(tiny(arch=arch, n_heads=n_heads, loops=loops)).eval()
    b = pair_batch()
    n = b.tokens.shape[1]
    with torch.no_grad():
        full = forward(model, b)  # (2, T, V)

        cache = model.new_cache()
        one_by_one = torch.cat([feed(model, b, cache, t, t + 1) for t in range(n)], dim=1)
        assert cache.length == n
        torch.testing.assert_close(one_by_one, full, rtol=0, atol=1e-5)

        cache = model.new_cache()
        bounds = [0, 1, 20, 27, 60, 61, 90, n]  # a prompt chunk, then chunks of several sizes
        chunks = torch.cat([feed(model, b, cache, x, y) for x, y in zip(bounds, bounds[1:])], dim=1)
        torch.testing.assert_close(chunks, full, rtol=0, atol=1e-5)

        cache.gather(torch.arange(70).expand(2, -1))  # backtrack (keep each row's first 70), then feed the rest again
        assert cache.length == 70
        refed = torch.cat([feed(model, b, cache, 70, 71), feed(model, b, cache, 71, n)], dim=1)
        torch.testing.assert_close(refed, full[:, 70:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch,loops", [("onn", 1), ("dense", 1), ("onn", 2)])
def test_left_padding_under_the_attention_mask_changes_no_real_position(arch, loops):
    """Two pairs (28 and 116 tokens) left-padded into one batch: with `attention_mask` each real position's logits
    are those of its pair alone, in a full forward and over the cache (a chunk, then one token at a time); dropping
    a row from the cache (`keep`) leaves the other's."""
    model = TinyONN(tiny(arch=arch, loops=loops)).eval()
    b = pair_batch()  # right-padded
    lengths = [28, 116]
    pad = [max(lengths) - n for n in lengths]
    left = [torch.stack([x[i].roll(p) for i, p in enumerate(pad)]) for x in (b.tokens, b.rows, b.cols, b.pos)]
    real = torch.arange(max(lengths)) >= torch.tensor(pad)[:, None]  # (2, T)
    with torch.no_grad():
        alone = [model(*(x[i : i + 1, :n] for x in (b.tokens, b.rows, b.cols, b.pos)), task=b.task[i : i + 1])[0]
                 for i, n in enumerate(lengths)]  # fmt: skip
        full = model(*left, task=b.task, attention_mask=real)  # (2, T, V)
        cache = model.new_cache()
        chunks = [model(*(x[:, :100] for x in left), cache, b.task, real[:, :100])]
        for t in range(100, max(lengths) - 1):
            chunks.append(model(*(x[:, t : t + 1] for x in left), cache, b.task, real[:, : t + 1]))
        cached = torch.cat(chunks, dim=1)  # (2, T - 1, V)
        cache.keep(torch.tensor([1]))
        last = model(*(x[1:, -1:] for x in left), cache, b.task[1:], real[1:])  # (1, 1, V)
    for i, p in enumerate(pad):
        torch.testing.assert_close(full[i, p:], alone[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(cached[i, p:], alone[i][:-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(last[0], alone[1][-1:], rtol=0, atol=1e-5)


def test_task_code_conditions_every_token_and_positions_are_relative():
    model = TinyONN(tiny()).eval()
    b = pair_batch()
    with torch.no_grad():
        logits = forward(model, b)
        other = model(b.tokens, b.rows, b.cols, b.pos, task=torch.tensor([1, 0]))
        shifted = model(b.tokens, b.rows, b.cols, b.pos + 7, task=b.task)  # rotary sees only plane offsets
        with pytest.raises(ValueError, match="task"):
            model(b.tokens, b.rows, b.cols, b.pos)
    assert (other[0] - logits[0]).abs().amax(-1).min() > 0  # a different code changes every position
    torch.testing.assert_close(other[1], logits[1], rtol=0, atol=0)
    torch.testing.assert_close(shifted, logits, rtol=0, atol=1e-5)


def test_rotary_splits_head_pairs_over_plane_row_and_column():
    rotary = TinyONN(tiny()).rotary  # head dim 16: 8 pairs
    assert (len(rotary.plane_freqs), len(rotary.row_freqs), len(rotary.col_freqs)) == (2, 3, 3)
    wide = TinyONN(tiny(d_model=64, n_heads=2)).rotary  # head dim 32: 16 pairs
    assert (len(wide.plane_freqs), len(wide.row_freqs), len(wide.col_freqs)) == (4, 6, 6)


@pytest.mark.parametrize("init", ["mean", "zero"])
def test_add_task_code_grows_the_table_and_the_config(init):
    model = TinyONN(tiny())
    trained = model.task_codes.weight.detach().clone()
    assert model.add_task_code("new", init) == 3
    assert model.cfg.task_ids == ("a", "b", "c", "new") and model.task_codes.weight.shape == (4, 16)
    expected = trained.mean(0) if init == "mean" else torch.zeros(16)
    torch.testing.assert_close(model.task_codes.weight[3].detach(), expected)
    torch.testing.assert_close(model.task_codes.weight[:3].detach(), trained, rtol=0, atol=0)
    assert model.task_codes.weight.requires_grad
    other = next(g for g in model.param_groups(0.1) if g["kind"] == "other")
    assert any(p is model.task_codes.weight for p in other["params"])
    assert TinyONN(model.cfg).state_dict().keys() == model.state_dict().keys()  # the config rebuilds it
    with pytest.raises(ValueError, match="already has code 3"):
        model.add_task_code("new")
    codeless = TinyONN(ModelConfig.preset("tiny"))  # a model with no code yet: the first is zero, whatever `init`
    assert codeless.add_task_code("x", init) == 0 and torch.equal(codeless.task_codes.weight, torch.zeros(1, 16))


def test_cache_capacity_is_checked():
    model = TinyONN(tiny(max_len=16)).eval()
    b = collate([encode_pair(find_task("6150a2bd").train[0])])  # 28 tokens
    cache = model.new_cache()
    with torch.no_grad():
        feed(model, b, cache, 0, 10)
        with pytest.raises(ValueError, match="max_len=16"):
            feed(model, b, cache, 10, 17)
        with pytest.raises(ValueError, match="max_len=16"):
            forward(model, b)


@pytest.mark.parametrize("arch", ["onn", "dense"])
def test_param_groups_cover_every_parameter_once(arch):
    model = TinyONN(ModelConfig.preset("tiny", arch=arch))
    groups = model.param_groups(weight_decay=0.1)
    kinds = {g["kind"]: g for g in groups}
    assert set(kinds) == {"matrix", "other"}
    assert kinds["matrix"]["weight_decay"] == 0.1 and kinds["other"]["weight_decay"] == 0.0
    matrix_ids = {id(p) for p in kinds["matrix"]["params"]}
    assert matrix_ids == {id(m.weight_matrix) for m in model.tapped_layers()}
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_params()
    assert len(model.tapped_layers()) == 4 * model.cfg.n_layers
    if arch == "onn":
        assert len(model.routed_layers()) == 4
        for _, layer in model.routed_layers():
            assert id(layer.sigma) not in matrix_ids and id(layer.gate) not in matrix_ids
    else:
        assert model.routed_layers() == []
    torch.optim.AdamW(groups, lr=1e-3)  # the groups are valid optimizer input


@pytest.mark.parametrize("arch", ["onn", "dense"])
def test_param_groups_decay_the_block_weight_matrices_only(arch):
    model = TinyONN(tiny(arch=arch, n_layers=2))
    names = {id(p): name for name, p in model.named_parameters()}
    decayed = {names[id(p)] for g in model.param_groups(0.1) if g["weight_decay"] for p in g["params"]}
    weight = "mu" if arch == "onn" else "weight"
    maps = ("attn.qkv", "attn.out", "ffn.up", "ffn.down")
    assert decayed == {f"blocks.{i}.{m}.{weight}" for i in range(2) for m in maps}
    kept = set(names.values()) - decayed
    assert {"tok_emb.weight", "row_emb.weight", "col_emb.weight", "task_codes.weight", "head.weight", "norm.weight",
            "blocks.0.attn_norm.weight", "blocks.1.ffn_norm.weight"} <= kept  # fmt: skip
    assert ({"blocks.0.attn.qkv.sigma", "blocks.1.ffn.down.gate"} <= kept) == (arch == "onn")


def test_loops_run_the_stack_again_with_the_same_weights(batch):
    """loops=2 over one block is two blocks holding the same weights; each SBL's last_rate is the mean over the
    loops; no parameter is added."""
    looped = TinyONN(tiny(loops=2)).eval()
    unrolled = TinyONN(tiny(n_layers=2)).eval()
    assert looped.num_params() == TinyONN(tiny()).num_params()
    state = looped.state_dict()
    second = {k.replace("blocks.0.", "blocks.1."): v for k, v in state.items() if k.startswith("blocks.0.")}
    unrolled.load_state_dict(state | second)
    with torch.no_grad():
        a, b = forward(looped, batch), forward(unrolled, batch)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name, layer in looped.routed_layers():
        rates = [dict(unrolled.routed_layers())[name.replace("blocks.0.", f"blocks.{i}.")].last_rate for i in (0, 1)]
        torch.testing.assert_close(layer.last_rate, (rates[0] + rates[1]) / 2)


@pytest.mark.parametrize("loops", [1, 2])
def test_dropout_acts_in_training_only(batch, loops):
    torch.manual_seed(0)
    dropped = TinyONN(tiny(loops=loops, dropout=0.2))
    plain = TinyONN(tiny(loops=loops))
    plain.load_state_dict(dropped.state_dict())
    with torch.no_grad():
        evaluated = [forward(dropped.eval(), batch) for _ in range(2)]
        assert torch.equal(evaluated[0], evaluated[1]) and torch.equal(evaluated[0], forward(plain.eval(), batch))
        assert torch.equal(forward(plain.train(), batch), evaluated[0])  # dropout 0: training mode changes nothing
        trained = [forward(dropped.train(), batch) for _ in range(2)]
    assert not torch.equal(trained[0], trained[1]) and not torch.equal(trained[0], evaluated[0])


def test_dense_baseline_swaps_only_the_linear_maps():
    onn, dense = (TinyONN(ModelConfig.preset("base", arch=a)) for a in ("onn", "dense"))
    sbl_extra = sum(layer.sigma.numel() + layer.gate.numel() for _, layer in onn.routed_layers())
    assert onn.num_params() == dense.num_params() + sbl_extra


def test_config_validation_names_the_field_and_value():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        ModelConfig.preset("huge")
    with pytest.raises(ConfigError, match="d_model=20"):
        ModelConfig.preset("tiny", d_model=20)
    with pytest.raises(ConfigError, match="n_layers=0"):
        ModelConfig.preset("tiny", n_layers=0)
    with pytest.raises(ConfigError, match="loops=0"):
        ModelConfig.preset("tiny", loops=0)
    with pytest.raises(ConfigError, match="dropout=1.0"):
        ModelConfig.preset("tiny", dropout=1.0)
    with pytest.raises(ConfigError, match="arch='sparse'"):
        ModelConfig.preset("tiny", arch="sparse")
    with pytest.raises(ConfigError, match="colour"):
        ModelConfig.preset("tiny", colour=3)
    with pytest.raises(Exception, match="frozen"):
        ModelConfig.preset("tiny").d_model = 32  # type: ignore[misc]
    with pytest.raises(Exception, match="gate_weight"):
        LossConfig(gate_weight=-1)
    with pytest.raises(ConfigError, match="format"):
        ModelConfig.preset("tiny", format="pairs")  # no format to choose any more
    with pytest.raises(ConfigError, match="appears twice"):
        ModelConfig.preset("tiny", task_ids=("a", "a"))
    cfg = ModelConfig.preset("base")
    assert ModelConfig(**cfg.model_dump()) == cfg
