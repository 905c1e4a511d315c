"""The ``powerpipe`` command (``main``): a click group with one subcommand per action; the only place that
configures logging and output."""
