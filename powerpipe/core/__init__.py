"""The shared contract every layer relies on: paths, tag and artifact names, error types, file writes,
and the names (statuses, stages, metrics) declared once in ``constants``. Imports nothing of powerpipe."""
