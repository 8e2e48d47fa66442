"""Errors of the algorithms: bad options or infeasible targets, reported by the CLI as one line."""


class MethodError(ValueError):
    """A method cannot run with these inputs (infeasible sparsity, bad option, unsupported model)."""


class UnsupportedArchitecture(MethodError):
    """The method cannot work on this model family at all, whatever the sparsity or options.

    A bench that got the method from a group (``all``) leaves it out for this model with a note; a method
    named explicitly is refused.
    """
