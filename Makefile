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

# Two workers: the tests that start Ray and vLLM engines run in file order on one (tests/conftest.py), the
# rest beside them on the other.
XDIST := -n 2 --dist loadgroup

test: venv
	$(PY) -m pytest $(XDIST) $(ARGS)

test-fast: venv
	$(PY) -m pytest $(XDIST) -m "not slow" $(ARGS)

clean-venv:
	rm -rf $(VENV)
