# obp-workflow: two commands matter. `make demo` runs the service's main job on embedded
# defaults; `make test` installs what the tests need and runs every check.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# mypy checks the package by its import name; this link gives it `obp_workflow` -> src/.
MYPYPATH_DIR := $(VENV)/mypy-path

.PHONY: help install lint format test test-fast demo demo-slurm bench package stack-up stack-down stack-status clean

help:
	@echo "make demo    run one simulation end to end on in-memory adapters"
	@echo "make demo-slurm   the same on the test stack's Slurm (make stack-up first), over SSH"
	@echo "make test    install, lint (ruff, mypy --strict, import contracts), run all tests"
	@echo "make lint    the static checks only"
	@echo "make bench   run the benchmarks, write docs/benchmarks.md"
	@echo "make package build/lambda.zip (the Lambdas) and the image build command (README, Deployment)"
	@echo "make stack-up / stack-down   the real test peers (Slurm, sshd): needs root"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	mkdir -p $(MYPYPATH_DIR) && ln -sfn "$(CURDIR)/src" $(MYPYPATH_DIR)/obp_workflow
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy
	MYPYPATH=$(MYPYPATH_DIR) $(BIN)/mypy -p obp_workflow
	$(BIN)/lint-imports
	$(BIN)/cfn-lint deploy/template.yaml
	$(BIN)/hadolint deploy/Dockerfile

format: install
	$(BIN)/ruff check --fix src tests bench deploy
	$(BIN)/ruff format src tests bench deploy

# The real peers are started for the tests and stopped after them, unless they were already up.
test: lint
	@if bash scripts/stack/status.sh > /dev/null 2>&1; then started=0; \
	else bash scripts/stack/up.sh || exit 1; started=1; fi; \
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/pytest; status=$$?; \
	if [ $$started = 1 ]; then bash scripts/stack/down.sh; fi; \
	exit $$status

stack-up:
	bash scripts/stack/up.sh

stack-down:
	bash scripts/stack/down.sh

stack-status:
	bash scripts/stack/status.sh

test-fast: install
	$(BIN)/pytest -x -q

demo: install
	$(BIN)/obp-workflow demo

# The demo on the test stack's Slurm: the ssh-slurm cluster's settings read from its stack.env.
STACK_ENV := $(or $(OBP_STACK_DIR),/var/tmp/obp-workflow-stack)/stack.env
demo-slurm: install
	@test -r $(STACK_ENV) || { echo "error: no $(STACK_ENV): start the test stack with make stack-up" >&2; exit 2; }
	. $(STACK_ENV) && OBP_SLURM_HOST=$$OBP_STACK_SSH_HOST OBP_SLURM_PORT=$$OBP_STACK_SSH_PORT \
	  OBP_SLURM_USER=$$OBP_STACK_SIM_USER OBP_SLURM_KEY_FILE=$$OBP_STACK_SIM_KEY \
	  OBP_SLURM_HOST_KEY="$$OBP_STACK_SSH_HOST_KEY_TYPE $$OBP_STACK_SSH_HOST_KEY_BASE64" \
	  $(BIN)/obp-workflow demo --cluster ssh-slurm

bench: install
	$(BIN)/python bench/run.py

# The Lambda package (rebuilt only when pyproject.toml or src/ changed) and the image.
package: install
	$(BIN)/python deploy/package.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
