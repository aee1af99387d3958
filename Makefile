# Two commands do all the set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?=

.PHONY: demo test test-slow lint bench bench-loader bench-profile bench-trace bench-step bench-tta bench-memory bench-ops bench-errors bench-cli bench-lr-find bench-flops bench-index fuzz clean

# (Re)install only when pyproject.toml changed, so later runs start at once.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pipetrace demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)  # the multi-process runs: torchrun, failures, resumes (about 90 s); CI runs them too
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests bench fuzz

bench: bench-loader bench-profile bench-trace bench-step bench-memory bench-ops bench-tta bench-errors bench-cli bench-lr-find bench-flops bench-index

bench-loader: $(STAMP)
	$(BIN)/python bench/loader.py $(DATA)

bench-profile: $(STAMP)
	$(BIN)/python bench/profile_loader.py $(DATA)

bench-trace: $(STAMP)
	$(BIN)/python bench/trace_overhead.py $(DATA)

bench-step: $(STAMP)
	$(BIN)/python bench/train_step.py $(DATA)

bench-memory: $(STAMP)
	$(BIN)/python bench/memory.py $(DATA)

bench-ops: $(STAMP)
	$(BIN)/python bench/trace_ops.py

bench-cli: $(STAMP)
	$(BIN)/python bench/cli_start.py

bench-tta: $(STAMP)
	$(BIN)/python bench/time_to_accuracy.py $(DATA)

bench-errors: $(STAMP)
	$(BIN)/python bench/label_errors.py $(DATA)

bench-lr-find: $(STAMP)
	$(BIN)/python bench/lr_find_cifar.py $(DATA)

bench-flops: $(STAMP)
	$(BIN)/python bench/flops.py

bench-index: $(STAMP)
	$(BIN)/python bench/index_start.py

# Coverage-guided fuzzing of stage 1 (atheris); `make test` runs the short hypothesis version.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[fuzz]'
	mkdir -p fuzz/artifacts
	$(BIN)/python fuzz/fuzz_load.py -max_total_time=$(FUZZ_SECONDS) -timeout=20 -artifact_prefix=fuzz/artifacts/

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
