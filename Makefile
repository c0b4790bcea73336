# One-command set-up: every target creates/updates the local virtualenv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ONNARC := $(VENV)/bin/onn-arc

.PHONY: install test test-all run ship bench-model bench-optim bench-fit bench-solve bench-sparsity ablations bench-colours bench-search bench-recipes curve train-stage clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

# The main job: solve a task the shipped checkpoint never trained on (checkpoints/default; 6d75e8bb, a dev task).
run: $(STAMP)
	$(ONNARC) solve 6d75e8bb --threads 2

# One stage of the long training of the shipped recipe (the dense model, base preset, its 4 blocks looped twice; the
# 320 ARC-AGI-1 training tasks outside the dev set and the 233 ARC-AGI-2 training tasks in no ARC-AGI-1 split):
# STAGE_SECONDS of training into STAGE, from INIT's weights when given (a previous stage's checkpoint).
# The shipped chain stopped at stage 1: a second stage (INIT=checkpoints/default) did worse on dev (docs/recipes.md).
# On a lent GPU: make train-stage DEVICE=cuda STAGE_SECONDS=540 INIT=checkpoints/default. Then `make ship RUN=$(STAGE)`.
# TRAIN_FLAGS replaces the model flags, e.g. TRAIN_FLAGS="" (Tiny-ONN, train's default) or "--copies 8".
STAGE ?= runs/stage
STAGE_SECONDS ?= 6000
INIT ?=
DEVICE ?= auto
TRAIN_FLAGS ?= --arch dense --loops 2
train-stage: $(STAMP)
	$(ONNARC) train --out $(STAGE) --size base --source arc1-train-nodev --source arc2-train-new --seconds $(STAGE_SECONDS) \
		--steps 1000000 --checkpoint-every 200 --device $(DEVICE) $(if $(INIT),--init $(INIT)) $(TRAIN_FLAGS)

# Ship a finished training run as the default checkpoint (weights, config, provenance; no optimizer state).
RUN ?= runs/default
ship: $(STAMP)
	$(PY) -c "from onn_arc.checkpoint import export_weights; export_weights('$(RUN)/checkpoint', 'checkpoints/default')"

bench-model: $(STAMP)
	$(PY) bench/model.py

bench-optim: $(STAMP)
	$(PY) bench/optim.py

bench-fit: $(STAMP)
	$(PY) bench/fit.py

bench-solve: $(STAMP)
	$(PY) bench/solve.py

# Does dynamic sparsity emerge? Fitting a few tasks, gate-loss forms at equal time (about 1.5 hours on 2 cores).
bench-sparsity: $(STAMP)
	$(PY) bench/sparsity.py

# Training and solving ablations on one budget and subset (small preset; about an hour on 2 cores; resumable).
ablations: $(STAMP)
	$(PY) bench/ablations.py

# Solve-time colour augmentations (all colours, input colours only, ...) on the 80 dev tasks, split by new colour (~20 min an arm; resumable).
bench-colours: $(STAMP)
	$(PY) bench/colours.py

# Search at test time: views {6, 16, 32} x sampler {greedy, dfs} x ranking {votes, poe} on the 80 dev tasks, one
# test-time training and one decode per task shared by the arms (hours; resumable).
bench-search: $(STAMP)
	$(PY) bench/search.py

# Training recipes at equal CPU (one code per task vs codes per augmented copy), 2 h each from scratch, scored on the 80 dev tasks (hours; resumable).
bench-recipes: $(STAMP)
	$(PY) bench/recipes.py

# The training-length curve of the shipped recipe: stages chained with --init, each scored on dev tasks (hours; resumable).
curve: $(STAMP)
	$(PY) bench/curve.py

clean:
	rm -rf $(VENV) build *.egg-info
