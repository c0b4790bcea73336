"""`onn-arc train`'s config: each flag (and each field of a config file) changes exactly its field of the defaults,
of the `--init` checkpoint's config or of the resumed run's, and nothing else. No training: `prepare` is stubbed."""

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import onn_arc.cli.train as cli_train
from onn_arc.checkpoint import default_checkpoint, load_checkpoint
from onn_arc.cli.app import app
from onn_arc.config import DEFAULT_LR, OptimizerConfig, TrainConfig
from onn_arc.evaluate import _flat  # nested dicts as dotted keys


@pytest.fixture
def config_of(monkeypatch, tmp_path):
    """The TrainConfig `onn-arc train ARGS` would train with."""

    def run(*args: str) -> TrainConfig:
        got = []

        def prepare(cfg: TrainConfig, *_, **__):
            got.append(cfg)
            raise typer.Exit()

        monkeypatch.setattr(cli_train, "prepare", prepare)
        result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--device", "cpu", *args])
        assert result.exit_code == 0 and got, result.output
        return got[0]

    return run


def changed(before: TrainConfig, after: TrainConfig) -> dict[str, Any]:
    """The fields that differ, as dotted keys with their new values."""
    old, new = _flat(before.model_dump()), _flat(after.model_dump())
    return {key: value for key, value in new.items() if old[key] != value}


@pytest.mark.parametrize(
    "args, change",
    [
        (["--lr", "5e-3"], {"optimizer.lr": 5e-3}),  # not Gauss-Newton, OptimizerConfig's own default
        (["--optimizer", "adamw"], {"optimizer.name": "adamw", "optimizer.lr": 3e-3}),  # AdamW's own default lr
        (["--optimizer", "adamw", "--lr", "1e-3"], {"optimizer.name": "adamw", "optimizer.lr": 1e-3}),
        (["--arch", "dense"], {"model.arch": "dense"}),  # the default preset's shape, no "Field required"
        (["--d-model", "64"], {"model.d_model": 64}),
        (["--input-loss"], {"input_loss": True}),
        (["--gate-form", "median"], {"loss.gate_form": "median"}),
        (["--no-augment"], {"augment.dihedral": False, "augment.colours": False, "augment.shuffle": False}),
        (["--steps", "7"], {"steps": 7}),
        (["--size", "small"], {"model.d_model": 64, "model.n_layers": 2}),  # base and small share ffn_mult, max_len
        (["--loops", "2"], {"model.loops": 2}),
        (["--dropout", "0.1"], {"model.dropout": 0.1}),
        (["--weight-decay", "0.05"], {"optimizer.weight_decay": 0.05}),
        (["--ema", "0.999"], {"ema": 0.999}),
        (["--copies", "8"], {"model.copies": 8}),
        (["--colours", "inputs"], {"augment.colour_scope": "inputs"}),
        (["--colours", "off"], {"augment.colours": False}),
    ],
)
def test_a_flag_changes_its_field_of_the_defaults_and_nothing_else(config_of, args, change):
    assert changed(TrainConfig(), config_of(*args)) == change


def test_a_config_file_changes_the_fields_it_names(config_of, tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"optimizer": {"lr": 5e-3}, "model": {"arch": "dense"}, "steps": 9}))
    assert changed(TrainConfig(), config_of("--config", str(path))) == {
        "optimizer.lr": 5e-3, "model.arch": "dense", "steps": 9,
    }  # fmt: skip
    assert changed(TrainConfig(), config_of("--config", str(path), "--steps", "3")) == {
        "optimizer.lr": 5e-3, "model.arch": "dense", "steps": 3,
    }  # fmt: skip


def test_flags_change_the_init_checkpoints_model_and_the_defaults_elsewhere(config_of):
    shipped = load_checkpoint(default_checkpoint()).meta
    cfg = config_of("--init", str(default_checkpoint()), "--lr", "5e-3", "--max-len", "1024")
    assert changed(TrainConfig(model=shipped.model), cfg) == {"optimizer.lr": 5e-3, "model.max_len": 1024}


def test_flags_change_the_resumed_runs_config(config_of, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint").symlink_to(Path(default_checkpoint()).resolve())
    saved = TrainConfig.model_validate(load_checkpoint(default_checkpoint()).meta.train_config)
    assert (saved.model.arch, saved.model.loops) == ("dense", 2)  # the shipped run's, not the defaults
    assert changed(saved, config_of("--resume", "--lr", "1e-3", "--seed", "5")) == {"optimizer.lr": 1e-3, "seed": 5}
    assert config_of("--resume") == saved


def test_each_optimizer_has_its_own_default_lr_in_one_table():
    assert {name: OptimizerConfig(name=name).lr for name in DEFAULT_LR} == DEFAULT_LR
    assert TrainConfig().optimizer.lr == DEFAULT_LR["muon"] and OptimizerConfig(name="adamw", lr=1e-4).lr == 1e-4
    assert OptimizerConfig.model_validate({"name": "gn", "lr": 5e-3}).lr == 5e-3  # a recorded config keeps its lr


def test_a_bad_optimizer_name_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--optimizer", "sgd"])
    assert result.exit_code != 0 and "Traceback" not in result.output and "sgd" in result.output
