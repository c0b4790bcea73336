"""Can the model fit 50 training tasks? Teacher-forced cell accuracy and greedy exact match after training on them.

    python bench/fit.py [--seconds 900 | --steps N] [--size base] [--optimizer gn]        (make bench-fit)

Tasks: `--tasks` (50) ARC-AGI-1 training tasks, a seeded draw (`--seed`) among those whose every test pair fits the
model's context with all its demos beside it (`common.small_task`); their ids are printed. Training: the trainer
itself (`train.prepare`, `Run.fit`) on those tasks only (demos and test pairs, each task with its code), random
augmentations on, until the budget (default 900 s per model), once for Tiny-ONN and once for the dense baseline of
the same width and depth (same seed, data order and budget). Then, on the tasks as given (identity view) under their
trained codes, for both models:
- teacher-forced cell accuracy of the test outputs (argmax colour given the true prefix; cells only, not row ends)
  and the loss per target token (cells, row ends, closer),
- greedy exact match of the test outputs (`decode.greedy` from the test input's prompt),
- distinct colours over all greedy predictions (a collapsed model writes 1 or 2; the true outputs' count is shown),
- the onn model's mean SBL activation rate on those sequences.
The issue's goal is cell accuracy >= 0.99 with no collapse; this bench reports whatever the budget reaches.
Ends with one `RESULT key=value ...` line.
"""

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import score, small_task, test_sequence  # bench/common.py, beside this script
from rich.console import Console
from rich.table import Table

from onn_arc import train
from onn_arc.config import ModelConfig, OptimizerConfig, TrainConfig
from onn_arc.data import Grid, Task, load_split
from onn_arc.decode import greedy
from onn_arc.model import TinyONN
from onn_arc.solve import decode_prompt

NEVER = 10**9  # a step count no run reaches: the other budget ends it
DEFAULT_SECONDS = 900.0


def fit_tasks(n: int, seed: int, max_len: int) -> list[Task]:
    """The seeded draw of n tasks (kept in split order) among the small ones (`small_task`) for `max_len`."""
    fits = [t for t in load_split("arc1-train") if small_task(t, max_len)]
    if len(fits) < n:
        raise SystemExit(
            f"error: only {len(fits)} ARC-AGI-1 training tasks fit a context of {max_len} tokens, asked for {n}"
        )
    return [fits[i] for i in sorted(np.random.default_rng(seed).choice(len(fits), n, replace=False))]


def fit(cfg: TrainConfig, tasks: list[Task], folder: Path, log: Console) -> train.Run:
    """Train on `tasks` alone until the budget, reporting progress every ~10% of it on `log`."""
    run = train.prepare(cfg, folder)  # every arc1-train task has its code
    ids = {t.id for t in tasks}
    run.pool = [ex for ex in run.pool if ex.task.id in ids]
    shown = [0.0]

    def progress(step: int, metrics: dict[str, float]) -> None:
        done = max(step / cfg.steps, run.elapsed / cfg.seconds if cfg.seconds else 0.0)
        if done >= shown[0] + 0.1 or step == 1:
            shown[0] = done
            log.print(
                f"{cfg.model.arch:>5} step {step:5d} {run.elapsed:7.1f} s: loss {metrics['main']:.4f} "
                f"token acc {metrics['acc']:.3f} activation {metrics['activation_rate']:.2f}"
            )

    run.fit(progress)
    return run


def predictions(model: TinyONN, tasks: list[Task]) -> list[Grid | None]:
    """The greedy output of every test pair, identity view (None when the context ran out before the grid ended)."""
    prompts = [decode_prompt(model, t, i) for t in tasks for i in range(len(t.test))]
    return [next((c.grid for c in greedy(model, p)), None) for p in prompts]


def colours(grids: list[Grid | None]) -> int:
    return len({c for g in grids if g is not None for row in g for c in row})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--seconds", type=float, default=None, help=f"training seconds per model (default {DEFAULT_SECONDS:g})"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per model (with --seconds: the first reached)"
    )
    p.add_argument("--size", default="base", help="model preset")
    p.add_argument("--optimizer", default="gn", choices=["gn", "adamw"])
    p.add_argument("--lr", type=float, default=OptimizerConfig().lr)
    p.add_argument("--batch-tokens", type=int, default=TrainConfig().batch_tokens)
    p.add_argument("--tasks", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny preset, 4 tasks, 6 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.tasks, args.steps, args.batch_tokens = "tiny", 4, 6, 1024
    if args.seconds is None and args.steps is None:
        args.seconds = DEFAULT_SECONDS
    torch.set_num_threads(args.threads)
    out, log = Console(), Console(stderr=True)
    load_before = os.getloadavg()[0]
    model_cfg = ModelConfig.preset(args.size)
    tasks = fit_tasks(args.tasks, args.seed, model_cfg.max_len)
    log.print(f"{len(tasks)} tasks: {' '.join(t.id for t in tasks)}", soft_wrap=True)
    truth = [p.output for t in tasks for p in t.test]

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("onn", "dense"):
            cfg = TrainConfig(
                model=model_cfg.model_copy(update={"arch": arch}),
                sources=["arc1-train"],  # the pool is cut down to `tasks` (`fit`)
                optimizer=OptimizerConfig(name=args.optimizer, lr=args.lr),
                batch_tokens=args.batch_tokens,
                steps=args.steps or NEVER,
                seconds=args.seconds,
                seed=args.seed,
                checkpoint_every=NEVER,
            )
            run = fit(cfg, tasks, Path(tmp) / arch, log)
            preds = predictions(run.model, tasks)
            seqs = [test_sequence(run.model, t, i) for t in tasks for i in range(len(t.test))]
            rows[arch] = {
                "params": run.model.num_params(),
                "steps": run.step,
                "seconds": run.elapsed,
                "scores": score(run.model, seqs),
                "exact": float(np.mean([g == t for g, t in zip(preds, truth)])),
                "colours": colours(preds),
                "ended": sum(g is not None for g in preds),
            }

    table = Table(title=f"fitting {len(tasks)} ARC-AGI-1 training tasks ({args.size}, {args.optimizer}, identity view)")
    for col in ("measure", "onn", "dense"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    table.add_row("parameters", *(f"{r['params']:,}" for r in rows.values()))
    table.add_row("training steps / seconds", *(f"{r['steps']} / {r['seconds']:.0f}" for r in rows.values()))
    table.add_row("teacher-forced loss / target token", *(f"{r['scores'].loss:.4f}" for r in rows.values()))
    table.add_row("teacher-forced cell accuracy", *(f"{r['scores'].cell_accuracy:.4f}" for r in rows.values()))
    table.add_row("greedy exact match", *(f"{r['exact']:.3f}" for r in rows.values()))
    table.add_row("greedy grids finished", *(f"{r['ended']} / {len(truth)}" for r in rows.values()))
    table.add_row(f"distinct colours predicted (truth {colours(truth)})", *(str(r["colours"]) for r in rows.values()))
    table.add_row("SBL activation rate", *(f"{r['scores'].activation_rate:.3f}" for r in rows.values()))
    out.print(table)
    out.print(
        f"Tasks ({len(tasks)}, seed {args.seed}): {' '.join(t.id for t in tasks)}. {len(truth)} test outputs, "
        f"{rows['onn']['scores'].cells} cells. 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
        f"after on {os.cpu_count()} cores ({args.threads} threads).",
        soft_wrap=True,
    )
    onn, dense = rows["onn"], rows["dense"]
    result = {
        "fit_cell_acc_onn": round(onn["scores"].cell_accuracy, 4),
        "fit_exact_onn": round(onn["exact"], 4),
        "fit_cell_acc_dense": round(dense["scores"].cell_accuracy, 4),
        "fit_exact_dense": round(dense["exact"], 4),
        "distinct_colours_predicted": onn["colours"],
        "activation_rate": round(onn["scores"].activation_rate, 4),
        "fit_loss_onn": round(onn["scores"].loss, 4),
        "fit_loss_dense": round(dense["scores"].loss, 4),
        "distinct_colours_dense": dense["colours"],
        "distinct_colours_true": colours(truth),
        "steps_onn": onn["steps"],
        "steps_dense": dense["steps"],
        "seconds_onn": round(onn["seconds"], 1),
        "seconds_dense": round(dense["seconds"], 1),
        "size": args.size,
        "optimizer": args.optimizer,
        "tasks": len(tasks),
        "threads": args.threads,
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
