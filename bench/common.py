"""Shared by the benches: teacher-forced scoring of test outputs (loss, cell accuracy, SBL activation rate), one
training step as the trainer takes it, and running `onn-arc`."""

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from onn_arc import train
from onn_arc.data import Task, as_array
from onn_arc.losses import activation_rate, loss_mask
from onn_arc.model import TinyONN
from onn_arc.solve import code_of
from onn_arc.tokens import N_COLOURS, PAD, Batch, Sequence, batches, encode_pair, pair_room


def test_sequence(model: TinyONN, task: Task, test_index: int) -> Sequence:
    """Test pair `test_index`, its output the only target (cells, row ends and the closing EOS), with the task's
    trained code (the model trained on the task's demos, as in transductive solving), as
    `evaluate.teacher_forced_loss` scores it."""
    return encode_pair(task.test[test_index], code_of(model, task), max_len=model.cfg.max_len)


def small_task(task: Task, limit: int) -> bool:
    """Whether every test pair, with every demo beside it, fits `limit` tokens in its longest orientation: the
    whole task as the retired in-context format laid it out in one sequence (the benches' draws of small tasks)."""
    demos = sum(pair_room(p) - 2 for p in task.train)  # a demo without the BOS and EOS of a pair of its own
    return all(pair_room(p) + demos <= limit for p in task.test)


def advance(run: train.Run) -> tuple[dict[str, float], Batch]:
    """One training step as `Run.fit` takes it (same generators, batch, `train_step`), the lr schedule ending at
    `run.cfg.seconds`; counts the step and its seconds on `run`; returns its metrics and batch."""
    cfg = run.cfg
    started = time.perf_counter()
    rng, generator = train.step_generators(cfg.seed, run.step, 0, torch.device("cpu"))
    batch = train.sample_batch(run.pool, rng, cfg.batch_tokens, cfg.model.max_len, cfg.augment)
    factor = train.lr_factor(run.elapsed / cfg.seconds, run.step, cfg.warmup_steps, cfg.min_lr_ratio)
    for g in run.opt.param_groups:
        g["lr"] = g["initial_lr"] * factor
    metrics = train.train_step(run.model, run.opt, batch, cfg, generator)
    run.step += 1
    run.elapsed += time.perf_counter() - started
    return metrics, batch


@dataclass(frozen=True)
class Scores:
    loss: float  # mean cross-entropy per target token (cells, row ends, closer)
    cell_accuracy: float  # argmax equals the true colour, on output cells only (not row ends or the closer)
    activation_rate: float  # mean fraction of SBL units firing over all tokens (1.0 for the dense baseline)
    tokens: int  # target tokens scored
    cells: int  # output cells scored


@torch.inference_mode()
def score(model: TinyONN, seqs: list[Sequence], batch_tokens: int = 8192) -> Scores:
    """Teacher-forced loss and cell accuracy of `seqs`' targets (see `test_sequence`), in one pass."""
    layers = [layer for _, layer in model.routed_layers()]
    loss, right, rate = 0.0, 0, 0.0
    tokens = cells = valid_tokens = 0
    for _, b in batches(seqs, batch_tokens):
        logits = model(b.tokens, b.rows, b.cols, b.pos, task=b.task)  # (B, T, V)
        gold = b.tokens.roll(-1, dims=1)  # (B, T): the token each logit predicts
        scored = loss_mask(b.targets)  # (B, T): logits that predict a target token
        on_cells = loss_mask(b.targets & (b.tokens < N_COLOURS))  # (B, T): ... that predict an output cell
        loss += F.cross_entropy(logits[scored], gold[scored], reduction="sum").item()
        right += int((logits[on_cells].argmax(-1) == gold[on_cells]).sum())
        valid = b.tokens != PAD  # (B, T)
        rate += activation_rate(layers, valid) * int(valid.sum())
        tokens, cells, valid_tokens = (
            tokens + int(scored.sum()),
            cells + int(on_cells.sum()),
            valid_tokens + int(valid.sum()),
        )
    return Scores(loss / tokens, right / cells, rate / valid_tokens, tokens, cells)


def onn_arc(args: list[str], log: Path, console: Console) -> None:
    """Run `onn-arc ARGS` (this Python's), its output appended to `log` and the command shown on `console`; stop the
    bench with the log's tail if it fails."""
    shown = "onn-arc " + shlex.join(args)
    console.print(f"[dim]$ {shown}[/]", soft_wrap=True)
    with log.open("a") as f:
        code = subprocess.run([sys.executable, "-m", "onn_arc", *args], stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"failed ({code}): {shown}\n" + "".join(log.read_text().splitlines(True)[-5:]))


def train_pairs(
    out: Path,
    seconds: float | None,
    sources: list[str],
    flags: list[str],
    console: Console,
    size: str = "base",
    steps: int = 1_000_000,
) -> None:  # fmt: skip
    """Train the `size` preset into `out` on `sources` for `seconds` of step-time (None: for `steps` steps, the lr
    schedule over them) with `flags` besides, checkpointing every 200 steps; resume it where a run was started before
    (its saved config has everything)."""
    log = out.with_name(f"{out.name}.train.log")
    if (out / "checkpoint").exists():
        onn_arc(["train", "--out", str(out), "--resume"], log, console)
        return
    data = [flag for source in sources for flag in ("--source", source)]
    budget = ["--steps", str(steps), *(["--seconds", str(seconds)] if seconds is not None else [])]
    args = ["train", "--out", str(out), "--size", size, *data, *budget, "--checkpoint-every", "200", *flags]
    onn_arc(args, log, console)


def new_colour(task: Task) -> bool:
    """Does a test output hold a colour absent from its test input? (The tasks a code must learn a colour for.)"""
    return any(set(as_array(p.output).flat) - set(as_array(p.input).flat) for p in task.test)


def new_colour_split(rows: list[dict], tasks: dict[str, Task]) -> list[tuple[str, float | None]]:
    """[new colour, other]: ("solved/n", mean changed-cell accuracy) of the rows of an eval report's tasks whose test
    output brings a new colour (`new_colour`), and of the others (pass@2 summed: one of two test inputs right counts
    half)."""

    def group(rows: list[dict]) -> tuple[str, float | None]:
        solved = sum(r["pass_at_2"] or 0.0 for r in rows)
        changed = [r["changed_cell_accuracy"] for r in rows if r["changed_cell_accuracy"] is not None]
        return f"{solved:g}/{len(rows)}", (sum(changed) / len(changed) if changed else None)

    new = [new_colour(tasks[r["task_id"]]) for r in rows]
    return [group([r for r, n in zip(rows, new) if n == wanted]) for wanted in (True, False)]


def training_summary(folder: Path, tail: int | None = None) -> dict[str, float]:
    """From the run's metrics: steps, minutes and tokens per second of step-time (padded, as `train` prints them),
    and the mean main loss and activation rate over the last `tail` steps (None: the last 10%)."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    last = rows[-(tail or max(1, len(rows) // 10)) :]
    seconds = [b["elapsed"] - a["elapsed"] for a, b in zip([{"elapsed": 0.0}, *rows], rows)]  # each step's
    padded_tokens = sum(r["tok_s"] * s for r, s in zip(rows, seconds))
    return {
        "steps": rows[-1]["step"],
        "train_min": rows[-1]["elapsed"] / 60,
        "tok_s": padded_tokens / rows[-1]["elapsed"],
        "train_loss": sum(r["main"] for r in last) / len(last),
        "activation_rate": sum(r["activation_rate"] for r in last) / len(last),
    }
