# The README's two commands: `make run` (the main job) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test bench clean

setup:
	@VENV=$(VENV) bash scripts/setup_env.sh

run: setup
	$(PY) scripts/main.py

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/encoder_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
