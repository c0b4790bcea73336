"""Solving speed and accuracy: pass@2 with and without test-time training on a fixed set of ARC-AGI-1 evaluation tasks.

    python bench/solve.py [--checkpoint DIR] [--threads 2] [--precision auto]        (make bench-solve)
    python bench/solve.py --decode [--sampler dfs] [--checkpoint DIR] [--threads 1]  (decoding speed only)

Tasks: 10 ARC-AGI-1 evaluation tasks, in split order:

    0692e18c 0c786b71 12eac192 310f3251 4852f2fa 506d28a5 770cc55f 9a4bb226 cfb2ce5a d2acf2cb

(drawn with `numpy.random.default_rng(0)` among the 144 whose every test pair, with all its demos, encoded in <= 1024
tokens in the retired in-context format). Each task is solved twice with the default SolveConfig, with
test-time training and with it off (`ttt_steps=0`), and scored with the official rules. Beside pass@2 it reports
the leading indicators: cell accuracy of the better attempt and the teacher-forced loss of the true output.

Default settings (`SolveConfig`) are sized for the `base` preset on 2 CPU cores. Measured on the shared 2-core
machine with a base model (another process busy on one core): a test-time training step of 4096 padded tokens
with Gauss-Newton took 1.4 s (1 thread), and cached greedy decoding ~5 ms per token. So 32 steps take ~45 s, and
6 views cost 6 × 5 ms per output token: ~7 s for a typical 15×15 output, ~28 s for a 30×30 one (931 tokens).
A task takes ~50 s typically and stays under ~105 s with two 30×30 test outputs. `sec_per_task` is the measured
mean with test-time training. (With two torch threads on a core another process also uses, a step took 3.4 s:
thread oversubscription; on a busy machine pass --threads 1.) Those decoding costs are for one prompt at a time;
solving now decodes all views × test inputs of a task together (`decode.greedy_batch`, `decode.dfs_batch`), which
`--decode` measures: decoding tokens/s of 1, 16 and 32 prompts (the test inputs of the first arc1-dev tasks whose
test outputs have at most DECODE_TOKENS tokens, in DECODE_VIEWS views each under a fresh code, as solving makes them),
one by one (`decode.greedy`, `decode.dfs`) and together, interleaved, best of DECODE_ROUNDS; both must decode the same
grids. A token is one fed to the model after the prompts (a search feeds one per node it expands); dfs searches as
`SolveConfig` says (floor `min_prob`, at most `max_candidates` grids per prompt).
Ends with one `RESULT key=value ...` line.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from onn_arc import decode, solve
from onn_arc.checkpoint import default_checkpoint, load_checkpoint
from onn_arc.config import SolveConfig
from onn_arc.data import Task, load_split
from onn_arc.errors import OnnArcError
from onn_arc.evaluate import run_task
from onn_arc.model import TinyONN
from onn_arc.precision import resolve
from onn_arc.scoring import Scorer
from onn_arc.tokens import Sequence, grid_length

TASK_IDS = (
    "0692e18c", "0c786b71", "12eac192", "310f3251", "4852f2fa", "506d28a5", "770cc55f", "9a4bb226", "cfb2ce5a", "d2acf2cb",
)  # fmt: skip
SEED = 0
DECODE_ROWS = (1, 16, 32)  # --decode: prompts decoded one by one vs together
DECODE_TOKENS = 120  # --decode: dev tasks whose every test output is at most this long (keeps the bench short)
DECODE_VIEWS = 4  # --decode: views per task
DECODE_ROUNDS = 2  # --decode: interleaved rounds, the fastest counts


def bench_tasks() -> list[Task]:
    """The tasks the module docstring names, in split order."""
    return [t for t in load_split("arc1-eval") if t.id in TASK_IDS]


def decode_prompts(model: TinyONN, n: int) -> tuple[TinyONN, list[Sequence]]:
    """The model with fresh codes for the tasks used and `n` prompts, as the module docstring says."""
    prompts: list[Sequence] = []
    for task in load_split("arc1-dev"):
        if len(prompts) >= n:
            break
        if any(grid_length(p.output) > DECODE_TOKENS for p in task.test):
            continue
        model = solve.with_task_code(model, task, "mean")
        for view in solve.choose_views(task, DECODE_VIEWS, SEED, SolveConfig().augment):
            prompts += [solve.decode_prompt(model, view.apply(task), i) for i in range(len(task.test))]
    return model, prompts[:n]


def decode_speed(model: TinyONN, threads: int, sampler: str) -> None:
    """Decoding tokens/s, one by one vs together (module docstring); a table and the RESULT line."""
    model, prompts = decode_prompts(model, max(DECODE_ROWS))
    cfg = SolveConfig(sampler=sampler)
    if sampler == "dfs":
        decoders = {
            "one by one": lambda ps: [decode.dfs(model, p, cfg.min_prob, cfg.max_candidates) for p in ps],
            "together": lambda ps: decode.dfs_batch(model, ps, cfg.min_prob, cfg.max_candidates),
        }
    else:
        decoders = {
            "one by one": lambda ps: [decode.greedy(model, p) for p in ps],
            "together": lambda ps: decode.greedy_batch(model, ps),
        }
    fed = 0  # tokens fed after the prompts, over all rows

    def count(_: TinyONN, args: tuple, __: object) -> None:
        nonlocal fed
        if args[0].shape[1] == 1:  # tokens (B, 1): one more per row; (B, P) is the prompts
            fed += args[0].shape[0]

    model.register_forward_hook(count)
    decoders["together"](prompts[:2])  # warm-up
    seconds: dict[tuple[str, int], float] = {}
    tokens: dict[int, int] = {}
    for _ in range(DECODE_ROUNDS):
        for n in DECODE_ROWS:
            found = {}
            for name, run in decoders.items():
                start, fed = time.perf_counter(), 0
                found[name] = run(prompts[:n])
                seconds[name, n] = min(seconds.get((name, n), float("inf")), time.perf_counter() - start)
            tokens[n] = fed  # the same searches either way
            grids = {name: [[c.tokens for c in f] for f in fs] for name, fs in found.items()}
            assert grids["one by one"] == grids["together"], f"{n} prompts: together decoded other grids"
    title = f"{sampler} decoding, {threads} thread(s): tokens/s, best of {DECODE_ROUNDS}"
    table = Table(title=title)
    for name in ("prompts", "tokens", "one by one", "together", "speed-up"):
        table.add_column(name, justify="right")
    for n in DECODE_ROWS:
        rate = {name: tokens[n] / seconds[name, n] for name in decoders}
        table.add_row(str(n), str(tokens[n]), f"{rate['one by one']:,.0f}", f"{rate['together']:,.0f}",
                      f"{rate['together'] / rate['one by one']:.2f}x")  # fmt: skip
    Console().print(table)
    result = {}
    for n in DECODE_ROWS:
        result[f"tok_s_seq_{n}"] = round(tokens[n] / seconds["one by one", n], 1)
        result[f"tok_s_batch_{n}"] = round(tokens[n] / seconds["together", n], 1)
        result[f"speedup_{n}"] = round(seconds["one by one", n] / seconds["together", n], 2)
    result |= {"sampler": sampler, "prompts": len(prompts), "tokens": tokens[max(DECODE_ROWS)], "threads": threads}
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="test-time training")
    parser.add_argument("--decode", action="store_true", help="measure decoding speed only (see above)")
    parser.add_argument("--sampler", default="greedy", choices=["greedy", "dfs"], help="--decode: which sampler")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    try:
        loaded = load_checkpoint(args.checkpoint or default_checkpoint())
    except OnnArcError as e:
        sys.exit(f"error: {e}")
    if args.decode:
        decode_speed(loaded.model, args.threads, args.sampler)
        return
    tasks = bench_tasks()
    modes = {"ttt": SolveConfig(precision=args.precision), "no_ttt": SolveConfig(ttt_steps=0, precision=args.precision)}
    scorers = {mode: Scorer() for mode in modes}
    records: dict[str, list[dict]] = {mode: [] for mode in modes}
    for n, task in enumerate(tasks, start=1):
        for mode, cfg in modes.items():
            record = run_task(loaded.model, task, cfg)
            score = scorers[mode].update(task.id, record["attempts"], task.test)
            records[mode].append(record)
            console.print(
                f"[{n}/{len(tasks)}] {task.id} {mode:>6}: pass@2 {score.pass_at_2:.2f} cell acc {score.cell_accuracy:.2f} "
                f"ttt {record['ttt_steps']} steps {record['ttt_seconds']:.1f} s, total {record['seconds']:.1f} s"
                + (f" ({record['error']})" if record["error"] else ""),
                soft_wrap=True,
            )

    summaries = {mode: scorer.result() for mode, scorer in scorers.items()}
    table = Table(title=f"{loaded.folder.name}: {len(tasks)} ARC-AGI-1 evaluation tasks (with / without TTT)")
    for name in ("task", "tf loss", "pass@2", "cell acc", "ttt steps", "seconds"):
        table.add_column(name, justify="left" if name == "task" else "right", no_wrap=True)
    for i, task in enumerate(tasks):
        ttt, plain = summaries["ttt"].tasks[i], summaries["no_ttt"].tasks[i]
        losses = [x for x in records["ttt"][i]["tf_loss"] if x is not None]
        table.add_row(
            task.id,
            f"{np.mean(losses):.3f}" if losses else "–",
            f"{ttt.pass_at_2:.2f} / {plain.pass_at_2:.2f}",
            f"{ttt.cell_accuracy:.2f} / {plain.cell_accuracy:.2f}",
            str(records["ttt"][i]["ttt_steps"]),
            f"{records['ttt'][i]['seconds']:.1f} / {records['no_ttt'][i]['seconds']:.1f}",
        )
    Console().print(table)

    losses = [x for r in records["ttt"] for x in r["tf_loss"] if x is not None]
    result = {
        "pass2_ttt": round(summaries["ttt"].pass_at_2, 4),
        "pass2_no_ttt": round(summaries["no_ttt"].pass_at_2, 4),
        "cell_acc_ttt": round(summaries["ttt"].cell_accuracy, 4),
        "cell_acc_no_ttt": round(summaries["no_ttt"].cell_accuracy, 4),
        "tf_loss": round(float(np.mean(losses)), 4) if losses else None,
        "sec_per_task": round(float(np.mean([r["seconds"] for r in records["ttt"]])), 1),
        "sec_per_task_no_ttt": round(float(np.mean([r["seconds"] for r in records["no_ttt"]])), 1),
        "views": modes["ttt"].views,
        "ttt_steps": modes["ttt"].ttt_steps,
        "ttt_batch_tokens": modes["ttt"].ttt_batch_tokens,
        "tasks": len(tasks),
        "threads": args.threads,
        "precision": resolve(args.precision, "cpu"),
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
