# rppnets: `make reproduce` regenerates the Fashion-MNIST figure; `make test` runs the tests. `make help` lists all.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
# The Python the targets use: .venv (made by `make setup`), or the conda environment of environment.yml while it
# is active (`conda activate rppnets`), or any interpreter named on the command line: `make test PY=python`.
ifeq ($(CONDA_DEFAULT_ENV),rppnets)
PY := $(CONDA_PREFIX)/bin/python
else
PY := $(VENV)/bin/python
endif
ARGS ?=
EPOCHS ?= 30
SEEDS ?= 1
LAUNCHER ?=
# W&B writes runs locally unless you ask otherwise (`make reproduce WANDB_MODE=online`); upload with `wandb sync`.
export WANDB_MODE ?= offline

SWEEP := outputs/fashion_mnist_plot/epochs$(EPOCHS)-seeds$(SEEDS)
QUICK_SWEEP := outputs/fashion_mnist_plot_quick
SWEEP_ARGS = -m experiment=fashion_mnist_plot trainer.max_epochs=$(EPOCHS) 'seed=range(0,$(SEEDS))' \
	$(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ARGS)
# frontier and controls default to 3 seeds (`make frontier SEEDS=1` for one); expanded when their recipes run
frontier frontier30 controls: SEEDS = 3
FRONTIER_SWEEP = outputs/frontier/seeds$(SEEDS)
FRONTIER30_SWEEP = outputs/frontier30/seeds$(SEEDS)
CONTROLS_SWEEP = outputs/controls/seeds$(SEEDS)

.PHONY: tuned-frontier chaos help setup install-into-py data train test test-all test-fast reproduce reproduce-quick frontier frontier30 controls bench clean clean-outputs

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  variables: ARGS='...' (train; reproduce: extra overrides), EPOCHS=$(EPOCHS) SEEDS=$(SEEDS) LAUNCHER=$(LAUNCHER) (sweeps), PY=$(PY)"

ifeq ($(PY),$(VENV)/bin/python)
STAMP := $(VENV)/.installed-stamp
else
STAMP := install-into-py
endif
setup: $(STAMP)  ## install the project into .venv (made here) or into PY's environment; skipped when done

$(VENV)/.installed-stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(PY) -c "from rppnets.layers import cpu_kernels; cpu_kernels.kernel()"  # compile the C++ kernels once (~30 s)
	touch $@

install-into-py:  # another environment (conda, PY=...): pip install -e unless it already imports this checkout
	@$(PY) -c "import sys, pathlib, rppnets; here = pathlib.Path('src/rppnets').resolve(); \
		sys.exit(pathlib.Path(rppnets.__file__).resolve().parent != here)" 2>/dev/null \
		|| $(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'

data: setup  ## find Fashion-MNIST (data/, then Debian's package) and check it; download into data/ if nowhere
	$(PY) -m rppnets.data

train: setup  ## one run: make train ARGS='model=rpp model.k=100'
	$(PY) src/train.py $(ARGS)

# Two workers, each taking whole test files (a file's fixtures are made once): the end-to-end tests wait on their
# subprocesses and on SLURM as much as they compute, so two at a time take 11 to 13 minutes here instead of 18
# (three: 14, the two cores oversubscribed).
TEST_WORKERS ?= 2

test: setup  ## the test suite (CPU): unit, end-to-end, fault and chaos tests (make test TEST_WORKERS=1: one at a time)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not long"

# The tests marked long too: more signals and stop points of the faults make test provokes once, 4 chaos rounds, the
# fused Triton kernels in the interpreter (minutes). Over CI's 20 minutes on 2 cores, so not in make test.
test-all: setup  ## every test, the long ones too (about twice make test's time)
	CHAOS_ROUNDS=$${CHAOS_ROUNDS:-4} $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup  ## the tests that take seconds
	$(PY) -m pytest -q -m "not slow"

# A sweep with a failed job exits 1: the memory measurement and the report still run, then that status is kept.
reproduce: setup data  ## the figure: 5 networks x SEEDS seeds x EPOCHS epochs, then the report
	$(PY) src/train.py $(SWEEP_ARGS) hydra.sweep.dir=$(SWEEP); s=$$?; \
	$(PY) -m rppnets.analysis.memory --sweep $(SWEEP) && $(PY) -m rppnets.analysis.report $(SWEEP) && \
	echo "Results: $(SWEEP)/report (figure.png, curves.csv, summary.md); runs and W&B files: $(SWEEP)/*/" && exit $$s

reproduce-quick: setup data  ## the same chain with 2 epochs on 5,000 images (a few minutes)
	$(PY) src/train.py $(SWEEP_ARGS) hydra.sweep.dir=$(QUICK_SWEEP) trainer.max_epochs=2 \
		data.train_size=5000 data.val_size=1000; s=$$?; \
	$(PY) -m rppnets.analysis.memory --sweep $(QUICK_SWEEP) && $(PY) -m rppnets.analysis.report $(QUICK_SWEEP) && \
	echo "Results: $(QUICK_SWEEP)/report (figure.png, curves.csv, summary.md)" && exit $$s

frontier: setup data  ## accuracy against parameters: RPP, dense, hashed, low-rank over k (SEEDS=3 seeds)
	$(PY) src/train.py -m experiment=frontier 'seed=range(0,$(SEEDS))' hydra.sweep.dir=$(FRONTIER_SWEEP) \
		$(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)); s=$$?; \
	$(PY) -m rppnets.analysis.frontier_report $(FRONTIER_SWEEP) && exit $$s

frontier30: setup data  ## the frontier at k = 10 and 100 trained 30 epochs, with per-epoch curves (SEEDS=3 seeds)
	$(PY) src/train.py -m experiment=frontier30 'seed=range(0,$(SEEDS))' hydra.sweep.dir=$(FRONTIER30_SWEEP) \
		$(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)); s=$$?; \
	$(PY) -m rppnets.analysis.frontier_report $(FRONTIER30_SWEEP) && exit $$s

controls: setup data  ## the permutation controls: identity, random, stored (SEEDS=3 seeds)
	$(PY) src/train.py -m experiment=controls 'seed=range(0,$(SEEDS))' hydra.sweep.dir=$(CONTROLS_SWEEP) \
		$(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)); s=$$?; \
	$(PY) -m rppnets.analysis.frontier_report $(CONTROLS_SWEEP) --by permutation && exit $$s

# Each method at its own learning rate (experiments/tuned_frontier/README.md): a search per network and k
# (hparams_search=lr: 16 trials of 5 epochs on the validation loss), then 30 epochs x SEEDS at the best one, then the
# report. Rerunning continues: finished trials and runs are kept, stopped ones resume.
tuned-frontier: SEEDS = 3
TUNED_NETWORKS ?= dense_matched lowrank rpp rpp_signed hashed
TUNED_KS ?= 10 100
TUNED := outputs/tuned_frontier
tuned-frontier: setup data  ## the frontier at each method's best learning rate: searches, then 30-epoch runs (hours)
	s=0; for k in $(TUNED_KS); do for net in $(TUNED_NETWORKS); do \
		$(PY) src/train.py -m hparams_search=lr network=$$net model.k=$$k hydra.sweep.dir=$(TUNED)/search/$$net-k$$k \
			$(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) || s=1; done; done; \
	for k in $(TUNED_KS); do for net in $(TUNED_NETWORKS); do \
		best=$$($(PY) -m rppnets.records.best_params $(TUNED)/search/$$net-k$$k) && \
		$(PY) src/train.py -m experiment=frontier30 network=$$net model.k=$$k $$best 'seed=range(0,$(SEEDS))' \
			hydra.sweep.dir=$(TUNED)/final/$$net-k$$k $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) || s=1; done; done; \
	$(PY) -m rppnets.analysis.frontier_report $(TUNED)/final && exit $$s

bench: setup data  ## pipeline and RPP-layer benchmarks, the step against its three products (ratios side by side)
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/rpp_layer.py
	$(PY) benchmarks/matmul_floor.py

# The widest MLP each method trains here: state, step peak and step time measured at widths doubling from 1,000,
# each point in its own process, until the memory check refuses a width or a step takes over the time budget.
# Rerunning continues (points already in the CSV are skipped). Record: experiments/width_limit/README.md.
WIDTH_LIMIT_OUT ?= outputs/width_limit
.PHONY: width-limit
width-limit: setup  ## the widest network each method trains on this machine (memory, step time; about 2 hours)
	$(PY) -m rppnets.analysis.width_limit --out $(WIDTH_LIMIT_OUT) $(ARGS)

clean:  ## remove caches (keeps outputs/, data/ and .venv)
	rm -rf .pytest_cache .hypothesis
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +

clean-outputs:  ## delete every run and sweep in outputs/: make clean-outputs CONFIRM=yes
	@if [ "$(CONFIRM)" != yes ]; then du -sh outputs/* 2>/dev/null; \
		echo "This deletes all of the above. To go ahead: make clean-outputs CONFIRM=yes"; exit 1; fi
	rm -rf outputs/*

ROUNDS ?= 100
SEED ?= 0
# Each fault is aimed at a phase of the job's life and must land while it runs (else its round is drawn again); the
# run ends with a table of the faults by kind and by the phase they landed in, passed and failed.
chaos: setup  ## faults in every phase of a small real job (kills, signals, damaged files, a full disk): ROUNDS=500
	$(PY) tests/chaos.py --rounds $(ROUNDS) --seed $(SEED) --work outputs/chaos

# Mutation testing (experiments/mutation/README.md): mutmut changes one thing at a time in the functions whose
# results reach a figure, a table or a run's records, and runs the fast tests that cover it; a mutant that no test
# notices survives. Functions are picked by mutmut's mutant names (module.x_function__mutmut_N, or
# module.xǁClassǁmethod__mutmut_N); `MUTATE='rppnets.data.*'` picks others. One name per module group:
MUTATE_MODELS := 'rppnets.models.x_count_*' 'rppnets.models.x_rpp_trainable__*' 'rppnets.models.x_dense_trainable__*'
MUTATE_REPORT := 'rppnets.analysis.report_data.x*'
MUTATE_JOBS := 'rppnets.records.jobs.x*'
MUTATE_DATA := 'rppnets.data.batches.x*InMemoryBatches*' 'rppnets.data.idx.x_load_split__*' \
	$(foreach f,setup train_dataloader val_dataloader test_dataloader state_dict,'rppnets.data.datamodule.x*InMemoryDataModule*$(f)__*')
MUTATE_RUN_FOLDER := 'rppnets.records.run_folder.x*'
# the run's identity and where it resumes (train()'s Lightning fit itself is left to tests/test_faults.py)
MUTATE_PIPELINE := $(foreach f,config_hash _resolved_anywhere run_hash experiment_hash model_name run_name data_sizes \
	check_config _resume_point,'rppnets.training.pipeline.x_$(f)__*')
MUTATE_RESUME := 'rppnets.training.resume.x*'
# what needs no Lightning fit: the writer, the write error, the signals, reading a checkpoint, requeueing, random states
MUTATE_CHECKPOINTING := $(foreach c,AtomicCheckpointIO StopSignals RandomStates Preempted,\
	'rppnets.training.checkpointing.x*$(c)*') $(foreach f,_write_error read_checkpoint checkpoint_progress \
	requeue_slurm_job,'rppnets.training.checkpointing.x_$(f)__*')
MUTATE_HISTORY := 'rppnets.training.history.x*'
MUTATE_LOGGERS := 'rppnets.training.loggers.x*'
MUTATE_CLASSIFIER := 'rppnets.training.classifier.x*'
MUTATE_RESOURCES := 'rppnets.resources.x*'
MUTATE_SLURM := 'hydra_plugins.rppnets_slurm.slurm_launcher.x*'
# the grid's summary and table (not the measuring subprocesses)
MUTATE_WIDTH_LIMIT := $(foreach f,model_config default_widths midpoint measured_bytes read_rows append_row _fmt_bytes \
	limits stop_reason summary_markdown,'rppnets.analysis.width_limit.x_$(f)__*')
MUTATE_PERMUTATION := $(foreach f,_mix _absorb round_keys feistel_bits round_shape _feistel permuted_rows index_dtype \
	build_index random_index,'rppnets.layers.permutation.x_$(f)__*')
MUTATION_CHILDREN ?= 1  # mutmut's workers; one leaves a core to the rest of the machine
MUTATE ?= $(MUTATE_MODELS) $(MUTATE_REPORT) $(MUTATE_JOBS) $(MUTATE_DATA) $(MUTATE_RUN_FOLDER) $(MUTATE_PIPELINE) \
	$(MUTATE_RESUME) $(MUTATE_CHECKPOINTING) $(MUTATE_HISTORY) $(MUTATE_LOGGERS) $(MUTATE_CLASSIFIER) \
	$(MUTATE_RESOURCES) $(MUTATE_SLURM) $(MUTATE_WIDTH_LIMIT) $(MUTATE_PERMUTATION)

.PHONY: mutation
mutation: setup  ## mutation testing of split, run records, resume, counts, report and P (mutmut, hours; not in CI)
	RPPNETS_CPU_KERNELS=0 OMP_NUM_THREADS=1 WANDB_MODE=disabled $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTATE)
	$(VENV)/bin/mutmut results
