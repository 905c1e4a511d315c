"""The Dash dashboard on the production model (``powerpipe dashboard``; ``app:server`` for WSGI).

One module per concern; only ``layout`` and ``app`` import Dash:

- ``store``: the store and model the dashboard reads, ``check_store`` / ``open_client``, the run command hint
- ``production_model``: ``ServingModel`` and ``ProductionModelCache`` (alias polling, predictions once per version)
- ``shown_data``: which data file the model is shown on
- ``windows``: the picker's dates as a window, the slice of data, the recorded-vs-predicted figure
- ``runs``: the pipeline runs page's rows
- ``artifacts``: which artifacts are linked and served, and fetching one
- ``layout``: the pages; ``app``: the app, its callbacks, the artifact route, the command line
"""
