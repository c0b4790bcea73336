# One-command set-up: every target creates/updates the local virtualenv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ONNARC := $(VENV)/bin/onn-arc

.PHONY: install test test-all run ship bench-model bench-optim bench-fit bench-solve bench-sparsity ablations bench-formats clean

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

# The main job: solve a bundled example task with the shipped checkpoint (checkpoints/default).
run: $(STAMP)
	$(ONNARC) solve data/6150a2bd.json --threads 2

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

# Training and solving ablations on one budget and subset (about an hour on 2 cores; resumable).
ablations: $(STAMP)
	$(PY) bench/ablations.py

# The format comparison: in-context vs the pair format and its parts, equal training time, scored on arc1-dev (resumable).
bench-formats: $(STAMP)
	$(PY) bench/formats.py

clean:
	rm -rf $(VENV) build *.egg-info
