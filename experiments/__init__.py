"""Evaluation experiments of cloak (run from a checkout: ``uv run python -m experiments.run``).

The logic lives in :mod:`cloak.evaluation` (``experiment``, ``pipelines``,
``report``); this package is the Hydra entry point and the saved results.
"""
