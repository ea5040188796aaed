# Two entry points (README quick start): `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/verify: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,train,cluster]'
	touch $(BIN)/verify

.PHONY: setup demo test bench
setup: $(BIN)/verify

demo: setup
	$(BIN)/verify models/digits_mlp.onnx --eps 0.05 --limit 20 --method pgd,ibp,dual,lp,milp

test: setup
	$(BIN)/python -m pytest tests

bench: setup
	$(BIN)/python benchmarks/bounds.py ../shared/benchmarks
