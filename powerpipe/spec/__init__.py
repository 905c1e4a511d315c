"""The pipeline declared as data: the pipeline file (``config``), notebooks' ``parameters`` cells and
imports (``parameterize``), the steps rendered once from both (``steps``), and the search spaces."""
