"""Optuna studies whose trials are notebook executions (``study``)."""
