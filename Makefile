# Two commands work on a fresh machine: `make run` (the whole pipeline on the embedded toy world) and `make test`.
# Both create or reuse a virtual environment outside the clone, keyed by the lock file's hash, so a warm run
# installs nothing and a changed lock gets a fresh environment.

PYTHON ?= python3
CORES ?= 2
# GPU rules take one `gpu` slot each. With GPUs, one slot per device; without, they run on the CPU with one thread
# each, so one slot per core keeps every core busy instead of running them one at a time.
GPUS ?= $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
GPU_SLOTS ?= $(if $(filter 0,$(GPUS)),$(CORES),$(GPUS))
LOCK_HASH := $(shell sha256sum requirements.lock | cut -c1-16)
VENV ?= $(HOME)/.cache/vlselect/venv-$(LOCK_HASH)
BIN := $(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: venv run test dry-run report clean

# No prerequisite on purpose: the lock's hash is in the path, and a fresh clone's newer file time must not rebuild it.
$(VENV)/.complete:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "vlselect needs Python 3.11, found " + sys.version' 
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

# The editable install is re-pointed at this checkout every time (a second), so several clones can share one venv.
venv: $(VENV)/.complete
	@$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

run: venv
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --resources gpu=$(GPU_SLOTS)
	$(BIN)/snakemake --report results/report.html
	@$(BIN)/vlselect summary --results results

dry-run: venv
	$(BIN)/snakemake -n

report: venv
	$(BIN)/snakemake --report results/report.html

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf results .snakemake
