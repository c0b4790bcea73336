"""Teacher-forced training on ARC tasks (the library side of `onn-arc train`).

Every step draws pool entries, applies one random whole-task augmentation to each,
encodes them (DESIGN §3b) and packs them into a batch of at most `batch_tokens`
padded tokens, then takes one optimizer step on the DESIGN §5 losses.

A pool entry (`PairExample`) is one pair with its task's code index. Sources give
their demos and test pairs; demo-only sources (and sources without test outputs)
their demos, and, with `input_loss`, their test inputs alone with the loss on input
cells. A demo-only source's test output never enters the pool. With
`ModelConfig.copies` = K, every task enters as K augmented copies (`copies_of`, the
identity first), each with its own code and one augmentation for all its pairs, so
that no code sees its rule under two colour maps or orientations.

Determinism and resumption: the data of step s on rank r comes from a generator
seeded with (seed, s, r), and so does the torch RNG, so the step number is the
whole data cursor. A run stopped and resumed from a checkpoint ends with the
same weights as one never stopped (step budgets; a wall-clock budget stops
wherever the time runs out).

EMA (`TrainConfig.ema`): the run keeps the moving average of its weights after each step (`ema_update`), and its
checkpoints ship that average (what solve, eval, --init and `make ship` load); the raw weights go into the training
state, which --resume continues from.

Stages: `prepare(..., init=checkpoint)` starts a new run from a checkpoint's weights with a fresh optimizer and lr
schedule, so a long training can go on stage by stage; each checkpoint lists the stages behind it (checkpoint.py).
A stage starts from the weights its init checkpoint ships (an EMA stage's average), with a fresh average of its own.
A stage may train on other tasks than the one before it: shared tasks keep their codes (`_init_state`).

Distributed data parallel (torchrun): each rank draws its own batch, gradients
and Gauss-Newton statistics are averaged with all-reduce before the update, and
only rank 0 writes checkpoints and metrics.
"""

import copy
import functools
import json
import math
import os
import signal
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from onn_arc.augment import Augmentation, input_colours
from onn_arc.checkpoint import MODEL_FILE, LoadedCheckpoint, Stage, TrainingData, load_checkpoint, save_checkpoint
from onn_arc.config import COPY_MARK, AugmentConfig, ModelConfig, OptimizerConfig, TrainConfig
from onn_arc.data import Pair, Task, load_source
from onn_arc.errors import ConfigError, TaskError, TrainingError
from onn_arc.losses import forward_backward
from onn_arc.model import TinyONN
from onn_arc.optim import GaussNewton, MuonAdamW
from onn_arc.precision import resolve as resolve_precision
from onn_arc.tokens import PAD, Batch, Sequence, collate, encode_pair, pair_room

EVAL_SPLITS = ("arc1-eval", "arc2-eval")
BUCKET = 2  # a batch's companions come from the BUCKET × (how many fit) examples nearest its first in length


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class PairExample:
    """One pair of `task` with the task's code index; a pair without output is a test input trained on with the
    input loss only."""

    task: Task
    pair: Pair
    code: int  # the task's row in the model's task-code table (its copy's row, with copies)
    input_loss: bool  # the loss is on the input grid too (always, for a test input without its output)
    view: Augmentation | None = None  # a copy's augmentation, the same every time; None: a random one each time

    @property
    def key(self) -> str:
        """What its code row is named in the model's `task_ids`."""
        return code_key(self.task.id, self.view)

    @functools.cached_property
    def length(self) -> int:
        """Its tokens in its longest orientation: what the batcher buckets by."""
        return pair_room(self.pair)

    @functools.cached_property
    def input_colours(self) -> frozenset[int]:
        return input_colours(self.task)

    def encode(self, aug: Augmentation, max_len: int) -> Sequence:
        """The augmented pair (demo order means nothing here); TaskError when it exceeds `max_len`."""
        answer = self.pair.output is not None
        return encode_pair(aug.apply_pair(self.pair), self.code, answer, self.input_loss, max_len)


def code_key(task_id: str, view: Augmentation | None) -> str:
    """The name of a code row: the task's id, or for an augmented copy the id and the copy's dihedral map and colours
    (demo order means nothing to a pair), e.g. 007bbfb7#d3c0123456789."""
    if view is None:
        return task_id
    return f"{task_id}{COPY_MARK}d{view.dihedral}c{''.join(map(str, view.colours))}"


def copies_of(task: Task, n: int, augment: AugmentConfig) -> list[Augmentation]:
    """The task's first `n` augmented copies: the identity, then distinct draws of `augment` seeded by the task's id
    alone, so that training and solving, any run and any seed, name the same copies (a prefix of a longer list)."""
    n_train, inputs = len(task.train), input_colours(task)
    rng = np.random.default_rng([zlib.crc32(task.id.encode()), 1 << 21])
    views, keys = [Augmentation.identity(n_train)], {code_key(task.id, Augmentation.identity(n_train))}
    for _ in range(100 * n):
        if len(views) >= n:
            break
        view = augment.draw(rng, n_train, inputs)
        if code_key(task.id, view) not in keys:
            views.append(view)
            keys.add(code_key(task.id, view))
    return views[:n]  # fewer when the task has fewer distinct augmentations


def pair_examples(
    task: Task, code: int, test_outputs: bool, input_loss: bool, view: Augmentation | None = None
) -> list[PairExample]:
    """A task's pool entries (of its copy `view`, when given): every demo; its test pairs when
    `test_outputs`, else, with `input_loss`, its test inputs stripped of their outputs."""
    demos = [PairExample(task, p, code, input_loss, view) for p in task.train]
    if test_outputs:
        return demos + [PairExample(task, p, code, input_loss, view) for p in task.test]
    if input_loss:
        return demos + [PairExample(task, Pair(input=p.input), code, True, view) for p in task.test]
    return demos


def pool_task_ids(pool: list[PairExample]) -> tuple[str, ...]:
    """The code key of each code index the pool's entries use, in index order (the model's `task_ids`)."""
    ids = {ex.code: ex.key for ex in pool}
    return tuple(ids[i] for i in range(len(ids)))


def build_pool(
    sources: list[str],
    demo_sources: list[str],
    input_loss: bool = False,
    copies: int = 0,
    augment: AugmentConfig = AugmentConfig(),
) -> tuple[list[PairExample], TrainingData]:
    """Entries from `sources` (demos and test outputs) and `demo_sources` (demos only; their test inputs too with
    `input_loss`), and their provenance. Each task (each of its `copies` augmented copies, drawn as `augment` says,
    when copies > 0) gets a code index, in order of first appearance (`pool_task_ids`)."""
    for name in sources:
        if name in EVAL_SPLITS:
            raise ConfigError(
                f"refusing to train on the test outputs of evaluation split '{name}'; "
                f"use it as a demo source (--demo-source {name}) to train on its demos only"
            )
    codes: dict[str, int] = {}

    def entries(task: Task, test_outputs: bool) -> list[PairExample]:
        views = copies_of(task, copies, augment) if copies else [None]
        return [
            ex
            for view in views
            for ex in pair_examples(
                task, codes.setdefault(code_key(task.id, view), len(codes)), test_outputs, input_loss, view
            )
        ]

    pool: list[PairExample] = []
    seen_ids: list[str] = []
    n_tasks = 0
    for name in sources:
        for task in load_source(name):
            n_tasks += 1
            pool += entries(task, task.has_test_outputs)
            if task.has_test_outputs:
                seen_ids.append(task.id)
    for name in demo_sources:
        for task in load_source(name):
            n_tasks += 1
            pool += entries(task, False)
    if not pool:
        raise ConfigError(f"no training examples in sources {sources + demo_sources}")
    data = TrainingData(
        sources=list(dict.fromkeys(sources + demo_sources)),
        test_outputs_from=list(dict.fromkeys(sources)),
        demos_only=list(dict.fromkeys(demo_sources)),
        task_ids_with_test_outputs=seen_ids,
        n_tasks=n_tasks,
    )
    return pool, data


def sample_batch(
    pool: list[PairExample], rng: np.random.Generator, batch_tokens: int, max_len: int, augment: AugmentConfig
) -> Batch:
    """A length-bucketed batch of at most `batch_tokens` padded tokens (longest sequence × sequences).

    The first example is drawn uniformly from the pool; the others are drawn (with replacement) among the
    BUCKET × n examples nearest to it in `length`, n being how many of its length fit the budget, each with its
    own random augmentation, until one more would overflow the budget. Sequences of a batch thus have similar
    lengths and little of it is padding (bench/model.py reports the real-token fraction).
    """
    lengths = np.array([min(ex.length, max_len) for ex in pool])  # (N,)
    order = np.argsort(lengths, kind="stable")  # pool indices, shortest first
    rank = np.empty_like(order)
    rank[order] = np.arange(len(pool))
    seqs: list[Sequence] = []
    longest, window = 0, (0, len(pool))  # the window of `order` drawn from; the whole pool until the first pick
    for _ in range(100 * len(pool)):
        i = int(order[rng.integers(*window)])
        ex = pool[i]
        aug = ex.view or augment.draw(rng, len(ex.task.train), ex.input_colours)
        try:
            seq = ex.encode(aug, max_len)
        except TaskError:  # it exceeds the context
            continue
        new_longest = max(longest, len(seq))
        if seqs and new_longest * (len(seqs) + 1) > batch_tokens:
            break
        if not seqs:
            size = min(len(pool), BUCKET * max(1, batch_tokens // len(seq)))
            start = min(max(0, int(rank[i]) - size // 2), len(pool) - size)
            window = (start, start + size)
        seqs.append(seq)
        longest = new_longest
    if not seqs:
        raise ConfigError(f"no training example fits a context of {max_len} tokens")
    return collate(seqs)


# ---------------------------------------------------------------- optimisation


def make_optimizer(model: TinyONN, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW; GaussNewton preconditioning the model's tapped weight matrices; or Muon on those matrices (both with
    AdamW for the rest)."""
    groups = model.param_groups(cfg.weight_decay)
    for g in groups:
        g["initial_lr"] = cfg.lr
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if cfg.name == "muon":
        return MuonAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    return GaussNewton(
        groups,
        layers=model.tapped_layers(),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        damping=cfg.damping,
        stat_decay=cfg.stat_decay,
        curvature_every=cfg.curvature_every,
        precondition_every=cfg.precondition_every,
        start_step=cfg.start_step,
    )


def lr_factor(progress: float, step: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_ratio` at progress 1."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return warm * (min_ratio + (1 - min_ratio) * cosine)


@torch.no_grad()
def ema_update(average: TinyONN, model: TinyONN, decay: float, t: int) -> None:
    """Fold `model`'s weights w_t after step t (from 1) into `average`, their bias-corrected moving average

        average_t = (1 - decay) / (1 - decay^t) · Σ_{s=1..t} decay^(t-s) w_s

    i.e. average_t = lerp(average_{t-1}, w_t, (1 - decay) / (1 - decay^t)): average_1 = w_1, and the weights the
    stage began from carry no weight (a plain EMA from them would keep decay^t of them: 13% after 2000 steps at
    0.999)."""
    for a, w in zip(average.parameters(), model.parameters(), strict=True):
        a.lerp_(w, (1 - decay) / (1 - decay**t))


def _all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t)
        t.div_(world)


def train_step(
    model: TinyONN,
    opt: torch.optim.Optimizer,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """Gradients of the DESIGN §5 losses on `batch`, clipped, then one optimizer step.

    A step whose loss or gradient is not finite is skipped (no update) and reported
    with `skipped=1`.
    """
    capture, curvature = nullcontext(), None
    if isinstance(opt, GaussNewton):
        capture = opt.capture()
        curvature = lambda logits, mask: opt.accumulate_curvature(logits, mask, generator)  # noqa: E731
    metrics = forward_backward(model, batch, cfg.loss, capture=capture, curvature=curvature, precision=cfg.precision)
    params = [p for p in model.parameters() if p.grad is not None]
    _all_reduce_mean([p.grad for p in params])
    if isinstance(opt, GaussNewton):
        _all_reduce_mean(opt.step_statistics())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    metrics["grad_norm"] = grad_norm
    finite = math.isfinite(grad_norm) and all(math.isfinite(v) for v in metrics.values())
    if finite:
        opt.step()
    metrics["skipped"] = 0.0 if finite else 1.0
    opt.zero_grad(set_to_none=True)
    if not finite and isinstance(opt, GaussNewton):
        opt.discard_step_statistics()
    return metrics


# ---------------------------------------------------------------- the run


@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], bool]]:
    """SIGINT/SIGTERM ask the loop to stop after the current step (a second SIGINT interrupts at once)."""
    requested = []

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(requested)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def step_generators(seed: int, step: int, rank: int, device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
    """Step `step`'s randomness on rank `rank`, all from (seed, step, rank): the data generator, the global torch RNG
    (the gate loss samples its tokens from it) and a torch generator on `device` for GN's sampled labels."""
    rng = np.random.default_rng([seed, step, rank])
    torch_seed = int(rng.integers(2**62))
    torch.manual_seed(torch_seed)
    return rng, torch.Generator(device).manual_seed(torch_seed)


@dataclass
class RunPaths:
    """A training run's folder: the latest checkpoint and the metrics log beside it."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"


def _trim_metrics(path: Path, last_step: int) -> None:
    """Keep only the metric lines of steps a resumed run will not repeat."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    path.write_text("".join(ln + "\n" for ln in lines))


def _sum_over_ranks(counts: list[int], device: torch.device) -> list[int]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return counts
    total = torch.tensor(counts, dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return total.tolist()


_COUNTERS = ("step", "elapsed", "tokens", "target_tokens", "padded_tokens")  # Run's counters, saved to resume


@dataclass
class Run:
    """A training run ready to go: model, optimizer and where it stands. The run is one training stage; the
    stages before it (from an `init` checkpoint) are kept to be chained in front of it in every checkpoint."""

    cfg: TrainConfig
    paths: RunPaths
    model: TinyONN
    opt: torch.optim.Optimizer
    pool: list[PairExample]
    data: TrainingData  # what this stage trains on
    earlier: list[Stage] = field(default_factory=list)  # the stages before this one, oldest first
    commands: list[str] = field(default_factory=list)  # the command lines of this stage (began it, then resumes)
    init_sha256: str | None = None  # the weights this stage began from; None: a fresh init
    ema: TinyONN | None = None  # the moving average of the weights (cfg.ema > 0): what checkpoints ship
    step: int = 0
    elapsed: float = 0.0  # seconds of this stage's steps
    tokens: int = 0  # real, target and padded tokens of this stage's steps, all ranks (Stage has their meaning)
    target_tokens: int = 0
    padded_tokens: int = 0

    @property
    def progress(self) -> float:
        """The fraction of the budget spent: of the steps or of the seconds, whichever binds first."""
        return max(self.step / self.cfg.steps, self.elapsed / self.cfg.seconds if self.cfg.seconds else 0.0)

    def stage(self) -> Stage:
        """This stage's record as it stands now."""
        return Stage(
            commands=self.commands, init_sha256=self.init_sha256, saved=datetime.now(UTC), data=self.data,
            steps=self.step, tokens=self.tokens, target_tokens=self.target_tokens, padded_tokens=self.padded_tokens,
            seconds=self.elapsed, precision=resolve_precision(self.cfg.precision, next(self.model.parameters()).device),
            ema=self.cfg.ema,
        )  # fmt: skip

    def save(self, metrics: dict[str, float]) -> None:
        """Atomically write the checkpoint with everything needed to resume (rank 0 only). With an EMA, the
        checkpoint's weights are the average and the raw weights go into the training state."""
        if _rank()[0] != 0:
            return
        state = {"optimizer": self.opt.state_dict()} | {name: getattr(self, name) for name in _COUNTERS}
        if self.ema is not None:
            state["weights"] = self.model.state_dict()
        stages = [*self.earlier, self.stage()]
        save_checkpoint(
            self.paths.checkpoint,
            self.model if self.ema is None else self.ema,
            TrainingData.union([stage.data for stage in stages]),
            self.step,
            metrics,
            train_config=self.cfg.model_dump(mode="json"),
            train_state=state,
            stages=stages,
        )

    def fit(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
        """Train until the budget; returns the last step's metrics ({} when the budget was already spent).

        Saves a checkpoint every `checkpoint_every` steps, at the end, and when
        SIGINT/SIGTERM asks it to stop. `on_step(step, metrics)` runs after every step.
        """
        cfg, model, opt = self.cfg, self.model, self.opt
        rank, world = _rank()
        device = next(model.parameters()).device
        model.train()
        metrics: dict[str, float] = {}
        bad_in_a_row = signalled = 0
        with _stop_on_signals() as stop_requested, open(self.paths.metrics, "a") if rank == 0 else nullcontext() as log:
            while self.step < cfg.steps and not (cfg.seconds and self.elapsed >= cfg.seconds):
                started = time.perf_counter()
                rng, generator = step_generators(cfg.seed, self.step, rank, device)
                batch = sample_batch(self.pool, rng, cfg.batch_tokens, cfg.model.max_len, cfg.augment).to(device)
                factor = lr_factor(self.progress, self.step, cfg.warmup_steps, cfg.min_lr_ratio)
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * factor
                metrics = train_step(model, opt, batch, cfg, generator)
                bad_in_a_row = bad_in_a_row + 1 if metrics["skipped"] else 0
                if bad_in_a_row >= cfg.max_bad_steps:
                    raise TrainingError(
                        f"{bad_in_a_row} steps in a row had a non-finite loss or gradient (step {self.step}); "
                        f"the last good checkpoint in {self.paths.checkpoint} is kept; try a lower --lr"
                    )
                self.step += 1
                if self.ema is not None:
                    ema_update(self.ema, model, cfg.ema, self.step)  # a skipped step's weights: the step before's
                seconds = time.perf_counter() - started
                self.elapsed += seconds
                metrics |= {"lr": opt.param_groups[0]["lr"], "tok_s": batch.n_tokens * world / seconds}
                if log is not None:
                    log.write(json.dumps({"step": self.step, "elapsed": self.elapsed, **metrics}) + "\n")
                    log.flush()
                if on_step is not None:
                    on_step(self.step, metrics)
                # each rank times itself, so the ranks stop (by a signal or the step-time) as soon as any one would:
                # a rank left alone in a collective hangs, then aborts
                spent = bool(cfg.seconds) and self.elapsed >= cfg.seconds
                counts = [int((batch.tokens != PAD).sum()), int(metrics["tokens"]), batch.tokens.numel()]
                real, target, padded, signalled, spent = _sum_over_ranks([*counts, stop_requested(), spent], device)
                self.tokens, self.target_tokens, self.padded_tokens = (
                    self.tokens + real, self.target_tokens + target, self.padded_tokens + padded
                )
                if (self.step % cfg.checkpoint_every == 0 or signalled) and not metrics["skipped"]:
                    self.save(metrics)  # never over the last good checkpoint with a skipped step's metrics
                if signalled or spent:
                    break
            if metrics and self.step % cfg.checkpoint_every != 0 and not signalled and not metrics["skipped"]:
                self.save(metrics)
        return metrics


def _check_init_model(init: ModelConfig, asked: ModelConfig) -> None:
    """A stage keeps its init checkpoint's architecture; only max_len may change (positions are rotary and grid
    coordinates, so no weight depends on the context length), the task ids and copies, which follow the stage's data
    (codes are carried over by their keys: `_init_state`), and dropout, which only training sees."""
    free = ("max_len", "task_ids", "copies", "dropout")
    differ = [n for n in ModelConfig.model_fields if n not in free and getattr(init, n) != getattr(asked, n)]
    if differ:
        has = ", ".join(f"{name}={getattr(init, name)}" for name in differ)
        asks = ", ".join(f"{name}={getattr(asked, name)}" for name in differ)
        raise ConfigError(
            f"--init: the checkpoint's model has {has} but the config asks for {asks}; "
            "a stage keeps its init checkpoint's architecture (only --max-len may change)"
        )


def _init_state(init: TinyONN, model: TinyONN) -> dict[str, torch.Tensor]:
    """`init`'s weights for `model`, a new stage's model of the same architecture. A stage may train on other tasks
    than its init checkpoint did (e.g. a transductive stage adds a split's demos to the training tasks): a task both
    know keeps its trained code, a task new to the stage starts from the mean of the trained codes, as a task never
    trained on does at solve time."""
    state = init.state_dict()
    trained = state["task_codes.weight"]  # (N_init, D)
    index = {task_id: i for i, task_id in enumerate(init.cfg.task_ids)}
    mean = trained.mean(0)  # (D,)
    codes = [trained[index[t]] if t in index else mean for t in model.cfg.task_ids]
    state["task_codes.weight"] = torch.stack(codes)  # (N, D)
    return state


def prepare(
    cfg: TrainConfig,
    out: Path,
    resume: bool = False,
    device: torch.device | str = "cpu",
    init: LoadedCheckpoint | None = None,
    command: str | None = None,
) -> Run:
    """Check the data and the run folder, build the model and optimizer, and restore them when resuming.

    `init`: a new run (a new training stage) starting from that checkpoint's weights, with a fresh optimizer and
    lr schedule; its stages are chained in front of this one. `command`: the command line, for the record.
    """
    rank, _ = _rank()
    paths = RunPaths(Path(out))
    if init is not None and resume:
        raise ConfigError("--init starts a new run from a checkpoint and --resume continues one; pass only one")
    if not resume and paths.checkpoint.exists():
        raise ConfigError(f"{paths.root}: already holds a run; pass --resume to continue it or choose another --out")
    if init is not None:
        _check_init_model(init.meta.model, cfg.model)
    pool, data = build_pool(cfg.sources, cfg.demo_sources, cfg.input_loss, cfg.model.copies, cfg.augment)
    model_cfg = cfg.model.model_copy(update={"task_ids": pool_task_ids(pool)})
    torch.manual_seed(cfg.seed)
    model = TinyONN(model_cfg).to(device)
    opt = make_optimizer(model, cfg.optimizer)
    commands = [command] if command else []
    run = Run(cfg, paths, model, opt, pool, data, commands=commands)
    if init is not None:
        model.load_state_dict(_init_state(init.model, model))
        run.earlier, run.init_sha256 = init.meta.stages, init.meta.files[MODEL_FILE]
    if resume:
        loaded = load_checkpoint(paths.checkpoint, device=device)
        state = loaded.train_state
        if state is None:
            raise ConfigError(f"{paths.checkpoint}: has no training state to resume from")
        if loaded.meta.model.task_ids != model_cfg.task_ids:  # codes would attach to other tasks
            raise ConfigError(
                f"--resume: these sources give {len(model_cfg.task_ids)} task codes in another order than the "
                f"{len(loaded.meta.model.task_ids)} the run trained; resume with its sources, or start a new stage "
                f"from it with --init {paths.checkpoint} (tasks both know keep their codes)"
            )
        if "tokens" not in state:
            raise ConfigError(
                f"{paths.checkpoint}: written by an onn-arc that did not record training stages; "
                f"start a new stage from it with --init {paths.checkpoint}"
            )
        shipped = loaded.model.state_dict()  # with an EMA, the average; the raw weights are in the state
        model.load_state_dict(state.get("weights", shipped))
        opt.load_state_dict(state["optimizer"])
        *run.earlier, current = loaded.meta.stages
        run.data = TrainingData.union([current.data, data])  # the sources may have changed on resuming
        run.commands, run.init_sha256 = current.commands + commands, current.init_sha256
        for name in _COUNTERS:
            setattr(run, name, state[name])
        if rank == 0:
            _trim_metrics(paths.metrics, run.step)
    if cfg.ema:
        run.ema = copy.deepcopy(model).requires_grad_(False)
        if resume and "weights" in state:  # else the average starts at the weights resumed (they were not averaged)
            run.ema.load_state_dict(shipped)
    if rank == 0:
        paths.root.mkdir(parents=True, exist_ok=True)
    return run


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (CUDA when available); under torchrun each rank takes its LOCAL_RANK GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)
