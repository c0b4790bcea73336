"""Checkpoints: bit-exact round trips, atomic overwrites and crashes, one-line errors, provenance, `inspect`."""

import json
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

import onn_arc.cli.inspect  # noqa: F401  (registers the command)
from onn_arc import checkpoint
from onn_arc.checkpoint import (
    COUNTED,
    Stage,
    TrainingData,
    default_checkpoint,
    flatten_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from onn_arc.cli.app import app
from onn_arc.config import ModelConfig, TrainConfig
from onn_arc.data import load_split, parse_task
from onn_arc.errors import CheckpointError
from onn_arc.model import TinyONN

DATA = TrainingData(
    sources=["arc1-train", "arc1-eval"],
    test_outputs_from=["arc1-train"],
    demos_only=["arc1-eval"],
    task_ids_with_test_outputs=["b", "a"],
    n_tasks=2,
)


def tiny(**overrides) -> TinyONN:
    return TinyONN(ModelConfig.preset("tiny", **({"task_ids": ("t1", "t2")} | overrides)))


def trained_state(model: TinyONN) -> tuple[torch.optim.AdamW, dict]:
    """An AdamW that has taken a step, and a train state holding it, every RNG and a data cursor."""
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-3)
    tokens = torch.randint(0, 10, (1, 8))
    model(tokens, tokens % 3, tokens % 4, tokens % 6, task=torch.tensor([1])).square().mean().backward()
    opt.step()
    opt.zero_grad()
    rng = np.random.default_rng(123)
    rng.integers(10)
    state = {
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": rng.bit_generator.state,  # PCG64: 128-bit Python ints
        "python_rng": random.Random(7).getstate(),  # (3, tuple of 625 ints, None)
        "cursor": {"epoch": 2, "order": [3, 1, 2], "offset": (5, 0.25)},
    }
    return opt, state


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, TinyONN]:
    model = tiny()
    folder = save_checkpoint(tmp_path / "ckpt", model, DATA, step=3, metrics={"main": 0.5})
    return folder, model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one_line_error(folder: Path, match: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    assert match in message, message
    return message


# ---------------------------------------------------------------- round trips


def test_round_trip_is_bit_exact(tmp_path: Path):
    model = tiny()
    opt, state = trained_state(model)
    metrics = {"main": 0.4125, "acc": 0.875, "tokens": 1024, "kl": float("inf")}
    train_config = {"lr": 1e-3, "optimizer": "adamw", "steps": [1, 2]}
    save_checkpoint(tmp_path / "ckpt", model, DATA, step=42, metrics=metrics, train_config=train_config, train_state=state)

    loaded = load_checkpoint(tmp_path / "ckpt")
    assert same_weights(model, loaded.model) and not loaded.model.training
    meta = loaded.meta
    assert (meta.model, meta.data, meta.step, meta.metrics, meta.train_config) == (model.cfg, DATA, 42, metrics, train_config)
    assert type(meta.metrics["tokens"]) is int
    got = loaded.train_state
    assert got["python_rng"] == state["python_rng"] and type(got["python_rng"][1]) is tuple
    assert got["numpy_rng"] == state["numpy_rng"]
    assert torch.equal(got["torch_rng"], state["torch_rng"])
    assert got["cursor"] == state["cursor"] and type(got["cursor"]["offset"]) is tuple

    # the restored optimizer takes exactly the step the original takes
    resumed = torch.optim.AdamW(loaded.model.param_groups(0.1), lr=1e-3)
    resumed.load_state_dict(got["optimizer"])
    for m, o in ((model, opt), (loaded.model, resumed)):
        torch.manual_seed(1)
        tokens = torch.randint(0, 10, (1, 8))
        m(tokens, tokens % 3, tokens % 4, tokens % 6, task=torch.tensor([1])).square().mean().backward()
        o.step()
    assert same_weights(model, loaded.model)


def test_restored_rngs_draw_the_same_numbers(tmp_path: Path):
    model = tiny()
    rng = np.random.default_rng(5)
    state = {"numpy": rng.bit_generator.state, "python": random.getstate(), "torch": torch.get_rng_state()}
    expected = (rng.random(3).tolist(), [random.random() for _ in range(3)], torch.rand(3))
    save_checkpoint(tmp_path / "ckpt", model, DATA, 0, {}, train_state=state)
    got = load_checkpoint(tmp_path / "ckpt").train_state
    rng = np.random.default_rng()
    rng.bit_generator.state = got["numpy"]
    random.setstate(got["python"])
    torch.set_rng_state(got["torch"])
    assert rng.random(3).tolist() == expected[0]
    assert [random.random() for _ in range(3)] == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


scalars = st.none() | st.booleans() | st.integers(-(2**130), 2**130) | st.floats(allow_nan=False) | st.text(max_size=5)
keys = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
states = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(states)
def test_flatten_round_trips_any_nested_state(state):
    tensors, structure = flatten_state(state)
    restored = unflatten_state(tensors, json.loads(json.dumps(structure)))
    assert restored == state and repr(restored) == repr(state)  # repr tells 1 from 1.0 and True, tuples from lists


def test_flatten_keeps_tensors_and_arrays_apart_and_rejects_unknown_types():
    state = {"t": torch.arange(3), "a": np.arange(4, dtype=np.uint32), 0: [torch.zeros(2, 0)]}
    tensors, structure = flatten_state(state)
    restored = unflatten_state(tensors, json.loads(json.dumps(structure)))
    assert torch.equal(restored["t"], state["t"]) and isinstance(restored["a"], np.ndarray)
    assert restored["a"].dtype == np.uint32 and (restored["a"] == state["a"]).all()
    assert restored[0][0].shape == (2, 0)
    with pytest.raises(TypeError, match="set"):
        flatten_state({"x": {1, 2}})


# ---------------------------------------------------------------- atomic writes


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def test_overwrite_replaces_the_checkpoint_and_leaves_nothing_behind(saved):
    folder, _ = saved
    newer = tiny()
    save_checkpoint(folder, newer, DATA, step=9, metrics={})
    loaded = load_checkpoint(folder)
    assert loaded.meta.step == 9 and same_weights(newer, loaded.model)
    assert leftovers(folder) == []


def test_crash_while_writing_keeps_the_old_checkpoint(saved, monkeypatch):
    folder, old = saved
    calls = []
    real_write = checkpoint._write_bytes

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(data[: len(data) // 2])
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "_write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(folder, tiny(), DATA, step=9, metrics={}, train_state={"x": torch.ones(3)})
    loaded = load_checkpoint(folder)
    assert loaded.meta.step == 3 and same_weights(old, loaded.model)
    assert leftovers(folder) == []


def test_crash_between_the_renames_is_recovered(saved, monkeypatch):
    folder, old = saved
    real_replace = checkpoint.os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies after moving the old checkpoint aside
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, tiny(), DATA, step=9, metrics={})
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)

    assert not folder.exists()
    loaded = load_checkpoint(folder)  # read from the backup
    assert loaded.meta.step == 3 and same_weights(old, loaded.model)
    assert loaded.folder == folder.with_name(f".{folder.name}.old")

    newer = tiny()
    save_checkpoint(folder, newer, DATA, step=10, metrics={})
    assert same_weights(newer, load_checkpoint(folder).model)
    assert leftovers(folder) == []


def test_save_refuses_to_replace_a_folder_that_is_not_a_checkpoint(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        save_checkpoint(tmp_path, tiny(), DATA, 0, {})
    assert (tmp_path / "notes.txt").read_text() == "precious"


# ---------------------------------------------------------------- one-line errors


def edit_meta(folder: Path, edit) -> None:
    path = folder / "checkpoint.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def flip_last_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_missing_and_non_checkpoint_folders(tmp_path: Path):
    one_line_error(tmp_path / "nowhere", "no such checkpoint folder")
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "weights.bin").write_bytes(b"\0")
    one_line_error(tmp_path / "random", "not a checkpoint")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-7]), "truncated or corrupt"),
        (lambda f: flip_last_byte(f / "model.safetensors"), "model.safetensors was modified after saving"),
        (lambda f: (f / "checkpoint.json").write_text('{"format_version": 1,'), "not valid JSON"),
        (lambda f: edit_meta(f, lambda m: m.update(format_version=99)), "format version 99"),
        (lambda f: edit_meta(f, lambda m: m["model"].update(d_model=-4)), "model.d_model"),
        (lambda f: edit_meta(f, lambda m: m["model"].update(d_model=24)), "has shape"),
        (lambda f: edit_meta(f, lambda m: m["model"].update(n_layers=2)), "lacks"),
        (lambda f: edit_meta(f, lambda m: m["data"].pop("sources")), "data.sources"),
        (lambda f: edit_meta(f, lambda m: m["files"].pop("model.safetensors")), "does not list model.safetensors"),
        (lambda f: edit_meta(f, lambda m: m["data"].update(task_ids_with_test_outputs=[])), "seen test outputs of stage 1"),
    ],
    ids=["missing", "truncated", "tampered", "not-json", "format", "bad-config", "shape", "missing-tensors",
         "bad-provenance", "unlisted", "data-misses-a-stage"],
)
def test_damaged_checkpoints_give_one_line(saved, damage, match):
    folder, _ = saved
    damage(folder)
    one_line_error(folder, match)


def test_unexpected_tensors_and_a_tampered_train_state(tmp_path: Path):
    folder = save_checkpoint(tmp_path / "two", tiny(n_layers=2), DATA, 0, {}, train_state={"x": torch.ones(3)})
    flip_last_byte(folder / "train_state.safetensors")
    one_line_error(folder, "train_state.safetensors was modified after saving")
    edit_meta(folder, lambda m: m["model"].update(n_layers=1))
    one_line_error(folder, "the config does not")


def test_default_checkpoint_lives_in_the_repo(tmp_path: Path, monkeypatch):
    assert checkpoint.REPO_ROOT / "onn_arc" == Path(checkpoint.__file__).resolve().parent
    monkeypatch.setattr(checkpoint, "REPO_ROOT", tmp_path)
    with pytest.raises(CheckpointError, match="onn-arc train"):
        default_checkpoint()
    save_checkpoint(tmp_path / "checkpoints" / "default", tiny(), DATA, 0, {})
    assert load_checkpoint(default_checkpoint()).meta.data == DATA


# ---------------------------------------------------------------- provenance


def task(task_id: str):
    return parse_task({"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}, task_id, "test")


def test_leaks_into_names_tasks_whose_test_outputs_were_seen():
    assert DATA.task_ids_with_test_outputs == ["a", "b"]  # kept sorted
    assert DATA.leaks_into([task("c"), task("b"), task("a")]) == ["b", "a"]
    assert DATA.leaks_into([task("c")]) == []


def test_provenance_names_only_listed_sources():
    with pytest.raises(ValidationError, match="arc2-train"):
        TrainingData(sources=["arc1-train"], test_outputs_from=["arc2-train"], demos_only=[], task_ids_with_test_outputs=[], n_tasks=0)


def test_union_over_stages():
    demos = TrainingData(sources=["e", "t"], test_outputs_from=["t"], demos_only=["e"], task_ids_with_test_outputs=["b"], n_tasks=5)
    later = TrainingData(sources=["e"], test_outputs_from=["e"], demos_only=[], task_ids_with_test_outputs=["a"], n_tasks=3)
    union = TrainingData.union([demos, demos, later])
    assert union.sources == ["e", "t"] and union.test_outputs_from == ["t", "e"] and union.demos_only == []
    assert union.task_ids_with_test_outputs == ["a", "b"] and union.n_tasks == 5  # e's tasks are among demos' 5
    assert union.covers(demos) and union.covers(later) and not demos.covers(union)


def test_union_counts_a_task_once_when_a_stage_adds_a_source():
    first = TrainingData(sources=["t"], test_outputs_from=["t"], demos_only=[], task_ids_with_test_outputs=["a"], n_tasks=3)
    added = TrainingData(sources=["t", "e"], test_outputs_from=["t"], demos_only=["e"], task_ids_with_test_outputs=["a"], n_tasks=7)
    other = TrainingData(sources=["x"], test_outputs_from=["x"], demos_only=[], task_ids_with_test_outputs=["z"], n_tasks=2)
    assert TrainingData.union([first, first, added]).n_tasks == 7  # not 3 + 7
    assert TrainingData.union([first, other]).n_tasks == 5  # disjoint sources add up


# ---------------------------------------------------------------- stages


NOW = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
LATER = TrainingData(sources=["arc2-train"], test_outputs_from=["arc2-train"], demos_only=[], task_ids_with_test_outputs=["c"], n_tasks=1)
STAGES = [
    Stage(commands=["onn-arc train"], saved=NOW, data=DATA, steps=10, tokens=900, target_tokens=300, padded_tokens=1000, seconds=2.5),
    Stage(commands=["onn-arc train --init x", "onn-arc train --resume"], init_sha256="ab" * 32, saved=NOW, data=LATER,
          steps=5, tokens=450, target_tokens=150, padded_tokens=500, seconds=1.25, precision="bf16", ema=0.999),
]  # fmt: skip


@pytest.fixture
def chained(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "chained", tiny(), TrainingData.union([DATA, LATER]), 5, {}, stages=STAGES)


def test_a_chain_round_trips_adds_up_and_ships(chained):
    meta = load_checkpoint(chained).meta
    assert meta.stages == STAGES and meta.format_version == checkpoint.FORMAT_VERSION
    shipped = load_checkpoint(checkpoint.export_weights(chained, chained.parent / "ship")).meta
    assert (shipped.stages, shipped.data) == (STAGES, meta.data)
    assert meta.totals() == {"steps": 15, "tokens": 1350, "target_tokens": 450, "padded_tokens": 1500, "seconds": 3.75}
    assert meta.data.leaks_into([task("a"), task("c"), task("d")]) == ["a", "c"]


def test_a_format_1_checkpoint_reads_as_one_stage(saved):
    folder, _ = saved
    edit_meta(folder, lambda m: (m.pop("stages"), m.update(format_version=1), m["model"].update(format="pairs")))
    meta = load_checkpoint(folder).meta
    (stage,) = meta.stages
    assert (stage.data, stage.steps, stage.saved, stage.commands, stage.init_sha256) == (DATA, 3, meta.created, [], None)
    assert meta.totals() == {"steps": 3} | dict.fromkeys(COUNTED[1:])  # nothing else was counted


PAIR_FORMAT = {"format": "pairs", "task_codes": True, "planes": True}  # how format 2 named today's model


def as_format_2(folder: Path, **fields) -> None:
    """Rewrite the checkpoint as format 2 wrote it, its model config (and the training config's) naming `fields`."""

    def edit(meta: dict) -> None:
        meta["format_version"] = 2
        for config in (meta["model"], meta["train_config"].get("model", {})):
            config.update(fields)

    edit_meta(folder, edit)


def test_a_format_2_pair_checkpoint_reads_as_today_and_its_run_resumes(tmp_path: Path):
    model = tiny()
    train_config = TrainConfig(model=model.cfg).model_dump(mode="json")
    folder = save_checkpoint(tmp_path / "old", model, DATA, 3, {}, train_config)
    as_format_2(folder, **PAIR_FORMAT)
    loaded = load_checkpoint(folder)
    assert loaded.meta.model == model.cfg and same_weights(model, loaded.model)
    assert TrainConfig.model_validate(loaded.meta.train_config).model == model.cfg  # what --resume starts from
    edit_meta(folder, lambda m: (m["model"].pop("task_codes"), m["model"].pop("planes")))  # before the switches
    assert load_checkpoint(folder).meta.model == model.cfg
    edit_meta(folder, lambda m: (m["model"].pop("loops"), m["model"].pop("dropout"), m["stages"][-1].pop("ema")))
    meta = load_checkpoint(folder).meta  # saved before loops, dropout and EMA existed
    assert (meta.model.loops, meta.model.dropout, meta.stages[-1].ema) == (1, 0.0, 0.0)


@pytest.mark.parametrize(
    "fields, named",
    [({}, "format='context'"), ({"format": "context"}, "format='context'"),
     (PAIR_FORMAT | {"task_codes": False}, "task_codes=False"), (PAIR_FORMAT | {"planes": False}, "planes=False")],
    ids=["no-format", "context", "no-codes", "2-d"],
)  # fmt: skip
def test_a_checkpoint_in_a_retired_format_is_refused_in_one_line_naming_the_last_commit_that_reads_it(saved, fields, named):
    folder, _ = saved
    as_format_2(folder, **fields)
    one_line_error(folder, f"model.{named}: the in-context format and the format ablations were retired; commit 841b775")
    result = CliRunner().invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 1 and "841b775" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_format_3_checkpoint_names_no_format(saved):
    folder, _ = saved
    assert "format" not in json.loads((folder / "checkpoint.json").read_text())["model"]
    edit_meta(folder, lambda m: m["model"].update(format="pairs"))
    one_line_error(folder, "model.format")  # a field this format does not have


def test_the_shipped_checkpoint_loads_and_records_its_training():
    meta = load_checkpoint(checkpoint.REPO_ROOT / "checkpoints" / "default").meta
    assert meta.stages[-1].steps == meta.step > 0 and meta.data == TrainingData.union([s.data for s in meta.stages])
    assert meta.data.leaks_into(load_split("arc1-eval") + load_split("arc2-eval")) == []  # no evaluation answer, by id
    assert meta.model.n_task_codes == meta.data.n_tasks == 553  # one code per training task


# ---------------------------------------------------------------- inspect


def test_inspect_shows_config_parameters_provenance_and_activation(saved):
    folder, model = saved
    result = CliRunner().invoke(app, ["inspect", str(folder), "--tasks", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    for title in ("checkpoint", "parameters", "training", "SBL activation", "arc1-train", "blocks.0.ffn.up"):
        assert title in result.stdout

    result = CliRunner().invoke(app, ["inspect", str(folder), "--tasks", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    params = report["parameters"]
    assert params["total"] == model.num_params() == sum(params[k] for k in ("matrices", "sigma", "gate", "other"))
    assert params["sigma"] == params["matrices"]  # every SBL has a sigma the shape of its mu
    layers = report["activation"]["layers"]
    assert [layer["name"] for layer in layers] == [name for name, _ in model.routed_layers()]
    assert all(0 <= layer["rate"] <= 1 and 0 <= layer["dead"] <= layer["units"] for layer in layers)
    assert report["step"] == 3 and report["data"]["sources"] == DATA.sources


def test_inspect_shows_the_chain_and_its_totals(chained, saved):
    result = CliRunner().invoke(app, ["inspect", str(chained), "--tasks", "0"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index("stages: 2 · total 15 steps · 1,350 tokens (450 target, 1,500 padded) · 3.8 s")
    assert lines[start + 1].startswith("  1. 10 steps · 900 tokens (300 target, 1,000 padded) · 2.5 s · ? · arc1-train + ")
    assert lines[start + 1].endswith("fresh init · 2026-01-02 03:04 · onn-arc train")
    assert f"· bf16 · arc2-train · from {'ab' * 6} · EMA 0.999 ·" in lines[start + 2]
    assert any("weights" in line and "EMA 0.999 of the last stage's" in line for line in lines)
    assert lines[start + 2].endswith("onn-arc train --init x ; onn-arc train --resume")
    report = json.loads(CliRunner().invoke(app, ["inspect", str(chained), "--tasks", "0", "--json"]).stdout)
    assert report["totals"]["tokens"] == 1350 and len(report["stages"]) == 2

    result = CliRunner().invoke(app, ["inspect", str(saved[0]), "--tasks", "0"])
    assert "stages: 1 · total 3 steps · ? tokens (? target, ? padded) · ? s" in result.stdout
    assert any(line.split() == ["│", "weights", "│", "raw", "│"] for line in result.stdout.splitlines())
    assert "command not recorded" in result.stdout


def test_inspect_a_looped_model_measures_every_loop(tmp_path: Path):
    folder = save_checkpoint(tmp_path / "looped", tiny(loops=2, dropout=0.1), DATA, 0, {})
    result = CliRunner().invoke(app, ["inspect", str(folder), "--tasks", "1", "--json", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["model"]["loops"], report["model"]["dropout"]) == (2, 0.1)
    assert len(report["activation"]["layers"]) == 4  # one row per layer, its rate the mean over the loops
    assert "loops" in CliRunner().invoke(app, ["inspect", str(folder), "--tasks", "0"]).stdout


def test_inspect_dense_baseline(tmp_path: Path):
    folder = save_checkpoint(tmp_path / "dense", tiny(arch="dense"), DATA, 0, {})
    result = CliRunner().invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert "dense" in result.stdout and "1.0" in result.stdout
    report = json.loads(CliRunner().invoke(app, ["inspect", str(folder), "--json"]).stdout)
    assert report["activation"]["mean_rate"] == 1.0 and report["parameters"]["sigma"] == 0


def test_inspect_bad_path_is_one_line(tmp_path: Path):
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "no such checkpoint folder" in result.stderr


def test_inspect_reports_a_corrupt_checkpoint(saved):
    folder, _ = saved
    shutil.copy(folder / "checkpoint.json", folder / "model.safetensors")
    result = CliRunner().invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 1 and "truncated or corrupt" in result.stderr


def test_export_weights_drops_train_state_only(tmp_path):
    from onn_arc.checkpoint import export_weights

    model = TinyONN(ModelConfig.preset("tiny"))
    data = TrainingData(sources=["s"], test_outputs_from=["s"], demos_only=[], task_ids_with_test_outputs=["a"], n_tasks=1)
    save_checkpoint(tmp_path / "run", model, data, 7, {"main": 0.5}, {"seed": 1}, train_state={"step": 7})
    export_weights(tmp_path / "run", tmp_path / "ship")
    shipped = load_checkpoint(tmp_path / "ship")
    assert shipped.train_state is None and shipped.meta.step == 7 and shipped.meta.data == data
    assert all(torch.equal(a, b) for a, b in zip(shipped.model.state_dict().values(), model.state_dict().values()))


def test_a_model_round_trips_with_its_task_codes(tmp_path):
    model = tiny()
    model.add_task_code("t3", "zero")
    save_checkpoint(tmp_path / "ck", model, DATA, step=1, metrics={})
    loaded = load_checkpoint(tmp_path / "ck").model
    assert loaded.cfg.task_ids == ("t1", "t2", "t3")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
