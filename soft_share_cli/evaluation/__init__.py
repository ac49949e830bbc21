"""Evaluation: classification and dense per-pixel task metrics."""
