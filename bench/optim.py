"""Gauss-Newton vs AdamW at equal wall-clock: held-out loss over time, time- and steps-to-target, GN's time split.

    python bench/optim.py [--seconds 120] [--size small] [--arch onn] [--lrs 1e-3 3e-3 1e-2] [--precision auto]
    (make bench-optim)

Both optimizers train the same model (same preset, same seed, so the same initial weights) on ARC-AGI-1 training
tasks with the trainer's own pieces (`train.prepare`, `sample_batch`, `lr_factor`, `train_step`): step s of every
run draws its batch from `train.step_generators(seed, s)`, so all runs see the same data in the same order.
Held out: `--held-out` ARC-AGI-1 training tasks (a seeded draw among those whose every test pair encodes in
<= 1024 tokens with all demos), removed from the training pool; the held-out loss is the teacher-forced loss of
their test outputs under the identity view and `--views - 1` fixed random augmentations.
Tuning: each optimizer gets every lr of the same grid (`--lrs`) and the same `--seconds` of training per run,
its lr schedule (warm-up, cosine) ending at that budget; the run with the lowest final held-out loss is its pick.
Timing: the clock counts training steps only (held-out evaluations are outside it). All runs live in one process
and are stepped interleaved, always the one with the least training time next, so load on the shared machine
falls on all of them alike. Target = AdamW's final held-out loss; steps/time to reach it are interpolated
linearly between evaluations (`inf` when a run never reaches it). GN's per-step time is split by wrapping its
methods (sampled-label pass, Gram matrices at the taps, factor averages, `psd_eigh`, the update) in this bench.
Precision: every run trains in `--precision` (auto: bf16 where the CPU has bf16 instructions). Under bf16 a third arm,
GN in fp32 at every lr of the grid, runs interleaved with the others: `bf16_equal_time_loss_ratio` is the best bf16
GN run's final held-out loss over the best fp32 GN run's, after the same seconds of training.
Ends with one `RESULT key=value ...` line.
"""

import argparse
import functools
import itertools
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from common import score, test_output_sequence  # bench/common.py, beside this script
from rich.console import Console
from rich.table import Table

from onn_arc import train
from onn_arc.augment import Augmentation
from onn_arc.config import ModelConfig, OptimizerConfig, TrainConfig
from onn_arc.data import Task, load_split
from onn_arc.optim import GaussNewton, gauss_newton
from onn_arc.precision import resolve
from onn_arc.tokens import Sequence, encode_task

HELD_OUT_MAX_TOKENS = 1024  # held-out candidates: every test pair with all demos fits in this many tokens
NEVER = 10**9  # a step budget no run reaches: the wall-clock budget ends every run


class Clock:
    """Seconds and calls per named phase, gathered by wrapping callables."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: defaultdict[str, int] = defaultdict(int)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return timed


def instrument(run: train.Run, clock: Clock) -> None:
    """Time the optimizer's phases on this run (instance attributes shadow the methods; the optimizer is unchanged)."""
    opt = run.opt
    opt.step = clock.wrap("opt_step", opt.step)
    if not isinstance(opt, GaussNewton):
        return
    opt.accumulate_curvature = clock.wrap("sampled_pass", opt.accumulate_curvature)
    opt._update_factors = clock.wrap("factor_ema", opt._update_factors)
    capture, layers = opt.capture, run.model.tapped_layers()

    @contextmanager
    def timed_capture():
        with capture():
            for layer in layers:
                if layer.tap is not None:
                    layer.tap = clock.wrap("gram", layer.tap)
            yield

    opt.capture = timed_capture


@dataclass
class Trial:
    """One arm (an optimizer in a precision) at one lr: its run, held-out curve (step, seconds, loss) and clock."""

    name: str  # "adamw", "gn", or "gn_fp32" (the fp32 reference of a bf16 comparison)
    lr: float
    run: train.Run
    clock: Clock
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    bad_in_a_row: int = 0

    @property
    def final(self) -> float:
        return self.curve[-1][2] if self.bad_in_a_row < self.run.cfg.max_bad_steps else math.nan

    def done(self) -> bool:
        return self.run.elapsed >= self.run.cfg.seconds or not math.isfinite(self.final)


def advance(t: Trial) -> None:
    """One training step, as `Run.fit` takes it (same generators, batch, lr schedule and `train_step`)."""
    run, cfg = t.run, t.run.cfg
    started = time.perf_counter()
    rng, generator = train.step_generators(cfg.seed, run.step, 0, torch.device("cpu"))
    with t.clock("data"):
        batch = train.sample_batch(run.pool, rng, cfg.batch_tokens, cfg.model.max_len, cfg.augment)
    factor = train.lr_factor(run.elapsed / cfg.seconds, run.step, cfg.warmup_steps, cfg.min_lr_ratio)
    for g in run.opt.param_groups:
        g["lr"] = g["initial_lr"] * factor
    with t.clock("train_step"):
        metrics = train.train_step(run.model, run.opt, batch, cfg, generator)
    t.bad_in_a_row = t.bad_in_a_row + 1 if metrics["skipped"] else 0
    run.step += 1
    run.elapsed += time.perf_counter() - started


def held_out(seed: int, n: int, views: int, max_len: int) -> tuple[list[str], list[Sequence]]:
    """Ids of the held-out tasks and their test-output sequences under the identity and `views - 1` random views."""
    limit = min(HELD_OUT_MAX_TOKENS, max_len)
    fits = [t for t in load_split("arc1-train") if all(len(encode_task(t, i)) <= limit for i in range(len(t.test)))]
    rng = np.random.default_rng(seed)
    tasks: list[Task] = [fits[i] for i in sorted(rng.choice(len(fits), n, replace=False))]
    seqs = []
    for task in tasks:
        augs = [Augmentation.identity(len(task.train))] + [
            Augmentation.random(rng, len(task.train)) for _ in range(views - 1)
        ]
        seqs += [test_output_sequence(a.apply(task), i, max_len) for a in augs for i in range(len(task.test))]
    return [t.id for t in tasks], seqs


def reach(curve: list[tuple[int, float, float]], target: float) -> tuple[float, float]:
    """(step, seconds) where the curve first gets to `target`, interpolated between its points; inf if never."""
    if curve[0][2] <= target:
        return 0.0, 0.0
    for (s0, t0, l0), (s1, t1, l1) in itertools.pairwise(curve):
        if l1 <= target:
            f = (l0 - target) / (l0 - l1)
            return s0 + f * (s1 - s0), t0 + f * (t1 - t0)
    return math.inf, math.inf


PHASES = {  # result key: label
    "data": "data (sample_batch)",
    "fwd_bwd": "forward+backward (+ clipping)",
    "stats": "statistics (sampled pass, Grams, EMA)",
    "eigh": "eigen refresh (psd_eigh)",
    "update": "update",
}


def phase_ms(clock: Clock, steps: int) -> dict[str, float]:
    """Milliseconds per step in each of PHASES, averaged over `steps` (AdamW has no statistics or refresh)."""
    s = clock.seconds
    seconds = {
        "data": s["data"],
        "fwd_bwd": s["train_step"] - s["sampled_pass"] - s["gram"] - s["opt_step"],
        "stats": s["sampled_pass"] + s["gram"] + s["factor_ema"],
        "eigh": s["eigh"],
        "update": s["opt_step"] - s["eigh"] - s["factor_ema"],
    }
    return {key: 1000 * v / max(steps, 1) for key, v in seconds.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0, help="training seconds per run")
    p.add_argument("--size", default="small", help="model preset")
    p.add_argument("--arch", default="onn", choices=["onn", "dense"])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="lr grid, the same for both")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--held-out", type=int, default=16, help="held-out ARC-AGI-1 training tasks")
    p.add_argument("--views", type=int, default=4, help="held-out views per test pair (the first is the identity)")
    p.add_argument("--evals", type=int, default=12, help="held-out evaluations per run, evenly spaced in time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny preset, 1.5 s per run")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.seconds, args.lrs, args.batch_tokens = "tiny", 1.5, [1e-3, 1e-2], 1024
        args.held_out, args.views, args.evals = 3, 1, 2
    return args


def run_trials(args: argparse.Namespace, held_ids: list[str], held_seqs: list[Sequence], log: Console) -> list[Trial]:
    """Every (lr, optimizer) run to its budget, stepped interleaved; held-out loss at start and every budget / evals."""
    precision = resolve(args.precision, "cpu")
    arms = {"adamw": ("adamw", precision), "gn": ("gn", precision)}  # name: (optimizer, precision)
    if precision == "bf16":
        arms["gn_fp32"] = ("gn", "fp32")
    clocks = {name: Clock() for name in arms}
    gauss_newton.psd_eigh = clocks["gn"].wrap("eigh", gauss_newton.psd_eigh)  # in this process only
    model_cfg = ModelConfig.preset(args.size, arch=args.arch)
    trials = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in args.lrs:
            for name, (optimizer, arm_precision) in arms.items():
                cfg = TrainConfig(
                    model=model_cfg,
                    optimizer=OptimizerConfig(name=optimizer, lr=lr),
                    batch_tokens=args.batch_tokens,
                    steps=NEVER,
                    seconds=args.seconds,
                    seed=args.seed,
                    precision=arm_precision,
                )
                run = train.prepare(cfg, Path(tmp) / f"{name}-{lr}")  # same seed: the same initial weights
                run.pool = [ex for ex in run.pool if ex.task.id not in held_ids]
                instrument(run, clocks[name])
                trials.append(Trial(name, lr, run, clocks[name], [(0, 0.0, score(run.model, held_seqs).loss)]))
        while active := [t for t in trials if not t.done()]:
            t = min(active, key=lambda t: t.run.elapsed)
            advance(t)
            if t.run.elapsed >= len(t.curve) * args.seconds / args.evals or t.done():
                t.curve.append((t.run.step, t.run.elapsed, score(t.run.model, held_seqs).loss))
                loss = t.curve[-1][2]
                log.print(f"{t.name:>7} lr={t.lr:g} step {t.run.step:5d} {t.run.elapsed:6.1f} s: held-out {loss:.4f}")
    return trials


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out, log = Console(), Console(stderr=True)
    load_before = os.getloadavg()[0]
    held_ids, held_seqs = held_out(args.seed, args.held_out, args.views, ModelConfig.preset(args.size).max_len)
    trials = run_trials(args, held_ids, held_seqs, log)
    best = {
        name: min((t for t in trials if t.name == name), key=lambda t: np.nan_to_num(t.final, nan=math.inf))
        for name in dict.fromkeys(t.name for t in trials)
    }
    adamw, gn = best["adamw"], best["gn"]
    target = adamw.final
    (a_steps, a_time), (g_steps, g_time) = reach(adamw.curve, target), reach(gn.curve, target)

    grid = Table(title=f"lr grid: {args.seconds:g} s per run, final held-out loss (* = picked)")
    for col in ("optimizer", "lr", "steps", "final loss"):
        grid.add_column(col, justify="left" if col == "optimizer" else "right")
    for t in trials:
        grid.add_row(t.name, f"{t.lr:g}", str(t.run.step), f"{t.final:.4f}" + (" *" if t is best[t.name] else ""))
    out.print(grid)

    curves = Table(title=f"held-out loss over time ({args.size} {args.arch}, {args.threads} threads)")
    for col in ("time s", "AdamW step", "AdamW loss", "GN step", "GN loss", "GN / AdamW"):
        curves.add_column(col, justify="right")
    for k, (a, g) in enumerate(zip(adamw.curve, gn.curve)):
        row = (k * args.seconds / args.evals, a[0], f"{a[2]:.4f}", g[0], f"{g[2]:.4f}", f"{g[2] / a[2]:.3f}")
        curves.add_row(*map(str, row))
    out.print(curves)

    steps = {name: sum(t.run.step for t in trials if t.name == name) for name in ("gn", "adamw")}
    ms = {name: phase_ms(best[name].clock, n) for name, n in steps.items()}
    split = Table(title=f"time per step, ms (all runs: GN {steps['gn']} steps, AdamW {steps['adamw']} steps)")
    for col in ("phase", "GN", "AdamW"):
        split.add_column(col, justify="left" if col == "phase" else "right")
    for key, label in PHASES.items():
        split.add_row(label, f"{ms['gn'][key]:.1f}", f"{ms['adamw'][key]:.1f}")
    split.add_row("total", *(f"{sum(ms[name].values()):.1f}" for name in ("gn", "adamw")))
    out.print(split)
    n_layers = len(gn.run.model.tapped_layers())
    collections, refreshes = gn.clock.calls["factor_ema"] // n_layers, gn.clock.calls["eigh"] // (2 * n_layers)
    out.print(
        f"GN ({n_layers} tapped layers): {collections} statistics collections "
        f"({ms['gn']['stats'] * steps['gn'] / max(collections, 1):.0f} ms each), {refreshes} eigen refreshes "
        f"({ms['gn']['eigh'] * steps['gn'] / max(refreshes, 1):.0f} ms each). "
        f"Held out ({len(held_ids)} ARC-AGI-1 training tasks, {len(held_seqs)} sequences): {' '.join(held_ids)}. "
        f"Target {target:.4f} (AdamW's final): AdamW reaches it at step {a_steps:.0f} / {a_time:.1f} s, GN at step "
        f"{g_steps:.0f} / {g_time:.1f} s. 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
        f"after on {os.cpu_count()} cores.",
        soft_wrap=True,
    )
    half = min(len(adamw.curve), len(gn.curve)) // 2
    result = {
        "gn_steps_ratio": round(g_steps / a_steps, 3) if a_steps else math.nan,
        "gn_time_ratio": round(g_time / a_time, 3) if a_time else math.nan,
        "adamw_final_loss": round(adamw.final, 4),
        "gn_final_loss": round(gn.final, 4),
        "loss_ratio_final": round(gn.final / adamw.final, 4),
        "loss_ratio_half": round(gn.curve[half][2] / adamw.curve[half][2], 4),
        "adamw_lr": adamw.lr,
        "gn_lr": gn.lr,
        "adamw_steps": adamw.run.step,
        "gn_steps": gn.run.step,
        "adamw_ms_step": round(sum(ms["adamw"].values()), 1),
        "gn_ms_step": round(sum(ms["gn"].values()), 1),
        **{f"gn_ms_{key}": round(v, 1) for key, v in ms["gn"].items()},
        "seconds": args.seconds,
        "size": args.size,
        "arch": args.arch,
        "threads": args.threads,
        "precision": resolve(args.precision, "cpu"),
    }
    if "gn_fp32" in best:
        result["bf16_equal_time_loss_ratio"] = round(gn.final / best["gn_fp32"].final, 4)
        result["gn_fp32_steps"] = best["gn_fp32"].run.step
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
