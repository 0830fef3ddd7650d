"""Experiment configs (ml_collections): `--config=configs/X.py:ARG`."""
