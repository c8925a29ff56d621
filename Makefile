# pagellm developer commands: `make venv`, `make test`, `make serve ARGS="--model default"`.

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Rewritten whenever pyproject.toml changes, so `make venv` reinstalls only then.
VENV_STAMP := $(VENV)/.pagellm-installed
TEST_ARGS ?=
ARGS ?=

.PHONY: venv test serve

venv: $(VENV_STAMP)

# torch goes first and pinned: here `pip install torch==2.13.0` takes the local CPU build,
# while an unpinned torch pulled in by a dependency could fetch a multi-GB CUDA build.
$(VENV_STAMP): pyproject.toml
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --disable-pip-version-check torch==2.13.0
	$(VENV_PYTHON) -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

# A hung test fails after 10 minutes with its stack printed, instead of eating CI's time.
# -rs prints every skip with its reason; a skip outside the gpu marker fails the run
# (tests/helpers/skip_guard.py).
test: venv
	$(VENV_PYTHON) -m pytest -q -rs tests --timeout=600 --durations=15 $(TEST_ARGS)

serve: venv
	$(VENV_PYTHON) -m pagellm.entrypoints.cli.main serve $(ARGS)
