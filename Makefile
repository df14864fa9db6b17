# eleos-shim: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Rebuild the C core when any of its sources changes.
NATIVE := $(wildcard */_native/*.c */_native/*.h */_native/*.cdef */_native/*_build.py eleos_shim/include/*.h)

.PHONY: setup system-deps demo test bench calibrate conformance clean

$(STAMP): pyproject.toml setup.py $(NATIVE)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $@

setup: $(STAMP)

# Debian's memcached and memcaslap (libmemcached-tools): the reference server and the
# paper's load generator.
system-deps:
	@bash scripts/install-system-deps.sh

demo: setup system-deps
	$(PY) benchmarks/kvstore.py --demo

test: setup system-deps
	$(PY) -m pytest -q --durations=15

bench: setup system-deps
	$(PY) benchmarks/run_all.py

# CPython's own tests for the routed modules, plain vs sgx vs eleos (minutes; see README).
conformance: setup
	$(PY) scripts/conformance.py --json results/conformance.json

calibrate: setup
	$(PY) -m eleos_shim calibrate

clean:
	rm -rf $(VENV) build *.egg-info */_native/_*.c */_native/*.so */_native/*.o .pytest_cache results
