PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the oldest supported TensorFlow (2.15: Keras 2, numpy 1), in a virtual environment of its own
OLDEST_VENV := .venv-oldest
OLDEST_BIN := $(OLDEST_VENV)/bin
# what runs on the oldest TensorFlow: the CLI, every model format (Keras files, TF2 checkpoints, SavedModels,
# frozen graphs, TF1 checkpoints with --model), the tf-slim fixtures, the published-model corpus, the demo and the
# API inside a TF1-style process (docs/versions.md)
OLDEST_TESTS := tests/cli tests/keras tests/saved_model tests/frozen tests/graph/test_slim_recalibration.py \
	tests/test_fixtures.py tests/corpus tests/test_demo.py tests/test_tf1_process.py tests/test_versions.py \
	tests/guard/test_estimator.py
# pytest's exit code 5 (no test selected, e.g. by a PYTEST_ARGS -k that only matches in one run) is not a failure
PYTEST_NONE_SELECTED_OK = || { status=$$?; [ $$status -eq 5 ] && echo "(no test selected: $(1))" || exit $$status; }

.PHONY: demo test test-newest test-oldest test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml requirements/newest.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/newest.txt -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml requirements/newest.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements/newest.txt -e '.[test]'
	touch $@ $(VENV)/.installed

$(OLDEST_BIN)/python:
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_BIN)/pip install --quiet --upgrade pip

$(OLDEST_VENV)/.installed-test: pyproject.toml requirements/oldest.txt | $(OLDEST_BIN)/python
	$(OLDEST_BIN)/pip install --quiet -r requirements/oldest.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/ckptfix demo

# what CI runs (.ci/run): the whole suite on the newest TensorFlow, then the subset above on the oldest
test: test-newest test-oldest

test-newest: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS) $(call PYTEST_NONE_SELECTED_OK,newest TensorFlow)

test-oldest: $(OLDEST_VENV)/.installed-test
	$(OLDEST_BIN)/python -m pytest $(OLDEST_TESTS) $(PYTEST_ARGS) $(call PYTEST_NONE_SELECTED_OK,oldest TensorFlow)

# the edit loop: no subprocesses, no published-model corpus (marks in pyproject.toml, given in tests/conftest.py)
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not subprocess and not corpus" $(PYTEST_ARGS) $(call PYTEST_NONE_SELECTED_OK,test-fast)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) ckptfix-demo
