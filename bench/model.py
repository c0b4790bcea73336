"""Model speed on the CPU: training tokens/s (Tiny-ONN vs the dense baseline, fp32 and bf16), decode tokens/s with and
without cache, and how much of a training batch is real tokens.

    python bench/model.py [--threads 2]        (make bench-model)

Training: one ~1k-token real ARC-AGI-1 pair per step, base preset, `--threads` threads, both archs timed interleaved in
one process; a step is `forward_backward` (main loss, surprise, gate and KL losses; no optimizer), and plain
model forward+backward is shown beside it. The speed ratio is the median of the paired per-round ratios. Where the CPU
has bf16 instructions, `forward_backward` also runs under bf16 autocast in the same rounds (`bf16_speedup`, the median
paired ratio; elsewhere the bench says so and reports fp32 only), and so do full training steps on the default
training batches (8192 padded tokens, length-bucketed: `train_tok_s_fp32`, `train_tok_s_bf16` in real tokens/s and
their paired ratio `bf16_speedup`).
Decoding: a 30x30 test output (930 tokens) after its test input's prompt, one token per step, feeding the true
answer (the cost does not depend on which token comes). Without a cache every step reruns the whole
sequence; that is timed on evenly spaced steps and averaged (the mean step time over all steps).
Shared machines are noisy: every number is a median over rounds. Ends with one `RESULT key=value ...` line.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from onn_arc import train
from onn_arc.config import LossConfig, ModelConfig, TrainConfig
from onn_arc.data import load_split
from onn_arc.losses import forward_backward
from onn_arc.model import KVCache, TinyONN
from onn_arc.precision import autocast, resolve
from onn_arc.tokens import PAD, Batch, collate, encode_pair, grid_length

TRAIN_ROUNDS = 15  # interleaved training steps per arch (after one warm-up round)
DECODE_ROUNDS = 3  # interleaved decode runs per arch
FULL_SAMPLES = 10  # no-cache decode steps timed per run, evenly spaced over the output
SEQ_LEN = (950, 1100)  # training sequence lengths (tokens)
BATCH_ROUNDS = 6  # interleaved fp32/bf16 training steps on real batches (after one warm-up round)
PACKED = 8  # sequences of 512 tokens in the packing-vs-bucketing attention comparison
OUTPUT_LEN = 930  # a 30x30 grid: 30 rows of 30 cells and a row end


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def window(b: Batch, start: int, end: int) -> Batch:
    return Batch(*(x[:, start:end] for x in (b.tokens, b.rows, b.cols, b.pos, b.targets)), b.task)


def run(model: TinyONN, b: Batch, cache: KVCache | None = None) -> torch.Tensor:
    return model(b.tokens, b.rows, b.cols, b.pos, cache, b.task)


def model_step(model: TinyONN, batch: Batch) -> None:
    run(model, batch).logsumexp(-1).mean().backward()
    model.zero_grad(set_to_none=True)


def loss_step(model: TinyONN, batch: Batch, rates: list[float], precision: str = "fp32") -> None:
    rates.append(forward_backward(model, batch, LossConfig(), precision=precision)["activation_rate"])
    model.zero_grad(set_to_none=True)


def training_batches(pool: list[train.PairExample], n: int) -> list[Batch]:
    """The first `n` steps' training batches at the default settings (8192 tokens, length-bucketed) from `pool`."""
    cfg = TrainConfig()
    rngs = (train.step_generators(cfg.seed, step, 0, torch.device("cpu"))[0] for step in range(n))
    return [train.sample_batch(pool, rng, cfg.batch_tokens, cfg.model.max_len, cfg.augment) for rng in rngs]


def real_tokens(b: Batch) -> int:
    return int((b.tokens != PAD).sum())


def precision_rounds(model: TinyONN, batches: list[Batch]) -> dict[str, list[float]]:
    """Real tokens/s of full training steps (`forward_backward`) on real batches, fp32 and bf16 interleaved."""
    tok_s: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r, batch in enumerate([batches[0], *batches]):  # the first round warms up
        for precision in tok_s:
            seconds = timed(lambda: loss_step(model, batch, [], precision))
            if r:
                tok_s[precision].append(real_tokens(batch) / seconds)
    return tok_s


def packed_attention_ratio(precision: str) -> float:
    """Attention forward+backward time of PACKED sequences of 512 tokens packed into rows of 2048 with a
    block-diagonal causal mask, over the same sequences as a (bucketed) batch of 512-token rows (`is_causal`)."""
    seg = torch.arange(2048) // 512
    mask = (seg[:, None] == seg[None, :]) & (torch.arange(2048)[:, None] >= torch.arange(2048))  # (2048, 2048)
    shapes = {"packed": (PACKED // 4, 1, 2048, 128), "bucketed": (PACKED, 1, 512, 128)}  # (B, H, T, hd)
    seconds: dict[str, list[float]] = {k: [] for k in shapes}
    with autocast(precision, "cpu"):
        for _ in range(4):
            for kind, shape in shapes.items():
                q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
                opts = {"attn_mask": mask} if kind == "packed" else {"is_causal": True}
                seconds[kind].append(timed(lambda: F.scaled_dot_product_attention(q, k, v, **opts).sum().backward()))
    return min(seconds["packed"]) / min(seconds["bucketed"])


def decode_cached(model: TinyONN, seq: Batch, prompt_len: int) -> float:
    """Tokens/s with the KV cache after the prompt's prefill (not counted), one token per step."""
    cache = model.new_cache()
    run(model, window(seq, 0, prompt_len), cache)
    start = time.perf_counter()
    for t in range(prompt_len, prompt_len + OUTPUT_LEN):
        run(model, window(seq, t, t + 1), cache)[0, -1].argmax().item()
    return OUTPUT_LEN / (time.perf_counter() - start)


def decode_full(model: TinyONN, seq: Batch, prompt_len: int) -> float:
    """Tokens/s without a cache: the mean time of steps evenly spaced over the output (each reruns all so far)."""
    ends = torch.linspace(prompt_len + 1, prompt_len + OUTPUT_LEN, FULL_SAMPLES).round().long().tolist()
    seconds = [timed(lambda end=end: run(model, window(seq, 0, end))[0, -1].argmax().item()) for end in ends]
    return 1 / statistics.mean(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    threads = parser.parse_args().threads
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    console = Console()
    load_before = os.getloadavg()[0]
    tasks = load_split("arc1-train")
    pairs = [p for t in tasks for p in (*t.train, *t.test)]
    train_seqs = [s for s in map(encode_pair, pairs) if SEQ_LEN[0] <= len(s) <= SEQ_LEN[1]][:6]  # task code 0
    decode_task = next(t for t in tasks if grid_length(t.test[0].output) == OUTPUT_LEN)
    pool, _ = train.build_pool(TrainConfig().sources, [])  # arc1-train, a code per task
    cfg = ModelConfig.preset("base", task_ids=train.pool_task_ids(pool))
    models = {arch: TinyONN(cfg.model_copy(update={"arch": arch})) for arch in ("onn", "dense")}

    # training: interleaved rounds, one sequence per step
    batches = [collate([s]) for s in train_seqs]
    bf16 = resolve("auto", "cpu") == "bf16"  # measured only where this CPU has bf16 instructions
    kinds = ("model", "loss", "loss_bf16") if bf16 else ("model", "loss")
    speed: dict[tuple[str, str], list[float]] = {(arch, kind): [] for arch in models for kind in kinds}
    rates: dict[str, list[float]] = {arch: [] for arch in models}
    for r in range(TRAIN_ROUNDS + 1):
        batch = batches[r % len(batches)]
        for arch, model in models.items():
            steps = {
                "model": lambda: model_step(model, batch),
                "loss": lambda: loss_step(model, batch, rates[arch]),
                "loss_bf16": lambda: loss_step(model, batch, rates[arch], "bf16"),
            }
            for kind in kinds:
                step = steps[kind]
                seconds = timed(step)
                if r:  # round 0 warms up
                    speed[arch, kind].append(batch.n_tokens / seconds)
    tok_s = {key: statistics.median(v) for key, v in speed.items()}
    ratio = {kind: statistics.median(o / d for o, d in zip(speed["onn", kind], speed["dense", kind])) for kind in kinds}
    if bf16:
        speedup = {a: statistics.median(b / f for b, f in zip(speed[a, "loss_bf16"], speed[a, "loss"])) for a in models}

    # decoding: a 30x30 output after its test input's prompt
    seq = collate([encode_pair(decode_task.test[0])])
    prompt_len = seq.tokens.shape[1] - OUTPUT_LEN - 1  # the output grid and EOS follow the prompt
    decode: dict[tuple[str, str], list[float]] = {(arch, kind): [] for arch in models for kind in ("cached", "full")}
    with torch.no_grad():
        for _ in range(DECODE_ROUNDS):
            for arch, model in models.items():
                model.eval()
                decode[arch, "cached"].append(decode_cached(model, seq, prompt_len))
                decode[arch, "full"].append(decode_full(model, seq, prompt_len))
            if bf16:
                with autocast("bf16", "cpu"):
                    decode.setdefault(("onn", "cached_bf16"), []).append(decode_cached(models["onn"], seq, prompt_len))
    dec = {key: statistics.median(v) for key, v in decode.items()}

    sampled = training_batches(pool, 200)
    fraction = sum(map(real_tokens, sampled)) / sum(b.n_tokens for b in sampled)
    packed = packed_attention_ratio("bf16" if bf16 else "fp32")
    if bf16:
        steps = precision_rounds(models["onn"].train(), sampled[:BATCH_ROUNDS])
        step_speedup = statistics.median(b / f for b, f in zip(steps["bf16"], steps["fp32"]))

    table = Table(title=f"Tiny-ONN base preset ({threads} threads, fp32 unless marked bf16, median of rounds)")
    for name in ("measure", *models, "onn / dense"):
        table.add_column(name, justify="left" if name == "measure" else "right")
    table.add_row("parameters", *(f"{m.num_params():,}" for m in models.values()), "")
    labels = {"model": "model fwd+bwd", "loss": "forward_backward", "loss_bf16": "forward_backward, bf16"}
    for kind in kinds:
        table.add_row(f"train tok/s: {labels[kind]}", *(f"{tok_s[a, kind]:,.0f}" for a in models), f"{ratio[kind]:.2f}")
    if bf16:
        table.add_row("bf16 speed-up (forward_backward)", *(f"{speedup[a]:.2f}x" for a in models), "")
        for precision, values in steps.items():
            table.add_row(f"real tok/s, training batches, {precision}", f"{statistics.median(values):,.0f}", "", "")
        table.add_row("bf16 speed-up (training batches)", f"{step_speedup:.2f}x", "", "")
    table.add_row("decode tok/s, KV cache", *(f"{dec[a, 'cached']:,.1f}" for a in models), "")
    if bf16:
        table.add_row("decode tok/s, KV cache, bf16", f"{dec['onn', 'cached_bf16']:,.1f}", "", "")
    table.add_row("decode tok/s, no cache", *(f"{dec[a, 'full']:,.1f}" for a in models), "")
    table.add_row("cache speed-up", *(f"{dec[a, 'cached'] / dec[a, 'full']:,.1f}x" for a in models), "")
    console.print(table)
    console.print(
        f"training batches: {fraction:.1%} real tokens over {TrainConfig().batch_tokens}-token batches of arc1-train "
        f"(200 steps, length-bucketed); packing {PACKED} sequences of 512 tokens into rows of 2048 with a "
        f"block-diagonal mask costs {packed:.2f}x the attention time of bucketing them"
        + ("" if bf16 else "; this CPU has no bf16 instructions (avx512_bf16/amx_bf16): fp32 only")
    )
    console.print(
        f"train: {len(batches)} sequences of {min(map(len, train_seqs))}-{max(map(len, train_seqs))} tokens; "
        f"decode: task {decode_task.id}, prompt {prompt_len} tokens + {OUTPUT_LEN} generated; "
        f"onn activation rate {statistics.mean(rates['onn']):.2f}; 1-min load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores (other processes on the cores make {threads}-thread "
        "timings slow and erratic: every parallel op then waits for a descheduled thread)"
    )
    if bf16:
        result_bf16 = {
            "train_tok_s_fp32": round(statistics.median(steps["fp32"])),
            "train_tok_s_bf16": round(statistics.median(steps["bf16"])),
            "bf16_speedup": round(step_speedup, 2),
            "bf16_speedup_one_seq": round(speedup["onn"], 2),
            "bf16_speedup_one_seq_dense": round(speedup["dense"], 2),
            "decode_tok_s_cached_bf16": round(dec["onn", "cached_bf16"], 1),
        }
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
        "real_token_fraction": round(fraction, 3),
        "packed_attention_ratio": round(packed, 2),
        "params_onn": models["onn"].num_params(),
        "params_dense": models["dense"].num_params(),
    }
    if bf16:
        result |= result_bf16
    result["threads"] = threads
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
