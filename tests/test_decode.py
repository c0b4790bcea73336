"""Decoding: cached greedy vs full forward passes, depth-first search vs exhaustive enumeration, grid prefixes."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from onn_arc import decode
from onn_arc.config import ModelConfig
from onn_arc.data import Pair, parse_task
from onn_arc.errors import GridError
from onn_arc.model import TinyONN
from onn_arc.tokens import EOS, N_COLOURS, ROW, Sequence, collate, decode_grid, encode_pair, next_position

TASK = parse_task(
    {
        "train": [{"input": [[1, 2]], "output": [[2, 1]]}, {"input": [[3, 0]], "output": [[0, 3]]}],
        "test": [{"input": [[4, 5]], "output": [[5, 4]]}],
    },
    "swap",
    "test",
)
GRID_CHOICES = [*range(N_COLOURS), ROW]


def peaky_model(seed: int, arch: str = "onn", loops: int = 1) -> TinyONN:
    """A random tiny model with a sharpened head, so probabilities spread over many orders of magnitude; TASK has
    code 1."""
    torch.manual_seed(seed)
    model = TinyONN(ModelConfig.preset("tiny", arch=arch, loops=loops, task_ids=("other", "swap"))).eval()
    with torch.no_grad():
        model.head.weight.mul_(4)
        for _, layer in model.routed_layers():
            layer.gate.normal_(0.0, 0.5)  # some units closed (at init every unit fires)
    return model


def encode(output=None) -> Sequence:
    """TASK's test pair: a prompt (output None) or with `output` as its answer."""
    return encode_pair(Pair(input=TASK.test[0].input, output=output), task=1, answer=output is not None)


def choice_logprobs(logits: torch.Tensor) -> dict[int, float]:
    """Reference: log p of each colour and ROW, and of the end (every other token together)."""
    lp = torch.log_softmax(logits.double(), -1)
    others = [t for t in range(len(lp)) if t not in GRID_CHOICES]
    return {t: lp[t].item() for t in GRID_CHOICES} | {EOS: torch.logsumexp(lp[others], 0).item()}


def full_forward_choices(model: TinyONN, prompt, generated: list[int]) -> tuple[dict[int, float], float]:
    """Choices after `generated` and the mean activation rate there, from one uncached forward pass."""
    coords = np.array([next_position(generated[:k]) for k in range(len(generated))]).reshape(-1, 3)  # (G, 3)
    tokens = np.concatenate([prompt.tokens, generated])
    rows, cols, pos = (np.concatenate([getattr(prompt, k), coords[:, i]]) for i, k in enumerate(("rows", "cols", "pos")))
    args = (torch.as_tensor(a.astype(np.int64))[None] for a in (tokens, rows, cols, pos))
    with torch.no_grad():
        logits = model(*args, task=torch.tensor([prompt.task]))
    rates = [layer.last_rate[0, -1].item() for _, layer in model.routed_layers()]
    return choice_logprobs(logits[0, -1]), float(np.mean(rates)) if rates else 1.0


@pytest.mark.parametrize("loops", [1, 2])
@pytest.mark.parametrize("arch", ["onn", "dense"])
@pytest.mark.parametrize("seed", [1, 3])
def test_greedy_over_the_cache_equals_argmax_over_full_forward_passes(seed, arch, loops):
    """With weight-tied depth (loops=2) the cache holds a slot per loop and block; the activation rate averages the
    loops, as `last_rate` does."""
    model = peaky_model(seed, arch, loops)
    prompt = encode()
    (found,) = decode.greedy(model, prompt)
    generated, total, probs, rates = [], 0.0, [], []
    while not generated or generated[-1] != EOS:
        choices, rate = full_forward_choices(model, prompt, generated)
        shape = (0, 0, 0)
        for t in generated:
            shape = decode.extend(shape, t)
        allowed = {t: lp for t, lp in choices.items() if decode.extend(shape, t) is not None}
        token = max(allowed, key=allowed.get)
        if token < N_COLOURS:
            probs.append(math.exp(allowed[token]))
            rates.append(rate)
        generated.append(token)
        total += allowed[token]
    assert found.tokens == tuple(generated)
    assert found.grid == decode_grid(generated)
    assert found.logprob == pytest.approx(total, abs=1e-4)
    shape = (len(found.grid), len(found.grid[0]))
    np.testing.assert_allclose(found.confidence, np.reshape(probs, shape), rtol=1e-4)
    np.testing.assert_allclose(found.activation, np.reshape(rates, shape), rtol=1e-5)
    assert np.all(found.activation == 1.0) if arch == "dense" else np.all((found.activation > 0) & (found.activation < 1))


def prompts_of_several_lengths() -> list[Sequence]:
    """Test inputs of four sizes as prompts (the first twice), under both task codes."""
    inputs = [((4, 5),), ((1,), (2,), (3,)), ((0, 1, 2), (3, 4, 5)), ((4, 5),), ((7, 7, 8, 8, 9, 6, 5),)]
    return [encode_pair(Pair(input=g), task=i % 2, answer=False) for i, g in enumerate(inputs)]


def assert_same_candidates(batched: list[decode.Candidate], alone: list[decode.Candidate]) -> None:
    assert len(batched) == len(alone)
    for b, a in zip(batched, alone):
        assert (b.tokens, b.grid) == (a.tokens, a.grid)
        assert b.logprob == pytest.approx(a.logprob, abs=1e-4)
        np.testing.assert_allclose(b.confidence, a.confidence, rtol=1e-4)
        np.testing.assert_allclose(b.activation, a.activation, rtol=1e-5)


@pytest.mark.parametrize("loops", [1, 2])
@pytest.mark.parametrize("arch", ["onn", "dense"])
@pytest.mark.parametrize("seed", [1, 3])
def test_greedy_batch_decodes_each_prompt_as_greedy_does_alone(seed, arch, loops):
    """Prompts of different lengths (left-padded) and a token budget that cuts the longer grids; SBL activation rates
    stay per row. The models here write grids of several lengths, so rows leave the batch at different steps and some
    run out of budget while others go on."""
    model = peaky_model(seed, arch, loops)
    prompts = prompts_of_several_lengths()
    assert len({len(p) for p in prompts}) > 2
    alone = [decode.greedy(model, p) for p in prompts]
    done = []
    batched = decode.greedy_batch(model, prompts, on_done=done.append)
    assert sorted(done) == list(range(len(prompts)))
    for b, a in zip(batched, alone, strict=True):
        assert_same_candidates(b, a)
    budget = min(len(c.tokens) for found in alone for c in found)  # the shortest grids just fit
    cut = decode.greedy_batch(model, prompts, max_tokens=budget)
    for b, p in zip(cut, prompts, strict=True):
        assert_same_candidates(b, decode.greedy(model, p, max_tokens=budget))
    assert len({len(c.tokens) for found in alone for c in found}) > 1 and [] in cut and any(cut)


def test_greedy_batch_stops_each_row_where_its_context_ends():
    """A context that ends 4 tokens after the longest prompt: the shorter prompts have more room, so some rows run out
    of context while others finish their grids."""
    model = peaky_model(1)
    prompts = prompts_of_several_lengths()
    small = TinyONN(model.cfg.model_copy(update={"max_len": max(map(len, prompts)) + 4})).eval()
    small.load_state_dict(model.state_dict())
    batched = decode.greedy_batch(small, prompts)
    assert [] in batched and any(batched)
    for b, p in zip(batched, prompts, strict=True):
        assert_same_candidates(b, decode.greedy(small, p))
        assert all(len(c.tokens) <= small.cfg.max_len - len(p) + 1 for c in b)


def all_grid_sequences(max_tokens: int) -> list[list[int]]:
    """Every token sequence of at most `max_tokens` (END included) that writes a valid grid."""
    found = []
    for height in range(1, max_tokens):
        for width in range(1, max_tokens):
            if height * (width + 1) + 1 > max_tokens:
                continue
            for cells in itertools.product(range(N_COLOURS), repeat=height * width):
                rows = [list(cells[r * width : (r + 1) * width]) + [ROW] for r in range(height)]
                found.append([t for row in rows for t in row] + [EOS])
    return found


def exhaustive_logprobs(model: TinyONN, sequences: list[list[int]]) -> list[float]:
    """Teacher-forced log-probabilities of each grid as the task's test output, uncached, in one batch."""
    start = len(encode())
    batch = collate([encode(decode_grid(generated)) for generated in sequences])
    with torch.no_grad():
        logits = model(batch.tokens, batch.rows, batch.cols, batch.pos, task=batch.task)  # (B, T, V)
    totals = []
    for b, generated in enumerate(sequences):
        steps = [choice_logprobs(logits[b, start - 1 + k]) for k in range(len(generated))]
        assert batch.tokens[b, start + len(generated) - 1] == EOS  # the layout matches the decoder's
        totals.append(sum(step[t] for step, t in zip(steps, generated)))
    return totals


@pytest.mark.parametrize("seed,min_prob", [(3, 1e-3), (3, 1e-4)])
def test_dfs_with_backtracking_equals_exhaustive_enumeration(seed, min_prob):
    model = peaky_model(seed)
    max_tokens = 5  # grids 1×1, 1×2, 1×3 and 2×1: 1210 sequences
    sequences = all_grid_sequences(max_tokens)
    assert len(sequences) == 10 + 100 + 1000 + 100
    reference = dict(zip(map(tuple, sequences), exhaustive_logprobs(model, sequences)))

    found = decode.dfs(model, encode(), min_prob, max_candidates=10_000, max_tokens=max_tokens)
    by_tokens = {c.tokens: c for c in found}
    assert len(by_tokens) == len(found) >= 3
    assert len({len(t) for t in by_tokens}) >= 2  # the search branched to different depths
    floor, margin = math.log(min_prob), 1e-4
    for tokens, lp in reference.items():
        if lp >= floor + margin:
            assert tokens in by_tokens, f"dfs missed {tokens} (log p {lp:.4f})"
        if tokens in by_tokens:
            assert lp >= floor - margin
            assert by_tokens[tokens].logprob == pytest.approx(lp, abs=1e-4)
    assert [c.logprob for c in found] == sorted((c.logprob for c in found), reverse=True)


@pytest.mark.parametrize(
    "arch,loops,room", [("onn", 1, decode.DFS_ROOM), ("onn", 1, 1), ("dense", 1, 1), ("onn", 2, 1)]
)
def test_dfs_batch_searches_each_prompt_as_dfs_does_alone(arch, loops, room, monkeypatch):
    """Prompts of different lengths (left-padded) under two codes, searched together: each row branches and
    backtracks at its own depths, some stop at `max_candidates` while others go on, and with room for 1 abandoned
    token the cache is compacted again and again; every row finds what `dfs` finds alone, log-probabilities within
    1e-5."""
    model = peaky_model(3, arch, loops)
    prompts = prompts_of_several_lengths()
    alone = [decode.dfs(model, p, 1e-3, max_candidates=6, max_tokens=5) for p in prompts]
    monkeypatch.setattr(decode, "DFS_ROOM", room)
    compactions = []
    monkeypatch.setattr(decode._Decoder, "_compact", spy(decode._Decoder._compact, compactions))
    done = []
    batched = decode.dfs_batch(model, prompts, 1e-3, max_candidates=6, max_tokens=5, on_done=done.append)
    assert sorted(done) == list(range(len(prompts)))
    assert all(found for found in alone) and {len(found) for found in alone} > {6}  # some stopped at the cap
    assert len({tuple(c.tokens for c in found) for found in alone}) > 2  # the prompts' searches differ
    assert len({len(c.tokens) for found in alone for c in found}) > 1  # grids of several lengths
    for b, a in zip(batched, alone, strict=True):
        assert [c.tokens for c in b] == [c.tokens for c in a]
        assert [c.logprob for c in b] == pytest.approx([c.logprob for c in a], abs=1e-5)
        assert_same_candidates(b, a)
    assert (len(compactions) > 1) == (room == 1)


def spy(method, calls: list):
    def wrapped(self, *args):
        calls.append(args)
        return method(self, *args)

    return wrapped


def test_a_search_past_its_deadline_feeds_no_more_tokens_and_keeps_what_it_found(forward_clock):
    model = peaky_model(3)
    prompts = prompts_of_several_lengths()
    unbounded = decode.dfs_batch(model, prompts, 1e-3, max_candidates=100, max_tokens=5)
    clock = forward_clock(model, decode)
    steps = 6
    bounded = decode.dfs_batch(model, prompts, 1e-3, max_candidates=100, max_tokens=5, deadline=clock.passes + steps)
    assert clock.passes <= steps + 1  # the prompts' pass, then steps feeds
    assert 0 < sum(map(len, bounded)) < sum(map(len, unbounded))
    for b, u in zip(bounded, unbounded, strict=True):
        assert {c.tokens for c in b} <= {c.tokens for c in u}
    assert decode.dfs_batch(model, prompts, 1e-3, deadline=clock.passes) == [[] for _ in prompts]
    assert decode.greedy_batch(model, prompts, deadline=clock.passes) == [[] for _ in prompts]
    assert decode.teacher_forced(model, [encode(((5, 4),))], deadline=clock.passes) is None
    assert decode.teacher_forced(model, [encode(((5, 4),))], deadline=clock.passes + 1) is not None


def test_dfs_stops_at_max_candidates_and_rejects_a_bad_floor():
    model = peaky_model(1)
    prompt = encode()
    assert len(decode.dfs(model, prompt, 1e-3, max_candidates=2, max_tokens=5)) == 2
    with pytest.raises(ValueError, match="min_prob"):
        decode.dfs(model, prompt, 0.0)


def test_decoding_stops_where_the_context_ends():
    model = peaky_model(2)
    prompt = encode()
    small = TinyONN(model.cfg.model_copy(update={"max_len": len(prompt) + 2}))
    small.load_state_dict(model.state_dict())
    assert all(len(c.tokens) <= 3 for c in decode.dfs(small.eval(), prompt, 1e-6, max_candidates=100))
    assert all(len(c.tokens) <= 3 for c in decode.greedy(small.eval(), prompt))


def fold(tokens: list[int]):
    shape = (0, 0, 0)
    for t in tokens:
        shape = decode.extend(shape, t)
        if shape is None:
            return None
    return shape


@given(st.lists(st.sampled_from([0, 1, ROW]), max_size=14))
def test_extend_accepts_exactly_the_valid_grids_and_never_dead_ends(tokens):
    shape = fold(tokens)
    try:
        decode_grid(tokens + [EOS])
        valid = True
    except GridError:
        valid = False
    assert (shape is not None and decode.extend(shape, EOS) is not None) == valid
    if shape is not None:
        assert any(decode.extend(shape, t) is not None for t in decode.CHOICES)


@pytest.mark.parametrize(
    "rows,width,extra,ok",
    [(30, 30, [], True), (1, 31, [], False), (31, 1, [], False), (30, 2, [5], False), (2, 3, [5, 5, 5, 5], False)],
)
def test_extend_enforces_the_size_limits(rows, width, extra, ok):
    tokens = ([1] * width + [ROW]) * rows + extra
    shape = fold(tokens)
    assert (shape is not None and decode.extend(shape, EOS) is not None) == ok
    if shape is not None:
        assert any(decode.extend(shape, t) is not None for t in decode.CHOICES)
