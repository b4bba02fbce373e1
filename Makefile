# Two commands on a fresh machine (Python >= 3.10 with its venv module):
#   make demo   the offline end-to-end demo (runs/demo/summary.{json,md,png})
#   make test   the test suite (ARGS="-m slow" or ARGS="tests/losses -x" to choose)
# Each creates the project's virtual environment (.venv) on first use and reuses it after; pip runs
# again only when pyproject.toml is newer than the last install (the stamp file .venv/.installed).
# If you manage your own environment, skip make: pip install -e ".[dev]", then clipdistill demo and
# python -m pytest.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv

demo: $(STAMP)
	$(VENV)/bin/clipdistill demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

venv: $(STAMP)

# The stamp is written last: an install that fails (no network, a wrong Python) is retried next time.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)
