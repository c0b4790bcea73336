"""Model speed on the CPU: training tokens/s (Tiny-ONN vs the dense baseline) and decode tokens/s with and without cache.

    python bench/model.py        (make bench-model)

Training: one ~1k-token real ARC-AGI-1 task per step, base preset, 2 threads, both archs timed interleaved in
one process; a step is `forward_backward` (main loss, surprise, gate and KL losses; no optimizer), and plain
model forward+backward is shown beside it. The speed ratio is the median of the paired per-round ratios.
Decoding: a 30x30 test output (930 tokens + closer) after a real task prompt, one token per step, feeding
the true answer (the cost does not depend on which token comes). Without a cache every step reruns the
whole sequence; that is timed on evenly spaced steps and averaged (the mean step time over all steps).
Shared machines are noisy: every number is a median over rounds. Ends with one `RESULT key=value ...` line.
"""

import os
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from onn_arc.config import LossConfig, ModelConfig
from onn_arc.data import load_split
from onn_arc.losses import forward_backward
from onn_arc.model import TinyONN
from onn_arc.tokens import Batch, collate, encode_task, grid_length

THREADS = 2
TRAIN_ROUNDS = 15  # interleaved training steps per arch (after one warm-up)
DECODE_ROUNDS = 3  # interleaved decode runs per arch
FULL_SAMPLES = 10  # no-cache decode steps timed per run, evenly spaced over the output
SEQ_LEN = (950, 1100)  # training sequence lengths (tokens)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model_step(model: TinyONN, batch: Batch) -> None:
    logits = model(batch.tokens, batch.rows, batch.cols, batch.pos)
    logits.logsumexp(-1).mean().backward()
    model.zero_grad(set_to_none=True)


def loss_step(model: TinyONN, batch: Batch, rates: list[float]) -> None:
    rates.append(forward_backward(model, batch, LossConfig())["activation_rate"])
    model.zero_grad(set_to_none=True)


def decode_cached(model: TinyONN, prompt: Batch, answer: Batch) -> float:
    """Seconds per generated token with the KV cache (the prompt's prefill is not counted)."""
    cache = model.new_cache()
    model(prompt.tokens, prompt.rows, prompt.cols, prompt.pos, cache)
    n = answer.tokens.shape[1]
    start = time.perf_counter()
    for t in range(n):
        logits = model(answer.tokens[:, t : t + 1], answer.rows[:, t : t + 1], answer.cols[:, t : t + 1],
                       answer.pos[:, t : t + 1], cache)  # fmt: skip
        logits[0, -1].argmax().item()
    return (time.perf_counter() - start) / n


def decode_full(model: TinyONN, prompt: Batch, answer: Batch) -> float:
    """Mean seconds per generated token without a cache, from steps evenly spaced over the answer."""
    seq = [torch.cat([p, a], dim=1) for p, a in zip(
        (prompt.tokens, prompt.rows, prompt.cols, prompt.pos), (answer.tokens, answer.rows, answer.cols, answer.pos))]  # fmt: skip
    p, n = prompt.tokens.shape[1], answer.tokens.shape[1]
    steps = torch.linspace(0, n - 1, FULL_SAMPLES).round().long().tolist()
    return statistics.mean(timed(lambda s=s: model(*(x[:, : p + s + 1] for x in seq))[0, -1].argmax().item()) for s in steps)


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    console = Console()
    load_before = os.getloadavg()[0]
    tasks = load_split("arc1-train")
    train_seqs = [s for s in (encode_task(t) for t in tasks) if SEQ_LEN[0] <= len(s) <= SEQ_LEN[1]][:6]
    decode_task = next(t for t in tasks if grid_length(t.test[0].output) == 930)
    cfg = ModelConfig.preset("base")
    models = {arch: TinyONN(cfg.model_copy(update={"arch": arch})) for arch in ("onn", "dense")}

    # training: interleaved rounds, one sequence per step
    batches = [collate([s]) for s in train_seqs]
    train = {(arch, kind): [] for arch in models for kind in ("model", "loss")}
    rates: dict[str, list[float]] = {arch: [] for arch in models}
    for r in range(TRAIN_ROUNDS + 1):
        batch = batches[r % len(batches)]
        for arch, model in models.items():
            for kind, fn in (("model", lambda: model_step(model, batch)), ("loss", lambda: loss_step(model, batch, rates[arch]))):
                seconds = timed(fn)
                if r:  # round 0 warms up
                    train[arch, kind].append(batch.n_tokens / seconds)
    tok_s = {key: statistics.median(v) for key, v in train.items()}
    ratio = {kind: statistics.median(o / d for o, d in zip(train["onn", kind], train["dense", kind])) for kind in ("model", "loss")}

    # decoding: a 30x30 output after the task's prompt (demos dropped by the context policy as needed)
    whole = collate([encode_task(decode_task, max_len=cfg.max_len)])
    prompt_len = whole.tokens.shape[1] - 931  # the output grid's 930 tokens and EOS follow the prompt
    fields = (whole.tokens, whole.rows, whole.cols, whole.pos, whole.targets)
    prompt = Batch(*(x[:, :prompt_len] for x in fields))
    answer = Batch(*(x[:, prompt_len : prompt_len + 930] for x in fields))  # each step feeds one, predicts the next
    decode = {(arch, kind): [] for arch in models for kind in ("cached", "full")}
    with torch.no_grad():
        for _ in range(DECODE_ROUNDS):
            for arch, model in models.items():
                model.eval()
                decode[arch, "cached"].append(1 / decode_cached(model, prompt, answer))
                decode[arch, "full"].append(1 / decode_full(model, prompt, answer))
    dec = {key: statistics.median(v) for key, v in decode.items()}

    table = Table(title=f"Tiny-ONN base preset ({THREADS} threads, fp32, median of rounds)")
    table.add_column("measure")
    for arch in models:
        table.add_column(arch, justify="right")
    table.add_column("onn / dense", justify="right")
    table.add_row("parameters", *(f"{m.num_params():,}" for m in models.values()), "")
    table.add_row("train tok/s: model fwd+bwd", *(f"{tok_s[a, 'model']:,.0f}" for a in models), f"{ratio['model']:.2f}")
    table.add_row("train tok/s: forward_backward", *(f"{tok_s[a, 'loss']:,.0f}" for a in models), f"{ratio['loss']:.2f}")
    table.add_row("decode tok/s, KV cache", *(f"{dec[a, 'cached']:,.1f}" for a in models), "")
    table.add_row("decode tok/s, no cache", *(f"{dec[a, 'full']:,.1f}" for a in models), "")
    table.add_row("cache speed-up", *(f"{dec[a, 'cached'] / dec[a, 'full']:,.1f}x" for a in models), "")
    console.print(table)
    console.print(
        f"train: {len(batches)} sequences of {min(map(len, train_seqs))}-{max(map(len, train_seqs))} tokens; "
        f"decode: task {decode_task.id}, prompt {prompt_len} tokens + {answer.tokens.shape[1]} generated; "
        f"onn activation rate {statistics.mean(rates['onn']):.2f}; 1-min load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores (other processes on the cores make {THREADS}-thread "
        "timings slow and erratic: every parallel op then waits for a descheduled thread)"
    )
    result = {
        "train_tok_s_onn": round(tok_s["onn", "loss"]),
        "train_tok_s_dense": round(tok_s["dense", "loss"]),
        "onn_dense_speed_ratio": round(ratio["loss"], 3),
        "model_tok_s_onn": round(tok_s["onn", "model"]),
        "model_tok_s_dense": round(tok_s["dense", "model"]),
        "model_speed_ratio": round(ratio["model"], 3),
        "decode_tok_s_cached": round(dec["onn", "cached"], 1),
        "decode_tok_s_full": round(dec["onn", "full"], 1),
        "cache_speedup": round(dec["onn", "cached"] / dec["onn", "full"], 1),
        "decode_tok_s_cached_dense": round(dec["dense", "cached"], 1),
        "params_onn": models["onn"].num_params(),
        "params_dense": models["dense"].num_params(),
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
