"""Checkpoints: a folder that rebuilds a trained model and says what it was trained on.

    model.safetensors        the model's weights (safetensors: nothing is ever unpickled): what solve, eval and --init
                             load; for a stage trained with an EMA (`Stage.ema`), the moving average of its weights
    checkpoint.json          CheckpointMeta: versions, the full ModelConfig, TrainingData provenance, the chain
                             of training stages, step, metrics, the training config and the sha256 of every
                             other file
    train_state.safetensors  optional: the tensors of a resumable training state (optimizer, counters; the raw
                             weights when model.safetensors holds their EMA)
    train_state.json         optional: that state's structure, tensors replaced by references

Saving is atomic: everything is written and fsynced into `.NAME.tmp` beside the target, then the old
folder is renamed to `.NAME.old`, the new one into place, and the old one deleted. A crash at any point
leaves a complete checkpoint at NAME, or (between the two renames) at `.NAME.old`, which loading falls
back to. One writer per folder at a time.

Training stages: a model can be trained in stages (`onn-arc train --init CHECKPOINT` starts a new stage from a
checkpoint's weights). Every checkpoint lists its stages, oldest first, each with its own data, command lines,
counts and seconds; its `data` is their union, so the leakage rule covers every stage. Format 1 had no stages:
it reads as one stage made from what it records.

Sequence formats: formats 1 and 2 name the model's sequence format (`model.format`, "context" when absent) and the
format comparison's switches (`task_codes`, `planes`). A pair-format model with both switches on reads as today's
model (format 3 knows the pair format alone and names none of them); anything else is refused, naming the last
commit that reads it (`LAST_CONTEXT_COMMIT`).
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors import SafetensorError

from onn_arc import __version__
from onn_arc.config import ModelConfig, one_line
from onn_arc.data import Task
from onn_arc.errors import CheckpointError, ConfigError
from onn_arc.model import TinyONN

FORMAT_VERSION = 3  # 2 added `stages`; 3 dropped the model's `format`, `task_codes` and `planes` (the pair format only)
READABLE_FORMATS = (1, 2, 3)
LAST_CONTEXT_COMMIT = "841b775"  # the last onn-arc that reads the in-context format and the format ablations
PAIR_FORMAT = {"format": "pairs", "task_codes": True, "planes": True}  # today's model, as formats 1 and 2 name it
MODEL_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
STATE_FILE = "train_state.safetensors"
STATE_STRUCTURE_FILE = "train_state.json"
REPO_ROOT = Path(__file__).resolve().parent.parent


class TrainingData(BaseModel):
    """What a model was trained on. Task ids are shared across ARC versions, so id overlap is the leakage rule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: list[str]  # every source used, e.g. ["arc1-train"]
    test_outputs_from: list[str]  # sources whose test outputs were trained on
    demos_only: list[str]  # sources of which only the demos were used (e.g. test-time training)
    task_ids_with_test_outputs: list[str]  # ids whose test outputs were seen (kept sorted and unique)
    n_tasks: int = Field(ge=0)  # tasks trained on, all sources together

    @field_validator("task_ids_with_test_outputs")
    @classmethod
    def _sorted_unique(cls, ids: list[str]) -> list[str]:
        return sorted(set(ids))

    @model_validator(mode="after")
    def _known_sources(self) -> "TrainingData":
        for field in ("test_outputs_from", "demos_only"):
            unknown = sorted(set(getattr(self, field)) - set(self.sources))
            if unknown:
                raise ValueError(f"{field} names {unknown}, which are not in sources {self.sources}")
        return self

    def leaks_into(self, tasks: Iterable[Task]) -> list[str]:
        """Ids of `tasks` whose test outputs were trained on, in the order given."""
        seen = set(self.task_ids_with_test_outputs)
        return [task.id for task in tasks if task.id in seen]

    @classmethod
    def union(cls, parts: Sequence["TrainingData"]) -> "TrainingData":
        """Everything `parts` (training stages) saw together: sources in first-use order, every id whose test
        outputs were seen, and as demo-only the sources never trained on with their test outputs. A source names a
        fixed set of tasks, so in `n_tasks` a part whose sources are among another part's adds no task (several
        stages on one data set; a later stage adding a source); parts whose sources overlap without nesting are
        added up, an upper bound."""
        tasks_by_sources: dict[frozenset[str], int] = {}
        for part in parts:
            key = frozenset(part.sources)
            tasks_by_sources[key] = max(tasks_by_sources.get(key, 0), part.n_tasks)
        test_outputs_from = _ordered_union(part.test_outputs_from for part in parts)
        return cls(
            sources=_ordered_union(part.sources for part in parts),
            test_outputs_from=test_outputs_from,
            demos_only=[s for s in _ordered_union(part.demos_only for part in parts) if s not in test_outputs_from],
            task_ids_with_test_outputs=_ordered_union(part.task_ids_with_test_outputs for part in parts),
            n_tasks=sum(n for key, n in tasks_by_sources.items() if not any(key < other for other in tasks_by_sources)),
        )

    def covers(self, other: "TrainingData") -> bool:
        """Whether every source and every id whose test outputs `other` saw is recorded here too."""
        seen, others_seen = set(self.task_ids_with_test_outputs), set(other.task_ids_with_test_outputs)
        return set(other.sources) <= set(self.sources) and others_seen <= seen


def _ordered_union(lists: Iterable[list[str]]) -> list[str]:
    return list(dict.fromkeys(item for items in lists for item in items))


class Stage(BaseModel):
    """One training stage: a run of `onn-arc train` from a fresh init or from `--init`'s weights, resumes included.

    Counts cover every step of the stage on every rank. The defaults mean "not recorded": a checkpoint saved without
    a chain (format 1, or a caller that passes none) holds one stage known only by its data, steps and save time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    commands: list[str] = []  # the command lines that ran it: the one that began it, then each --resume
    init_sha256: str | None = None  # sha256 of the weights it began from (init checkpoint's model.safetensors); None: fresh
    saved: datetime  # UTC, when the stage last wrote a checkpoint
    data: TrainingData  # what this stage trained on
    steps: int = Field(ge=0)  # optimizer steps taken (skipped ones included)
    tokens: int | None = Field(default=None, ge=0)  # real (not padding) tokens in its batches
    target_tokens: int | None = Field(default=None, ge=0)  # tokens the main loss was counted on (output grids)
    padded_tokens: int | None = Field(default=None, ge=0)  # batch rows x padded length, summed: what the steps computed
    seconds: float | None = Field(default=None, ge=0)  # wall-clock seconds of its steps (rank 0), summed
    precision: Literal["fp32", "bf16"] | None = None  # what its forward passes ran in (`auto` resolved); None: fp32 era
    ema: float = Field(default=0.0, ge=0, lt=1)  # the weights it wrote are the exponential moving average, with this
    # decay, of its weights after each step (TrainConfig.ema); 0: its raw weights (and every stage before EMA existed)


COUNTED = ("steps", "tokens", "target_tokens", "padded_tokens", "seconds")  # what Stage counts and chains add up


Metric = float | int  # ints stay ints (counts), floats stay floats (NaN and inf included)


class CheckpointMeta(BaseModel):
    """The contents of checkpoint.json."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    format_version: int  # FORMAT_VERSION of the writer; loading needs one of READABLE_FORMATS
    onn_arc_version: str  # package version that wrote it
    created: datetime  # UTC
    step: int = Field(ge=0)  # optimizer steps taken
    metrics: dict[str, Metric]  # e.g. {"main": 0.41, "acc": 0.87}
    model: ModelConfig  # the full model config: rebuilds the model alone
    data: TrainingData  # provenance: the union over `stages`
    stages: list[Stage] = Field(min_length=1)  # the training stages, oldest first; the last one wrote this checkpoint
    train_config: dict[str, Any]  # free-form training settings of the last stage, for the record
    files: dict[str, str]  # file name -> sha256 of every other file in the folder

    @model_validator(mode="after")
    def _data_covers_stages(self) -> "CheckpointMeta":
        for i, stage in enumerate(self.stages, 1):
            if not self.data.covers(stage.data):
                raise ValueError(f"data does not cover the sources and seen test outputs of stage {i}")
        return self

    def demos_trained(self, tasks: Iterable[Task], source: str | None = None) -> list[str]:
        """Ids of `tasks` whose demos the model trained on (solving them is transductive), in the order given: all of
        them when `source`, the name they were loaded from, is one of its training sources (every source gives its
        demos), else those with a task code (ids are shared across ARC versions, as in `leaks_into`)."""
        if source is not None and source in self.data.sources:
            return [task.id for task in tasks]
        coded = self.model.coded_tasks
        return [task.id for task in tasks if task.id in coded]

    def totals(self) -> dict[str, Metric | None]:
        """Steps, tokens and step-seconds added up over the stages; None where a stage did not record one."""
        values = {name: [getattr(stage, name) for stage in self.stages] for name in COUNTED}
        return {name: None if None in v else sum(v) for name, v in values.items()}


@dataclass
class LoadedCheckpoint:
    folder: Path  # where it was read from (`.NAME.old` after a crash mid-save)
    model: TinyONN  # in eval mode, on the requested device
    meta: CheckpointMeta
    train_state: dict[str, Any] | None  # as given to save_checkpoint; tensors on the CPU


# ---------------------------------------------------------------- train state without pickle


def flatten_state(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into tensors and a JSON structure that refers to them by name.

    Handles dict (any keys of these types), list, tuple, int (any size), float, str, bool, None,
    torch tensors and numpy arrays. Containers become {"dict": [[k, v], ...]}, {"list": [...]},
    {"tuple": [...]}; arrays {"tensor": name} / {"ndarray": name}; scalars stay JSON scalars.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(x: Any, path: str) -> Any:
        if x is None or isinstance(x, bool | int | float | str):
            return x
        if isinstance(x, torch.Tensor | np.ndarray):
            name = str(len(tensors))
            tensors[name] = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(x)
            return {"tensor" if isinstance(x, torch.Tensor) else "ndarray": name}
        if isinstance(x, tuple | list):
            return {type(x).__name__: [encode(v, f"{path}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, dict):
            return {"dict": [[encode(k, f"{path} key"), encode(v, f"{path}[{k!r}]")] for k, v in x.items()]}
        raise TypeError(f"train state{path}: cannot store a {type(x).__name__}")

    return tensors, encode(obj, "")


def unflatten_state(tensors: dict[str, torch.Tensor], structure: Any) -> Any:
    """Inverse of flatten_state. Raises ValueError on a structure it did not write."""

    def decode(s: Any) -> Any:
        if not isinstance(s, dict):
            return s
        if len(s) != 1:
            raise ValueError(f"a structure node has keys {sorted(s)}, expected exactly one tag")
        ((tag, value),) = s.items()
        if tag in ("tensor", "ndarray"):
            if value not in tensors:
                raise ValueError(f"refers to tensor {value!r}, which is not stored")
            return tensors[value] if tag == "tensor" else tensors[value].numpy()
        if tag == "list":
            return [decode(v) for v in value]
        if tag == "tuple":
            return tuple(decode(v) for v in value)
        if tag == "dict":
            return {decode(k): decode(v) for k, v in value}
        raise ValueError(f"unknown structure tag {tag!r}")

    return decode(structure)


# ---------------------------------------------------------------- saving


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Own contiguous CPU copies: safetensors refuses views and tensors that share storage (tied weights).
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backup_of(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def save_checkpoint(
    folder: str | Path,
    model: TinyONN,
    data: TrainingData,
    step: int,
    metrics: dict[str, Metric],
    train_config: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    stages: list[Stage] | None = None,
) -> Path:
    """Write a checkpoint folder atomically, replacing any checkpoint already there. Returns the folder.

    `data` must cover every stage's data (their union); without `stages` the checkpoint holds one unrecorded stage.
    """
    folder = Path(folder).absolute()
    created = datetime.now(UTC)
    if folder.exists() and not (folder / META_FILE).is_file() and (folder.is_file() or any(folder.iterdir())):
        raise CheckpointError(f"{folder}: exists and is not a checkpoint; refusing to overwrite it")
    blobs = {MODEL_FILE: safetensors.torch.save(_storable(model.state_dict()))}
    if train_state is not None:
        tensors, structure = flatten_state(train_state)
        blobs[STATE_FILE] = safetensors.torch.save(_storable(tensors))
        blobs[STATE_STRUCTURE_FILE] = json.dumps(structure).encode()
    meta = CheckpointMeta(
        format_version=FORMAT_VERSION,
        onn_arc_version=__version__,
        created=created,
        step=step,
        metrics=metrics,
        model=model.cfg,
        data=data,
        stages=stages if stages is not None else [Stage(saved=created, data=data, steps=step)],
        train_config=train_config or {},
        files={name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()},
    )
    blobs[META_FILE] = meta.model_dump_json(indent=2).encode()

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, backup = folder.with_name(f".{folder.name}.tmp"), _backup_of(folder)
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier crash
    try:
        tmp.mkdir()
        for name, blob in blobs.items():  # checkpoint.json last
            _write_bytes(tmp / name, blob)
        _fsync_dir(tmp)
        if folder.exists():
            shutil.rmtree(backup, ignore_errors=True)  # a stale one: `folder` is complete
            os.replace(folder, backup)
        os.replace(tmp, folder)  # if `folder` was missing, a backup from a crash stays until now
        _fsync_dir(folder.parent)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ---------------------------------------------------------------- loading


def _read(folder: Path, meta: CheckpointMeta, name: str, parse: Callable[[bytes], Any]) -> Any:
    """Parse a file listed in checkpoint.json, then check its sha256 (parsing first tells truncation from tampering)."""
    if name not in meta.files:
        raise CheckpointError(f"{folder}: {META_FILE} does not list {name}")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder}: {name} is missing")
    blob = path.read_bytes()
    try:
        value = parse(blob)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{folder}: {name} is truncated or corrupt ({e})") from None
    if hashlib.sha256(blob).hexdigest() != meta.files[name]:
        raise CheckpointError(f"{folder}: {name} was modified after saving (sha256 mismatch)")
    return value


def _read_meta(folder: Path) -> CheckpointMeta:
    path = folder / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint (no {META_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder}: {META_FILE} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{folder}: {META_FILE} holds a {type(raw).__name__}, not an object")
    if raw.get("format_version") not in READABLE_FORMATS:
        raise CheckpointError(
            f"{folder}: checkpoint format version {raw.get('format_version')!r} "
            f"(written by onn-arc {raw.get('onn_arc_version', '?')}); "
            f"this onn-arc {__version__} reads versions {', '.join(map(str, READABLE_FORMATS))}"
        )
    if raw["format_version"] < 3:
        raw = _pair_format_only(folder, raw)
    try:
        if raw["format_version"] == 1:  # no stages yet: all its training reads as one stage, known by what it records
            raw = raw | {"stages": [{"saved": raw.get("created"), "data": raw.get("data"), "steps": raw.get("step")}]}
        return CheckpointMeta.model_validate(raw)
    except ValidationError as e:
        raise CheckpointError(one_line(e, f"{folder}: {META_FILE}")) from None
    except ConfigError as e:
        raise CheckpointError(f"{folder}: {META_FILE}: model: {e}") from None


def _pair_format_only(folder: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """A format 1 or 2 checkpoint.json without the fields that chose the sequence format, in its model config and in
    the training config a --resume starts from; CheckpointError when they choose anything but the pair format."""
    model = raw.get("model")
    if not isinstance(model, dict):
        return raw  # validation names what is wrong
    for field, value in PAIR_FORMAT.items():
        found = model.get(field, "context" if field == "format" else value)  # absent before the pair format
        if found != value:
            raise CheckpointError(
                f"{folder}: model.{field}={found!r}: the in-context format and the format ablations were retired; "
                f"commit {LAST_CONTEXT_COMMIT} is the last onn-arc that reads this checkpoint"
            )
    raw = raw | {"model": _without_format(model)}
    train = raw.get("train_config")
    if isinstance(train, dict) and isinstance(train.get("model"), dict):
        raw["train_config"] = train | {"model": _without_format(train["model"])}
    return raw


def _without_format(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in PAIR_FORMAT}


def _check_tensors(folder: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    def names(keys: set[str]) -> str:
        listed = sorted(keys)
        return ", ".join(listed[:3]) + (", ..." if len(listed) > 3 else "")

    missing, unexpected = set(expected) - set(found), set(found) - set(expected)
    if missing:
        raise CheckpointError(f"{folder}: {MODEL_FILE} lacks {len(missing)} tensor(s) the config needs: {names(missing)}")
    if unexpected:
        raise CheckpointError(f"{folder}: {MODEL_FILE} has {len(unexpected)} tensor(s) the config does not: {names(unexpected)}")
    for name, t in expected.items():
        if found[name].shape != t.shape:
            raise CheckpointError(
                f"{folder}: {MODEL_FILE}: {name} has shape {tuple(found[name].shape)}, the config needs {tuple(t.shape)}"
            )


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model (eval mode, on `device`), its metadata and the training state if one was saved."""
    folder = Path(folder)
    if not folder.exists() and (_backup_of(folder) / META_FILE).is_file():
        folder = _backup_of(folder)  # a save crashed between its two renames
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    meta = _read_meta(folder)
    weights = _read(folder, meta, MODEL_FILE, safetensors.torch.load)
    model = TinyONN(meta.model)
    _check_tensors(folder, model.state_dict(), weights)
    model.load_state_dict(weights)

    train_state = None
    if STATE_FILE in meta.files:
        tensors = _read(folder, meta, STATE_FILE, safetensors.torch.load)
        structure = _read(folder, meta, STATE_STRUCTURE_FILE, json.loads)
        try:
            train_state = unflatten_state(tensors, structure)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{folder}: {STATE_STRUCTURE_FILE}: {e}") from None
    return LoadedCheckpoint(folder, model.to(device).eval(), meta, train_state)


def default_checkpoint() -> Path:
    """The shipped checkpoint, `checkpoints/default` in the repository."""
    path = REPO_ROOT / "checkpoints" / "default"
    if not path.exists() and not _backup_of(path).exists():
        raise CheckpointError(f"no checkpoint at {path}; train one with `onn-arc train` or pass --checkpoint")
    return path


def export_weights(source: str | Path, target: str | Path) -> Path:
    """Copy a checkpoint without its training state: what ships in `checkpoints/` (same weights, config, provenance,
    stages). A stage trained with an EMA ships its moving average, not the raw weights left in the training state."""
    c = load_checkpoint(source)
    meta = c.meta
    return save_checkpoint(
        target, c.model, meta.data, meta.step, dict(meta.metrics), meta.train_config, stages=meta.stages
    )
