"""Running one notebook: kernels on this interpreter, papermill on a warm kernel and its HTML
(``engine``), a notebook execution as one MLflow run (``tasks``), and the executors that run tasks
(``executor``: the protocol and factory; ``local``, ``dask_cluster``, ``lease``, ``waiting``)."""
