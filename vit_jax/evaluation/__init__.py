"""Evaluation: top-1 / top-5 of a model or a workdir on an eval split."""
