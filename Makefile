# The two commands of the README:
#   make run   - set up (venv, install) and run the main job on the embedded default config
#   make test  - set up, lint (ruff, mypy), then run the whole test suite (.ci/run calls exactly this)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CONFIG  ?= configs/quickstart.yaml
STAMP   := $(VENV)/.fedsim-setup

.PHONY: setup run lint test test-fast bench data clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

run: setup
	$(BIN)/fedsim run $(CONFIG)

# ruff and mypy read their settings from pyproject.toml ([tool.ruff], [tool.mypy])
lint: setup
	$(BIN)/ruff check . && $(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e"

bench: setup
	$(BIN)/python benchmarks/engine_overhead.py

# Fashion-MNIST from Debian's dataset-fashion-mnist (docs/datasets.md): nothing to do where the
# package is installed; otherwise the .deb is fetched with apt-get download (no root needed)
# and its four IDX files are unpacked into $(FASHION_DIR), where fedsim looks for them.
FASHION_DIR ?= $${FEDSIM_CACHE:-$$HOME/.cache/fedsim}/datasets/fashion-mnist

data:
	@if ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1; then \
	  echo "Fashion-MNIST: installed by dataset-fashion-mnist in /usr/share/datasets/fashion-mnist"; \
	elif ls $(FASHION_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
	  echo "Fashion-MNIST: already in $(FASHION_DIR)"; \
	else \
	  tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  (cd "$$tmp" && apt-get download dataset-fashion-mnist) || \
	    { echo "apt-get download dataset-fashion-mnist failed (run apt-get update; Debian bookworm or later)"; exit 1; }; \
	  dpkg-deb -x "$$tmp"/dataset-fashion-mnist_*.deb "$$tmp/root" && mkdir -p $(FASHION_DIR) && \
	  cp "$$tmp"/root/usr/share/datasets/fashion-mnist/*-ubyte.gz $(FASHION_DIR)/ && \
	  echo "Fashion-MNIST: IDX files in $(FASHION_DIR)" && ls -l $(FASHION_DIR); \
	fi

clean:
	rm -rf $(VENV) runs .pytest_cache
