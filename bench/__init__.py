"""The project's benchmarks and the code only they use (not installed with zipformer_fast).

One harness serves every script: bench/harness.py (the device's name and results folder, the
timing loop and its percentiles, the writer of result files with device, versions, command and UTC
time), bench/memory.py (peak memory, bytes saved for backward), bench/flops.py (parameters and
encoder FLOPs), bench/paper.py (the paper's numbers). The models compared are in bench/models.py
(the Conformer baseline in bench/baselines/). Results go to bench/results/<device>/.

Each script runs as a file (`python bench/encoder_latency.py ...`, as documented) or as a module
(`python -m bench.encoder_latency ...`); every script writes into `--out-dir`.
"""
