# rppnets: `make reproduce` regenerates the Fashion-MNIST figure; `make test` runs the tests. `make help` lists all.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
EPOCHS ?= 30
SEEDS ?= 1
LAUNCHER ?=
# W&B writes runs locally unless you ask otherwise (`make reproduce WANDB_MODE=online`); upload with `wandb sync`.
export WANDB_MODE ?= offline

SWEEP := outputs/fashion_mnist_plot/epochs$(EPOCHS)-seeds$(SEEDS)
QUICK_SWEEP := outputs/fashion_mnist_plot_quick
SWEEP_ARGS = -m experiment=fashion_mnist_plot trainer.max_epochs=$(EPOCHS) 'seed=range(0,$(SEEDS))' \
	$(if $(LAUNCHER),hydra/launcher=$(LAUNCHER))

.PHONY: help setup data train test test-fast reproduce reproduce-quick bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  variables: ARGS='...' (train), EPOCHS=$(EPOCHS) SEEDS=$(SEEDS) LAUNCHER=$(LAUNCHER) (reproduce)"

setup: $(STAMP)  ## create .venv and install the project (skipped when up to date)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(PY) -c "from rppnets import cpu_kernels; cpu_kernels.kernel()"  # compile the C++ kernels once (~30 s)
	touch $@

data: setup  ## fetch and verify Fashion-MNIST into data/
	$(PY) -m rppnets.data data

train: setup  ## one run: make train ARGS='model=rpp model.k=100'
	$(PY) src/train.py $(ARGS)

test: setup  ## the test suite (CPU, under 10 minutes)
	$(PY) -m pytest -q

test-fast: setup  ## the tests that take seconds
	$(PY) -m pytest -q -m "not slow"

reproduce: setup data  ## the figure: 5 networks x SEEDS seeds x EPOCHS epochs, then the report
	$(PY) src/train.py $(SWEEP_ARGS) hydra.sweep.dir=$(SWEEP)
	$(PY) -m rppnets.report $(SWEEP)
	@echo "Results: $(SWEEP)/report (figure.png, curves.csv, summary.md); runs and W&B files: $(SWEEP)/*/"

reproduce-quick: setup data  ## the same chain with 2 epochs on 5,000 images (a few minutes)
	$(PY) src/train.py $(SWEEP_ARGS) hydra.sweep.dir=$(QUICK_SWEEP) trainer.max_epochs=2 \
		data.train_size=5000 data.val_size=1000 ~callbacks.progress_bar
	$(PY) -m rppnets.report $(QUICK_SWEEP)
	@echo "Results: $(QUICK_SWEEP)/report (figure.png, curves.csv, summary.md)"

bench: setup data  ## pipeline and RPP-layer benchmarks (ratios measured side by side)
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/rpp_layer.py

clean:  ## remove outputs, W&B files and caches (keeps .venv and data/)
	rm -rf outputs/* wandb .pytest_cache .hypothesis
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
