# The project's verbs. `make study` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
# GPU users: make TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" (or a newer torch)
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.memostudy-installed

.PHONY: setup study test test-fast lint lab data clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev,demo]"
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name memostudy --display-name "memostudy (.venv)" >/dev/null
	touch $(STAMP)

study: $(STAMP)
	$(BIN)/memostudy data prepare demo-ct
	$(BIN)/memostudy study

test: $(STAMP)
	$(BIN)/python -m pytest -q

# everything but the end-to-end checks marked slow (papermill runs, subprocess fault and torchrun tests)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check memostudy tests benchmarks

lab: $(STAMP)
	JUPYTER_PATH=$(VENV)/share/jupyter $(BIN)/jupyter lab --allow-root

data: $(STAMP)
	$(BIN)/memostudy data prepare demo-ct
	$(BIN)/memostudy data prepare demo-mr
