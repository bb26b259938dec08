# The README's two commands: `make run` (the main job) and `make test` (the test suite).
# Both set up .venv on first use (scripts/setup_env.sh) and are fast the second time.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup tools run test bench clean

setup:
	@VENV=$(VENV) bash scripts/setup_env.sh

# espeak-ng and sox for the synthetic recipe (apt-get, needs root). Outside CI a failure only
# makes the recipe tests skip with that message; in CI (CI=true) those tests fail instead.
tools:
	@bash recipes/synthetic/ensure_tools.sh || echo "warning: espeak-ng/sox missing; the synthetic recipe will not run"

# The main job: Zipformer-M parameter/FLOP tables against the paper and a forward timing, then the
# synthetic ASR recipe end to end (espeak-ng corpus -> train -> modified beam search -> WER), then
# the same corpus with a causal (streaming) model: WER with full context, simulated and real
# streaming, latency and streaming real-time factor (recorded in bench/results/<device>/).
run: setup tools
	$(PY) scripts/main.py
	$(PY) -m recipes.synthetic.run --device auto
	$(PY) -m recipes.synthetic.run --causal --device auto --record auto

test: setup tools
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/encoder_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
