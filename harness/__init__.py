"""prunebench's harness: everything around the pruning algorithms (CLI, data, metrics, runs, results).

The one-line reload of a pruned checkpoint::

    from harness import load_pruned; model = load_pruned("out/2ssp-25")
"""

__version__ = "0.1.0"


def load_pruned(path, **kwargs):
    """Reload a checkpoint written by ``prunebench prune`` (see harness.checkpoint)."""
    from harness.checkpoint import load_pruned as _load

    return _load(path, **kwargs)
