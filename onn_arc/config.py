"""Typed, frozen configs. A bad value raises pydantic's ValidationError naming the field and value;
`ModelConfig.preset` turns that (and an unknown preset name) into a one-line ConfigError."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import numpy as np

from onn_arc import tokens
from onn_arc.augment import Augmentation
from onn_arc.errors import ConfigError
from onn_arc.precision import Precision


COPY_MARK = "#"  # a copy's code key: task id, COPY_MARK, the copy's augmentation (`code_key`)
CodeInit = Literal["mean", "zero"]  # a new task's code starts at the trained codes' mean, or at zero
TttParams = Literal["all", "code"]  # test-time training updates every weight, or the task code alone
GateForm = Literal["softmax", "median"]  # the SML gate loss's form (losses.py): over units, or per unit
ColourScope = Literal["all", "inputs"]  # a colour permutation moves every colour, or the task's input colours only
Ranking = Literal["votes", "poe"]  # solving: candidates ranked by votes, or by their score summed over the views
OptimizerName = Literal["gn", "adamw", "muon"]  # Gauss-Newton, AdamW, or Muon on weight matrices (AdamW elsewhere)


def one_line(exc: ValidationError, source: str) -> str:
    """A pydantic error as one line: `source: field=value: what is wrong`."""
    e = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in e["loc"])
    what = e["msg"].removeprefix("Value error, ")  # a validator's own message already names its fields
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {field}={e['input']!r}: {what}{more}" if field else f"{source}: {what}{more}"


class ModelConfig(BaseModel):
    """Shape of a Tiny-ONN (or of its dense baseline)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Literal["onn", "dense"] = "onn"  # Sparse Bayesian Layers, or the dense baseline (plain linear maps)
    d_model: int = Field(gt=0)  # width
    n_layers: int = Field(gt=0)  # blocks
    loops: int = Field(default=1, gt=0)  # passes through the stack of blocks, with the same weights (weight-tied depth)
    n_heads: int = Field(default=1, gt=0)  # DynSIHA: one full-width head by default
    ffn_mult: int = Field(gt=0)  # MoIE hidden width = ffn_mult * d_model
    max_len: int = Field(gt=0)  # context length in tokens (and KV-cache capacity)
    vocab_size: int = Field(default=tokens.VOCAB_SIZE, ge=tokens.VOCAB_SIZE)  # token ids 0..vocab_size-1
    task_ids: tuple[str, ...] = ()  # the task of each row of the task-code table (its size is their number)
    copies: int = Field(default=0, ge=0)  # 0, one code per task, whatever augmentation a pair shows; K, one code
    # per augmented copy of a task (K fixed copies per task in training, one per view at solve time; train.copies_of),
    # each row of task_ids then a `code_key` naming the task and the copy's augmentation
    dropout: float = Field(default=0.0, ge=0, lt=1)  # training only: dropout on the embeddings and residual branches

    @model_validator(mode="after")
    def _head_dim(self) -> "ModelConfig":
        # rotary positions split each head's pairs of dims over the plane, row and column
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 8:
            raise ValueError(
                f"d_model={self.d_model} / n_heads={self.n_heads} must give a head dim that is a multiple of 8"
            )
        if len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError("task_ids: a task id appears twice")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_task_codes(self) -> int:
        return len(self.task_ids)

    @property
    def coded_tasks(self) -> frozenset[str]:
        """The ids of the tasks with codes (with copies, each task once, however many copies it has)."""
        return frozenset(key.rsplit(COPY_MARK, 1)[0] if self.copies else key for key in self.task_ids)

    @classmethod
    def preset(cls, name: str, **overrides: object) -> "ModelConfig":
        """A named preset ("tiny" for tests, "small", "base" for CPU training) with fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset '{name}' (valid: {', '.join(PRESETS)})")
        try:
            return cls(**{**PRESETS[name], **overrides})
        except ValidationError as exc:
            raise ConfigError(one_line(exc, f"model preset '{name}'")) from None


PRESETS: dict[str, dict[str, object]] = {
    "tiny": dict(d_model=16, n_layers=1, ffn_mult=2, max_len=512),  # tests: 5.8k params (onn), 3.6k (dense)
    "small": dict(d_model=64, n_layers=2, ffn_mult=4, max_len=2048),  # quick experiments: 204k (onn), 105k (dense)
    "base": dict(d_model=128, n_layers=4, ffn_mult=4, max_len=2048),  # CPU training: 1.59M (onn), 0.80M (dense)
}


class LossConfig(BaseModel):
    """Weights of the auxiliary losses (DESIGN §5); the main loss always has weight 1."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gate_weight: float = Field(default=0.01, ge=0)  # SML gate loss weight (0 turns it off)
    kl_weight: float = Field(default=0.001, ge=0)  # KL loss weight (0 turns it off); the mean KL per weight reaches ~50
    gate_tokens: int = Field(default=64, gt=0)  # tokens per step (random subset) the gate loss is computed on
    gate_form: GateForm = "softmax"  # softmax over units (blind to the firing level), or a per-unit median target


class AugmentConfig(BaseModel):
    """Which random whole-task transforms training applies (DESIGN §2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dihedral: bool = True  # one of the 8 rotations/reflections
    colours: bool = True  # a random colour permutation
    keep_background: bool = True  # colour 0 stays 0 under the permutation
    shuffle: bool = True  # random demo order
    colour_scope: ColourScope = "all"  # the permutation moves every colour, or only the task's input colours among
    # themselves, so that a colour only outputs bring keeps its meaning under the task's code (augment.py)

    def draw(self, rng: np.random.Generator, n_train: int, inputs: frozenset[int]) -> Augmentation:
        """A random augmentation of a task with `n_train` demos whose input grids hold the colours `inputs`."""
        movable = inputs if self.colour_scope == "inputs" else None
        return Augmentation.random(rng, n_train, self.keep_background, self.dihedral, self.colours, self.shuffle, movable)


# Each optimizer's default peak lr: its best on the shipped recipe in bench/optim.py (README: Optimizer), 2026-12-04.
DEFAULT_LR: dict[str, float] = {"gn": 3e-3, "adamw": 3e-3, "muon": 1e-2}


class OptimizerConfig(BaseModel):
    """The optimizer: Gauss-Newton preconditioning (DESIGN §6), plain AdamW, or Muon on the weight matrices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: OptimizerName = "gn"
    lr: float = Field(default=DEFAULT_LR["gn"], gt=0)  # peak learning rate, `DEFAULT_LR[name]` when not given (GN
    # grafts its step to AdamW's size, Muon matches its update RMS to AdamW's: one lr scale for all three)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    weight_decay: float = Field(default=0.1, ge=0)  # decoupled, on weight matrices only
    damping: float = Field(default=0.1, ge=0)  # GN: relative to the mean curvature
    stat_decay: float = Field(default=0.8, ge=0, lt=1)  # GN: running-average decay of the curvature factors
    curvature_every: int = Field(default=10, gt=0)  # GN: steps between curvature statistics
    precondition_every: int = Field(default=50, gt=0)  # GN: steps between eigenbasis refreshes
    start_step: int = Field(default=10, gt=0)  # GN: plain AdamW before this step

    @model_validator(mode="before")
    @classmethod
    def _lr_of_the_optimizer(cls, data: object) -> object:
        """An optimizer named without an lr gets its own default lr (`DEFAULT_LR`)."""
        if isinstance(data, dict) and "lr" not in data and data.get("name") in DEFAULT_LR:
            return data | {"lr": DEFAULT_LR[data["name"]]}
        return data


class TrainConfig(BaseModel):
    """Everything a training run needs; saved in every checkpoint it writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig = Field(default_factory=lambda: ModelConfig.preset("base"))
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig(name="muon")  # bench/optim.py on the shipped recipe: Muon
    # reached AdamW's held-out loss in 0.75x the time, GN not at all (README: Optimizer); 1e-2 was Muon's best lr
    augment: AugmentConfig = AugmentConfig()
    sources: list[str] = ["arc1-train"]  # data sources trained on, demos and test outputs
    demo_sources: list[str] = []  # sources of which only demos are used (never their test outputs)
    input_loss: bool = False  # the loss on input grids too, and demo-only sources' test inputs
    batch_tokens: int = Field(default=8192, gt=0)  # padded tokens per step (per rank)
    precision: Precision = "auto"  # bf16 autocast where the hardware runs it fast, else fp32 (precision.py)
    steps: int = Field(default=2000, gt=0)  # step budget; the lr schedule ends here
    seconds: float | None = Field(default=None, gt=0)  # optional wall-clock budget; the schedule follows it too
    warmup_steps: int = Field(default=50, ge=0)  # linear lr warm-up
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # cosine decay ends at this fraction of lr
    grad_clip: float = Field(default=1.0, gt=0)  # max global gradient norm
    seed: int = 0  # seeds the model init, data order, augmentations and sampling
    checkpoint_every: int = Field(default=100, gt=0)  # steps between checkpoints
    max_bad_steps: int = Field(default=5, gt=0)  # consecutive non-finite steps before the run stops
    ema: float = Field(default=0.0, ge=0, lt=1)  # 0: off; else checkpoints ship the exponential moving average (decay
    # `ema`) of the weights after each step (train.ema_update), and keep the raw weights in the training state


class SolveConfig(BaseModel):
    """How one task is solved (DESIGN §7): test-time training on its demos, augmented views, decoding, ranking.

    Defaults, shipped checkpoint, one thread per task, fp32: median 57 s (max 85 s) on the dev set, median 60 s on
    ARC-AGI-1 evaluation, where 30x30 outputs take up to 162 s (`search_seconds` bounds the decoding).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttt_steps: int = Field(default=48, ge=0)  # test-time training steps on the task's own demos (0 turns it off)
    ttt_seconds: float | None = Field(default=None, gt=0)  # optional wall-clock bound on test-time training
    ttt_batch_tokens: int = Field(default=4096, gt=0)  # padded tokens per test-time training step
    ttt_params: TttParams = "all"  # test-time training updates every weight, or the task code alone
    task_code_init: CodeInit = "mean"  # a new task's code starts at the trained codes' mean, or 0
    optimizer: OptimizerConfig = OptimizerConfig(
        lr=1e-3, start_step=2, curvature_every=4, precondition_every=8
    )  # test-time training optimizer (GN preconditions from its 2nd step)
    loss: LossConfig = LossConfig()  # test-time training losses
    augment: AugmentConfig = AugmentConfig(colour_scope="inputs")  # random transforms of the test-time training
    # examples and the views: colours permuted only among the task's input colours (bench/colours.py on the dev set:
    # pass@2 0.200 and changed-cell 0.427 against 0.125 and 0.235 with every colour but 0 permuted)
    grad_clip: float = Field(default=1.0, gt=0)  # test-time training: max global gradient norm
    precision: Precision = "auto"  # test-time training: bf16 autocast where fast (decoding is fp32: faster one token
    # at a time, see bench/model.py)
    views: int = Field(default=16, ge=1)  # augmented views decoded and ranked over (view 0 is the task as given)
    sampler: Literal["greedy", "dfs"] = "dfs"  # every grid above min_prob (at most max_candidates), or one per view
    # (bench/search.py, dev set, 12 arms: 16 views, dfs, poe has pass@2 0.275 and coverage 0.331 at 71 s per task at
    # most, the lowest max of the arms with the best pass@2; 6 greedy views with poe had 0.250 and 0.250)
    min_prob: float = Field(default=0.1, gt=0, le=1)  # dfs: a candidate's probability floor
    max_candidates: int = Field(default=4, gt=0)  # dfs: at most this many grids per view
    greedy_fallback: bool = False  # dfs: a test input no view finds a grid for gets every view's greedy grid, not
    # two copies of its input (none for 13 of the dev set's 82 test inputs, 192 of ARC-AGI-1 evaluation's 419). Off:
    # on the dev set it solves nothing more (pass@2 0.287 either way) for changed-cell accuracy 0.483 -> 0.511 and a
    # slowest task of 114 s instead of 85 s (docs/evaluation.md)
    search_seconds: float | None = Field(default=None, gt=0)  # wall-clock budget of decoding and PoE scoring after
    # test-time training; None (the default): unbounded, so a busy machine solves slower, never differently (a 60 s
    # bound under `nice` on a loaded machine left `make run` no candidate at all)
    ranking: Ranking = "poe"  # the candidates' order: by their product-of-experts score, the log-probability summed
    # over every view (solve.py), or by votes, then log-probability over the views that produced them; a copy of the
    # test input last either way (bench/rerank.py on one arc1-dev run: poe pass@2 0.250, votes 0.200, oracle 0.250)
    seed: int = 0  # seeds the views, test-time training data and sampling
