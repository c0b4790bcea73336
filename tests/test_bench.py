"""Smoke tests of bench/optim.py, bench/fit.py and bench/sparsity.py: their --quick modes run and end with a
complete RESULT line."""

import math
import subprocess
import sys
from pathlib import Path

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
