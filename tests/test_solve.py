"""Solving: views and voting after inverse mapping, test-time training on demos only, task codes, the context guard,
and a tiny model trained here solving a learnable task end to end."""

import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import onn_arc.cli.eval  # noqa: F401  (registers the command)
import onn_arc.cli.solve  # noqa: F401  (registers the command)
from onn_arc import decode, solve
from onn_arc.checkpoint import TrainingData, save_checkpoint
from onn_arc.cli.app import app
from onn_arc.augment import Augmentation, dihedral_map, input_colours
from onn_arc.config import AugmentConfig, LossConfig, ModelConfig, OptimizerConfig, SolveConfig, TrainConfig
from onn_arc.data import Pair, Task, load_source, load_task_file
from onn_arc.decode import Candidate
from onn_arc.errors import TaskError
from onn_arc.model import TinyONN
from onn_arc.optim import gauss_newton
from onn_arc.scoring import load_submission
from onn_arc.tokens import EOS, N_COLOURS, OUT, ROW, VOCAB_SIZE, Sequence, encode_pair
from onn_arc.train import code_key, copies_of, make_optimizer, pair_examples, sample_batch, train_step

DATA = Path(__file__).resolve().parents[1] / "data"
TRUTH = ((1, 2, 0), (3, 4, 0))  # no symmetry: every view moves it
WRONG = ((5, 5), (5, 6))
FAST = SolveConfig(  # greedy: an untrained model's grids are rarely above dfs's floor, and one grid per view is tested
    ttt_steps=2, ttt_batch_tokens=512, views=2, sampler="greedy", optimizer=OptimizerConfig(name="adamw", lr=1e-3)
)


def tiny_model(**overrides) -> TinyONN:
    return TinyONN(ModelConfig.preset("tiny", **overrides)).eval()


def stub_task(n_train: int = 3) -> Task:
    pairs = [Pair(input=((i % 10, 1),), output=((1, i % 10),)) for i in range(n_train)]
    return Task(id="stub", train=tuple(pairs), test=(Pair(input=((2, 3), (4, 5)), output=TRUTH),))


def candidate(grid, logprob: float, confidence: np.ndarray | None = None) -> Candidate:
    conf = np.full(np.shape(grid), 0.5) if confidence is None else confidence
    return Candidate(tokens=(), grid=grid, logprob=logprob, confidence=conf, activation=conf / 2)


def per_prompt(decode_one: Callable[[Task, int, int], list[Candidate]]):
    """A `solve.decode_views` stub that answers each (view's task, test index, code) with `decode_one`, in order."""

    def stub(model, seen: list[tuple[Task, int]], cfg: SolveConfig, on_progress=None, deadline=None):
        return [[decode_one(task, i, code) for i in range(len(task.test))] for task, code in seen]

    return stub


def test_vote_ranks_by_views_then_logprob_after_mapping_back():
    task = stub_task()
    views = solve.choose_views(task, 4, 3, AugmentConfig())
    assert views[0] == Augmentation.identity(3) and all(v.dihedral or v.colours != views[0].colours for v in views[1:])
    confidence = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])  # per cell of TRUTH, in the task's orientation
    found = []
    for v, view in enumerate(views):
        if v == 1:  # one view prefers a wrong grid, very confidently, and also finds the truth
            found.append([candidate(view.apply_grid(WRONG), -0.01), candidate(view.apply_grid(TRUTH), -5.0)])
        elif v == 2:  # another finds only a grid that is the truth in the *augmented* orientation
            found.append([candidate(TRUTH, -0.02)] if view.apply_grid(TRUTH) != TRUTH else [])
        else:
            found.append([candidate(view.apply_grid(TRUTH), -1.0, dihedral_map(confidence, view.dihedral))])
    answer = solve.vote(views, found, task.test[0].input)
    assert answer.attempts[0] == TRUTH
    best = answer.candidates[0]
    assert (best.grid, best.votes, best.views, best.logprob) == (TRUTH, 3, (0, 1, 3), pytest.approx(-7.0))
    assert answer.attempts[1] == WRONG  # 1 vote each: the higher log-probability wins
    assert len(answer.attempts) == 2 and len(answer.candidates) == 3
    # explain maps: views 0 and 3 bring `confidence` back to the task's orientation, view 1 brings 0.5 everywhere
    np.testing.assert_allclose(answer.confidence, (2 * confidence + 0.5) / 3)
    np.testing.assert_allclose(answer.activation, answer.confidence / 2)


def test_vote_ranks_a_copy_of_the_test_input_last():
    task = stub_task()
    views = solve.choose_views(task, 3, 0, AugmentConfig())
    given = task.test[0].input
    found = [[candidate(view.apply_grid(given), -0.1)] for view in views]  # every view copies the input...
    found[2].append(candidate(views[2].apply_grid(TRUTH), -3.0))  # ...one also finds the truth, unlikely
    answer = solve.vote(views, found, given)
    assert answer.attempts == (TRUTH, given)
    assert [(c.grid, c.votes) for c in answer.candidates] == [(TRUTH, 1), (given, 3)]
    answer = solve.vote(views, found[:2] + [found[2][:1]], given)
    assert answer.attempts == (given, given)  # nothing else found: the copy is still submitted


def test_two_attempts_are_always_two_grids():
    given = ((9,),)
    assert solve.two_attempts([], given) == (given, given)  # nothing found: copy the input
    assert solve.two_attempts([TRUTH], given) == (TRUTH, TRUTH)  # one: repeat it
    assert solve.two_attempts([TRUTH, WRONG, given], given) == (TRUTH, WRONG)
    assert solve.two_attempts([TRUTH, TRUTH, WRONG], given) == (TRUTH, WRONG)  # distinct grids


def test_vote_with_one_or_no_grid_still_gives_two_attempts():
    task = stub_task()
    views = solve.choose_views(task, 2, 0, AugmentConfig())
    given = task.test[0].input
    answer = solve.vote(views, [[], []], given)
    assert answer.attempts == (given, given) and answer.candidates == () and answer.confidence is None
    answer = solve.vote(views, [[candidate(views[0].apply_grid(TRUTH), -1.0)], []], given)
    assert answer.attempts == (TRUTH, TRUTH) and len(answer.candidates) == 1


def test_a_task_that_cannot_be_solved_submits_its_test_inputs():
    task = load_task_file(DATA / "25ff71a9.json")  # 2 tests
    solution, error = solve.solve_or_copy(tiny_model(max_len=27), task, FAST)
    assert "needs" in error and "context holds 27" in error
    assert solution.attempts == [(p.input, p.input) for p in task.test]
    assert solution.to_json()["attempts"][1] == [[list(r) for r in task.test[1].input]] * 2
    assert solution.ttt_steps == 0 and solution.views == ()


def test_solve_task_maps_every_view_back_before_voting(monkeypatch):
    """A stub decoder answers with the truth in the view's own orientation in views 0, 2, 3 and a confident wrong
    grid in view 1; after inversion the truth must be attempt 1 with 3 votes."""
    calls = []

    def stub(seen: Task, test_index: int, code: int) -> list[Candidate]:
        calls.append(seen)
        view = len(calls) - 1
        truth = seen.test[test_index].output  # the truth as this view sees it
        return [candidate(WRONG, -0.01)] if view == 1 else [candidate(truth, -1.0)]

    monkeypatch.setattr(solve, "decode_views", per_prompt(stub))
    solution = solve.solve_task(tiny_model(), stub_task(), SolveConfig(ttt_steps=0, views=4, seed=1, ranking="votes"))
    (answer,) = solution.tests
    assert answer.attempts[0] == TRUTH and answer.candidates[0].votes == 3
    assert answer.attempts[1] == solution.views[1].invert_grid(WRONG)
    assert [s.test[0].input for s in calls] == [v.apply_grid(stub_task().test[0].input) for v in solution.views]


def test_solve_task_on_a_puzzle_without_test_output_is_seeded():
    task = load_task_file(DATA / "puzzle-no-answer.json")
    assert not task.has_test_outputs
    model = tiny_model(max_len=96)  # a short context keeps a random model's grids short
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = solve.solve_task(model, task, FAST)
    assert first.ttt_steps == 2 and first.ttt_loss is not None and len(first.views) == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # TTT tuned a copy
    (answer,) = first.tests
    assert answer.attempts == solve.two_attempts([c.grid for c in answer.candidates], task.test[0].input)
    again = solve.solve_task(model, task, FAST)
    assert again.to_json() | {"ttt_seconds": 0} == first.to_json() | {"ttt_seconds": 0}


def test_solve_task_with_dfs_returns_distinct_ranked_candidates():
    task = load_task_file(DATA / "6150a2bd.json")
    model = tiny_model()
    with torch.no_grad():
        model.head.weight.mul_(4)  # peaky, so the search ends quickly
    cfg = FAST.model_copy(update={"ttt_steps": 0, "sampler": "dfs", "min_prob": 0.05, "views": 3, "greedy_fallback": True})
    (answer,) = solve.solve_task(model, task, cfg).tests
    keys = list(map(solve.rank_key(cfg.ranking, task.test[0].input), answer.candidates))
    assert answer.candidates and keys == sorted(keys) and len({c.grid for c in answer.candidates}) == len(answer.candidates)
    assert answer.attempts == solve.two_attempts([c.grid for c in answer.candidates], task.test[0].input)


@pytest.mark.parametrize("copies", [0, 4])
def test_fewer_views_are_the_first_of_more(copies):
    """The views of a solve are a prefix of any longer list of them (bench/search.py shares one decode of 32 views
    among 6, 16 and 32)."""
    model = tiny_model(copies=copies)
    task = load_task_file(DATA / "6150a2bd.json")
    many = solve.views_of(model.cfg, task, SolveConfig(views=32))
    assert len(set(map(str, many))) > 16
    for n in (1, 6, 16):
        assert solve.views_of(model.cfg, task, SolveConfig(views=n)) == many[:n]


def test_test_time_training_with_one_code_per_task_does_not_depend_on_the_views():
    task = load_task_file(DATA / "6150a2bd.json")
    model = tiny_model(task_ids=(task.id,))
    views = solve.views_of(model.cfg, task, SolveConfig(views=16))
    few, _, _, loss = solve.fine_tune(model, task, FAST, views=views[:2])
    many, _, _, loss2 = solve.fine_tune(model, task, FAST, views=views)
    assert loss == loss2
    assert all(torch.equal(a, b) for a, b in zip(few.state_dict().values(), many.state_dict().values()))


def test_fine_tune_uses_demos_only_and_can_be_switched_off():
    task = load_task_file(DATA / "6150a2bd.json")
    model = tiny_model(task_ids=(task.id,))
    assert solve.fine_tune(model, task, FAST.model_copy(update={"ttt_steps": 0}))[:2] == (model, 0)
    short = tiny_model(max_len=27, task_ids=(task.id,))
    assert solve.fine_tune(short, task, FAST)[:2] == (short, 0)  # no demo (28 tokens) fits: nothing to train on
    # the test output never matters: poisoning it changes nothing
    poisoned = task.model_copy(update={"test": (Pair(input=task.test[0].input, output=((9,),)),)})
    tuned, steps, _, loss = solve.fine_tune(model, task, FAST)
    tuned2, _, _, loss2 = solve.fine_tune(model, poisoned, FAST)
    assert steps == 2 and loss == loss2
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), tuned2.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), model.state_dict().values()))


def test_fine_tune_with_gauss_newton_preconditions_and_is_seeded(monkeypatch):
    task = load_task_file(DATA / "6150a2bd.json")
    cfg = SolveConfig(ttt_steps=4, ttt_batch_tokens=512)  # the default optimizer: GN, curvature and eigenbases at step 2
    assert cfg.optimizer.name == "gn"
    refreshes = []
    eigh = gauss_newton.psd_eigh
    monkeypatch.setattr(gauss_newton, "psd_eigh", lambda m: refreshes.append(m.shape) or eigh(m))
    model = tiny_model(task_ids=(task.id,))
    first, steps, _, loss = solve.fine_tune(model, task, cfg)
    assert len(refreshes) == 2 * len(model.tapped_layers())  # A and G of every tapped layer, once
    again, _, _, loss2 = solve.fine_tune(model, task, cfg)
    assert steps == 4 and loss == loss2
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), model.state_dict().values()))


def test_fine_tune_stops_at_its_time_bound():
    task = load_task_file(DATA / "6150a2bd.json")
    model = tiny_model(task_ids=(task.id,))
    _, steps, seconds, _ = solve.fine_tune(model, task, FAST.model_copy(update={"ttt_steps": 1000, "ttt_seconds": 0.3}))
    assert 1 <= steps < 1000 and seconds < 5


def coded_model(**overrides) -> TinyONN:
    """A tiny model with codes for two other tasks."""
    torch.manual_seed(0)
    model = tiny_model(task_ids=("a", "b"), **overrides)
    with torch.no_grad():
        model.head.weight.mul_(3)  # peaky: greedy ends its grids within the context
    return model


def test_a_new_task_is_solved_with_a_fresh_code_and_the_model_is_left_alone():
    model, task = coded_model(), stub_task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    solution = solve.solve_task(model, task, FAST)
    assert solution.ttt_steps == 2 and len(solution.tests) == 1 and solution.tests[0].attempts
    assert model.cfg.task_ids == ("a", "b") and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = solve.solve_task(model, task, FAST)
    assert again.to_json() == solution.to_json() | {"ttt_seconds": again.ttt_seconds}


@pytest.mark.parametrize("init", ["mean", "zero"])
def test_a_new_task_gets_a_fresh_code_a_trained_one_keeps_its_own(init):
    model = coded_model()
    fresh = solve.with_task_code(model, stub_task(), init)
    assert fresh is not model and fresh.cfg.task_ids == ("a", "b", "stub") and model.cfg.task_ids == ("a", "b")
    assert solve.code_of(fresh, Augmentation.random(np.random.default_rng(0), 3).apply(stub_task())) == 2
    trained = tiny_model(task_ids=("a", "stub"))
    assert solve.with_task_code(trained, stub_task(), init) is trained  # transductive: the code trained on its demos
    assert solve.code_of(trained, stub_task()) == 1


def test_a_model_with_codes_per_copy_solves_each_view_as_a_copy_with_its_own_code(monkeypatch):
    model, task = coded_model(copies=4), stub_task()
    views = solve.views_of(model.cfg, task, FAST.model_copy(update={"views": 3}))
    assert views == copies_of(task, 3, FAST.augment)  # the copies training would have made of it
    fresh = solve.with_task_code(model, task, "mean", views)
    assert fresh.cfg.task_ids == ("a", "b", *(code_key(task.id, v) for v in views))
    pool = solve._ttt_pool(fresh, task, views)  # each view's demos, in that view, under its code
    assert {(ex.view, ex.code) for ex in pool} == {(v, 2 + i) for i, v in enumerate(views)}
    assert all(ex.pair in task.train for ex in pool)
    decoded = []

    def stub(seen: Task, test_index: int, code: int) -> list[Candidate]:
        decoded.append((seen, code))
        return [candidate(seen.test[test_index].output, -1.0)]

    monkeypatch.setattr(solve, "decode_views", per_prompt(stub))
    solution = solve.solve_task(model, task, FAST.model_copy(update={"views": 3}))
    assert [seen for seen, _ in decoded] == [v.apply(task) for v in views] and [c for _, c in decoded] == [2, 3, 4]
    assert solution.tests[0].attempts[0] == TRUTH and solution.tests[0].candidates[0].votes == 3
    trained = tiny_model(copies=4, task_ids=tuple(code_key(task.id, v) for v in views))
    assert solve.with_task_code(trained, task, "mean", views) is trained  # transductive: the copies' own codes


def test_by_default_solving_never_moves_a_colour_only_outputs_bring():
    """The task's outputs bring 4 ("fill with yellow"): no view and no test-time training draw may recolour it, so
    the task's code can learn it; the input colours are still permuted among themselves."""
    task = Task(
        id="fill",
        train=tuple(Pair(input=((0, 1, i),), output=((4, 1, i),)) for i in (2, 3, 5)),
        test=(Pair(input=((0, 1, 6),)),),
    )
    cfg = SolveConfig(views=16)
    views = solve.views_of(tiny_model().cfg, task, cfg)
    assert all(v.colours[4] == 4 and v.colours[0] == 0 for v in views)
    assert {v.colours[1] for v in views} > {1}  # input colours do move
    rng = np.random.default_rng(0)
    assert all(cfg.augment.draw(rng, 3, input_colours(task)).colours[4] == 4 for _ in range(200))  # test-time training


def test_decoding_under_a_views_code_conditions_on_that_code():
    """The prompt of a view carries the view's code and input (greedy decoding over the cache equals full forward
    passes for any code: test_decode.py); two copies' codes give two different decodings."""
    model, task = coded_model(copies=2), stub_task()
    views = copies_of(task, 2, AugmentConfig())
    model = solve.with_task_code(model, task, "mean", views)
    seen, code = views[1].apply(task), solve.code_of(model, task, views[1])
    assert code == 3
    seq = solve.decode_prompt(model, seen, 0, code)
    assert seq.task == code and seq.tokens.tolist() == encode_pair(Pair(input=seen.test[0].input), code, answer=False).tokens.tolist()
    [[(found,)]] = solve.decode_views(model, [(seen, code)], FAST)
    greedy = decode.greedy(model, seq)[0]
    assert (found.tokens, found.logprob) == (greedy.tokens, greedy.logprob)
    with torch.no_grad():
        model.task_codes.weight[3].normal_(0, 30)  # the copy's code changed
    [[(other,)]] = solve.decode_views(model, [(seen, code)], FAST)
    assert other.logprob != found.logprob


@pytest.mark.parametrize(
    ("sampler", "min_prob", "fallback"), [("greedy", 0.1, True), ("dfs", 0.05, True), ("dfs", 1e-3, True), ("dfs", 1.0, True), ("dfs", 1.0, False)]
)
def test_decode_views_decodes_every_views_tests_and_counts_them(sampler, min_prob, fallback, monkeypatch):
    """Two tests in three views under three codes, decoded in batches (of 4 here: 4 + 2 prompts): [view][test] holds
    what decoding that prompt alone gives, and progress counts every prompt. With dfs, a test input no view finds a
    grid for (a floor of 1.0: none of an untrained model's grids) gets every view's greedy grid, with the fallback."""
    monkeypatch.setattr(solve, "BATCH_ROWS", 4)
    task = load_task_file(DATA / "25ff71a9.json")
    model, views = coded_model(copies=3), copies_of(task, 3, AugmentConfig())
    model = solve.with_task_code(model, task, "mean", views)
    seen = [(v.apply(task), solve.code_of(model, task, v)) for v in views]
    cfg = FAST.model_copy(update={"sampler": sampler, "min_prob": min_prob, "greedy_fallback": fallback})
    progress = []
    found = solve.decode_views(model, seen, cfg, lambda *args: progress.append(args))
    prompts = [[solve.decode_prompt(model, view, i, code) for i in range(len(view.test))] for view, code in seen]
    alone = [[decode.dfs(model, seq, min_prob, cfg.max_candidates) if sampler == "dfs" else decode.greedy(model, seq)
              for seq in per_test] for per_test in prompts]  # fmt: skip
    lost = [i for i in range(2) if sampler == "dfs" and fallback and not any(per_test[i] for per_test in alone)]
    assert lost == {1.0: [0, 1] if fallback else [], 1e-3: []}.get(min_prob, lost)  # 1e-3: each test has a grid
    for v, per_test in enumerate(prompts):
        for i in lost:
            alone[v][i] = decode.greedy(model, per_test[i])
            assert len(found[v][i]) == 1  # a greedy grid, not nothing
    fallback = 3 * len(lost)  # prompts: three views of each lost test
    assert progress == [("decode", k, 6) for k in range(1, 7)] + [("greedy", k, fallback) for k in range(1, fallback + 1)]
    for got, want in zip(itertools.chain(*found), itertools.chain(*alone), strict=True):
        assert [c.tokens for c in got] == [c.tokens for c in want]
        assert [c.logprob for c in got] == pytest.approx([c.logprob for c in want], abs=1e-4)


def test_the_search_budget_bounds_decoding_and_scoring_and_keeps_what_was_found(forward_clock):
    """The clock counts forward passes, so `search_seconds` is a budget of passes. The unbounded search takes P passes
    (decoding, then scoring); with P - 1 it decodes everything but cannot finish scoring, so the candidates are ranked
    by votes; with P / 2 the search is cut short and keeps the grids it found, some of what the full search finds."""
    task = load_task_file(DATA / "6150a2bd.json")
    model = tiny_model()
    with torch.no_grad():
        model.head.weight.mul_(3)
    cfg = FAST.model_copy(update={"ttt_steps": 0, "views": 3, "sampler": "dfs", "min_prob": 1e-3})
    cfg = cfg.model_copy(update={"search_seconds": None})
    model = solve.with_task_code(model, task, cfg.task_code_init)  # as solve_task makes it, so the clock sees it
    clock = forward_clock(model, decode, solve)
    (full,) = solve.solve_task(model, task, cfg).tests
    passes = clock.passes
    assert len(full.candidates) > 2 and all(c.poe is not None for c in full.candidates)
    for budget in (passes - 1, passes // 2):
        clock.passes = 0
        (cut,) = solve.solve_task(model, task, cfg.model_copy(update={"search_seconds": budget})).tests
        assert clock.passes <= budget  # none starts past the budget
        assert all(c.poe is None for c in cut.candidates)  # not scored in time: ranked by votes
        given = task.test[0].input
        keys = [solve.rank_key("votes", given)(c) for c in cut.candidates]
        assert keys == sorted(keys) and cut.attempts == solve.two_attempts([c.grid for c in cut.candidates], given)
        found, every = {c.grid for c in cut.candidates}, {c.grid for c in full.candidates}
        assert found == every if budget == passes - 1 else 0 < len(found) < len(every)


# ---------------------------------------------------------------- candidates scored in every view (product of experts)


def logprob_by_hand(model: TinyONN, seq: Sequence) -> float:
    """The summed log-probability of `seq`'s targets from one full forward pass, in float64: a cell or row end by its
    own probability, the end (EOS) by every token that would end the grid (neither a colour nor ROW) together."""
    t = [torch.as_tensor(a)[None] for a in (seq.tokens, seq.rows, seq.cols, seq.pos)]  # (1, T) each
    with torch.no_grad():
        lp = model(*t, task=torch.tensor([seq.task]))[0].double().log_softmax(-1)  # (T, V)
    enders = [k for k in range(VOCAB_SIZE) if k >= N_COLOURS and k != ROW]
    targets = np.flatnonzero(seq.targets)
    assert targets.tolist() == list(range(seq.tokens.tolist().index(OUT) + 1, len(seq)))  # the output and its EOS
    return sum(
        (lp[k - 1, enders].logsumexp(0) if seq.tokens[k] == EOS else lp[k - 1, seq.tokens[k]]).item() for k in targets
    )


@pytest.mark.parametrize("copies", [0, 3])
def test_poe_sums_each_views_teacher_forced_logprob_under_its_code(copies):
    """A candidate's score is its log-probability in every view (the test input and the grid mapped into the view,
    under the view's code: with codes per copy, each view its own), summed; a grid too long for the context in some
    view has none."""
    task = stub_task()
    model = coded_model(copies=copies)
    views = solve.views_of(model.cfg, task, FAST.model_copy(update={"views": 3}))
    model = solve.with_task_code(model, task, "mean", views)
    with torch.no_grad():
        model.task_codes.weight[2:].normal_()  # with copies, every view's code its own
    codes = [solve.code_of(model, task, v) for v in views]
    assert codes == ([2, 3, 4] if copies else [2, 2, 2])
    assert len({v.apply_grid(TRUTH) for v in views}) > 1  # the views do move the grid
    scores = solve.poe_scores(model, task, views, 0, [TRUTH, WRONG])
    for grid, score in zip([TRUTH, WRONG], scores):
        by_hand = [
            logprob_by_hand(model, encode_pair(Pair(input=v.apply_grid(task.test[0].input), output=v.apply_grid(grid)), c))
            for v, c in zip(views, codes)
        ]  # fmt: skip
        assert score == pytest.approx(sum(by_hand), abs=1e-4)
    big = ((1,) * 30,) * 20  # 620 tokens: a 512-token context holds it in no view
    assert solve.poe_scores(model, task, views, 0, [big, TRUTH]) == [None, pytest.approx(scores[0], abs=1e-4)]


def test_a_views_teacher_forced_logprob_is_what_decoding_it_found():
    """Scored in the view that decoded it, a candidate's log-probability is the one decoding gave it (full forward
    passes against the KV cache)."""
    task = load_task_file(DATA / "6150a2bd.json")
    model = coded_model(max_len=128)
    with torch.no_grad():
        model.head.weight.mul_(3)
    views = solve.choose_views(task, 3, 0, AugmentConfig())
    model = solve.with_task_code(model, task, "mean", views)
    seen = [(v.apply(task), solve.code_of(model, task, v)) for v in views]
    for view, [candidates] in zip(views, solve.decode_views(model, seen, FAST), strict=True):
        (c,) = candidates
        assert solve.poe_scores(model, task, [view], 0, [view.invert_grid(c.grid)]) == [pytest.approx(c.logprob, abs=1e-4)]


def test_an_answer_sequence_is_the_decode_prompt_then_the_grid_and_its_end():
    model = solve.with_task_code(coded_model(max_len=30), stub_task(), "mean")
    prompt = solve.decode_prompt(model, stub_task(), 0)
    seq = solve.answer_sequence(model, stub_task(), 0, TRUTH)
    n = len(prompt)
    for field in ("tokens", "rows", "cols", "pos"):
        assert getattr(seq, field)[:n].tolist() == getattr(prompt, field).tolist()
    assert seq.tokens[n:].tolist() == [1, 2, 0, ROW, 3, 4, 0, ROW, EOS] and seq.task == prompt.task
    assert np.flatnonzero(seq.targets).tolist() == list(range(n, len(seq)))


def test_ranking_by_poe_puts_the_best_score_first_and_a_copy_last():
    task = stub_task()
    views = solve.choose_views(task, 3, 0, AugmentConfig())
    given = task.test[0].input
    confidence = np.full((2, 3), 0.9)
    found = [
        [candidate(views[0].apply_grid(given), -0.1), candidate(views[0].apply_grid(WRONG), -1.0)],
        [candidate(views[1].apply_grid(given), -0.1)],
        [candidate(views[2].apply_grid(TRUTH), -2.0, dihedral_map(confidence, views[2].dihedral))],
    ]
    poe = {given: -1.0, WRONG: -30.0, TRUTH: -5.0}
    scored = []

    def score(grids):
        scored.append(grids)
        return [poe[g] for g in grids]

    by_votes = solve.vote(views, found, given, score)
    assert [c.grid for c in by_votes.candidates] == [WRONG, TRUTH, given] and by_votes.attempts == (WRONG, TRUTH)
    assert [c.poe for c in by_votes.candidates] == [-30.0, -5.0, -1.0]  # scored either way, for the record
    assert by_votes.candidates[0].to_json()["poe"] == -30.0
    by_poe = solve.vote(views, found, given, score, "poe")
    assert [c.grid for c in by_poe.candidates] == [TRUTH, WRONG, given] and by_poe.attempts == (TRUTH, WRONG)
    np.testing.assert_allclose(by_poe.confidence, confidence)  # attempt 1's maps: the new best's
    assert scored == [[given, WRONG, TRUTH]] * 2  # one call per test input, every distinct grid once
    unscored = solve.vote(views, found, given, lambda grids: [None if g == TRUTH else poe[g] for g in grids], "poe")
    assert [c.grid for c in unscored.candidates] == [WRONG, TRUTH, given]  # unscored after the scored ones


def test_solve_task_ranks_by_poe_without_reading_the_test_outputs():
    task = load_task_file(DATA / "6150a2bd.json")
    model = tiny_model()
    with torch.no_grad():
        model.head.weight.mul_(3)
    cfg = FAST.model_copy(update={"views": 4, "ranking": "poe"})
    solution = solve.solve_task(model, task, cfg)
    (answer,) = solution.tests
    assert len(answer.candidates) > 1 and all(c.poe is not None for c in answer.candidates)
    keys = [solve.rank_key("poe", task.test[0].input)(c) for c in answer.candidates]
    assert keys == sorted(keys) and answer.attempts[0] == answer.candidates[0].grid
    coded = solve.with_task_code(model, task, cfg.task_code_init)  # as solve_task gives the task its fresh code
    tuned = solve.fine_tune(coded, task, cfg, views=list(solution.views))[0]  # the model that decoded and scored
    grids = [c.grid for c in answer.candidates]
    scores = solve.poe_scores(tuned, task, list(solution.views), 0, grids)
    assert [c.poe for c in answer.candidates] == pytest.approx(scores, abs=1e-4)
    poisoned = task.model_copy(update={"test": (Pair(input=task.test[0].input, output=((9,),)),)})
    again = solve.solve_task(model, poisoned, cfg)
    assert again.to_json() | {"ttt_seconds": 0} == solution.to_json() | {"ttt_seconds": 0}


def test_code_only_test_time_training_changes_the_code_alone():
    model = solve.with_task_code(coded_model(), stub_task(), "mean")
    code = solve.code_of(model, stub_task())
    cfg = FAST.model_copy(update={"ttt_params": "code"})
    tuned, steps, _, _ = solve.fine_tune(model, stub_task(), cfg)
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert steps == 2 and changed == {"task_codes.weight"}
    rows = (tuned.task_codes.weight - model.task_codes.weight).abs().sum(1)
    assert rows[code] > 0 and rows[:code].sum() == 0  # only this task's code moved


def test_a_test_input_too_long_for_the_context_is_a_one_line_task_error():
    task = load_task_file(DATA / "6150a2bd.json")
    with pytest.raises(TaskError, match=r"6150a2bd: test\[0\] needs 28 tokens .* context holds 27$"):
        solve.solve_task(tiny_model(max_len=27), task, FAST)
    solve.check_fits(task, 28)  # the prompt and room for an output as large as any grid of the task


# ---------------------------------------------------------------- a model trained here solves a task


def copy_task(rng: np.random.Generator, name: str) -> Task:
    """A learnable rule that every augmentation keeps: the output is the input."""
    grids = [tuple(map(tuple, rng.integers(0, 10, (2, 2)).tolist())) for _ in range(4)]
    pairs = [Pair(input=g, output=g) for g in grids]
    return Task(id=name, train=tuple(pairs[:3]), test=(pairs[3],))


@pytest.mark.slow
@pytest.mark.parametrize("arch,steps,lr", [("dense", 250, 3e-3), ("onn", 400, 1e-2)])
def test_a_model_trained_on_copy_tasks_solves_a_new_one_with_a_fresh_code(arch, steps, lr):
    rng = np.random.default_rng(0)
    tasks = [copy_task(rng, f"copy{i}") for i in range(64)]
    pool = [ex for i, t in enumerate(tasks) for ex in pair_examples(t, i, test_outputs=True, input_loss=False)]
    cfg = ModelConfig.preset("tiny", d_model=32, n_layers=2, arch=arch, task_ids=tuple(t.id for t in tasks))
    model = TinyONN(cfg)
    optimizer = OptimizerConfig(name="adamw", lr=lr, weight_decay=0.0)
    train_cfg = TrainConfig(model=cfg, optimizer=optimizer, loss=LossConfig(gate_weight=0, kl_weight=0))
    opt = make_optimizer(model, optimizer)
    for _ in range(steps):
        train_step(model, opt, sample_batch(pool, rng, 512, 512, AugmentConfig()), train_cfg, torch.Generator())
    task = copy_task(np.random.default_rng(99), "new")
    solve_cfg = SolveConfig(ttt_steps=3, ttt_batch_tokens=256, views=3, optimizer=OptimizerConfig(name="adamw", lr=1e-3))
    (answer,) = solve.solve_task(model.eval(), task, solve_cfg).tests
    assert answer.attempts[0] == task.test[0].output and answer.candidates[0].votes >= 2


# ---------------------------------------------------------------- `onn-arc solve`


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = tiny_model()
    with torch.no_grad():
        model.head.weight.mul_(3)  # peaky: greedy ends its grids within the context
    data = TrainingData(sources=["s"], test_outputs_from=["s"], demos_only=[], task_ids_with_test_outputs=["25ff71a9"], n_tasks=1)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, data, step=0, metrics={})


def run_cli(*args: str):
    return CliRunner().invoke(app, ["solve", *args])


def test_cli_solve_draws_the_task_attempts_and_explanation(checkpoint):
    result = run_cli(str(DATA / "6150a2bd.json"), "-c", str(checkpoint), "--ttt-steps", "1", "--ttt-optimizer", "adamw",
                     "--views", "2", "--sampler", "greedy", "--ranking", "poe", "--explain")  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "demo 2" in text and "attempt 1 ✗" in text and "not solved ✗" in text
    assert "test-time training: 1 steps" in text and "from 2 views" in text
    assert "ranked by poe" in text and "PoE: over all 2 views" in text
    assert re.search(r"  1\. +\d+×\d+ +\d votes? +log p +-[\d.]+ +PoE +-[\d.]+\n", text)  # each candidate's scores
    assert "confidence" in text and "activation rate" in text


@pytest.mark.parametrize("command", ["solve", "eval"])
def test_cli_help_says_attempts_are_ranked_by_poe_within_a_search_budget(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0 and "ranked by PoE" in result.stdout and "voted over" not in result.stdout
    assert "--search-seconds" in result.stdout and "[default: poe]" in result.stdout


def test_cli_solve_fine_tunes_with_muon(checkpoint):
    result = run_cli(str(DATA / "6150a2bd.json"), "-c", str(checkpoint), "--ttt-steps", "1", "--ttt-optimizer", "muon",
                     "--views", "1", "--search-seconds", "30")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "test-time training: 1 steps" in result.stdout


def test_cli_solve_marks_a_right_attempt(checkpoint, monkeypatch):
    monkeypatch.setattr(solve, "decode_views", per_prompt(lambda seen, i, code: [candidate(seen.test[i].output, -0.1)]))
    result = run_cli(str(DATA / "6150a2bd.json"), "-c", str(checkpoint), "--ttt-steps", "0")
    assert result.exit_code == 0, result.output
    assert "attempt 1 ✓ exact" in result.stdout and "solved ✓" in result.stdout


def test_cli_solve_json_and_out_give_the_kaggle_entry(checkpoint, tmp_path):
    out = tmp_path / "entry.json"
    args = [str(DATA / "puzzle-no-answer.json"), "-c", str(checkpoint), "--ttt-steps", "0", "--json", "--out", str(out)]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert list(entry) == ["puzzle-no-answer"] and set(entry["puzzle-no-answer"][0]) == {"attempt_1", "attempt_2"}
    assert json.loads(out.read_text()) == entry  # two grids, never null
    drawn = run_cli(*args[:5])
    assert drawn.exit_code == 0 and "attempt 1" in drawn.stdout and "✗" not in drawn.stdout and "solved" not in drawn.stdout


def test_cli_solve_warns_about_leakage_and_fails_in_one_line(checkpoint, tmp_path):
    result = run_cli(str(DATA / "25ff71a9.json"), "-c", str(checkpoint), "--ttt-steps", "0", "--json")
    assert result.exit_code == 0 and "trained on the test outputs of 25ff71a9" in result.stderr
    for args, words in [
        (["007bbfb7", "-c", str(tmp_path / "none")], "no such checkpoint"),
        ([str(tmp_path / "nope.json"), "-c", str(checkpoint)], "no such file"),
    ]:
        result = run_cli(*args)
        assert result.exit_code == 1 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert run_cli("007bbfb7", "--views", "0").exit_code == 2
    assert run_cli("007bbfb7", "--sampler", "beam").exit_code == 2
    assert run_cli("007bbfb7", "--ranking", "best").exit_code == 2


# ---------------------------------------------------------------- `onn-arc solve` on several tasks


def truth_decoder(seen: Task, i: int, code: int) -> list[Candidate]:
    """A stub decoder that finds the true output where the task has one, and nothing otherwise."""
    return [] if seen.test[i].output is None else [candidate(seen.test[i].output, -0.1)]


@pytest.fixture
def folder(tmp_path) -> Path:
    """6150a2bd, puzzle-no-answer, and a task whose 30×30 test input does not fit a 512-token context."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name in ("6150a2bd", "puzzle-no-answer"):
        (tasks / f"{name}.json").write_text((DATA / f"{name}.json").read_text())
    big = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3] * 30] * 30, "output": [[4]]}]}
    (tasks / "big.json").write_text(json.dumps(big))
    return tasks


def test_cli_solve_a_folder_writes_every_task_with_two_grids(checkpoint, folder, tmp_path, monkeypatch):
    monkeypatch.setattr(solve, "decode_views", per_prompt(truth_decoder))
    out = tmp_path / "submission.json"
    result = run_cli(str(folder), "-c", str(checkpoint), "--ttt-steps", "0", "--views", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    big = next(line for line in lines if line.startswith("big "))
    assert "30×30 30×30 ✗" in big and "failed, copied the input: big: test[0] needs" in big
    assert any(line.startswith("6150a2bd ") and "3×3 3×3 ✓" in line for line in lines)
    assert any(line.startswith("puzzle-no-answer ") and "3×3 3×3" in line and "✓" not in line for line in lines)
    assert "solved 1/2 tasks with test outputs" in result.stdout and "copy the input: pass@2 0.000" in result.stdout
    assert f"wrote {out} (3 tasks)" in result.stderr
    submission = load_submission(out)
    tasks = {t.id: t for t in load_source(str(folder))}
    assert sorted(submission) == sorted(tasks)
    assert submission["big"] == [(tasks["big"].test[0].input,) * 2]  # the copy-the-input guess
    assert submission["6150a2bd"] == [(tasks["6150a2bd"].test[0].output,) * 2]  # one grid found: repeated
    assert submission["puzzle-no-answer"] == [(tasks["puzzle-no-answer"].test[0].input,) * 2]  # none found


def test_cli_solve_a_kaggle_challenges_file(checkpoint, tmp_path):
    tasks = load_source(str(DATA))[1:]  # 25ff71a9 (2 tests), 6150a2bd, puzzle-no-answer
    challenges = {t.id: {"train": t.to_json()["train"], "test": [{"input": p.to_json()["input"]} for p in t.test]}
                  for t in tasks}  # fmt: skip
    path = tmp_path / "arc-agi_evaluation_challenges.json"
    path.write_text(json.dumps(challenges))
    out = tmp_path / "submission.json"
    result = run_cli(str(path), "-c", str(checkpoint), "--ttt-steps", "0", "--views", "2", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == json.loads(out.read_text()) and list(printed) == [t.id for t in tasks]
    for task in tasks:
        entries = printed[task.id]
        assert len(entries) == len(task.test)
        assert all(isinstance(e["attempt_1"], list) and isinstance(e["attempt_2"], list) for e in entries)
    text = run_cli(str(path), "-c", str(checkpoint), "--ttt-steps", "0", "--views", "1")
    assert text.exit_code == 0, text.output
    assert [line.split()[0] for line in text.stdout.splitlines()] == [t.id for t in tasks]  # no ✓/✗, no score
    assert "✓" not in text.stdout and "✗" not in text.stdout and "pass@2" not in text.stdout


def test_cli_solve_interrupted_leaves_a_valid_submission_of_the_tasks_done(checkpoint, folder, tmp_path, monkeypatch):
    solved = []

    def interrupt_second(model, task, cfg):
        if solved:
            raise KeyboardInterrupt
        solved.append(task.id)
        return solve.solve_or_copy(model, task, cfg)

    monkeypatch.setattr(onn_arc.cli.solve, "solve_or_copy", interrupt_second)
    out = tmp_path / "submission.json"
    result = run_cli(str(folder), "-c", str(checkpoint), "--ttt-steps", "0", "--views", "1", "--out", str(out))
    assert result.exit_code == 130
    assert list(load_submission(out)) == solved == ["6150a2bd"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.json", "tasks"]  # no temporary file left


def test_cli_solve_explain_needs_one_task(checkpoint, folder):
    result = run_cli(str(folder), "-c", str(checkpoint), "--explain")
    assert result.exit_code == 1 and "--explain draws one task" in result.stderr
