# membench — `make help` lists the targets. On a fresh machine: `make bench`, then `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Which default sweep `make bench` runs: default_gpu where CUDA is visible, default_cpu otherwise.
SWEEP ?= $(shell $(PY) -c "import torch; print('default_gpu' if torch.cuda.is_available() else 'default_cpu')" 2>/dev/null || echo default_cpu)
ARGS ?=

.PHONY: help setup bench test test-gpu report lint gate gate-update notebooks publish clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# torch for a CPU machine: the one place it is pinned (the version the CPU baseline was measured with)
TORCH_CPU ?= torch==2.13.0
# every other package at the version the CPU baseline was measured with
CONSTRAINTS ?= results/baselines/cpu-constraints.txt

setup: $(STAMP) ## create .venv and install the project editable (torch only when it is not importable)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@if python3 -c "import torch" 2>/dev/null; then \
	  echo "torch found on python3: the venv reuses it (--system-site-packages)"; \
	  python3 -m venv --system-site-packages $(VENV); \
	else \
	  python3 -m venv $(VENV); \
	  $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU) \
	    || $(PY) -m pip install -q $(TORCH_CPU) --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	@touch $@

bench: $(STAMP) ## run the default sweep for this machine (CPU or GPU sized), print the table, write the report
	$(PY) -m harness.run sweep=$(SWEEP) $(ARGS)

# two workers (pytest-xdist): most of the suite's time is drills that start job processes and wait on them
test: $(STAMP) ## CPU tests (fast; GPU tests skip without CUDA)
	$(PY) -m pytest -q -n 2 $(ARGS)

test-gpu: $(STAMP) ## only the tests marked gpu (run on a GPU host)
	$(PY) -m pytest -q -m gpu $(ARGS)

report: $(STAMP) ## tables and plots from every rows file under results/
	$(PY) -m harness.aggregate results $(ARGS)

lint: $(STAMP) ## ruff
	$(PY) -m ruff check harness methods kernels tests

clean: ## remove run folders (committed results stay)
	rm -rf results/runs

GATE_ROWS := results/runs/gate_cpu/rows.jsonl
gate: $(STAMP) ## rerun the CPU gate sweep and compare with results/baselines/cpu.csv; check committed GPU rows too
	$(PY) -m harness.run sweep=gate_cpu run.force=true
	$(PY) -m harness.gate check --rows $(GATE_ROWS) --baseline results/baselines/cpu.csv
	@for b in results/baselines/*.csv; do g=$$(basename $$b .csv); [ "$$g" = cpu ] && continue; \
	  rows=$$(ls results/$$g/*.rows.jsonl 2>/dev/null); [ -z "$$rows" ] && continue; \
	  $(PY) -m harness.gate check --rows $$rows --baseline $$b || exit 1; done

gate-update: $(STAMP) ## rerun the CPU gate sweep and rewrite results/baselines/cpu.csv (prints the diff)
	$(PY) -m harness.run sweep=gate_cpu run.force=true
	$(PY) -m harness.gate update --rows $(GATE_ROWS) --baseline results/baselines/cpu.csv

notebooks: $(STAMP) ## execute the notebooks on the committed rows, rendering their PNGs into results/figures/
	@for nb in notebooks/*.ipynb; do echo "running $$nb"; \
	  $(PY) -c "import sys, nbformat; from nbclient import NotebookClient; nb = nbformat.read(sys.argv[1], 4); NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': 'notebooks'}}).execute()" $$nb || exit 1; done

publish: $(STAMP) ## copy a sweep's rows into the committed results: make publish SWEEP=default_gpu DEVICE=h100
	@test -n "$(SWEEP)" -a -n "$(DEVICE)" || { echo "usage: make publish SWEEP=<sweep> DEVICE=<cpu|h100|...>"; exit 2; }
	mkdir -p results/$(DEVICE)
	cp results/runs/$(SWEEP)/rows.jsonl results/$(DEVICE)/$(SWEEP).rows.jsonl
	$(PY) -m harness.aggregate results/$(DEVICE)/$(SWEEP).rows.jsonl
