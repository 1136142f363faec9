# The two commands: `make run` serves on $PORT (default 8080); `make test` sets up and runs every test.
.PHONY: run test setup lint bench fuzz

run:
	scripts/run.sh

setup:
	scripts/install.sh --test

test: setup
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

# The fuzz targets (tests/fuzz/) with many more inputs than `make test` gives them; prints, per target,
# the inputs tried and the time taken, and each finding with the input that shows it.
FUZZ_EXAMPLES ?= 500
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) .venv/bin/python -m pytest -q tests/fuzz --hypothesis-show-statistics $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check lib devkit tests bench
	.venv/bin/mypy

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done
