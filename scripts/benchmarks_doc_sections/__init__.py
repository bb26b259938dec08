"""The sections of docs/benchmarks.md, one module per family of result files, and the helpers they share.

scripts/benchmarks_doc.py puts them in page order and writes the page; it puts scripts/ on sys.path
first, because scripts/ is not a package and the entry point is also loaded by path (tests/test_docs.py).
"""
