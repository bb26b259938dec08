"""LibriSpeech recipe: prepare from a local copy with lhotse, BPE-500, train S/M/L, decode."""
