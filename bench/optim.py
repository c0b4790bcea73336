"""Gauss-Newton vs AdamW vs Muon at equal wall-clock, over seeds: held-out loss over time, time- and steps-to-target,
where GN's edge comes from (step time vs progress per step, GN's time split).

    python bench/optim.py [--seconds 120] [--seeds 3] [--threads 2] [--precision auto] [--size small] [--arch onn]
        [--lrs 1e-3 3e-3 1e-2] [--muon-lrs ...] [--batch-tokens 4096]
        [--curvature-every 10] [--precondition-every 50] [--damping 0.1] [--arms adamw gn muon gn_fp32]
                                                                                             (make bench-optim)

Arms: AdamW, GN (Gauss-Newton preconditioning of the tapped weight matrices, AdamW for the rest) and Muon
(`torch.optim.Muon` on those matrices, AdamW for the rest; its lr is on AdamW's scale, `optim/muon.py`), each in
`--precision` (auto: bf16 where the CPU has bf16 instructions); under bf16 a fourth arm, GN in fp32, runs too
(`bf16_equal_time_loss_ratio`: GN bf16's final held-out loss over GN fp32's, after the same seconds). `--arms`
runs fewer (AdamW and GN always run; a sweep of GN's settings needs neither Muon nor the fp32 reference).
`--curvature-every`, `--precondition-every` and `--damping` set GN's curvature and eigenbasis refresh intervals and
damping (OptimizerConfig), for sweeps by hand.

Data: the trainer's own pieces (`train.prepare`, `sample_batch`, `lr_factor`, `train_step`) on `arc1-train-nodev`
(320 ARC-AGI-1 training tasks) and arc1-dev's demos as a demo source (never its test outputs), so the held-out tasks
have trained task codes; held out: `--held-out` tasks of `arc1-dev` (a fixed seeded draw among those whose every
test pair fits 1024 tokens), their test pairs scored with those codes (transductive). Held-out loss: the
teacher-forced loss of the held-out test outputs (cells, row ends, closer; fp32) under the identity view and
`--views - 1` fixed random augmentations. (Until the in-context format was retired, after commit 841b775, the bench
trained that format by default, without arc1-dev's demos; `--format pairs` chose this.)

Seeds: seed s (0 .. `--seeds` - 1) sets the initial weights and the data order, the same for every arm: step k of
every seed-s run draws its batch from `train.step_generators(s, k)`. Tuning: every arm gets every lr of its grid
(`--lrs`; Muon `--muon-lrs`, by default the same values) at every seed, `--seconds` of training per run, its lr
schedule (warm-up, cosine) ending at that budget; an arm's lr is the one with the lowest median final held-out
loss over seeds (one lr per arm, not per seed). Timing: the clock counts training steps only (held-out
evaluations are outside it). All runs live in one process and are stepped interleaved, always the one with the
least training time next, so load on the shared machine falls on all alike. Per seed, target = AdamW's final
held-out loss; steps and time to reach it are interpolated linearly between evaluations (`inf` when a run never
does), and each ratio (GN over AdamW, Muon over AdamW, GN over Muon) is taken per seed; RESULT gives their median
and spread (min-max over seeds). GN's step time is split by wrapping its methods (sampled-label pass, Gram matrices
at the taps, factor averages, `psd_eigh`, the update) in this bench. Ends with one `RESULT key=value ...` line.
"""

import argparse
import functools
import itertools
import math
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from common import score, test_sequence  # bench/common.py, beside this script
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from onn_arc import train
from onn_arc.augment import Augmentation
from onn_arc.config import ModelConfig, OptimizerConfig, TrainConfig, one_line
from onn_arc.data import Task, load_split
from onn_arc.optim import GaussNewton, gauss_newton
from onn_arc.precision import resolve
from onn_arc.tokens import Sequence, encode_pair

TRAIN_SOURCE, DEV = "arc1-train-nodev", "arc1-dev"
HELD_OUT_MAX_TOKENS = 1024  # held-out candidates: every test pair fits in this many tokens
HELD_OUT_SEED = 0  # the held-out draw and views, the same for every seed
NEVER = 10**9  # a step budget no run reaches: the wall-clock budget ends every run
EIGH = gauss_newton.psd_eigh
LABELS = {"adamw": "AdamW", "gn": "GN", "muon": "Muon", "gn_fp32": "GN fp32"}  # the arms; gn_fp32 only under bf16


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
    """Time the optimizer's phases on this run (instance attributes shadow the methods; the optimizer is unchanged).
    `psd_eigh` is a module function: `advance` times it on the arm it steps."""
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
    """One arm (an optimizer in a precision) at one lr and seed: its run, held-out curve (step, seconds, loss), and
    its arm's clock (shared by the arm's runs)."""

    arm: str  # "adamw", "gn", "muon", or "gn_fp32" (the fp32 reference of a bf16 comparison)
    lr: float
    seed: int
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
    with t.clock("train_step"), mock.patch.object(gauss_newton, "psd_eigh", t.clock.wrap("eigh", EIGH)):
        metrics = train.train_step(run.model, run.opt, batch, cfg, generator)
    t.bad_in_a_row = t.bad_in_a_row + 1 if metrics["skipped"] else 0
    run.step += 1
    run.elapsed += time.perf_counter() - started


def held_out_tasks(n: int) -> list[Task]:
    """A fixed seeded draw of `n` arc1-dev tasks whose every test pair fits HELD_OUT_MAX_TOKENS."""
    candidates = [t for t in load_split(DEV) if all(len(encode_pair(p)) <= HELD_OUT_MAX_TOKENS for p in t.test)]
    if n > len(candidates):
        raise SystemExit(f"--held-out {n}: only {len(candidates)} {DEV} tasks fit {HELD_OUT_MAX_TOKENS} tokens")
    rng = np.random.default_rng(HELD_OUT_SEED)
    return [candidates[i] for i in sorted(rng.choice(len(candidates), n, replace=False))]


def held_out_sequences(tasks: list[Task], views: int, model: torch.nn.Module) -> list[Sequence]:
    """The held-out test outputs under the identity and `views - 1` random views, with each task's code."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    seqs = []
    for task in tasks:
        augs = [Augmentation.identity(len(task.train))] + [
            Augmentation.random(rng, len(task.train)) for _ in range(views - 1)
        ]
        seqs += [test_sequence(model, a.apply(task), i) for a in augs for i in range(len(task.test))]
    return seqs


def reach(curve: list[tuple[int, float, float]], target: float) -> tuple[float, float]:
    """(step, seconds) where the curve first gets to `target`, interpolated between its points; inf if never."""
    if curve[0][2] <= target:
        return 0.0, 0.0
    for (s0, t0, l0), (s1, t1, l1) in itertools.pairwise(curve):
        if l1 <= target:
            f = (l0 - target) / (l0 - l1)
            return s0 + f * (s1 - s0), t0 + f * (t1 - t0)
    return math.inf, math.inf


def ratio(a: float, b: float) -> float:
    """a / b, with x / inf = 0 for finite x, and nan for 0 / 0 or inf / inf."""
    return a / b if b else math.nan


def median(values: list[float]) -> float:
    return statistics.median(values) if not any(math.isnan(v) for v in values) else math.nan


def spread(values: list[float]) -> str:
    """min-max over seeds, as one RESULT value."""
    return f"{min(values):.3g}-{max(values):.3g}" if not any(math.isnan(v) for v in values) else "nan-nan"


PHASES = {  # result key: label
    "data": "data (sample_batch)",
    "fwd_bwd": "forward+backward (+ clipping)",
    "stats": "statistics (sampled pass, Grams, EMA)",
    "eigh": "eigen refresh (psd_eigh)",
    "update": "update",
}


def phase_ms(clock: Clock, steps: int) -> dict[str, float]:
    """Milliseconds per step in each of PHASES, averaged over `steps` (AdamW and Muon have no statistics or refresh:
    Muon's Newton-Schulz iterations are in its update)."""
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
    gn = OptimizerConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0, help="training seconds per run")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (initial weights and data order)")
    p.add_argument("--size", default="small", help="model preset")
    p.add_argument("--arch", default="onn", choices=["onn", "dense"])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="lr grid of AdamW and GN")
    p.add_argument("--muon-lrs", type=float, nargs="+", help="Muon's lr grid (AdamW's scale); default: --lrs")
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--curvature-every", type=int, default=gn.curvature_every, help="GN: steps between statistics")
    p.add_argument("--precondition-every", type=int, default=gn.precondition_every, help="GN: steps between eigh")
    p.add_argument("--damping", type=float, default=gn.damping, help="GN: damping relative to the mean curvature")
    p.add_argument("--held-out", type=int, default=16, help="held-out arc1-dev tasks")
    p.add_argument("--views", type=int, default=4, help="held-out views per test pair (the first is the identity)")
    p.add_argument("--evals", type=int, default=12, help="held-out evaluations per run, evenly spaced in time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--arms", nargs="+", default=list(LABELS), choices=list(LABELS), help="adamw and gn always run")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny preset, 2 seeds, one lr, 0.75 s per run")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.seconds, args.seeds, args.lrs, args.muon_lrs = "tiny", 0.75, 2, [1e-2], [1e-2]
        args.batch_tokens, args.held_out, args.views, args.evals = 1024, 3, 1, 2
    args.muon_lrs = args.muon_lrs or args.lrs
    args.arms = list(dict.fromkeys(["adamw", "gn", *args.arms]))
    if args.seeds < 1 or args.seconds <= 0:
        p.error("--seeds and --seconds must be positive")
    try:
        for lr in args.lrs + args.muon_lrs:
            OptimizerConfig(lr=lr, curvature_every=args.curvature_every, precondition_every=args.precondition_every,
                            damping=args.damping)  # fmt: skip
    except ValidationError as e:
        p.error(one_line(e, "optimizer settings"))
    return args


def run_trials(args: argparse.Namespace, log: Console) -> tuple[list[Trial], list[Task], int]:
    """Every (arm, lr, seed) run to its budget, stepped interleaved; held-out loss at the start and every
    budget / evals. Returns the trials, the held-out tasks and their number of sequences."""
    precision = resolve(args.precision, "cpu")
    arms = {name: (name, precision) for name in args.arms if name != "gn_fp32"}  # name: (optimizer, precision)
    if precision == "bf16" and "gn_fp32" in args.arms:
        arms["gn_fp32"] = ("gn", "fp32")
    clocks = {arm: Clock() for arm in arms}
    model_cfg = ModelConfig.preset(args.size, arch=args.arch)
    trials = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for arm, (optimizer, arm_precision) in arms.items():
                for lr in args.muon_lrs if optimizer == "muon" else args.lrs:
                    opt_cfg = OptimizerConfig(
                        name=optimizer, lr=lr, curvature_every=args.curvature_every,
                        precondition_every=args.precondition_every, damping=args.damping,
                    )  # fmt: skip
                    cfg = TrainConfig(
                        model=model_cfg, optimizer=opt_cfg, sources=[TRAIN_SOURCE], demo_sources=[DEV],
                        batch_tokens=args.batch_tokens, steps=NEVER, seconds=args.seconds, seed=seed,
                        precision=arm_precision,
                    )  # fmt: skip
                    run = train.prepare(cfg, Path(tmp) / f"{arm}-{lr}-{seed}")  # one seed: the same initial weights
                    instrument(run, clocks[arm])
                    trials.append(Trial(arm, lr, seed, run, clocks[arm]))
        tasks = held_out_tasks(args.held_out)
        seqs = held_out_sequences(tasks, args.views, trials[0].run.model)  # every run has the same task codes
        for t in trials:
            t.curve.append((0, 0.0, score(t.run.model, seqs).loss))
        while active := [t for t in trials if not t.done()]:
            t = min(active, key=lambda t: t.run.elapsed)
            advance(t)
            if t.run.elapsed >= len(t.curve) * args.seconds / args.evals or t.done():
                t.curve.append((t.run.step, t.run.elapsed, score(t.run.model, seqs).loss))
                log.print(
                    f"{t.arm:>7} lr={t.lr:g} seed {t.seed} step {t.run.step:5d} {t.run.elapsed:6.1f} s: "
                    f"held-out {t.curve[-1][2]:.4f}"
                )
    return trials, tasks, len(seqs)


def pick(trials: list[Trial]) -> dict[str, dict[int, Trial]]:
    """Per arm, its runs at its picked lr (lowest median final held-out loss over seeds; nan counts as inf), by seed."""
    picked = {}
    for arm in dict.fromkeys(t.arm for t in trials):
        runs = [t for t in trials if t.arm == arm]
        by_lr = {lr: [t for t in runs if t.lr == lr] for lr in dict.fromkeys(t.lr for t in runs)}
        lr = min(by_lr, key=lambda lr: statistics.median(np.nan_to_num([t.final for t in by_lr[lr]], nan=math.inf)))
        picked[arm] = {t.seed: t for t in by_lr[lr]}
    return picked


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out, log = Console(), Console(stderr=True)
    load_before = os.getloadavg()[0]
    trials, tasks, n_seqs = run_trials(args, log)
    best = pick(trials)
    arms, seeds = list(best), range(args.seeds)
    targets = {s: best["adamw"][s].final for s in seeds}  # per seed: AdamW's final held-out loss
    reached = {arm: {s: reach(best[arm][s].curve, targets[s]) for s in seeds} for arm in arms}  # (steps, seconds)

    def per_seed(arm: str, over: str, i: int) -> list[float]:
        """`arm`'s steps (i=0) or seconds (i=1) to the target over `over`'s, per seed."""
        return [ratio(reached[arm][s][i], reached[over][s][i]) for s in seeds]

    grid = Table(title=f"lr grid: {args.seconds:g} s per run, final held-out loss per seed (* = picked, by median)")
    for col in ("arm", "lr", "median", *(f"seed {s}" for s in seeds), "steps (median)"):
        grid.add_column(col, justify="left" if col == "arm" else "right")
    for arm in arms:
        for lr in dict.fromkeys(t.lr for t in trials if t.arm == arm):
            runs = sorted((t for t in trials if t.arm == arm and t.lr == lr), key=lambda t: t.seed)
            mark = " *" if runs[0] is best[arm][0] else ""
            finals = [f"{t.final:.4f}" for t in runs]
            steps = statistics.median(t.run.step for t in runs)
            grid.add_row(LABELS[arm], f"{lr:g}", f"{median([t.final for t in runs]):.4f}{mark}", *finals, f"{steps:g}")
    out.print(grid)

    curves = Table(title=f"held-out loss over time, median over seeds ({args.size} {args.arch})")
    for col in ("time s", *(LABELS[arm] for arm in arms), "GN / AdamW"):
        curves.add_column(col, justify="right")
    points = min(len(t.curve) for runs in best.values() for t in runs.values())
    for k in range(points):
        losses = {arm: median([best[arm][s].curve[k][2] for s in seeds]) for arm in arms}
        row = [f"{k * args.seconds / args.evals:g}", *(f"{losses[arm]:.4f}" for arm in arms)]
        curves.add_row(*row, f"{losses['gn'] / losses['adamw']:.3f}")
    out.print(curves)

    steps = {arm: sum(t.run.step for t in trials if t.arm == arm) for arm in arms}
    ms = {arm: phase_ms(best[arm][0].clock, steps[arm]) for arm in arms}
    progress = Table(
        title="where the edge comes from: steps to AdamW's final loss × ms per step = time to it (medians over seeds)"
    )
    for col in ("arm", "lr", "steps to target", "ms / step to it", "s to it", "final loss", "loss drop / 100 steps"):
        progress.add_column(col, justify="left" if col == "arm" else "right")
    for arm in arms:
        runs = [best[arm][s] for s in seeds]
        drop = median([100 * (t.curve[0][2] - t.final) / max(t.run.step, 1) for t in runs])
        progress.add_row(
            LABELS[arm], f"{runs[0].lr:g}", f"{median([reached[arm][s][0] for s in seeds]):.0f}",
            f"{median([1000 * ratio(reached[arm][s][1], reached[arm][s][0]) for s in seeds]):.1f}",
            f"{median([reached[arm][s][1] for s in seeds]):.1f}", f"{median([t.final for t in runs]):.4f}",
            f"{drop:.4f}",
        )  # fmt: skip
    out.print(progress)

    counts = ", ".join(f"{LABELS[arm]} {steps[arm]} steps" for arm in arms)
    split = Table(title=f"time per step, ms, all runs of each arm ({counts})")
    split.add_column("phase")
    for arm in arms:
        split.add_column(LABELS[arm], justify="right")
    for key, label in PHASES.items():
        split.add_row(label, *(f"{ms[arm][key]:.1f}" for arm in arms))
    split.add_row("total", *(f"{sum(ms[arm].values()):.1f}" for arm in arms))
    out.print(split)

    gn_clock, n_layers = best["gn"][0].clock, len(best["gn"][0].run.model.tapped_layers())
    collections, refreshes = gn_clock.calls["factor_ema"] // n_layers, gn_clock.calls["eigh"] // (2 * n_layers)
    out.print(
        f"GN ({n_layers} tapped layers, curvature every {args.curvature_every}, eigh every {args.precondition_every}, "
        f"damping {args.damping:g}): {collections} statistics collections "
        f"({ms['gn']['stats'] * steps['gn'] / max(collections, 1):.0f} ms each), {refreshes} eigen refreshes "
        f"({ms['gn']['eigh'] * steps['gn'] / max(refreshes, 1):.0f} ms each). "
        f"Held out ({len(tasks)} {DEV} tasks, {n_seqs} sequences): {' '.join(t.id for t in tasks)}. "
        f"Targets (AdamW's final per seed): {' '.join(f'{targets[s]:.4f}' for s in seeds)}. "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores.",
        soft_wrap=True,
    )

    half = points // 2
    finals = {arm: median([best[arm][s].final for s in seeds]) for arm in arms}
    ratios = {
        "gn_steps_ratio": per_seed("gn", "adamw", 0),
        "gn_time_ratio": per_seed("gn", "adamw", 1),
    }
    if "muon" in best:
        ratios |= {
            "muon_steps_ratio": per_seed("muon", "adamw", 0),
            "muon_time_ratio": per_seed("muon", "adamw", 1),
            "gn_vs_muon_time_ratio": per_seed("gn", "muon", 1),
        }
    optimizers = [arm for arm in arms if arm != "gn_fp32"]
    result = {}
    for key, values in ratios.items():
        result[key], result[f"{key}_spread"] = round(median(values), 3), spread(values)
    result |= {
        "initial_loss": round(median([best["adamw"][s].curve[0][2] for s in seeds]), 4),
        **{f"{arm}_final_loss": round(finals[arm], 4) for arm in optimizers},
        "loss_ratio_final": round(median([ratio(best["gn"][s].final, targets[s]) for s in seeds]), 4),
        "loss_ratio_half": round(
            median([ratio(best["gn"][s].curve[half][2], best["adamw"][s].curve[half][2]) for s in seeds]), 4
        ),
        **{f"{arm}_lr": best[arm][0].lr for arm in optimizers},
        **{f"{arm}_steps": round(statistics.median(t.run.step for t in best[arm].values())) for arm in optimizers},
        **{f"{arm}_ms_step": round(sum(ms[arm].values()), 1) for arm in optimizers},
        **{f"gn_ms_{key}": round(v, 1) for key, v in ms["gn"].items()},
        "seeds": args.seeds,
        "threads": args.threads,
        "precision": resolve(args.precision, "cpu"),
        "seconds": args.seconds,
        "size": args.size,
        "arch": args.arch,
        "batch_tokens": args.batch_tokens,
        "curvature_every": args.curvature_every,
        "precondition_every": args.precondition_every,
        "damping": args.damping,
    }
    if "gn_fp32" in best:
        result["bf16_equal_time_loss_ratio"] = round(
            median([ratio(best["gn"][s].final, best["gn_fp32"][s].final) for s in seeds]), 4
        )
        result["gn_fp32_steps"] = round(statistics.median(t.run.step for t in best["gn_fp32"].values()))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
