# The two commands: `make demo` runs the main job, `make test` runs the test suite.
# Each builds .venv on first use (deploy/install.sh is a no-op when it is up to date).
VENV ?= .venv
PY := $(VENV)/bin/python
export VLLM_TARGET_DEVICE ?= cpu

.PHONY: demo test test-fast venv clean-venv

venv:
	@VENV=$(VENV) bash deploy/install.sh

demo: venv
	$(PY) -m antiphon.launch $(ARGS)

test: venv
	$(PY) -m pytest $(ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow" $(ARGS)

clean-venv:
	rm -rf $(VENV)
