# The two set-up commands of the README: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
# On a CUDA machine: make demo TORCH='torch>=2.5'. The pinned CPU wheel keeps pip from pulling a multi-GB CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
DEMO_MINUTES ?= 3

.PHONY: install demo test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/alrt train --preset cpu --max-minutes $(DEMO_MINUTES) --out-dir $(DEMO_DIR)
	$(BIN)/alrt quantize $(DEMO_DIR)/best.pt --budget 16MB --out $(DEMO_DIR)/model.alrt --eval
	$(BIN)/alrt eval $(DEMO_DIR)/model.alrt --sliding --stride 64
	$(BIN)/alrt generate $(DEMO_DIR)/model.alrt --prompt "ROMEO." --max-new-tokens 120 --seed 0

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
