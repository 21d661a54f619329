"""The SimPy engine: flow-level network, compute, stragglers, energy."""
from simcore.result import RunResult

__all__ = ["RunResult"]
