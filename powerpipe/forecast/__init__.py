"""What the notebooks share to forecast: data (schema, loading, OPSD), features, evaluation (splits,
backtests, metrics), model logging and serving, figures. Imports nothing of the runner: a notebook (or a
served model) needs only ``powerpipe.core`` and this package."""
