# l2o-pipeline: everything installs from this file, pyproject.toml and uv.lock.
#   make run    set up (if needed) and run the default pipeline (params/default.yaml)
#   make test   set up (if needed) and run the tests
PYTHON ?= python3
VENV   := .venv
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
PARAMS ?= params/default.yaml
# test workers (pytest-xdist): one per core, at most 4; TEST_WORKERS=0 runs the tests in this process
TEST_WORKERS ?= auto

export UV_COMPILE_BYTECODE := 1
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup run test browser repro ui lint clean-venv

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.9,<1"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

setup: $(VENV)/.synced

run: setup
	$(VENV)/bin/l2o run --params $(PARAMS)

test: setup browser
	$(VENV)/bin/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile --no-loadscope-reorder

# the report's browser test drives Debian's Chromium (tests/browser.py): install it when missing
browser:
	@command -v chromium >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# dvc repro runs each stage's cmd (`l2o stage ...`) in a shell: put the venv first on PATH
repro: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

ui: setup
	$(VENV)/bin/l2o ui

lint: setup
	$(VENV)/bin/ruff check components flows tests

clean-venv:
	rm -rf $(VENV) $(TOOLS)
