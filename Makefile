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

# Two workers, each running whole groups in file order: the tests that share the session's Ray instance
# and rollout pair are one group, every other module one of its own (tests/conftest.py).
XDIST := -n 2 --dist loadgroup

test: venv
	$(PY) -m pytest $(XDIST) $(ARGS)

test-fast: venv
	$(PY) -m pytest $(XDIST) -m "not slow" $(ARGS)

clean-venv:
	rm -rf $(VENV)
