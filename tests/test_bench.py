"""Smoke tests of bench/optim.py, bench/fit.py and bench/sparsity.py: their --quick modes run and end with a
complete RESULT line; bench/search.py on a tiny checkpoint and with a stub decoder."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def result(script: str, *args: str) -> dict[str, str]:
    """Run `bench/<script> --quick ARGS` on one thread; the key=value pairs of its one RESULT line."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    return dict(pair.split("=", 1) for pair in lines[0].split()[1:])


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_optim_quick_reports_three_optimizers_over_seeds(precision):
    r = result("optim.py", "--precision", precision)
    assert (r["seeds"], r["threads"], r["size"]) == ("2", "1", "tiny")
    for arm in ("adamw", "gn", "muon"):
        assert 0 < float(r[f"{arm}_final_loss"]) < float(r["initial_loss"])  # every arm trained
        assert float(r[f"{arm}_lr"]) == 1e-2 and int(r[f"{arm}_steps"]) > 0 and float(r[f"{arm}_ms_step"]) > 0
    for key in ("gn_steps_ratio", "gn_time_ratio", "muon_steps_ratio", "muon_time_ratio", "gn_vs_muon_time_ratio"):
        low, high = map(float, r[f"{key}_spread"].split("-"))  # inf when a run never reached AdamW's final loss
        value = float(r[key])
        assert math.isnan(value) or (0 <= low <= value <= high)  # the median of two seeds lies within their range
    for phase in ("data", "fwd_bwd", "stats", "eigh", "update"):
        assert float(r[f"gn_ms_{phase}"]) >= 0
    assert float(r["gn_ms_fwd_bwd"]) > 0
    assert (r["curvature_every"], r["precondition_every"], r["damping"]) == ("10", "50", "0.1")
    assert r["precision"] in ("fp32", "bf16") and ("bf16_equal_time_loss_ratio" in r) == (r["precision"] == "bf16")


@pytest.mark.slow
def test_fit_quick_reports_both_archs():
    r = result("fit.py")
    for arch in ("onn", "dense"):
        assert 0 <= float(r[f"fit_cell_acc_{arch}"]) <= 1 and 0 <= float(r[f"fit_exact_{arch}"]) <= 1
        assert int(r[f"steps_{arch}"]) == 6  # the quick step budget
    assert 0 <= int(r["distinct_colours_predicted"]) <= 10 and 1 <= int(r["distinct_colours_true"]) <= 10
    assert 0 < float(r["activation_rate"]) <= 1 and r["tasks"] == "4"
    assert 0 < float(r["fit_loss_onn"]) < 2 * math.log(16) and 0 < float(r["fit_loss_dense"]) < 2 * math.log(16)


@pytest.mark.slow
def test_sparsity_quick_reports_every_variant():
    r = result("sparsity.py")
    variants = ("dense", "off", "softmax", "median", "median_w1")
    for v in variants:
        assert 0 < float(r[f"tf_loss_{v}"]) < math.log(16)  # trained below the uniform guess over the vocabulary
        assert 0 < float(r[f"activation_rate_{v}"]) <= 1 and 0 <= float(r[f"changed_acc_{v}"]) <= 1
    assert float(r["activation_rate_dense"]) == 1.0
    for v in variants[1:]:
        assert 0 <= float(r[f"inactive_mac_fraction_{v}"]) < 1 and float(r[f"fit_loss_{v}"]) > 0
    for key in ("activation_rate_fit", "activation_rate_fit_off", "activation_rate_fit_median"):
        assert 0 < float(r[key]) <= 1
    assert 0 <= float(r["inactive_mac_fraction"]) < 1
    assert 0 <= float(r["jaccard_same"]) <= 1 and 0 <= float(r["jaccard_other"]) <= 1
    assert r["size"] == "tiny" and float(r["seconds"]) > 0 and r["threads"] == "1"


def test_new_colour_split_counts_solved_tasks_and_changed_cells_per_group():
    sys.path.insert(0, str(BENCH))
    from common import new_colour, new_colour_split  # bench/common.py

    from onn_arc.data import Pair, Task

    demo = (Pair(input=((1,),), output=((1,),)),)
    fill = Task(id="fill", train=demo, test=(Pair(input=((0, 1),), output=((4, 1),)),))  # 4 is new
    keep = Task(id="keep", train=demo, test=(Pair(input=((0, 1),), output=((1, 0),)),))
    half = Task(id="half", train=demo, test=(Pair(input=((2,),), output=((3,),)), Pair(input=((2,),), output=((2,),))))
    assert [new_colour(t) for t in (fill, keep, half)] == [True, False, True]
    rows = [
        {"task_id": "fill", "pass_at_2": 1.0, "changed_cell_accuracy": 1.0},
        {"task_id": "keep", "pass_at_2": 0.0, "changed_cell_accuracy": 0.5},
        {"task_id": "half", "pass_at_2": 0.5, "changed_cell_accuracy": None},
    ]
    tasks = {t.id: t for t in (fill, keep, half)}
    assert new_colour_split(rows, tasks) == [("1.5/2", 1.0), ("0/1", 0.5)]


@pytest.mark.slow
def test_recipes_smoke_trains_scores_and_reports_each_arm(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "recipes.py"), "--root", str(tmp_path), "--size", "tiny", "--steps", "4",
         "--limit", "2", "--arms", "base", "copies-8", "--source", str(BENCH.parent / "data")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [dict(p.split("=", 1) for p in line.split()[1:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert [r["arm"] for r in lines] == ["base", "copies-8"]
    assert all(0 <= float(r["pass_at_2"]) <= 1 and int(r["steps"]) == 4 for r in lines)  # --steps: equal compute
    assert "onn-arc train" in proc.stdout and "--copies 8" in proc.stdout  # every command is printed


# ---------------------------------------------------------------- bench/search.py


def results(stdout: str) -> dict[str, dict[str, str]]:
    """Each `RESULT arm=NAME k=v ...` line of `stdout`, by arm."""
    lines = [line.split()[1:] for line in stdout.splitlines() if line.startswith("RESULT ")]
    return {r["arm"]: r for r in (dict(pair.split("=", 1) for pair in line) for line in lines)}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random tiny model (peaky, so grids end within its context) that saw no task's test outputs."""
    import torch

    from onn_arc.checkpoint import TrainingData, save_checkpoint
    from onn_arc.config import ModelConfig
    from onn_arc.model import TinyONN

    torch.manual_seed(0)
    model = TinyONN(ModelConfig.preset("tiny")).eval()
    with torch.no_grad():
        model.head.weight.mul_(3)
    data = TrainingData(sources=["s"], test_outputs_from=["s"], demos_only=[], task_ids_with_test_outputs=[], n_tasks=1)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, data, step=0, metrics={})


def test_search_bench_reports_every_arm_and_resumes(tiny_checkpoint, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name in ("6150a2bd", "25ff71a9"):  # one test input, two
        (tasks / f"{name}.json").write_text((BENCH.parent / "data" / f"{name}.json").read_text())
    args = [sys.executable, str(BENCH / "search.py"), "--root", str(tmp_path / "run"), "--checkpoint",
            str(tiny_checkpoint), "--split", str(tasks), "--workers", "1", "--ttt-steps", "1"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = results(proc.stdout)
    arms = [f"{s}-{v}-{r}" for s in ("greedy", "dfs") for v in (6, 16, 32) for r in ("votes", "poe")]
    assert list(found) == arms + ["copy"]
    assert all(f"\n{arm} " in proc.stdout for arm in arms)  # a table row each
    for r in found.values():
        assert r["tasks"] == "2" and int(r["solved"]) <= 2
        for key in ("coverage", "pass_at_2", "pass_at_1"):
            assert 0 <= float(r[key]) <= 1
        assert float(r["coverage"]) >= float(r["pass_at_2"]) >= float(r["pass_at_1"])
        assert r["arm"] == "copy" or 0 < float(r["sec_median"]) <= float(r["sec_max"])
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 2
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0 and "2 of 2 tasks done before; searching 0" in again.stdout
    assert {a: {k: v for k, v in r.items() if not k.startswith("sec")} for a, r in results(again.stdout).items()} == {
        a: {k: v for k, v in r.items() if not k.startswith("sec")} for a, r in found.items()
    }


def test_search_bench_counts_the_truth_among_the_first_views_candidates(monkeypatch, capsys):
    """A stub decoder: greedy finds the truth only in views 6..15, dfs in view 0 alone, each beside a wrong grid found
    in every view. So greedy covers the test input from 16 views on, and dfs from 6; votes then rank the wrong
    grid first."""
    sys.path.insert(0, str(BENCH))
    import search  # bench/search.py

    from onn_arc import solve
    from onn_arc.config import ModelConfig, SolveConfig
    from onn_arc.data import load_task_file
    from onn_arc.decode import Candidate
    from onn_arc.model import TinyONN

    def candidate(grid, logprob):
        return Candidate(tokens=(), grid=grid, logprob=logprob, confidence=np.ones(np.shape(grid)),
                         activation=np.ones(np.shape(grid)))  # fmt: skip

    def stub(model, seen, cfg, on_progress=None, deadline=None):
        first = stub.views[cfg.sampler]
        stub.views[cfg.sampler] += len(seen)
        found = []
        for v, (task, _) in enumerate(seen, start=first):
            truth = task.test[0].output
            wrong = candidate(tuple((0,) * len(row) for row in truth), -0.5)  # all background: the same in every view
            right = [candidate(truth, -1.0)] if (6 <= v < 16 if cfg.sampler == "greedy" else v == 0) else []
            found.append([[wrong, *right]])
        return found

    stub.views = {"greedy": 0, "dfs": 0}
    monkeypatch.setattr(solve, "decode_views", stub)
    task = load_task_file(BENCH.parent / "data" / "6150a2bd.json")
    record = search.search_task(TinyONN(ModelConfig.preset("tiny")).eval(), task, SolveConfig(ttt_steps=0))
    assert [len(chunks) for chunks in record["decode_seconds"].values()] == [3, 3]
    search.report([task], {task.id: record})
    found = results(capsys.readouterr().out)
    expected = {"greedy": {6: 0.0, 16: 1.0, 32: 1.0}, "dfs": {6: 1.0, 16: 1.0, 32: 1.0}}
    for name, views, sampler, ranking in search.ARMS:
        assert float(found[name]["coverage"]) == expected[sampler][views]
        if ranking == "votes" and float(found[name]["coverage"]):  # the wrong grid has every view's vote
            assert (found[name]["pass_at_1"], found[name]["pass_at_2"]) == ("0.0000", "1.0000")
