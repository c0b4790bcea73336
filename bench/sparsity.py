"""Does dynamic sparsity emerge? The design notes' prediction, gate-loss forms that can move the firing level, what
the sparsity would save, and whether routes mean something.

    python bench/sparsity.py [--seconds 600] [--fit-seconds 600] [--size small] [--precision auto]
    (make bench-sparsity)

Variants (`--variants`; each trains the same preset from the same seed with the trainer's pieces, `train.prepare`
and `common.advance`, which is `Run.fit`'s step):
    dense     the dense baseline (plain linear maps)
    off       Tiny-ONN with the gate and KL losses switched off
    softmax   Tiny-ONN as trained today: gate loss in its softmax form (blind to the firing level) + KL
    median    Tiny-ONN with the per-unit median gate loss (`LossConfig.gate_form`, losses.py) + KL, today's weights
    median_w1 the same with gate weight 1 (x100): at weight 0.01 the main loss's pull on the thresholds wins and every
              unit stays open (a tiny model fitting two tasks for 800 AdamW steps: rate 1.00 at 0.01 and 0.1, 0.74 at 1)

1. Capacity-redundant regime (the notes: "near-dense while capacity is insufficient; sparsity emerges only when
   capacity is redundant"): each Tiny-ONN variant trains on `--fit-tasks` ARC-AGI-1 training tasks only (a seeded
   draw from `arc1-train-nodev` among the small ones, `common.small_task` for FIT_MAX_TOKENS; augmented as
   in training) until the mean main loss of its last 10 steps is below `--fit-loss` or `--fit-seconds` run out. The
   training batches' activation rate per layer is logged over steps; the final rate per layer is measured on the
   tasks' test outputs (identity view): `activation_rate_fit` is the default recipe's (softmax: gate + KL on),
   `activation_rate_fit_off` the one without gate and KL.
2. Equal CPU time: every variant trains `--seconds` on `arc1-train-nodev` and the demos of `arc1-dev` (never its
   test outputs; the dev tasks thus have trained codes), then is scored teacher-forced on the test outputs of
   `--dev-tasks` arc1-dev tasks (the first small ones for the context, `common.small_task`; identity view):
   `tf_loss_<variant>` per target token, cell accuracy, changed-cell accuracy (argmax on the output cells that
   differ from the input, same-shape tests; copying the input scores 0) and activation rate: the Pareto front.
3. What the sparsity would save: the fraction of an SBL's value multiply-adds (x @ mu.T, d_in per unit and token)
   spent on units whose route is 0, per layer and over all SBLs weighted by d_in × d_out (`inactive_mac_fraction`:
   the default recipe's fit model on the fit tasks; `inactive_mac_fraction_<variant>`: the equal-time models on the
   dev tasks). The route logits themselves are computed for every unit, so at most half an SBL's work could go.
4. Routes that mean something: for each fit model, the active-unit set of a sequence is the units (all SBLs) that
   fire on more than half its tokens; `jaccard_same` is the mean Jaccard overlap of the sets of `--views` random
   augmentations of one fit task (its first test pair), `jaccard_other` the overlap between different tasks under
   the same augmentation. Routing that follows the task shows same > other; all-dense routing gives 1 and 1.

All runs of a part are stepped interleaved (always the one with the least training time next), so load on the shared
machine falls on all alike; the clock counts training steps only. Ends with tables and one `RESULT key=value ...`
line.
"""

import argparse
import itertools
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import advance, score, small_task, test_sequence  # bench/common.py, beside this script
from rich.console import Console
from rich.table import Table

from onn_arc import train
from onn_arc.augment import Augmentation
from onn_arc.config import LossConfig, ModelConfig, OptimizerConfig, TrainConfig
from onn_arc.data import Task, as_array, load_split
from onn_arc.losses import loss_mask
from onn_arc.model import TinyONN
from onn_arc.precision import resolve
from onn_arc.tokens import N_COLOURS, PAD, Sequence, collate

VARIANTS: dict[str, tuple[str, LossConfig]] = {  # name: (arch, losses); the module docstring says what each is
    "dense": ("dense", LossConfig()),
    "off": ("onn", LossConfig(gate_weight=0, kl_weight=0)),
    "softmax": ("onn", LossConfig()),
    "median": ("onn", LossConfig(gate_form="median")),
    "median_w1": ("onn", LossConfig(gate_form="median", gate_weight=1.0)),
}
DEFAULT = "softmax"  # today's recipe
FIT_MAX_TOKENS = 1024  # fit tasks: small for this many tokens (`common.small_task`)
NEVER = 10**9  # a step budget no run reaches: the wall-clock budget ends every run
Firing = dict[str, torch.Tensor]  # SBL name -> (T, d_out) bool: which units fire on each token of one sequence


# ---------------------------------------------------------------- training


def make_run(args: argparse.Namespace, variant: str, seconds: float, folder: Path) -> train.Run:
    """A run of `variant` on arc1-train-nodev (demos and test outputs) and arc1-dev's demos, `seconds` of budget."""
    arch, loss = VARIANTS[variant]
    cfg = TrainConfig(
        model=ModelConfig.preset(args.size, arch=arch),
        loss=loss,
        optimizer=OptimizerConfig(name=args.optimizer, lr=args.lr),
        sources=["arc1-train-nodev"],
        demo_sources=["arc1-dev"],
        batch_tokens=args.batch_tokens,
        precision=args.precision,
        steps=NEVER,
        seconds=seconds,
        seed=args.seed,
        checkpoint_every=NEVER,
    )
    return train.prepare(cfg, folder)  # same seed: the same initial weights for every onn variant


def layer_rates(model: TinyONN, valid: torch.Tensor) -> list[float]:
    """Per SBL, the fraction of units that fired in its last forward, over the `valid` (B, T) tokens."""
    return [layer.last_rate[valid].float().mean().item() for _, layer in model.routed_layers()]


def train_interleaved(
    runs: dict[str, train.Run], done: Callable[[list[dict]], bool], log: Console
) -> dict[str, list[dict]]:
    """Step the runs, always the one with the least training time next, each until its budget or `done(history)`;
    per run, the history of its steps (step, seconds, main loss, per-layer training-batch activation rates)."""
    history: dict[str, list[dict]] = {name: [] for name in runs}
    shown = dict.fromkeys(runs, -1.0)  # the budget fraction last logged
    while active := [name for name, run in runs.items() if not (run.elapsed >= run.cfg.seconds or done(history[name]))]:
        name = min(active, key=lambda n: runs[n].elapsed)
        run = runs[name]
        metrics, batch = advance(run)
        rates = layer_rates(run.model, batch.tokens != PAD)
        history[name].append({"step": run.step, "seconds": run.elapsed, "main": metrics["main"], "rates": rates})
        if run.elapsed / run.cfg.seconds >= shown[name] + 0.1:
            shown[name] = run.elapsed / run.cfg.seconds
            shown_rates = " ".join(f"{r:.2f}" for r in rates) or "(dense)"
            loss = metrics["main"]
            log.print(f"{name:>9} step {run.step:5d} {run.elapsed:6.1f} s: loss {loss:.4f} rates {shown_rates}")
    return history


# ---------------------------------------------------------------- measuring


@torch.inference_mode()
def probe(model: TinyONN, seq: Sequence) -> tuple[torch.Tensor, Firing]:
    """Logits (T, V) of one sequence (fp32) and, per SBL, which units fire on each of its tokens."""
    fired: Firing = {}

    def keep(name: str) -> Callable:
        return lambda layer, inputs, y: fired.__setitem__(name, layer.route_logits(inputs[0])[0] > 0)

    hooks = [layer.register_forward_hook(keep(name)) for name, layer in model.routed_layers()]
    try:
        b = collate([seq])
        logits = model(b.tokens, b.rows, b.cols, b.pos, task=b.task)[0]
    finally:
        for h in hooks:
            h.remove()
    return logits, fired


def layer_shapes(model: TinyONN) -> dict[str, tuple[int, int]]:
    return {name: (layer.d_in, layer.d_out) for name, layer in model.routed_layers()}


def inactive_fractions(model: TinyONN, firings: list[Firing]) -> tuple[dict[str, float], float]:
    """Per SBL, the fraction of its value multiply-adds (d_in per unit and token) on units that do not fire, over all
    tokens of `firings`; and over all SBLs, weighted by d_in × d_out."""
    shapes = layer_shapes(model)
    per_layer = {name: 1 - torch.cat([f[name] for f in firings]).float().mean().item() for name in shapes}
    weights = {name: d_in * d_out for name, (d_in, d_out) in shapes.items()}
    total = sum(per_layer[name] * w for name, w in weights.items()) / sum(weights.values())
    return per_layer, total


def active_set(firing: Firing) -> torch.Tensor:
    """(units,) bool over all SBLs: the units that fire on more than half of the sequence's tokens."""
    return torch.cat([f.float().mean(0) > 0.5 for f in firing.values()])


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def route_overlap(model: TinyONN, tasks: list[Task], views: int, seed: int) -> tuple[float, float]:
    """(same, other): mean Jaccard overlap of active-unit sets between views of one task, and between tasks under one
    view; a view is one random dihedral map and colour permutation, the same for every task, applied to the task
    (demo order kept) and probed on its first test pair."""
    rng = np.random.default_rng(seed)
    augs = [Augmentation.random(rng, 0, shuffle=False) for _ in range(views)]
    views_of = lambda t: [replace(a, order=tuple(range(len(t.train)))).apply(t) for a in augs]  # noqa: E731
    sets = [[active_set(probe(model, test_sequence(model, view, 0))[1]) for view in views_of(t)] for t in tasks]
    same = [jaccard(a, b) for per_task in sets for a, b in itertools.combinations(per_task, 2)]
    pairs = list(itertools.combinations(range(len(tasks)), 2))
    other = [jaccard(sets[i][v], sets[j][v]) for v in range(views) for i, j in pairs]
    return float(np.mean(same)), float(np.mean(other))


def changed_cells(logits: torch.Tensor, seq: Sequence, task: Task, test_index: int) -> tuple[int, int]:
    """(right, total): teacher-forced argmax on the output cells that differ from the input, (0, 0) when the test
    output's shape differs from its input's. Output cells are predicted in row-major order."""
    pair = task.test[test_index]
    inp, out = as_array(pair.input), as_array(pair.output)
    if inp.shape != out.shape:
        return 0, 0
    on_cells = loss_mask(torch.from_numpy(seq.targets & (seq.tokens < N_COLOURS))[None])[0]  # (T,)
    pred = logits[on_cells].argmax(-1)  # (H * W,)
    changed = torch.from_numpy((out != inp).ravel())
    return int((pred == torch.from_numpy(out.ravel()))[changed].sum()), int(changed.sum())


# ---------------------------------------------------------------- the bench


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seconds", type=float, default=600.0, help="training seconds per variant, equal-time part")
    p.add_argument("--fit-seconds", type=float, default=600.0, help="training budget per variant, fit part")
    p.add_argument("--fit-loss", type=float, default=0.01, help="fit part: stop when the last 10 steps' mean is below")
    p.add_argument("--fit-tasks", type=int, default=12)
    p.add_argument("--dev-tasks", type=int, default=16)
    p.add_argument("--views", type=int, default=4, help="augmentations per task for the route overlap")
    p.add_argument("--size", default="small", help="model preset")
    p.add_argument("--optimizer", default=OptimizerConfig().name, choices=["gn", "adamw"])
    p.add_argument("--lr", type=float, default=OptimizerConfig().lr)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny preset, 2 s per run, 3 tasks")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.seconds, args.fit_seconds, args.batch_tokens = "tiny", 2.0, 2.0, 1024
        args.fit_tasks, args.dev_tasks, args.views = 3, 3, 2
    if "softmax" not in args.variants:
        p.error("--variants: the default recipe 'softmax' is the reference and must be among them")
    return args


def short(name: str) -> str:
    """'blocks.0.attn.qkv' -> '0.qkv'."""
    parts = name.split(".")
    return f"{parts[1]}.{parts[-1]}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out, log = Console(width=None if sys.stdout.isatty() else 160), Console(stderr=True)
    load_before = os.getloadavg()[0]
    max_len = ModelConfig.preset(args.size).max_len
    limit = min(FIT_MAX_TOKENS, max_len)
    candidates = [t for t in load_split("arc1-train-nodev") if small_task(t, limit)]
    rng = np.random.default_rng(args.seed)
    fit_tasks = [candidates[i] for i in sorted(rng.choice(len(candidates), args.fit_tasks, replace=False))]
    fit_ids = {t.id for t in fit_tasks}
    dev_tasks = [t for t in load_split("arc1-dev") if small_task(t, max_len)][: args.dev_tasks]
    log.print(f"fit tasks: {' '.join(sorted(fit_ids))}; dev tasks: {' '.join(t.id for t in dev_tasks)}", soft_wrap=True)
    onn_variants = [v for v in args.variants if VARIANTS[v][0] == "onn"]

    with tempfile.TemporaryDirectory() as tmp:
        # 1. the capacity-redundant regime
        fit_runs = {v: make_run(args, v, args.fit_seconds, Path(tmp) / f"fit-{v}") for v in onn_variants}
        for run in fit_runs.values():
            run.pool = [ex for ex in run.pool if ex.task.id in fit_ids]
        fitted = lambda h: len(h) >= 10 and np.mean([r["main"] for r in h[-10:]]) < args.fit_loss  # noqa: E731
        fit_history = train_interleaved(fit_runs, fitted, log)
        fit = {}
        for v, run in fit_runs.items():
            seqs = [test_sequence(run.model, t, i) for t in fit_tasks for i in range(len(t.test))]
            firings = [probe(run.model, seq)[1] for seq in seqs]
            per_layer, inactive = inactive_fractions(run.model, firings)
            same, other = route_overlap(run.model, fit_tasks, args.views, args.seed)
            tail = fit_history[v][-10:]
            fit[v] = {
                "loss": float(np.mean([h["main"] for h in tail])), "steps": run.step, "seconds": run.elapsed,
                "rate": 1 - inactive, "per_layer": per_layer, "inactive": inactive, "same": same, "other": other,
            }  # fmt: skip

        # 2. equal CPU time, scored on dev tasks
        runs = {v: make_run(args, v, args.seconds, Path(tmp) / v) for v in args.variants}
        train_interleaved(runs, lambda h: False, log)
        dev = {}
        for v, run in runs.items():
            seqs = [(t, i, test_sequence(run.model, t, i)) for t in dev_tasks for i in range(len(t.test))]
            s = score(run.model, [seq for _, _, seq in seqs])
            probes = [(probe(run.model, seq), seq, t, i) for t, i, seq in seqs]
            right, total = map(sum, zip(*(changed_cells(logits, seq, t, i) for (logits, _), seq, t, i in probes)))
            routed = bool(run.model.routed_layers())
            inactive = inactive_fractions(run.model, [f for (_, f), *_ in probes])[1] if routed else 0.0
            dev[v] = {
                "loss": s.loss, "cells": s.cell_accuracy, "changed": right / max(total, 1), "rate": s.activation_rate,
                "inactive": inactive, "steps": run.step,
            }  # fmt: skip

    precision = resolve(args.precision, "cpu")
    where = f"{args.size}, {precision}, {args.threads} threads"
    names = list(fit[DEFAULT]["per_layer"])
    over = Table(title=f"1. fitting {len(fit_tasks)} tasks: training batches' activation rate per SBL ({where})")
    for col in ("variant", "step", "seconds", "loss", *map(short, names)):
        over.add_column(col, justify="left" if col == "variant" else "right")
    for v, history in fit_history.items():
        for k in sorted({0, len(history) // 4, len(history) // 2, 3 * len(history) // 4, len(history) - 1}):
            h = history[k]
            rates = (f"{r:.3f}" for r in h["rates"])
            over.add_row(v, str(h["step"]), f"{h['seconds']:.0f}", f"{h['main']:.4f}", *rates)
    out.print(over)

    fitted_table = Table(title="1. fit tasks' test outputs after fitting: rate per SBL (1 - inactive MAC fraction)")
    for col in ("SBL", "d_in × d_out", *fit):
        fitted_table.add_column(col, justify="left" if col == "SBL" else "right")
    shapes = layer_shapes(fit_runs[DEFAULT].model)
    for name in names:
        cells = (f"{1 - f['per_layer'][name]:.3f}" for f in fit.values())
        fitted_table.add_row(name, f"{shapes[name][0]} × {shapes[name][1]}", *cells)
    for label, key, fmt in (
        ("all SBLs (MAC-weighted)", "rate", ".3f"), ("train loss (last 10 steps)", "loss", ".4f"),
        ("steps", "steps", "d"), ("seconds", "seconds", ".0f"), ("route overlap, views of a task", "same", ".3f"),
        ("route overlap, different tasks", "other", ".3f"),
    ):  # fmt: skip
        fitted_table.add_row(label, "", *(format(f[key], fmt) for f in fit.values()))
    out.print(fitted_table)

    pareto = Table(title=f"2. equal time ({args.seconds:g} s each), {len(dev_tasks)} arc1-dev tasks, teacher-forced")
    for col in ("variant", "steps", "tf loss", "cell acc", "changed acc", "activation", "inactive MACs"):
        pareto.add_column(col, justify="left" if col == "variant" else "right")
    for v, d in dev.items():
        pareto.add_row(
            v, str(d["steps"]), f"{d['loss']:.4f}", f"{d['cells']:.3f}", f"{d['changed']:.3f}", f"{d['rate']:.3f}",
            f"{d['inactive']:.3f}",
        )  # fmt: skip
    out.print(pareto)
    out.print(
        f"Fit tasks ({len(fit_tasks)}): {' '.join(t.id for t in fit_tasks)}. Dev tasks ({len(dev_tasks)}): "
        f"{' '.join(t.id for t in dev_tasks)}. 1-min load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores.",
        soft_wrap=True,
    )
    result = {
        "activation_rate_fit": round(fit[DEFAULT]["rate"], 4),
        **{f"activation_rate_fit_{v}": round(f["rate"], 4) for v, f in fit.items() if v != DEFAULT},
        **{f"fit_loss_{v}": round(f["loss"], 4) for v, f in fit.items()},
        **{f"activation_rate_{v}": round(d["rate"], 4) for v, d in dev.items()},
        **{f"tf_loss_{v}": round(d["loss"], 4) for v, d in dev.items()},
        **{f"changed_acc_{v}": round(d["changed"], 4) for v, d in dev.items()},
        "inactive_mac_fraction": round(fit[DEFAULT]["inactive"], 4),
        **{f"inactive_mac_fraction_{v}": round(dev[v]["inactive"], 4) for v in onn_variants},
        "jaccard_same": round(fit[DEFAULT]["same"], 4),
        "jaccard_other": round(fit[DEFAULT]["other"], 4),
        "seconds": args.seconds,
        "fit_seconds": args.fit_seconds,
        "size": args.size,
        "precision": precision,
        "threads": args.threads,
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
