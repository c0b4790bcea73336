import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import onn_arc.cli.train  # noqa: F401  (registers the command)
from onn_arc import train as tr
from onn_arc.augment import Augmentation
from onn_arc.checkpoint import COUNTED, default_checkpoint, export_weights, load_checkpoint, save_checkpoint
from onn_arc.cli.app import app
from onn_arc.config import AugmentConfig, ModelConfig, OptimizerConfig, SolveConfig, TrainConfig
from onn_arc.data import load_source, load_split, resolve_task
from onn_arc.errors import ConfigError, LeakageError, TrainingError
from onn_arc.evaluate import evaluate
from onn_arc.losses import main_loss
from onn_arc.model import TinyONN
from onn_arc.tokens import INPUT_PLANE, N_COLOURS, OUTPUT_PLANE, PAD, Batch

DATA = "data"  # the bundled example tasks: small, fast


def _cfg(**kw) -> TrainConfig:
    base = dict(
        model=ModelConfig.preset("tiny", max_len=256),
        sources=[DATA],
        batch_tokens=512,
        steps=6,
        warmup_steps=2,
        checkpoint_every=3,
        optimizer=OptimizerConfig(name="gn", curvature_every=1, precondition_every=2, start_step=1),
    )
    return TrainConfig(**(base | kw))


def _weights(run: tr.Run) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def _stop_at(stop: int):
    """An on_step that asks the run to save and stop after step `stop`, as Ctrl-C does."""

    def on_step(step, metrics):
        if step == stop:
            os.kill(os.getpid(), signal.SIGINT)  # handled: save and stop

    return on_step


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("optimizer", ["gn", "adamw", "muon"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, optimizer, precision):
    opt = OptimizerConfig(name=optimizer, curvature_every=1, precondition_every=2, start_step=1)
    whole = tr.prepare(_cfg(optimizer=opt, precision=precision), tmp_path / "whole")
    whole.fit()

    first = tr.prepare(_cfg(optimizer=opt, precision=precision), tmp_path / "parts")
    first.fit(_stop_at(3))
    saved = load_checkpoint(tmp_path / "parts" / "checkpoint").meta
    assert saved.step == 3 and saved.stages[-1].precision == precision
    second = tr.prepare(_cfg(optimizer=opt, precision=precision), tmp_path / "parts", resume=True)
    assert second.step == 3
    second.fit()

    a, b = _weights(whole), _weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_ema_checkpoints_ship_the_average_and_a_resumed_run_ends_the_same(tmp_path):
    """With ema (and loops, dropout): the checkpoint's weights are the bias-corrected moving average of the weights
    after each step, the raw ones are in the training state, and a run resumed from step 3 ends with the same raw
    and average weights as one never stopped; export_weights ships the average."""
    decay = 0.8
    model = ModelConfig.preset("tiny", max_len=256, loops=2, dropout=0.1)
    cfg = _cfg(model=model, ema=decay, optimizer=OptimizerConfig(name="muon"))
    whole = tr.prepare(cfg, tmp_path / "whole")
    raw = []
    whole.fit(lambda step, m: raw.append(_weights(whole)))
    average = raw[0]
    for t, w in enumerate(raw[1:], 2):
        average = {k: v + (w[k] - v) * (1 - decay) / (1 - decay**t) for k, v in average.items()}
    saved = load_checkpoint(tmp_path / "whole" / "checkpoint")
    shipped = saved.model.state_dict()
    for k, v in average.items():
        torch.testing.assert_close(shipped[k], v, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(shipped["blocks.0.attn.qkv.mu"], raw[-1]["blocks.0.attn.qkv.mu"])
    assert all(torch.equal(saved.train_state["weights"][k], v) for k, v in raw[-1].items())
    assert saved.meta.stages[-1].ema == decay

    tr.prepare(cfg, tmp_path / "parts").fit(_stop_at(3))
    second = tr.prepare(cfg, tmp_path / "parts", resume=True)
    assert second.step == 3
    second.fit()
    assert all(torch.equal(raw[-1][k], v) for k, v in _weights(second).items())
    resumed = load_checkpoint(tmp_path / "parts" / "checkpoint").model.state_dict()
    assert all(torch.equal(shipped[k], v) for k, v in resumed.items())

    exported = load_checkpoint(export_weights(tmp_path / "whole" / "checkpoint", tmp_path / "ship"))
    assert exported.train_state is None and exported.meta.stages[-1].ema == decay
    assert all(torch.equal(shipped[k], v) for k, v in exported.model.state_dict().items())


def test_gauss_newton_counts_every_loop_of_a_weight_tied_layer(tmp_path):
    """GN's input factor of a layer applied once per loop is the mean x xᵀ over the rows of every application."""
    cfg = _cfg(model=ModelConfig.preset("tiny", max_len=256, loops=2), precision="fp32", steps=1)
    run = tr.prepare(cfg, tmp_path)
    layer = run.model.blocks[0].ffn.up
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().flatten(0, -2)))
    run.fit()
    handle.remove()
    assert len(seen) == 2
    rows = torch.cat(seen)  # (2 B T, d_in)
    torch.testing.assert_close(run.opt.state[layer.mu]["A"], rows.T @ rows / len(rows))


@pytest.mark.parametrize("optimizer", ["gn", "muon"])
def test_training_lowers_the_loss(tmp_path, optimizer):
    run = tr.prepare(_cfg(steps=30, checkpoint_every=100, optimizer=OptimizerConfig(name=optimizer, lr=1e-2)), tmp_path)
    losses = []
    run.fit(lambda step, m: losses.append(m["main"]))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2


def test_evaluation_splits_cannot_be_trained_on(tmp_path):
    with pytest.raises(ConfigError, match="--demo-source arc1-eval"):
        tr.prepare(_cfg(sources=["arc1-eval"]), tmp_path)


def test_demo_sources_never_expose_test_outputs(tmp_path):
    pool, data = tr.build_pool([], ["arc1-eval"])
    assert {ex.task.id for ex in pool} == {t.id for t in load_split("arc1-eval")}
    assert all(ex.pair in ex.task.train for ex in pool)  # demos alone: no test pair, not even its input
    assert data.task_ids_with_test_outputs == [] and data.demos_only == ["arc1-eval"]


def test_provenance_is_recorded(tmp_path):
    run = tr.prepare(_cfg(steps=1), tmp_path)
    run.fit()
    meta = load_checkpoint(tmp_path / "checkpoint").meta
    assert meta.data.sources == [DATA] and "007bbfb7" in meta.data.task_ids_with_test_outputs
    assert TrainConfig.model_validate(meta.train_config) == run.cfg


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    run = tr.prepare(_cfg(steps=20, checkpoint_every=2, max_bad_steps=3), tmp_path)
    real = tr.forward_backward
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        m = real(*args, **kw)
        return m | {"main": float("nan")} if calls["n"] > 4 else m

    monkeypatch.setattr(tr, "forward_backward", flaky)
    seen = []
    with pytest.raises(TrainingError, match="3 steps in a row"):
        run.fit(lambda step, m: seen.append(m["skipped"]))
    assert seen[:4] == [0, 0, 0, 0] and seen[4:] == [1, 1]
    assert load_checkpoint(tmp_path / "checkpoint").meta.step == 4  # the last good one


def test_existing_run_needs_resume(tmp_path):
    tr.prepare(_cfg(steps=1), tmp_path).fit()
    with pytest.raises(ConfigError, match="--resume"):
        tr.prepare(_cfg(steps=1), tmp_path)


def test_lr_schedule_warms_up_then_decays():
    f = [tr.lr_factor(s / 100, s, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1, abs=0.02) and max(f) == pytest.approx(f[9], rel=0.01)
    assert f[-1] == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("budget", [["--steps", "3"], ["--steps", "1000", "--seconds", "2"]])
def test_torchrun_two_cpu_processes(tmp_path, budget):
    """Two ranks train together and stop together: by steps, or by step-time, which each rank measures itself."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "onn_arc",
        "train", "--out", str(tmp_path), "--source", DATA, "--size", "tiny", "--max-len", "256", *budget,
        "--batch-tokens", "512", "--threads", "1", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = load_checkpoint(tmp_path / "checkpoint").meta
    assert meta.step == 3 or ("--seconds" in budget and meta.step >= 1)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == meta.step  # rank 0 only
    assert meta.stages[0].target_tokens > sum(x["tokens"] for x in lines)  # rank 1's tokens are counted too


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    tr.prepare(_cfg(steps=4), tmp_path).fit()  # 4 is not a multiple of checkpoint_every=3: the final save writes step 4
    before = load_checkpoint(tmp_path / "checkpoint").meta
    assert tr.prepare(_cfg(steps=4), tmp_path, resume=True).fit() == {}
    after = load_checkpoint(tmp_path / "checkpoint").meta
    assert (after.step, after.metrics, after.created) == (4, before.metrics, before.created)


def test_batches_are_length_bucketed_within_budget_and_seeded():
    pool, _ = tr.build_pool(["arc1-train"], [])
    aug = TrainConfig().augment
    real = padded = 0
    for step in range(20):
        batch = tr.sample_batch(pool, np.random.default_rng([0, step]), 8192, 2048, aug)
        assert batch.n_tokens <= 8192
        real, padded = real + int((batch.tokens != PAD).sum()), padded + batch.n_tokens
    assert real / padded > 0.8  # random draws padded to the longest: ~0.57 (bench/model.py measures 200 batches)
    again = [tr.sample_batch(pool, np.random.default_rng([0, 7]), 8192, 2048, aug) for _ in range(2)]
    assert torch.equal(again[0].tokens, again[1].tokens)


# ---------------------------------------------------------------- stages: --init


FIRST, SECOND = "data/6150a2bd.json", "data/25ff71a9.json"  # one task each: what each stage saw is known


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """A finished first stage on FIRST, trained hard enough that its weights are far from a fresh init."""
    out = tmp_path_factory.mktemp("stage1")
    tr.prepare(_cfg(sources=[FIRST], steps=5, optimizer=OptimizerConfig(lr=1e-2)), out, command="onn-arc train 1").fit()
    return out / "checkpoint"


def _stage2_cfg(**kw) -> TrainConfig:
    return _cfg(**(dict(sources=[SECOND], steps=3, seed=1) | kw))


def _spy_batches(monkeypatch) -> list[Batch]:
    """Record the batch of every training step."""
    batches, real = [], tr.train_step

    def spy(*args, **kw):
        batches.append(args[2])
        return real(*args, **kw)

    monkeypatch.setattr(tr, "train_step", spy)
    return batches


def _main_loss(model: TinyONN, batch: Batch) -> float:
    with torch.no_grad():
        logits = model(batch.tokens, batch.rows, batch.cols, batch.pos, task=batch.task)
        return main_loss(logits, batch.tokens, batch.targets)[0].item()


def test_init_starts_from_the_weights_with_a_fresh_optimizer_and_schedule(stage1, tmp_path, monkeypatch):
    init = load_checkpoint(stage1)
    assert init.train_state["optimizer"]["state"]  # there was optimizer state to leave behind
    run = tr.prepare(_stage2_cfg(), tmp_path, init=init)
    assert run.step == 0 and run.opt.state_dict()["state"] == {}
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), init.model.state_dict().values()))

    batches, losses, lrs = _spy_batches(monkeypatch), [], []
    run.fit(lambda step, m: (losses.append(m["main"]), lrs.append(m["lr"])))
    assert lrs[0] == pytest.approx(run.cfg.optimizer.lr / run.cfg.warmup_steps)  # the warm-up starts again
    torch.manual_seed(run.cfg.seed)
    fresh = _main_loss(TinyONN(run.model.cfg), batches[0])
    continued = _main_loss(init.model, batches[0])  # the checkpoint's loss on stage 2's first batch (its one code is
    # the mean of stage 1's, as stage 2's new task starts)
    assert abs(losses[0] - continued) < abs(fresh - continued) / 10, (losses[0], continued, fresh)


def test_stages_chain_their_data_counts_and_commands(stage1, tmp_path, monkeypatch):
    init = load_checkpoint(stage1)
    batches = _spy_batches(monkeypatch)
    targets = []
    tr.prepare(_stage2_cfg(), tmp_path, init=init, command="onn-arc train 2").fit(lambda s, m: targets.append(m["tokens"]))
    meta = load_checkpoint(tmp_path / "checkpoint").meta

    first, second = meta.stages
    assert first == init.meta.stages[0] and first.commands == ["onn-arc train 1"] and first.init_sha256 is None
    assert second.commands == ["onn-arc train 2"] and second.init_sha256 == init.meta.files["model.safetensors"]
    assert first.data.task_ids_with_test_outputs == ["6150a2bd"] and second.data.task_ids_with_test_outputs == ["25ff71a9"]
    assert meta.data.task_ids_with_test_outputs == ["25ff71a9", "6150a2bd"] and meta.data.sources == [FIRST, SECOND]
    assert (second.steps, meta.step) == (3, 3)
    assert second.tokens == sum(int((b.tokens != PAD).sum()) for b in batches)
    assert second.padded_tokens == sum(b.tokens.numel() for b in batches) and second.target_tokens == sum(targets)
    totals = meta.totals()
    for name in COUNTED:
        assert totals[name] == getattr(first, name) + getattr(second, name)
    assert 0 < second.seconds and 0 < second.target_tokens < second.tokens <= second.padded_tokens


def test_eval_refuses_a_task_only_an_earlier_stage_saw(stage1, tmp_path):
    tr.prepare(_stage2_cfg(steps=1), tmp_path, init=load_checkpoint(stage1)).fit()
    assert "6150a2bd" not in load_checkpoint(tmp_path / "checkpoint").meta.stages[-1].data.task_ids_with_test_outputs
    with pytest.raises(LeakageError, match="6150a2bd"):
        evaluate(tmp_path / "checkpoint", [resolve_task(FIRST)], SolveConfig(), tmp_path / "eval")


def test_a_resumed_stage_keeps_its_chain_and_adds_to_its_counts(stage1, tmp_path):
    init = load_checkpoint(stage1)
    whole = tr.prepare(_stage2_cfg(), tmp_path / "whole", init=init)
    whole.fit()
    tr.prepare(_stage2_cfg(), tmp_path / "parts", init=init, command="began").fit(_stop_at(1))
    second = tr.prepare(_stage2_cfg(), tmp_path / "parts", resume=True, command="resumed")
    assert (second.step, second.earlier, second.init_sha256) == (1, init.meta.stages, whole.init_sha256)
    second.fit()

    assert all(torch.equal(a, b) for a, b in zip(_weights(whole).values(), _weights(second).values()))
    a, b = whole.stage(), load_checkpoint(tmp_path / "parts" / "checkpoint").meta.stages[-1]
    assert b.commands == ["began", "resumed"]
    assert [getattr(a, n) for n in COUNTED if n != "seconds"] == [getattr(b, n) for n in COUNTED if n != "seconds"]


def test_a_stage_resumed_on_another_source_of_its_tasks_records_both(tmp_path):
    """The same tasks by another name (a copy of the file): the codes still fit, and both sources are recorded."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "25ff71a9.json").write_text(Path(SECOND).read_text())
    tr.prepare(_stage2_cfg(steps=1), tmp_path / "run").fit()
    tr.prepare(_stage2_cfg(steps=2, sources=[str(copy)]), tmp_path / "run", resume=True).fit()
    (stage,) = load_checkpoint(tmp_path / "run" / "checkpoint").meta.stages
    assert stage.steps == 2 and stage.data.sources == [SECOND, str(copy)]
    assert stage.data.task_ids_with_test_outputs == ["25ff71a9"]


def test_init_refuses_resume_and_another_architecture_but_not_another_context(stage1, tmp_path):
    init = load_checkpoint(stage1)
    tr.prepare(_stage2_cfg(steps=1), tmp_path / "run").fit()
    with pytest.raises(ConfigError, match="pass only one"):
        tr.prepare(_stage2_cfg(), tmp_path / "run", resume=True, init=init)
    with pytest.raises(ConfigError, match="d_model=16 but the config asks for d_model=32"):
        tr.prepare(_stage2_cfg(model=ModelConfig.preset("tiny", d_model=32)), tmp_path / "wider", init=init)
    run = tr.prepare(_stage2_cfg(model=ModelConfig.preset("tiny", max_len=128)), tmp_path / "shorter", init=init)
    assert run.model.cfg.max_len == 128


def test_a_run_saved_before_stages_is_continued_with_init_not_resume(tmp_path):
    run = tr.prepare(_stage2_cfg(), tmp_path)
    old_state = {"optimizer": run.opt.state_dict(), "step": 1, "elapsed": 0.5}  # what a format-1 run saved
    save_checkpoint(run.paths.checkpoint, run.model, run.data, 1, {}, run.cfg.model_dump(mode="json"), old_state)
    with pytest.raises(ConfigError, match="start a new stage from it with --init"):
        tr.prepare(_stage2_cfg(), tmp_path, resume=True)


def _train(*args: str):
    return CliRunner().invoke(app, ["train", *args, "--threads", "1", "--device", "cpu"])


def test_cli_init_from_the_shipped_checkpoint_records_the_command(tmp_path, monkeypatch):
    args = ["--init", "checkpoints/default", "--out", str(tmp_path), "--source", SECOND, "--max-len", "256",
            "--batch-tokens", "512", "--steps", "1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/onn-arc", "train", *args])
    result = _train(*args)
    assert result.exit_code == 0, result.output
    shipped = load_checkpoint(default_checkpoint()).meta
    assert f"stage {len(shipped.stages) + 1}, from weights" in result.stderr
    meta = load_checkpoint(tmp_path / "checkpoint").meta
    *chain, new = meta.stages
    assert chain == shipped.stages and meta.model.d_model == shipped.model.d_model
    assert new.commands == ["onn-arc train " + " ".join(args)] and new.steps == 1
    assert meta.totals()["steps"] == shipped.totals()["steps"] + 1


@pytest.mark.parametrize(
    "args, match",
    [
        (["--resume"], "pass only one"),
        (["--size", "small"], "the config asks for d_model=64"),
        (["--n-layers", "2"], "n_layers=1 but the config asks for n_layers=2"),
    ],
)
def test_cli_init_refusals_are_one_line(stage1, tmp_path, args, match):
    result = _train("--init", str(stage1), "--out", str(tmp_path), "--source", SECOND, *args)
    assert result.exit_code == 1 and match in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_resuming_a_spent_budget_says_which(tmp_path):
    args = ["--source", SECOND, "--size", "tiny", "--max-len", "256", "--batch-tokens", "512"]
    for name, budget, said in (("time", "--seconds", "has used its 0.001 s (raise --seconds)"),
                               ("steps", "--steps", "is already at step 1 of 1 (raise --steps)")):  # fmt: skip
        out = str(tmp_path / name)
        assert _train(*args, "--out", out, budget, "0.001" if name == "time" else "1").exit_code == 0
        assert said in _train("--resume", "--out", out).stdout


def test_cli_trains_with_muon(tmp_path):
    result = _train("--optimizer", "muon", "--size", "tiny", "--out", str(tmp_path), "--source", DATA,
                    "--max-len", "256", "--batch-tokens", "512", "--steps", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(tmp_path / "checkpoint")
    assert saved.meta.train_config["optimizer"]["name"] == "muon" and saved.meta.step == 2
    kinds = [g["kind"] for g in saved.train_state["optimizer"]["param_groups"]]
    assert kinds == ["matrix", "other"] and "momentum_buffer" in saved.train_state["optimizer"]["state"][0]


def test_cli_init_from_a_missing_checkpoint(tmp_path):
    result = _train("--init", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 1 and "no such checkpoint folder" in result.stderr


PAIRS_MODEL = ModelConfig.preset("tiny", max_len=256)


def test_pool_entries_bound_their_length_in_every_orientation():
    pool, _ = tr.build_pool([DATA], [], input_loss=True)
    for ex in pool:
        for d in range(8):
            aug = Augmentation(d, tuple(range(10)), tuple(range(len(ex.task.train))))
            assert len(ex.encode(aug, 10_000)) <= ex.length


def test_the_pool_gives_each_task_a_code():
    pool, data = tr.build_pool([DATA], [])
    tasks = load_source(DATA)
    assert tr.pool_task_ids(pool) == tuple(t.id for t in tasks)
    for task in tasks:  # demos and test pairs; the puzzle without answers gives its demos only
        entries = [ex for ex in pool if ex.task.id == task.id]
        assert {ex.code for ex in entries} == {tr.pool_task_ids(pool).index(task.id)}
        assert [ex.pair for ex in entries] == list(task.train + task.test if task.has_test_outputs else task.train)
    assert data.task_ids_with_test_outputs == sorted(t.id for t in tasks if t.has_test_outputs)


def test_demo_source_test_outputs_never_reach_a_batch(tmp_path):
    secret = [[9] * 7] * 5  # the only 5×7 grid: what must never be trained on
    demos = [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}, {"input": [[5, 6], [7, 8]], "output": [[8, 7], [6, 5]]}]
    path = tmp_path / "secret.json"
    path.write_text(json.dumps({"train": demos, "test": [{"input": [[1] * 3] * 3, "output": secret}]}))
    for input_loss in (False, True):
        pool, data = tr.build_pool([], [str(path)], input_loss)
        assert data.task_ids_with_test_outputs == []
        rng = np.random.default_rng(0)
        outputs, inputs = set(), set()
        for _ in range(30):
            b = tr.sample_batch(pool, rng, 64, 256, AugmentConfig())
            cells = b.tokens < N_COLOURS
            outputs |= set(((cells & (b.pos == OUTPUT_PLANE)).sum(1)).tolist())
            inputs |= set(((cells & (b.pos == INPUT_PLANE)).sum(1)).tolist())
        assert outputs <= {0, 4}  # demo outputs, and test inputs without any output
        assert (9 in inputs) == input_loss  # the test input is trained on only with the input loss
    eval_pool, _ = tr.build_pool([], ["arc1-eval"], input_loss=True)
    assert all(ex.pair.output is None for ex in eval_pool if ex.pair not in ex.task.train)


def test_a_run_with_the_input_loss_trains_and_resumes_with_its_task_codes(tmp_path):
    cfg = _cfg(model=PAIRS_MODEL, steps=2, checkpoint_every=100, input_loss=True)
    losses = []
    tr.prepare(cfg, tmp_path).fit(lambda step, m: losses.append(m["main"]))
    assert all(np.isfinite(losses))
    model = load_checkpoint(tmp_path / "checkpoint").model
    assert model.cfg.task_ids == tuple(t.id for t in load_source(DATA))
    resumed = tr.prepare(cfg.model_copy(update={"steps": 3}), tmp_path, resume=True)
    assert resumed.step == 2 and resumed.model.cfg.task_ids == model.cfg.task_ids


@pytest.mark.parametrize("sources", [[SECOND, FIRST], [FIRST]])  # the same count in another order; fewer
def test_a_run_resumed_on_other_tasks_is_refused_not_given_wrong_codes(tmp_path, sources):
    cfg = _cfg(model=PAIRS_MODEL, steps=1, sources=[FIRST, SECOND])
    tr.prepare(cfg, tmp_path).fit()
    with pytest.raises(ConfigError, match="--init"):
        tr.prepare(cfg.model_copy(update={"steps": 2, "sources": sources}), tmp_path, resume=True)


def test_a_stage_on_more_tasks_keeps_the_shared_codes_and_starts_new_ones_at_their_mean(tmp_path):
    cfg = _cfg(model=PAIRS_MODEL, steps=1, sources=[FIRST, SECOND])
    tr.prepare(cfg, tmp_path / "one").fit()
    init = load_checkpoint(tmp_path / "one" / "checkpoint")
    trained = init.model.task_codes.weight.detach()  # (2, D): 6150a2bd, 25ff71a9
    run = tr.prepare(cfg.model_copy(update={"sources": [DATA]}), tmp_path / "two", init=init)
    ids = run.model.cfg.task_ids
    assert len(ids) == len(load_source(DATA)) and set(init.model.cfg.task_ids) < set(ids)
    codes = run.model.task_codes.weight.detach()  # (N, D)
    for i, task_id in enumerate(ids):
        want = trained[init.model.cfg.task_ids.index(task_id)] if task_id in init.model.cfg.task_ids else trained.mean(0)
        assert torch.equal(codes[i], want), task_id
    shared = {k: v for k, v in init.model.state_dict().items() if k != "task_codes.weight"}
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in shared.items())


def test_cli_trains_with_the_input_loss_and_has_no_format_to_choose(tmp_path):
    args = ["train", "--source", DATA, "--size", "tiny", "--max-len", "256", "--steps", "1", "--device", "cpu"]
    ok = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a"), "--input-loss"])
    assert ok.exit_code == 0, ok.output
    saved = load_checkpoint(tmp_path / "a" / "checkpoint").meta
    assert saved.train_config["input_loss"] and saved.model.task_ids == tuple(t.id for t in load_source(DATA))
    retired = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--format", "context"])
    assert retired.exit_code == 2 and "--format" in retired.output  # the flag is gone


def test_copies_are_seeded_by_the_task_alone_identity_first_and_distinct():
    task = load_source(DATA)[0]
    views = tr.copies_of(task, 8, AugmentConfig())
    assert views[0] == Augmentation.identity(len(task.train))
    assert len({tr.code_key(task.id, v) for v in views}) == 8
    assert tr.copies_of(task, 3, AugmentConfig()) == views[:3]  # a prefix: solving names the copies training made
    only_flips = tr.copies_of(task, 20, AugmentConfig(colours=False))
    assert len(only_flips) == 8 and {v.colours for v in only_flips} == {tuple(range(10))}  # no more exist


def test_a_copy_keeps_one_augmentation_for_all_its_pairs_and_has_its_own_code():
    pool, _ = tr.build_pool([DATA], [], copies=4)
    tasks = load_source(DATA)
    keys = tr.pool_task_ids(pool)
    assert len(keys) == 4 * len(tasks)
    for task in tasks:
        views = tr.copies_of(task, 4, AugmentConfig())
        for view in views:
            entries = [ex for ex in pool if ex.task.id == task.id and ex.view == view]
            assert {ex.code for ex in entries} == {keys.index(tr.code_key(task.id, view))}
            assert [ex.pair for ex in entries] == list(task.train + task.test if task.has_test_outputs else task.train)
    ex = next(e for e in pool if e.view is not None and e.view.dihedral)
    batch_of_one = tr.sample_batch([ex], np.random.default_rng(0), 10_000, 10_000, AugmentConfig())
    expected = ex.encode(ex.view, 10_000)  # the copy's own augmentation, not a random one
    assert batch_of_one.tokens[0, : len(expected)].tolist() == expected.tokens.tolist()


def test_a_stage_with_copies_keeps_the_codes_of_the_copies_it_shares(tmp_path):
    cfg = TrainConfig(
        model=PAIRS_MODEL.model_copy(update={"copies": 2}), sources=[DATA], steps=1, batch_tokens=512,
        optimizer=OptimizerConfig(name="adamw"),
    )  # fmt: skip
    first = tr.prepare(cfg, tmp_path / "a")
    first.fit()
    loaded = load_checkpoint(first.paths.checkpoint)
    assert loaded.meta.model.copies == 2 and loaded.meta.model.coded_tasks == {t.id for t in load_source(DATA)}
    wider = cfg.model_copy(update={"model": cfg.model.model_copy(update={"copies": 3})})
    second = tr.prepare(wider, tmp_path / "b", init=loaded)
    old, new = loaded.model.task_codes.weight, second.model.task_codes.weight
    for i, key in enumerate(loaded.meta.model.task_ids):
        assert torch.equal(new[second.model.cfg.task_ids.index(key)], old[i])


def test_cli_train_with_copies_records_them_and_refuses_a_bad_count_in_one_line(tmp_path):
    result = _train("--out", str(tmp_path / "a"), "--size", "tiny", "--source", str(DATA), "--steps", "1", "--copies", "3")
    assert result.exit_code == 0, result.output
    model = load_checkpoint(tmp_path / "a" / "checkpoint").meta.model
    assert model.copies == 3 and model.n_task_codes == 3 * len(load_source(DATA))
    bad = _train("--out", str(tmp_path / "b"), "--size", "tiny", "--copies", "-1")
    assert bad.exit_code == 1 and "copies=-1" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
