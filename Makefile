# Kata Lab. `make run KATA=<kata>` and `make test` are the two commands of the README; both set up first.
.DEFAULT_GOAL := help
KATA ?=
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: help setup run test test-unit test-integration test-chaos lint format check bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup:  ## install Debian packages, .venv and node tools (idempotent)
	@./scripts/setup.sh

run: setup  ## start a kata natively: make run KATA=siem
	@test -n "$(KATA)" || { echo "usage: make run KATA=<kata>   (see: $(VENV)/katas list)"; exit 2; }
	$(VENV)/katas up $(KATA)

test: setup lint  ## lint, then unit, integration, chaos and short NFR tests on real servers
	$(VENV)/python -m pytest $(PYTEST_ARGS)

test-unit: setup  ## only the tests that need no server
	$(VENV)/python -m pytest -m unit $(PYTEST_ARGS)

lint: setup  ## ruff check, ruff format --check, mypy
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

format: setup  ## apply ruff's fixes and formatting
	$(VENV)/ruff check --fix .
	$(VENV)/ruff format .

bench: setup  ## raw throughput of each native server on this machine
	$(VENV)/katas bench infra

clean:  ## stop nothing, delete run directories and reports
	rm -rf .katas reports
