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

# Two workers, each running whole groups in file order: the tests that use a session Ray instance or rollout
# pair form two lanes, queued first so each worker starts on one; every other module is a group of its own
# and fills in beside them (tests/conftest.py).
XDIST := -n 2 --dist loadgroup --no-loadscope-reorder

test: venv
	$(PY) -m pytest $(XDIST) $(ARGS)

test-fast: venv
	$(PY) -m pytest $(XDIST) -m "not slow" $(ARGS)

clean-venv:
	rm -rf $(VENV)
