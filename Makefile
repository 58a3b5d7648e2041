# The README's two commands. Both create .venv if it is absent and install jaxvi into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

demo: $(PY)
	$(PY) -m pip install -q -e '.[demo]'
	$(PY) -m jaxvi demo

test: $(PY)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pytest -n 2 --dist loadscope -q --durations=25
