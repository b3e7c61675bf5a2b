PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/ckptfix demo

# the whole suite (CI: .ci/run)
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the edit loop: no subprocesses, no published-model corpus (marks in pyproject.toml, given in tests/conftest.py)
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not subprocess and not corpus" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) ckptfix-demo
