"""Synthetic speech recipe: espeak-ng sentences from a fixed word list (see prepare.py, run.py)."""
