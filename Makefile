PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/cpu-quick.yaml

.PHONY: demo lint test install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e . 
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -e '.[test,export]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/python scripts/train_moving_mnist.py --config $(CONFIG)
	$(BIN)/python scripts/evaluate.py --checkpoint runs/$(basename $(notdir $(CONFIG)))/checkpoints/best.pt --json runs/$(basename $(notdir $(CONFIG)))/evaluation.json

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) runs
