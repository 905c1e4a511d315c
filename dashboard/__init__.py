"""The Dash dashboard on the production model (``python dashboard/app.py``; ``server`` for WSGI)."""
