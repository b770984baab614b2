"""Benchmarks (`olactors bench ...`): figures measured side by side in one run."""
