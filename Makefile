# auxilia: `make demo` trains the default run; `make test` runs the test suite (docs included).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test docs install install-test lint bench bench-cds bench-kd bench-semi clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[test,docs]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/auxilia train configs/demo.yaml --overwrite

test: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --no-cache --no-logo  # the layers and no cycles ([tool.importlinter])
	$(BIN)/mkdocs build --strict  # not --quiet: it hides the warnings strict counts
	$(BIN)/python -m pytest -q

# the documentation site into site/ (mkdocs.yml; warnings are errors)
docs: install-test
	$(BIN)/mkdocs build --strict

lint: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --no-cache --no-logo

bench: install
	$(BIN)/python benchmarks/bench_engine.py

# semi-supervised methods on digits and MNIST with 100 labels (~45 min on 2 cores, resumable)
bench-semi: install
	$(BIN)/auxilia compare benchmarks/sweeps/semi_digits.yaml
	$(BIN)/auxilia compare benchmarks/sweeps/semi_mnist.yaml
	$(BIN)/python benchmarks/semi_tables.py runs/bench/semi_digits runs/bench/semi_mnist

# the CDS family on CIFAR-10 at CPU scale (~1 h on 2 cores, resumable), then its README table
bench-cds: install
	$(BIN)/auxilia compare benchmarks/sweeps/cds_cifar10.yaml
	$(BIN)/python benchmarks/sweep_tables.py runs/bench/cds_cifar10

# knowledge distillation on CIFAR-10 at CPU scale: a teacher per seed, then the students
# (~40 min on 2 cores, resumable), then the README table
bench-kd: install
	$(BIN)/auxilia compare benchmarks/sweeps/kd_cifar10_teachers.yaml
	$(BIN)/python benchmarks/sweep_tables.py runs/bench/kd_cifar10_teachers
	$(BIN)/auxilia compare benchmarks/sweeps/kd_cifar10.yaml
	$(BIN)/python benchmarks/sweep_tables.py runs/bench/kd_cifar10

clean:
	rm -rf runs site .pytest_cache .ruff_cache
