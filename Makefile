# Two commands do all the set-up (see README):
#   make run    install everything into .venv (first time: ~10 min, llama.cpp compiles) and open streamchat
#   make test   install if needed, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench screenshots clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -qq --upgrade pip
	@echo "Installing streamchat and its dependencies (the first time, llama-cpp-python compiles: ~10 min on 2 cores)…"
	@$(BIN)/python -m pip install -qq --progress-bar off -e '.[test]'
	@$(BIN)/python -m compileall -q streamchat  # an editable install compiles nothing
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@$(BIN)/python -m compileall -q streamchat  # (changed files only) bytecode: ~0.1 s off each start-up
	@$(BIN)/streamchat

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_stream.py
	$(BIN)/python benchmarks/bench_local.py
	$(BIN)/python benchmarks/bench_history.py
	$(BIN)/python benchmarks/bench_tui.py
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info
