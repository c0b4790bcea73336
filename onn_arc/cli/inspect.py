"""`onn-arc inspect`: what a checkpoint holds — config, parameters, provenance, metrics — and how sparse it fires."""

from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.markup import escape
from rich.table import Table

from onn_arc import data
from onn_arc.checkpoint import COUNTED, LoadedCheckpoint, Stage, default_checkpoint, load_checkpoint
from onn_arc.cli.app import app
from onn_arc.cli.common import JsonOpt, ThreadsOpt, out, training_counts
from onn_arc.config import ModelConfig
from onn_arc.errors import TaskError
from onn_arc.model import SBL, TinyONN
from onn_arc.solve import code_of, with_task_code
from onn_arc.tokens import PAD, Sequence, collate, encode_pair

CheckpointArg = Annotated[
    Path | None,
    typer.Argument(help="Checkpoint folder (default: the shipped one in checkpoints/).", show_default=False),
]
TasksOpt = Annotated[
    int, typer.Option("--tasks", min=0, help="ARC-AGI-1 training tasks to measure activation rates on (0: skip).")
]


def parameter_counts(model: TinyONN) -> dict[str, int]:
    """Parameters by kind: weight matrices (SBL mu / Linear weight), SBL sigma, SBL gate, and everything else."""
    kinds = {id(layer.weight_matrix): "matrices" for layer in model.tapped_layers()}
    for _, sbl in model.routed_layers():
        kinds |= {id(sbl.sigma): "sigma", id(sbl.gate): "gate"}
    counts = dict.fromkeys(["matrices", "sigma", "gate", "other"], 0)
    for p in model.parameters():
        counts[kinds.get(id(p), "other")] += p.numel()
    return {"total": sum(counts.values()), **counts}


def _encode(task: data.Task, cfg: ModelConfig, code: int = 0) -> Sequence:
    """What the activation rates are measured on: the task's first test pair with its code index `code`. TaskError
    when it does not fit the context."""
    return encode_pair(task.test[0], code, max_len=cfg.max_len)


def _fitting_tasks(n: int, cfg: ModelConfig) -> list[data.Task]:
    """The first `n` ARC-AGI-1 training tasks whose encoding (`_encode`) fits the context."""
    chosen = []
    for task in data.load_split("arc1-train"):
        if len(chosen) == n:
            break
        try:
            _encode(task, cfg)
        except TaskError:
            continue
        chosen.append(task)
    if not chosen:
        raise TaskError(f"arc1-train: no task fits a context of {cfg.max_len} tokens")
    return chosen


@torch.no_grad()
def activation_stats(model: TinyONN, n_tasks: int) -> dict[str, Any]:
    """Mean SBL activation rate per layer (over real tokens and loops) and dead units (never firing) on `n_tasks`
    tasks, each with its trained code, or a fresh one (on a copy of the model) where it has none."""
    if not model.routed_layers():
        return {"dense": True, "mean_rate": 1.0, "tasks": [], "tokens": 0, "layers": []}
    tasks = _fitting_tasks(n_tasks, model.cfg)
    for task in tasks:
        model = with_task_code(model, task, "mean")
    batch = collate([_encode(task, model.cfg, code_of(model, task)) for task in tasks])
    real = batch.tokens != PAD  # (B, T)
    fired: dict[str, torch.Tensor] = {}  # layer name -> (d_out,) bool: the unit fired on some real token, some loop

    def record(name: str):
        def hook(sbl: SBL, args: tuple[torch.Tensor, ...]) -> None:
            now = (sbl.route_logits(args[0])[real] > 0).any(dim=0)  # (N real, d_out) -> (d_out,)
            fired[name] = fired[name] | now if name in fired else now

        return hook

    handles = [sbl.register_forward_pre_hook(record(name)) for name, sbl in model.routed_layers()]
    try:
        model(batch.tokens, batch.rows, batch.cols, batch.pos, task=batch.task)
    finally:
        for handle in handles:
            handle.remove()
    layers = [
        {"name": name, "rate": sbl.last_rate[real].mean().item(), "dead": int((~fired[name]).sum()), "units": sbl.d_out}
        for name, sbl in model.routed_layers()
    ]
    return {
        "dense": False,
        "mean_rate": sum(layer["rate"] for layer in layers) / len(layers),
        "tasks": [task.id for task in tasks],
        "tokens": int(real.sum()),
        "layers": layers,
    }


def _key_values(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, escape(str(value)))
    return table


def _ids(ids: list[str]) -> str:
    return f"{len(ids)}: " + ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "") if ids else "none"


def _stage_line(i: int, stage: Stage) -> str:
    """One line: the stage's counts, precision, data, starting weights, last save and command lines."""
    d = stage.data
    used = [", ".join(d.test_outputs_from)] if d.test_outputs_from else []
    if d.demos_only:
        used.append("demos of " + ", ".join(d.demos_only))
    start = f"from {stage.init_sha256[:12]}" if stage.init_sha256 else "fresh init"
    start += f" · EMA {stage.ema:g}" if stage.ema else ""
    commands = " ; ".join(stage.commands) or "command not recorded"
    counts = training_counts(stage.model_dump(include=set(COUNTED)))
    data = " + ".join(used) or "no data"
    return f"  {i}. {counts} · {stage.precision or '?'} · {data} · {start} · {stage.saved:%Y-%m-%d %H:%M} · {commands}"


def _render(ckpt: LoadedCheckpoint, params: dict[str, int], activation: dict[str, Any] | None) -> None:
    meta = ckpt.meta
    out.print(
        _key_values(
            "checkpoint",
            {
                "folder": ckpt.folder,
                "written by": f"onn-arc {meta.onn_arc_version} (format {meta.format_version})",
                "created": meta.created.isoformat(timespec="seconds"),
                "train state": "saved" if ckpt.train_state is not None else "none",
                "weights": f"EMA {meta.stages[-1].ema:g} of the last stage's" if meta.stages[-1].ema else "raw",
                **meta.model.model_dump(exclude={"task_ids"}),
                "task codes": meta.model.n_task_codes,
            },
        )
    )
    table = Table(title="parameters")
    for name in ("kind", "count", "share"):
        table.add_column(name, justify="left" if name == "kind" else "right")
    for kind, count in params.items():
        table.add_row(kind, f"{count:,}", f"{count / params['total']:.1%}")
    out.print(table)
    d = meta.data
    out.print(
        _key_values(
            "training",
            {
                "sources": ", ".join(d.sources) or "none",
                "test outputs from": ", ".join(d.test_outputs_from) or "none",
                "demos only": ", ".join(d.demos_only) or "none",
                "tasks": d.n_tasks,
                "test outputs seen": _ids(d.task_ids_with_test_outputs),
                "step": meta.step,
                **{f"metric {k}": f"{v:.4g}" if isinstance(v, float) else v for k, v in meta.metrics.items()},
            },
        )
    )
    out.print(f"stages: {len(meta.stages)} · total {training_counts(meta.totals())}", soft_wrap=True)
    for i, stage in enumerate(meta.stages, 1):
        out.print(escape(_stage_line(i, stage)), soft_wrap=True)
    if activation is None:
        return
    if activation["dense"]:
        out.print("activation: dense baseline, every unit is active (rate 1.0)")
        return
    table = Table(title="SBL activation")
    for name in ("layer", "rate", "dead units"):
        table.add_column(name, justify="left" if name == "layer" else "right")
    for layer in activation["layers"]:
        table.add_row(escape(layer["name"]), f"{layer['rate']:.3f}", f"{layer['dead']}/{layer['units']}")
    out.print(table)
    out.print(
        f"mean rate {activation['mean_rate']:.3f} over {activation['tokens']} tokens of "
        f"{len(activation['tasks'])} arc1-train task(s): {', '.join(activation['tasks'])}",
        soft_wrap=True,
    )


@app.command()
def inspect(
    checkpoint: CheckpointArg = None, tasks: TasksOpt = 4, as_json: JsonOpt = False, threads: ThreadsOpt = 0
) -> None:
    """Show a checkpoint: config, parameter counts, training provenance, metrics and per-layer activation rates."""
    if threads:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint if checkpoint is not None else default_checkpoint())
    params = parameter_counts(ckpt.model)
    activation = activation_stats(ckpt.model, tasks) if tasks else None
    if as_json:
        meta = ckpt.meta.model_dump(mode="json", exclude={"files"})
        out.print_json(
            data={"folder": str(ckpt.folder), **meta, "totals": ckpt.meta.totals(),
                  "train_state": ckpt.train_state is not None, "parameters": params, "activation": activation}
        )
        return
    _render(ckpt, params, activation)
