"""Solving one task (DESIGN §7): test-time training, augmented views, voting, two attempts.

1. Test-time training fine-tunes a deep copy of the model on the task's own demos as pairs under the task's code
   (the code alone, or the code and the weights: `SolveConfig.ttt_params`; the test outputs are never involved),
   randomly augmented, for at most `ttt_steps` steps and `ttt_seconds` seconds, with the training step of `train.py`
   and a cosine-decayed lr, in `cfg.precision`.
2. `views` augmented copies of the task are decoded in fp32 (view 0 is the task as given, the others random
   whole-task augmentations; one token at a time bf16 autocast is slower, bench/model.py), each test input as a
   prompt under the view's code; the context must hold each prompt and an output as large as the largest grid in
   the task (`check_fits`). Both samplers decode every view's prompts together (`decode.greedy_batch`,
   `decode.dfs_batch`, up to BATCH_ROWS at a time: several times the tokens/s of one by one on a CPU, bench/solve.py).
3. Every candidate grid is mapped back through its view's inverse, and each distinct grid is scored as a product of
   experts (the ARChitects' "Product of Experts"): its teacher-forced log-probability in every view (the test input
   and the grid mapped into the view, under the view's code), summed over the views; a log-probability counts the
   grid's cells, row ends and end as decoding counts a candidate's (`decode.teacher_forced`), so in a view that
   produced the grid it is what decoding found. Full forward passes over batches of every (view, grid) sequence
   score a test input's grids: cheap next to decoding them token by token.
4. Distinct grids are ranked (`SolveConfig.ranking`) by the number of views that produced them, then by their
   log-probability summed over those views ("votes"), or by their product-of-experts score ("poe"); either way a grid
   equal to the test input ranks last (an ARC output almost never equals its input: the copy is the fallback, not an
   answer; on the dev set this raised pass@1 and changed-cell accuracy, README). The top two are the attempts;
   there are always two (`two_attempts`): the best twice when only one grid was found, the test input itself twice
   (the copy-the-input guess) when none was or the task could not be solved (`solve_or_copy`).

The task is conditioned on its code (DESIGN §3b): the code it was trained with when the model saw the task's demos
(transductive training), else a fresh code on a copy of the model (`SolveConfig.task_code_init`).
A model with codes per augmented copy (`ModelConfig.copies`) solves the task as copies: each view is one of the task's
copies (`train.copies_of`, the identity first) with its own code, test-time training fits each view's demos in that
view under its code, and each view decodes under its code; so no code is shown its rule under two colour maps.

Decoding and scoring may share a wall-clock budget, `cfg.search_seconds` after test-time training (none by default:
it trades reproducibility for a time bound): past it no more tokens are decoded (a search keeps the grids it found, a
greedy view still writing gives none) and a test input whose scoring is not finished is ranked by votes (every
candidate unscored).

Everything random comes from `cfg.seed`: the same model, task and config give the same solution (with a step
budget and a search that ends inside its budget; a wall-clock budget stops wherever the time runs out).
"""

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from onn_arc import decode
from onn_arc.augment import INVERSE_DIHEDRAL, Augmentation, dihedral_map, input_colours
from onn_arc.config import AugmentConfig, CodeInit, ModelConfig, Ranking, SolveConfig, TrainConfig
from onn_arc.data import Grid, Pair, Task
from onn_arc.errors import TaskError
from onn_arc.model import TinyONN
from onn_arc.scoring import TwoAttempts
from onn_arc.tokens import Sequence, encode_pair, grid_room
from onn_arc.train import (
    PairExample, code_key, copies_of, lr_factor, make_optimizer, pair_examples, sample_batch, step_generators,
    train_step,
)  # fmt: skip

BATCH_ROWS = 32  # prompts greedy decodes together at most (a row's KV cache: ~8 MB for the base preset)
Progress = Callable[[str, int, int], None]  # (stage, done, total): "ttt" steps, "decode" view × test prompts, then
# "greedy" prompts (the test inputs dfs found no grid for)
Score = Callable[[list[Grid]], list[float | None]]  # a test input's candidate grids -> their product-of-experts scores


@dataclass(frozen=True)
class Ranked:
    """A distinct candidate grid after voting, in the task's own orientation."""

    grid: Grid
    votes: int  # views that produced it
    logprob: float  # summed over those views
    views: tuple[int, ...]  # which views
    poe: float | None = None  # its log-probability summed over every view (`poe_scores`; None: not scored)

    def to_json(self) -> dict:
        grid = [list(row) for row in self.grid]
        return {"grid": grid, "votes": self.votes, "logprob": self.logprob, "views": list(self.views), "poe": self.poe}

    @staticmethod
    def from_json(d: dict) -> "Ranked":
        """A stored candidate (results.jsonl); one stored before PoE scoring has no score."""
        grid = tuple(tuple(row) for row in d["grid"])
        return Ranked(grid, d["votes"], d["logprob"], tuple(d["views"]), d.get("poe"))


@dataclass(frozen=True)
class Answer:
    """The answer to one test input."""

    attempts: TwoAttempts  # `two_attempts` of the candidates
    candidates: tuple[Ranked, ...]  # every distinct grid, ranked
    confidence: np.ndarray | None  # (H, W) attempt 1: per-cell probability, mean over the views that produced it
    activation: np.ndarray | None  # (H, W) attempt 1: per-cell SBL activation rate, mean over those views
    # (confidence and activation are None when no view produced a grid)


@dataclass(frozen=True)
class Solution:
    task_id: str
    tests: tuple[Answer, ...]  # one per test input, in order
    views: tuple[Augmentation, ...]  # view 0 is the identity
    ttt_steps: int  # test-time training steps taken
    ttt_seconds: float
    ttt_loss: float | None  # main loss of the last test-time training step (None without one)

    @property
    def attempts(self) -> list[TwoAttempts]:
        return [t.attempts for t in self.tests]

    def to_json(self) -> dict:
        return {
            "attempts": [[[list(r) for r in g] for g in t.attempts] for t in self.tests],
            "candidates": [[c.to_json() for c in t.candidates] for t in self.tests],
            "views": [v.to_json() for v in self.views],
            "ttt_steps": self.ttt_steps,
            "ttt_seconds": self.ttt_seconds,
            "ttt_loss": self.ttt_loss,
        }


# ---------------------------------------------------------------- the context and task codes


def output_room(task: Task) -> int:
    """Tokens kept free after a prompt: the largest grid of the task, plus the token that ends it."""
    grids = [p.output for p in task.train] + [p.input for p in task.test]
    return 1 + max(grid_room(g) for g in grids)


def check_fits(task: Task, max_len: int) -> None:
    """TaskError when a test input, with room for its output, cannot fit the context."""
    room = output_room(task)
    for i, pair in enumerate(task.test):
        need = 3 + grid_room(pair.input) + room  # BOS IN input OUT, then the output
        if need > max_len:
            h, w = len(pair.input), len(pair.input[0])
            raise TaskError(
                f"{task.id}: test[{i}] needs {need} tokens (a {h}×{w} input and room for the output), "
                f"the model's context holds {max_len}"
            )


def view_key(model: ModelConfig, task: Task, view: Augmentation | None = None) -> str:
    """The code key of the task in `view` (None: as given): the task's own code, whatever the view, or, in a model
    with codes per copy, the code of that copy."""
    if not model.copies:
        return task.id
    return code_key(task.id, view or Augmentation.identity(len(task.train)))


def with_task_code(model: TinyONN, task: Task, init: CodeInit, views: Iterable[Augmentation | None] = (None,)) -> TinyONN:
    """`model` itself when it has a code for the task in every view (trained on its demos: transductive), else a deep
    copy with fresh codes for those it lacks (the model given is never changed)."""
    keys = dict.fromkeys(view_key(model.cfg, task, v) for v in views)
    missing = [key for key in keys if key not in model.cfg.task_ids]
    if not missing:
        return model
    fresh = copy.deepcopy(model)
    for key in missing:
        fresh.add_task_code(key, init)
    return fresh


def code_of(model: TinyONN, task: Task, view: Augmentation | None = None) -> int:
    """The task's row (in `view`, with codes per copy) in the model's task-code table."""
    return model.cfg.task_ids.index(view_key(model.cfg, task, view))


# ---------------------------------------------------------------- test-time training


def _ttt_pool(model: TinyONN, task: Task, views: list[Augmentation]) -> list[PairExample]:
    """What test-time training trains on, those that fit the context: the demos with the task's code, or, with codes
    per copy, each view's demos in that view with its code."""
    copies = views if model.cfg.copies else [None]
    demos = [ex for v in copies for ex in pair_examples(task, code_of(model, task, v), False, False, v)]
    return [ex for ex in demos if ex.length <= model.cfg.max_len]


def _ttt_optimizer(tuned: TinyONN, cfg: SolveConfig) -> torch.optim.Optimizer:
    """The optimizer of every parameter, or (ttt_params="code") AdamW on the task codes alone, the rest frozen."""
    if cfg.ttt_params == "all":
        return make_optimizer(tuned, cfg.optimizer)
    tuned.requires_grad_(False)
    codes = tuned.task_codes.weight.requires_grad_(True)
    o = cfg.optimizer
    group = {"params": [codes], "weight_decay": 0.0, "initial_lr": o.lr}
    return torch.optim.AdamW([group], lr=o.lr, betas=(o.beta1, o.beta2))


def fine_tune(
    model: TinyONN,
    task: Task,
    cfg: SolveConfig,
    on_progress: Progress | None = None,
    views: list[Augmentation] | None = None,
) -> tuple[TinyONN, int, float, float | None]:
    """(a fine-tuned deep copy of `model`, steps taken, seconds, last main loss); the model itself when switched
    off or when the task has nothing to train on that fits. `model` must have a code for the task (in each of
    `views`, default `views_of`: `with_task_code`)."""
    max_len = model.cfg.max_len
    pool = _ttt_pool(model, task, views_of(model.cfg, task, cfg) if views is None else views)
    if cfg.ttt_steps == 0 or not pool:
        return model, 0, 0.0, None
    device = next(model.parameters()).device
    tuned = copy.deepcopy(model).train()
    train_cfg = TrainConfig(
        model=model.cfg, loss=cfg.loss, optimizer=cfg.optimizer, augment=cfg.augment,
        batch_tokens=cfg.ttt_batch_tokens, steps=cfg.ttt_steps, grad_clip=cfg.grad_clip, seed=cfg.seed,
        precision=cfg.precision,
    )  # fmt: skip
    opt = _ttt_optimizer(tuned, cfg)
    started, step, loss = time.perf_counter(), 0, None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        while step < cfg.ttt_steps:
            elapsed = time.perf_counter() - started
            if cfg.ttt_seconds and elapsed >= cfg.ttt_seconds:
                break
            rng, generator = step_generators(cfg.seed, step, 0, device)
            batch = sample_batch(pool, rng, cfg.ttt_batch_tokens, max_len, cfg.augment).to(device)
            progress = max(step / cfg.ttt_steps, elapsed / cfg.ttt_seconds if cfg.ttt_seconds else 0.0)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lr_factor(progress, step, 0, 0.1)
            metrics = train_step(tuned, opt, batch, train_cfg, generator)
            loss = metrics["main"]
            step += 1
            if on_progress is not None:
                on_progress("ttt", step, cfg.ttt_steps)
    return tuned.eval(), step, time.perf_counter() - started, loss


# ---------------------------------------------------------------- views and voting


def choose_views(task: Task, n: int, seed: int, augment: AugmentConfig) -> list[Augmentation]:
    """View 0 is the task as given; the others are random whole-task augmentations drawn as `augment` says, as
    test-time training draws them (seeded). Fewer views are the first of more."""
    rng = np.random.default_rng([seed, 1 << 20])
    inputs, n_train = input_colours(task), len(task.train)
    return [Augmentation.identity(n_train)] + [augment.draw(rng, n_train, inputs) for _ in range(n - 1)]


def views_of(model: ModelConfig, task: Task, cfg: SolveConfig) -> list[Augmentation]:
    """The views a task is solved in: `choose_views`, or, in a model with codes per copy, the task's first
    `cfg.views` copies (`copies_of`: those it trained with, when it trained on the task's demos). Either way fewer
    views are the first of more; test-time training depends on them only with codes per copy (`_ttt_pool`)."""
    if model.copies:
        return copies_of(task, cfg.views, cfg.augment)
    return choose_views(task, cfg.views, cfg.seed, cfg.augment)


def two_attempts(ranked: list[Grid], test_input: Grid) -> TwoAttempts:
    """The two attempts submitted for a test input, from its candidate grids ranked best first: the best two distinct
    ones; the best twice when there is only one; the test input itself twice (the copy-the-input guess) when there is
    none. Kaggle's scorer accepts no missing attempt, so everything we submit goes through here."""
    best = list(dict.fromkeys(ranked))[:2] or [test_input]
    return best[0], best[-1]


def rank_key(ranking: Ranking, test_input: Grid) -> Callable[[Ranked], tuple]:
    """The sort key of a candidate, best first: a copy of `test_input` last; then by votes and summed log-probability,
    or by product-of-experts score (unscored grids after the scored ones) and then votes."""

    def key(r: Ranked) -> tuple:
        by_votes = (-r.votes, -r.logprob)
        if ranking == "poe":
            return (r.grid == test_input, math.inf if r.poe is None else -r.poe, *by_votes)
        return (r.grid == test_input, *by_votes)

    return key


def vote(
    views: list[Augmentation],
    found: list[list[decode.Candidate]],
    test_input: Grid,
    score: Score | None = None,
    ranking: Ranking = "votes",
) -> Answer:
    """Rank the distinct grids that `found[v]` (candidates decoded in view v's orientation) map back to, each scored by
    `score` (None: unscored), as `rank_key` says; the attempts for `test_input` are `two_attempts` of them."""
    hits: dict[Grid, list[tuple[int, decode.Candidate]]] = {}
    for v, (view, candidates) in enumerate(zip(views, found, strict=True)):
        for c in candidates:
            hits.setdefault(view.invert_grid(c.grid), []).append((v, c))
    scores = score(list(hits)) if score is not None and hits else [None] * len(hits)
    ranked = sorted(
        (
            Ranked(grid, len(h), sum(c.logprob for _, c in h), tuple(v for v, _ in h), poe)
            for (grid, h), poe in zip(hits.items(), scores, strict=True)
        ),
        key=rank_key(ranking, test_input),
    )
    attempts = two_attempts([r.grid for r in ranked], test_input)
    if not ranked:
        return Answer(attempts, (), None, None)
    best = hits[ranked[0].grid]

    def mean_map(field: str) -> np.ndarray:
        return np.mean([dihedral_map(getattr(c, field), INVERSE_DIHEDRAL[views[v].dihedral]) for v, c in best], axis=0)

    return Answer(attempts, tuple(ranked), mean_map("confidence"), mean_map("activation"))


def decode_prompt(model: TinyONN, task: Task, test_index: int, code: int | None = None) -> Sequence:
    """What the model decodes test input `test_index` of a (possibly augmented) task from: the input alone,
    conditioned on code `code` (default: the task's, `code_of`; the model must have it: `with_task_code`)."""
    code = code_of(model, task) if code is None else code
    return encode_pair(Pair(input=task.test[test_index].input), code, answer=False)


def answer_sequence(model: TinyONN, task: Task, test_index: int, output: Grid, code: int | None = None) -> Sequence:
    """`decode_prompt`'s sequence followed by `output` and the EOS that ends it, as decoding lays them out, the targets
    on those alone: what `decode.teacher_forced` scores a candidate grid of test input `test_index` from."""
    pair = Pair(input=task.test[test_index].input, output=output)
    return encode_pair(pair, code_of(model, task) if code is None else code)


def poe_scores(
    model: TinyONN,
    task: Task,
    views: list[Augmentation],
    test_index: int,
    grids: list[Grid],
    deadline: float | None = None,
) -> list[float | None]:
    """Each of `grids` (candidates for test input `test_index`, in the task's orientation) scored as a product of
    experts: its log-probability (`decode.teacher_forced`) in each of `views` (the task and the grid mapped into it,
    under the view's code), summed over the views; None for a grid whose sequence does not fit the context in some
    view, and for every grid when `deadline` (a `time.perf_counter()` value) passes before all are scored. The task's
    test outputs are never read."""
    seen = [(view, view.apply(task), code_of(model, task, view)) for view in views]  # (view, task in it, its code)
    seqs = [answer_sequence(model, t, test_index, v.apply_grid(grid), code) for grid in grids for v, t, code in seen]
    scores = decode.teacher_forced(model, seqs, deadline=deadline)
    if scores is None:
        return [None] * len(grids)
    each = iter(scores)
    per_grid = [[next(each) for _ in views] for _ in grids]
    return [None if None in logprobs else sum(logprobs) for logprobs in per_grid]


def decode_views(
    model: TinyONN,
    seen: list[tuple[Task, int]],
    cfg: SolveConfig,
    on_progress: Progress | None = None,
    deadline: float | None = None,
) -> list[list[list[decode.Candidate]]]:
    """Candidates [view][test] for every test input of each view's (possibly augmented) task under its code (`seen`:
    (task, code) per view), in that task's orientation, decoded by `cfg.sampler` in batches of BATCH_ROWS prompts
    until `deadline` (a `time.perf_counter()` value; None: no bound). With `cfg.greedy_fallback`, a test input for which
    dfs finds no grid above `cfg.min_prob` in any view gets every view's greedy grid instead.
    `on_progress(stage, done, total)` counts the prompts decoded ("decode", then "greedy")."""
    keys = [(v, i) for v, (task, _) in enumerate(seen) for i in range(len(task.test))]
    prompts = {(v, i): decode_prompt(model, seen[v][0], i, seen[v][1]) for v, i in keys}
    found = dict(zip(keys, _decode(model, list(prompts.values()), cfg, cfg.sampler, "decode", on_progress, deadline)))
    if cfg.sampler == "dfs" and cfg.greedy_fallback:
        tests = {i for _, i in keys} - {i for (_, i), grids in found.items() if grids}
        lost = [(v, i) for v, i in keys if i in tests]
        found |= zip(lost, _decode(model, [prompts[k] for k in lost], cfg, "greedy", "greedy", on_progress, deadline))
    return [[found[v, i] for i in range(len(task.test))] for v, (task, _) in enumerate(seen)]


def _decode(
    model: TinyONN,
    prompts: list[Sequence],
    cfg: SolveConfig,
    sampler: str,
    stage: str,
    on_progress: Progress | None,
    deadline: float | None,
) -> list[list[decode.Candidate]]:
    """The candidates of each prompt by `sampler`, BATCH_ROWS prompts at a time, counted as `stage`."""
    decoded = itertools.count(1)

    def tick(_: int) -> None:
        done = next(decoded)
        if on_progress is not None:
            on_progress(stage, done, len(prompts))

    found: list[list[decode.Candidate]] = []
    for start in range(0, len(prompts), BATCH_ROWS):
        batch = prompts[start : start + BATCH_ROWS]
        if sampler == "dfs":
            found += decode.dfs_batch(model, batch, cfg.min_prob, cfg.max_candidates, on_done=tick, deadline=deadline)
        else:
            found += decode.greedy_batch(model, batch, on_done=tick, deadline=deadline)
    return found


def solve_task(
    model: TinyONN,
    task: Task,
    cfg: SolveConfig,
    on_progress: Progress | None = None,
    on_tuned: Callable[[TinyONN], None] | None = None,
) -> Solution:
    """Test-time training on a copy of `model`, then decoding in `cfg.views` views, scoring every candidate in every
    view (those two within `cfg.search_seconds`), and ranking (`cfg.ranking`). The task's test outputs, if any, are
    never used here; `on_tuned` gets the model after test-time training, before decoding (evaluate.py scores the true
    outputs' loss with it). TaskError when a test input cannot fit the context."""
    check_fits(task, model.cfg.max_len)
    views = views_of(model.cfg, task, cfg)
    model = with_task_code(model, task, cfg.task_code_init, views)
    tuned, steps, seconds, loss = fine_tune(model, task, cfg, on_progress, views)
    if on_tuned is not None:
        on_tuned(tuned)
    deadline = None if cfg.search_seconds is None else time.perf_counter() + cfg.search_seconds
    seen = [(view.apply(task), code_of(tuned, task, view)) for view in views]
    found = decode_views(tuned, seen, cfg, on_progress, deadline)  # [view][test] -> candidates
    tests = tuple(
        vote(views, [f[i] for f in found], pair.input, partial(poe_scores, tuned, task, views, i, deadline=deadline),
             cfg.ranking)  # fmt: skip
        for i, pair in enumerate(task.test)
    )
    return Solution(task.id, tests, tuple(views), steps, seconds, loss)


def solve_or_copy(
    model: TinyONN,
    task: Task,
    cfg: SolveConfig,
    on_progress: Progress | None = None,
    on_tuned: Callable[[TinyONN], None] | None = None,
) -> tuple[Solution, str | None]:
    """(`solve_task`'s solution, None), or, when the task cannot be solved (a TaskError, e.g. a test input that does
    not fit the context), (the copy-the-input guess for every test input, the error's message)."""
    try:
        return solve_task(model, task, cfg, on_progress, on_tuned), None
    except TaskError as e:
        tests = tuple(vote([], [], pair.input) for pair in task.test)
        return Solution(task.id, tests, (), 0, 0.0, None), str(e)
