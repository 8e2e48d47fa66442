"""Offline lm-eval tasks: dataset builders (functions of the source text alone) and their atomic, versioned \
on-disk store."""
