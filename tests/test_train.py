import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from onn_arc import train as tr
from onn_arc.checkpoint import load_checkpoint
from onn_arc.data import load_split, resolve_task
from onn_arc.config import ModelConfig, OptimizerConfig, TrainConfig
from onn_arc.errors import ConfigError, TrainingError
from onn_arc.tokens import PAD

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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("optimizer", ["gn", "adamw"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, optimizer, precision):
    opt = OptimizerConfig(name=optimizer, curvature_every=1, precondition_every=2, start_step=1)
    whole = tr.prepare(_cfg(optimizer=opt, precision=precision), tmp_path / "whole")
    whole.fit()

    first = tr.prepare(_cfg(optimizer=opt, precision=precision), tmp_path / "parts")

    def stop_after_3(step, metrics):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # handled: save and stop

    first.fit(stop_after_3)
    assert load_checkpoint(tmp_path / "parts" / "checkpoint").meta.step == 3
    second = tr.prepare(_cfg(optimizer=opt, precision=precision), tmp_path / "parts", resume=True)
    assert second.step == 3
    second.fit()

    a, b = _weights(whole), _weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_training_lowers_the_loss(tmp_path):
    run = tr.prepare(_cfg(steps=30, checkpoint_every=100, optimizer=OptimizerConfig(lr=1e-2)), tmp_path)
    losses = []
    run.fit(lambda step, m: losses.append(m["main"]))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2


def test_evaluation_splits_cannot_be_trained_on(tmp_path):
    with pytest.raises(ConfigError, match="--demo-source arc1-eval"):
        tr.prepare(_cfg(sources=["arc1-eval"]), tmp_path)


def test_demo_sources_never_expose_test_outputs(tmp_path):
    pool, data = tr.build_pool([], ["arc1-eval"])
    eval_tests = {(t.id, t.test[0].output) for t in load_split("arc1-eval")}
    assert not any((ex.task.id, ex.task.test[0].output) in eval_tests for ex in pool[:200])
    assert data.task_ids_with_test_outputs == [] and data.demos_only == ["arc1-eval"]


def test_leave_one_out_uses_demos_only():
    task = resolve_task("data/007bbfb7.json")
    pseudo = tr.leave_one_out(task)
    assert len(pseudo) == len(task.train)
    for i, p in enumerate(pseudo):
        assert p.test[0] == task.train[i] and task.train[i] not in p.train


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


def test_torchrun_two_cpu_processes(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m", "onn_arc",
        "train", "--out", str(tmp_path), "--source", DATA, "--size", "tiny", "--max-len", "256", "--steps", "3",
        "--batch-tokens", "512", "--threads", "1", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_checkpoint(tmp_path / "checkpoint").meta.step == 3
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # rank 0 only


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
