# Two commands: `make demo` (the main job) and `make test`. Both create .venv on first use.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The CIFAR-10 stand-in beside the checkout (see ../shared/datasets/README.md), unless VIRKIT_DATA is set.
export VIRKIT_DATA ?= $(if $(wildcard ../shared/datasets/cifar10-jpeg.tar.gz),$(abspath ../shared/datasets),)
export MPLBACKEND ?= Agg

.PHONY: demo gallery test test-fast test-avx2 lint venv bench clean help

help:
	@echo "make demo   - run every notebook in under 10 min: measures this machine's training speed and picks the"
	@echo "             largest demo tier (demo, demo-mid, demo-lite) expected to fit; says which, the rate and the time;"
	@echo "             figures in figures/<preset>/, executed notebooks and runs in runs/notebooks/<preset>/"
	@echo "make gallery - after make demo: its key figures into figures/gallery/ (tracked) with provenance"
	@echo "make test   - run the test suite"
	@echo "make lint   - ruff check, the import contract (lint-imports), mypy over the core and the attacks"
	@echo "make bench  - CPU benchmark (see BENCHMARKS.md)"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,dev,ray,robustbench]'
	$(PY) -m pip install -q -c constraints.txt --no-deps torchattacks
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m virkit notebooks run --jobs 2   # the largest demo tier this machine finishes in 10 minutes (measured)

gallery: $(STAMP)   # after make demo: its key figures into figures/gallery/ (tracked), with provenance
	$(PY) -m virkit notebooks gallery

# The checks CI runs before the suite (pre-commit runs the same on each commit)
lint: $(STAMP)
	$(VENV)/bin/ruff format --check virkit tests benchmarks
	$(VENV)/bin/ruff check virkit tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The suite runs on TEST_JOBS pytest-xdist workers (default 2, one per core of the CI machine); a test
# file stays on one worker (--dist loadfile) so its module fixtures are built once.
# TEST_JOBS=0 runs it in one process.
TEST_JOBS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not slow and not browser"

# the fast tests again on oneDNN's AVX2 kernels (other kernels, other rounding than AVX-512/AMX)
test-avx2: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not slow and not browser"

bench: $(STAMP)
	$(PY) benchmarks/bench.py --mode cpu

clean:
	rm -rf runs/notebooks figures/demo figures/demo-mid figures/demo-lite figures/demo-min figures/smoke figures/quick figures/tiny
