"""Errors of the algorithms: bad options or infeasible targets, reported by the CLI as one line."""


class MethodError(ValueError):
    """A method cannot run with these inputs (infeasible sparsity, bad option, unsupported model)."""
