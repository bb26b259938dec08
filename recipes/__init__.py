"""Training recipes: a shared train.py / decode.py, LibriSpeech preparation, and a synthetic
espeak-ng corpus that runs the whole pipeline on any machine in minutes."""
