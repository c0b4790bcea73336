"""`onn-arc train`: teacher-forced training with live progress and resumable checkpoints."""

import json
import os
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.distributed as dist
import typer
from pydantic import ValidationError
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from onn_arc.checkpoint import load_checkpoint
from onn_arc.cli.app import app
from onn_arc.cli.common import ThreadsOpt, err, out
from onn_arc.config import DEFAULT_LR, PRESETS, ModelConfig, TrainConfig, one_line
from onn_arc.errors import ConfigError
from onn_arc.precision import resolve as resolve_precision
from onn_arc.train import Run, RunPaths, prepare, resolve_device

Opt = typer.Option


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from None


def _merge(d: dict[str, Any], changes: dict[str, Any]) -> None:
    """Change `d` in place where `changes` says, field by field: a nested table changes only the fields it names."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            _merge(d[key], value)
        else:
            d[key] = value


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d[p]
    d[leaf] = value


def _validate(fields: dict[str, Any], source: str) -> TrainConfig:
    try:
        return TrainConfig.model_validate(fields)
    except ValidationError as e:
        raise ConfigError(one_line(e, source)) from None


@app.command("train")
def train_command(
    out_dir: Annotated[Path, Opt("--out", "-o", help="Run folder: checkpoint/ and metrics.jsonl go here.")] = Path("runs/default"),
    config: Annotated[Path | None, Opt(help="A TOML or JSON file of TrainConfig fields (a table changes only the fields it names); flags override it.")] = None,
    resume: Annotated[bool, Opt(help="Continue the run in --out from its last checkpoint (its saved config, plus any flags given).")] = False,
    init: Annotated[Path | None, Opt(help="Start a new training stage from this checkpoint's weights and model config (fresh optimizer and lr schedule).", show_default=False)] = None,
    source: Annotated[list[str] | None, Opt(help="Data trained on, demos and test outputs (repeatable): a split, folder or task file. Default: arc1-train.")] = None,
    demo_source: Annotated[list[str] | None, Opt(help="Data of which only the demos are used (repeatable), e.g. arc1-eval.")] = None,
    size: Annotated[str | None, Opt(help="Model preset: tiny, small or base.")] = None,
    arch: Annotated[str | None, Opt(help="onn (Sparse Bayesian Layers) or dense (the baseline).")] = None,
    input_loss: Annotated[bool | None, Opt("--input-loss/--no-input-loss", help="The loss on input grids too, and demo sources' test inputs.")] = None,
    copies: Annotated[int | None, Opt(help="Train every task as this many fixed augmented copies (the identity first), each with its own code, so a code never sees its rule under two colour maps or orientations (0: one code per task, a fresh augmentation per pair).")] = None,
    d_model: Annotated[int | None, Opt(help="Override the preset's width.")] = None,
    n_layers: Annotated[int | None, Opt(help="Override the preset's depth.")] = None,
    loops: Annotated[int | None, Opt(help="Run the stack of blocks this many times with the same weights (weight-tied depth; 1: once).")] = None,
    dropout: Annotated[float | None, Opt(help="Dropout on the embeddings and residual branches, in training only (0: off).")] = None,
    max_len: Annotated[int | None, Opt(help="Override the preset's context length in tokens.")] = None,
    optimizer: Annotated[str | None, Opt(help="muon (the default: Muon on weight matrices, AdamW elsewhere), gn (Gauss-Newton preconditioned; the SBL chain's, shipped until 2026-12-07), or adamw.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (default: the optimizer's best in bench/optim.py: muon 1e-2, adamw and gn 3e-3).")] = None,
    weight_decay: Annotated[float | None, Opt(help="Decoupled weight decay of the weight matrices (default 0.1; nothing else decays).")] = None,
    ema: Annotated[float | None, Opt(help="Checkpoints ship the moving average of the weights with this decay, e.g. 0.999 (0: the raw weights).")] = None,
    batch_tokens: Annotated[int | None, Opt(help="Padded tokens per step.")] = None,
    steps: Annotated[int | None, Opt(help="Step budget (the lr schedule ends here).")] = None,
    seconds: Annotated[float | None, Opt(help="Wall-clock budget in seconds (stops early; the schedule follows it).")] = None,
    warmup_steps: Annotated[int | None, Opt(help="Linear lr warm-up steps.")] = None,
    gate_weight: Annotated[float | None, Opt(help="Weight of the SML gate loss (0: off).")] = None,
    kl_weight: Annotated[float | None, Opt(help="Weight of the KL loss (0: off).")] = None,
    gate_form: Annotated[str | None, Opt(help="Gate loss form: softmax (over units) or median (per unit: can move the firing level).")] = None,
    augment: Annotated[bool | None, Opt("--augment/--no-augment", help="Random dihedral, colour and demo-order transforms.")] = None,
    colours: Annotated[Literal["all", "inputs", "off"] | None, Opt(help="Colour permutations of the augmentations: all (every colour but 0), inputs (a task's input colours among themselves: colours only outputs bring keep their meaning) or off.")] = None,
    checkpoint_every: Annotated[int | None, Opt(help="Steps between checkpoints.")] = None,
    seed: Annotated[int | None, Opt(help="Seed for init, data order, augmentations and sampling.")] = None,
    precision: Annotated[str | None, Opt(help="auto (bf16 autocast where the hardware runs it fast, else fp32), fp32 or bf16.")] = None,
    device: Annotated[str, Opt(help="cpu, cuda or auto.")] = "auto",
    threads: ThreadsOpt = 0,
) -> None:
    """Train a Tiny-ONN on ARC with teacher forcing (Ctrl-C saves a checkpoint and stops).

    Never trains on an evaluation split's test outputs; every checkpoint records its data.
    Multi-process: torchrun --nproc_per_node=2 -m onn_arc train ...
    """
    if threads:
        torch.set_num_threads(threads)
    paths = RunPaths(out_dir)
    # what the config file and flags change, field by field: the defaults, with --init's model, or the resumed run's
    # config (its fields this onn-arc added since as their defaults)
    defaults, start = TrainConfig(), None
    if init is not None:  # with --resume too: prepare() refuses the pair
        start = load_checkpoint(init)
        defaults = TrainConfig(model=start.meta.model)
    elif resume:
        defaults = _validate(load_checkpoint(paths.checkpoint).meta.train_config, f"{paths.checkpoint}: train config")
    if config is not None:
        fields = defaults.model_dump()
        _merge(fields, _read_config(config))
        defaults = _validate(fields, str(config))
    base = defaults.model_dump()
    flags = {
        "sources": source, "demo_sources": demo_source, "model.arch": arch,
        "input_loss": input_loss, "model.copies": copies, "model.d_model": d_model,
        "model.n_layers": n_layers, "model.loops": loops, "model.dropout": dropout, "model.max_len": max_len,
        "optimizer.name": optimizer, "optimizer.lr": lr, "optimizer.weight_decay": weight_decay, "ema": ema,
        "batch_tokens": batch_tokens, "steps": steps, "seconds": seconds, "warmup_steps": warmup_steps,
        "loss.gate_weight": gate_weight, "loss.kl_weight": kl_weight,
        "loss.gate_form": gate_form, "checkpoint_every": checkpoint_every, "seed": seed,
        "precision": precision,
    }  # fmt: skip
    if augment is not None:
        flags |= {f"augment.{k}": augment for k in ("dihedral", "colours", "shuffle")}
    if optimizer in DEFAULT_LR and lr is None:  # another optimizer, its own default lr (a bad name fails validation)
        flags["optimizer.lr"] = DEFAULT_LR[optimizer]
    if colours is not None:
        flags |= {"augment.colours": colours != "off"} | ({"augment.colour_scope": colours} if colours != "off" else {})
    if size is not None:  # the preset's shape; every other model setting (arch, copies, ...) stays
        base["model"] |= ModelConfig.preset(size).model_dump(include=set(PRESETS[size]))
    for key, value in flags.items():
        if value is not None:
            _set(base, key, value)
    cfg = _validate(base, "train config")

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    dev = resolve_device(device)
    if distributed:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank0 = not distributed or dist.get_rank() == 0
    try:
        command = shlex.join(["onn-arc", *sys.argv[1:]])
        _run(prepare(cfg, paths.root, resume, dev, init=start, command=command), dev, show=rank0)
        if distributed:
            dist.barrier()  # leave together: a rank that tears gloo down while rank 0 still saves aborts the run
    finally:
        if distributed:
            dist.destroy_process_group()


def _run(run: Run, device: torch.device, show: bool) -> None:
    cfg, paths = run.cfg, run.paths
    if show:
        m = cfg.model
        err.print(
            f"training {m.arch}{f' ({m.copies} copies a task)' if m.copies else ''} d={m.d_model} "
            f"layers={m.n_layers}{f'×{m.loops}' if m.loops > 1 else ''} ctx={m.max_len} with {cfg.optimizer.name} "
            f"on {', '.join(cfg.sources)}{' + demos of ' + ', '.join(cfg.demo_sources) if cfg.demo_sources else ''} "
            f"→ {paths.root}  ({device}, {resolve_precision(cfg.precision, device)})"
            + (f"; stage {len(run.earlier) + 1}, from weights {run.init_sha256[:12]}" if run.init_sha256 else ""),
            soft_wrap=True,
        )
    columns = (
        TextColumn("[bold]train"), BarColumn(bar_width=20), TaskProgressColumn(), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
    )  # fmt: skip
    log_every = max(1, min(50, cfg.steps // 20))
    with Progress(*columns, console=err, disable=not show, refresh_per_second=2) as progress:
        bar = progress.add_task("train", total=1.0, completed=run.progress, info="")  # of the steps or seconds

        def on_step(step: int, m: dict[str, float]) -> None:
            info = f"step {step} loss {m['main']:.3f} acc {m['acc']:.3f} {m['tok_s']:.0f} tok/s"
            progress.update(bar, completed=run.progress, info=info)
            if show and (step % log_every == 0 or m["skipped"]):
                progress.console.print(
                    f"step {step}: loss {m['main']:.4f} gate {m['gate']:.4f} kl {m['kl']:.4f} acc {m['acc']:.4f} "
                    f"act {m['activation_rate']:.3f} |g| {m['grad_norm']:.2f} lr {m['lr']:.2e} {m['tok_s']:.0f} tok/s"
                    + (" [red]skipped: non-finite loss or gradient[/]" if m["skipped"] else ""),
                    soft_wrap=True,
                )

        metrics = run.fit(on_step)
    if show and not metrics:
        spent = (
            f"has used its {cfg.seconds:g} s (raise --seconds)"
            if cfg.seconds and run.elapsed >= cfg.seconds
            else f"is already at step {run.step} of {cfg.steps} (raise --steps)"
        )
        out.print(f"nothing to do: {paths.checkpoint} {spent}", soft_wrap=True)
    elif show:
        out.print(
            f"checkpoint {paths.checkpoint} · loss {metrics['main']:.4f} · acc {metrics['acc']:.4f} · "
            f"metrics {paths.metrics}",
            soft_wrap=True,
        )
