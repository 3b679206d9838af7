# Two commands do all set-up on a fresh machine:
#   make run    the main job on the embedded default (local storage, Prefect's ephemeral server)
#   make test   the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/demo
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: run test lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	# torch first and exact: any range lets pip fetch a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/adamllm ingest samples/biomed_pairs --domain biomed --out $(OUT)/biomed/pairs
	$(BIN)/adamllm inspect $(OUT)/biomed/pairs --rows 2

test: $(STAMP)
	$(BIN)/python -m pytest

lock: $(STAMP)
	{ echo "# Exact versions for a reproducible install: make passes this to pip as constraints."; \
	  echo "# Regenerate: make lock (after changing pyproject.toml)."; \
	  $(BIN)/pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/'; } > constraints.txt

clean:
	rm -rf $(VENV) runs
