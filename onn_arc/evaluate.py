"""Evaluating a checkpoint on a set of tasks: solve each, score with the official rules, write a submission.

    OUT/settings.json    the run's identity: the checkpoint's weights (sha256) and the SolveConfig; a rerun must match
                         (the checkpoint's folder is recorded too, relative to the working directory below it)
    OUT/results.jsonl    one line per finished task, appended, flushed and fsynced as each completes
    OUT/submission.json  Kaggle shape, every task in task order, always two grids per test input (written at the end)
    OUT/report.json      summary and per-task attempts, correctness, seconds, test-time training, views (at the end)

A rerun in the same folder skips the tasks already in results.jsonl, so an interrupted run resumes, and it gives the
same report as an uninterrupted one except for timing fields (`seconds`, `ttt_seconds`, `seconds_per_task`);
tasks are solved independently, each from the same seed. A checkpoint trained on any of the tasks' test outputs is
refused (LeakageError) unless `allow_seen` asks for a fit measurement; the report's `seen_tasks` then counts them.
The report also says whether solving is transductive (the checkpoint trained on the tasks' demos: the model then
solves them with their trained task codes) and what the checkpoint's training cost over all its stages.

Beside pass@2 the report carries leading indicators where the truth is known: the best attempt's shape correctness
and cell accuracy, attempt 1's changed-cell accuracy and the copy-the-input baseline (scoring.py), and the
teacher-forced loss of the true output (its tokens and the token that ends it), with the task as given
(`teacher_forced_loss`), under the model before test-time training (`tf_loss`: for a task without a trained code,
with a fresh code that knows nothing of the task) and after it (`tuned_tf_loss`: the model that decodes the answer).
Where no task has test outputs nothing is scored and the scores are None.

Reports and submissions are made from the records alone, so a finished folder is rescored without solving again;
records of older runs with fewer than two attempts per test are completed by `two_attempts`.
"""

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from onn_arc.checkpoint import MODEL_FILE, CheckpointMeta, load_checkpoint
from onn_arc.config import CodeInit, SolveConfig
from onn_arc.data import Task
from onn_arc.errors import ConfigError, LeakageError, TaskError
from onn_arc.losses import main_loss
from onn_arc.model import TinyONN
from onn_arc.precision import Precision, autocast, resolve
from onn_arc.scoring import Scorer, ScoreSummary, TaskScore, TwoAttempts, write_submission
from onn_arc.solve import code_of, solve_or_copy, two_attempts, with_task_code
from onn_arc.tokens import collate, encode_pair

SETTINGS, RESULTS, SUBMISSION, REPORT = "settings.json", "results.jsonl", "submission.json", "report.json"
TIMING = ("seconds", "ttt_seconds", "seconds_per_task")  # the only fields a resumed run may change


@dataclass(frozen=True)
class TaskDone:
    """One finished task, as `on_task` sees it."""

    record: dict[str, Any]  # its results.jsonl line
    score: TaskScore | None  # None when the task has no test outputs
    resumed: bool  # read back from an earlier run rather than solved now


@dataclass(frozen=True)
class Evaluation:
    summary: ScoreSummary  # official scores of the tasks with test outputs
    report: dict[str, Any]  # what report.json holds


def teacher_forced_loss(
    model: TinyONN, task: Task, test_index: int, precision: Precision = "fp32", code_init: CodeInit = "mean"
) -> float | None:
    """Mean cross-entropy of the true output's tokens (cells, row ends, the closing EOS) given everything before,
    with the task as given, the forward in `precision`; None without a test output or when the pair does not fit
    the context. The test pair alone, with the task's trained code when the model has one (it trained on the task's
    demos: transductive), else with a fresh `code_init` code, as `solve_task` makes before test-time training
    (`with_task_code`)."""
    if task.test[test_index].output is None:
        return None
    model = with_task_code(model, task, code_init)
    try:
        seq = encode_pair(task.test[test_index], code_of(model, task), max_len=model.cfg.max_len)
    except TaskError:
        return None
    batch = collate([seq]).to(next(model.parameters()).device)
    with torch.inference_mode(), autocast(precision, batch.tokens.device):
        logits = model(batch.tokens, batch.rows, batch.cols, batch.pos, task=batch.task).float()  # (1, T, V)
    loss, _ = main_loss(logits, batch.tokens, batch.targets)
    return loss.item()


def run_task(model: TinyONN, task: Task, cfg: SolveConfig) -> dict[str, Any]:
    """Solve one task; its results.jsonl record. A task that cannot be solved (TaskError) is recorded as failed,
    with the copy-the-input guess as its attempts."""
    started = time.perf_counter()
    tests = range(len(task.test))
    # one copy with the task's fresh code, as solve_task makes it, serves every test's tf_loss and then
    # solving (which finds the code there), rather than a copy per test and another to solve with
    model = with_task_code(model, task, cfg.task_code_init)

    def losses(m: TinyONN) -> list[float | None]:
        return [teacher_forced_loss(m, task, i, cfg.precision) for i in tests]

    tf_loss = losses(model)
    tuned_tf_loss: list[float | None] = [None for _ in tests]

    def score_tuned(tuned: TinyONN) -> None:
        tuned_tf_loss[:] = tf_loss if tuned is model else losses(tuned)  # no test-time training: the same model

    solution, error = solve_or_copy(model, task, cfg, on_tuned=score_tuned)
    return {
        "task_id": task.id, **solution.to_json(), "error": error, "tf_loss": tf_loss, "tuned_tf_loss": tuned_tf_loss,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


# ---------------------------------------------------------------- the output folder


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys: {"solve": {"loss": {"kl": 0.1}}} -> {"solve.loss.kl": 0.1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(folder: Path) -> str:
    """`folder` relative to the working directory when it lies below it, so that a committed settings.json names no
    machine's own folders; else absolute."""
    folder, here = folder.resolve(), Path.cwd().resolve()
    return str(folder.relative_to(here)) if folder.is_relative_to(here) else str(folder)


# What a run that did not record a solve setting (it was added to SolveConfig since) did, where that differs from
# today's default: the default changed after the setting was added (bench/colours.py, bench/rerank.py on arc1-dev).
UNRECORDED = {"solve.augment.colour_scope": "all", "solve.ranking": "votes"}


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Write settings.json, or refuse when the folder holds a run with other settings: other weights, precision or
    solve settings. A solve setting the old run did not record (added to SolveConfig since) counts as what solving
    did then (`UNRECORDED`, else its default); where the run's checkpoint lives does not matter."""
    if not path.exists():
        _write_json(path, settings)
        return
    try:
        old = _flat(json.loads(path.read_text()))
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError(f"{path}: not a settings file; choose another --out or delete the folder") from None
    new = _flat(settings)
    defaults = _flat({"solve": SolveConfig().model_dump(mode="json")})
    for key in sorted((old.keys() | new.keys()) - {"checkpoint"}):
        was = old.get(key, UNRECORDED.get(key, defaults.get(key)))
        if was != new.get(key):
            raise ConfigError(
                f"{path}: this folder holds a run with other settings ({key} was {was!r}, now "
                f"{new.get(key)!r}); choose another --out or delete the folder"
            )


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Finished tasks by id. Only newline-terminated lines count: a line a crash cut short is cut from the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    records = {}
    for n, line in enumerate(complete.splitlines(), start=1):
        try:
            record = json.loads(line)
            records[record["task_id"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(
                f"{path}: line {n} is not a task record; choose another --out or delete the folder"
            ) from None
    return records


def append_result(path: Path, record: dict[str, Any]) -> None:
    """One finished task's line, flushed and fsynced: a crash loses at most the task being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _attempts(task: Task, record: dict[str, Any]) -> list[TwoAttempts]:
    """The two attempts the record submits for each test input (records of older runs may hold fewer)."""
    return [
        two_attempts([tuple(tuple(row) for row in grid) for grid in grids], pair.input)
        for grids, pair in zip(record["attempts"], task.test, strict=True)
    ]


def _score(task: Task, record: dict[str, Any]) -> TaskScore | None:
    if not task.has_test_outputs:
        return None
    return Scorer().update(task.id, _attempts(task, record), task.test)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _report(
    tasks: list[Task], records: dict[str, dict[str, Any]], settings: dict[str, Any], checkpoint: dict[str, Any]
) -> Evaluation:
    """The scores and report.json of finished records, in task order; the summary ends with `checkpoint`, what
    `_checkpoint_facts` says about the checkpoint and these tasks."""
    scorer = Scorer()
    rows = []
    for task in tasks:
        record = records[task.id]
        attempts = _attempts(task, record)
        submitted = [[[list(row) for row in grid] for grid in pair] for pair in attempts]
        row = {k: v for k, v in record.items() if k != "candidates"} | {"attempts": submitted}
        if task.has_test_outputs:
            score = scorer.update(task.id, attempts, task.test)
            row |= {k: v for k, v in score.to_json().items() if k != "task_id"}
        rows.append(row)
    summary = scorer.result()
    scores = summary.to_json()
    del scores["tasks"]
    if not summary.n_tasks:  # nothing scored: no score, rather than a score of 0
        scores = dict.fromkeys(scores) | {"n_tasks": 0}
    overview = {
        "n_tasks": len(tasks),
        "scored_tasks": scores.pop("n_tasks"),
        **scores,
        "failed": sum(r["error"] is not None for r in rows),
        "tf_loss": _mean([x for r in rows for x in r["tf_loss"] if x is not None]),
        "tuned_tf_loss": _mean([x for r in rows for x in r.get("tuned_tf_loss", []) if x is not None]),
        "seconds_per_task": _mean([r["seconds"] for r in rows]),
        **checkpoint,
    }
    return Evaluation(summary, {"settings": settings, "summary": overview, "tasks": rows})


def _checkpoint_facts(meta: CheckpointMeta, tasks: list[Task], source: str | None) -> dict[str, Any]:
    """What the report says about the checkpoint on these tasks: the tasks whose test outputs it trained on
    (allow_seen) and whose demos it trained on (`demos_trained`), the mode that makes (inductive: none,
    transductive: all, mixed) and its training cost over all its stages (`totals`)."""
    transductive = len(meta.demos_trained(tasks, source))
    mode = "inductive" if not transductive else "transductive" if transductive == len(tasks) else "mixed"
    return {
        "seen_tasks": len(meta.data.leaks_into(tasks)),
        "transductive_tasks": transductive,
        "mode": mode,
        "training": meta.totals(),  # steps, tokens, target/padded tokens, seconds; None where a stage did not record
    }


# ---------------------------------------------------------------- workers

_worker: dict[str, Any] = {}


def _init_worker(folder: str, device: str, threads: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    _worker["model"] = load_checkpoint(folder, device=device).model


def _exit_with(parent: int) -> None:
    """Exit once `parent` is gone, so a worker never outlives an eval killed by SIGTERM or SIGKILL."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _run_in_worker(work: Callable[[TinyONN, Task], dict[str, Any]], task: Task) -> dict[str, Any]:
    return work(_worker["model"], task)


def run_tasks(
    tasks: list[Task],
    work: Callable[[TinyONN, Task], dict[str, Any]],
    finished: Callable[[dict[str, Any]], None],
    model: TinyONN,
    folder: Path,
    workers: int = 1,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> None:
    """`work(model, task)` for every task, each record handed to `finished` (in this process) as it completes.

    workers = 1 (or one task) runs here with `model`; else `workers` processes each load the checkpoint in `folder`
    once and use `threads` torch threads (default cores // workers), and exit with this one. `work` crosses to them
    by pickle: a module-level function, or a `functools.partial` of one."""
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            finished(work(model, task))
        return
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),  # no fork of a process that holds torch threads
        initializer=_init_worker,
        initargs=(str(folder), str(device), threads),
    ) as pool:
        futures = [pool.submit(_run_in_worker, work, task) for task in tasks]
        try:
            for future in as_completed(futures):
                finished(future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def evaluate(
    checkpoint_folder: str | Path,
    tasks: list[Task],
    cfg: SolveConfig,
    out_dir: str | Path,
    workers: int = 1,
    on_task: Callable[[TaskDone], None] | None = None,
    device: str | torch.device = "cpu",
    allow_seen: bool = False,
    source: str | None = None,
) -> Evaluation:
    """Solve and score `tasks` with the checkpoint, resumably, in `out_dir` (see the module docstring).

    workers > 1 solves tasks in that many processes (each loads the checkpoint once and uses cores // workers
    threads); workers = 1 runs here with the current torch thread count. `on_task` sees every finished task,
    those resumed from an earlier run first. `allow_seen` scores tasks whose test outputs the checkpoint was
    trained on (how well it fits its training data, never a score to report as one). `source`, the name the tasks
    were loaded from, tells whether the checkpoint trained on their demos (`CheckpointMeta.demos_trained`).
    """
    if workers < 1:
        raise ConfigError(f"workers={workers}: must be at least 1")
    if len({t.id for t in tasks}) != len(tasks):
        raise ConfigError("the task list names a task twice")
    loaded = load_checkpoint(checkpoint_folder, device=device)
    leaked = loaded.meta.data.leaks_into(tasks)
    if leaked and not allow_seen:
        shown = ", ".join(leaked[:3]) + (", ..." if len(leaked) > 3 else "")
        raise LeakageError(
            f"{loaded.folder} was trained on the test outputs of {len(leaked)} of these {len(tasks)} tasks ({shown}) "
            f"from {', '.join(loaded.meta.data.test_outputs_from)}; evaluate it on tasks it has not seen"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "checkpoint": _shown(loaded.folder),  # for the record: the weights' sha256 is the checkpoint's identity
        "weights_sha256": loaded.meta.files[MODEL_FILE],
        "solve": cfg.model_dump(mode="json"),
        "precision": resolve(cfg.precision, device),  # what `solve.precision` meant on this machine
    }
    _check_settings(out / SETTINGS, settings)
    records = read_results(out / RESULTS)
    by_id = {t.id: t for t in tasks}
    for task in tasks:
        if task.id in records and on_task is not None:
            on_task(TaskDone(records[task.id], _score(task, records[task.id]), resumed=True))
    pending = [t for t in tasks if t.id not in records]

    def finished(record: dict[str, Any]) -> None:
        append_result(out / RESULTS, record)
        records[record["task_id"]] = record
        if on_task is not None:
            on_task(TaskDone(record, _score(by_id[record["task_id"]], record), resumed=False))

    run_tasks(pending, partial(run_task, cfg=cfg), finished, loaded.model, loaded.folder, workers, device)

    evaluation = _report(tasks, records, settings, _checkpoint_facts(loaded.meta, tasks, source))
    write_submission(out / SUBMISSION, {t.id: _attempts(t, records[t.id]) for t in tasks})
    _write_json(out / REPORT, evaluation.report)
    return evaluation
