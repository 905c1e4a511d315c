"""A pipeline run assembled and driven: ``session`` checks and sets it up, ``pipeline`` is the stage
order, ``stages`` the process/promote/report stages, ``step_runner`` one step, ``recorder`` the parent run
and summary.json, ``stagewise`` a run driven one process per stage, ``runlock`` one run per outputs folder,
``reproduce`` and ``project_run`` single executions."""
