# The two commands: `make run` serves on $PORT (default 8080); `make test` sets up and runs every test.
.PHONY: run test setup lint bench

run:
	scripts/run.sh

setup:
	scripts/install.sh --test

test: setup
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check lib devkit tests bench
	.venv/bin/mypy

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done
