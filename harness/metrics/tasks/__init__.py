"""Offline lm-eval tasks: dataset builders (pure functions) and their atomic, versioned on-disk store."""
