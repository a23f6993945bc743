"""Reproducible benchmarks, run as modules from the repository root
(``python -m benchmarks.tokenizer``); see benchmarks/README.md."""
