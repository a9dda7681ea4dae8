# The two commands of the README's quickstart: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/ibllm: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: with it installed, our `torch>=2.6` range pulls nothing else.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# Stable unCLIP (diffusers) only when it installs cleanly and keeps the torch installed above (pinned
	# here: a dependency that wanted another torch, say a CUDA build, fails this step instead of replacing
	# it). The toy draws without it; the Stable unCLIP tests skip.
	$(BIN)/pip install -q -e ".[generate]" "torch==$$($(BIN)/python -c 'import torch; print(torch.__version__)')" \
		|| echo "note: the [generate] extra did not install cleanly; the Stable unCLIP tests will skip"
	touch $(BIN)/ibllm

.PHONY: setup demo test lint
setup: $(BIN)/ibllm

demo: setup
	$(BIN)/ibllm ask --audio examples/rain.wav "What do you hear?"

test: setup
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check ibllm_agent tools ui tests
