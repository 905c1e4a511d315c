"""MLflow: the store and its checks, what a notebook calls to record into its run (``store``), cache keys,
the promotion gate and registry, retention of old runs, and a search trial's notebook side (``trials``)."""
