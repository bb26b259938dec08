"""Pieces of the training loop shared by recipes/train.py and recipes/decode.py: distributed setup,
checkpoints with exact resume, model averaging, the icefall loss schedule, model construction."""
