"""One executor interface, several backends, one registry keyed by name.

A backend imports its heavy library (simpy, mpi4py, torch) inside its own
module only, so ``executors`` imports cheaply and ``is_available()`` can say
whether a backend can run here without failing on import.

The registry is the only way to reach a backend: ``executor_class(name)``
gives its class, ``get_executor(name, **options)`` an instance.  What differs
between backends (how a job is launched, whether this process is one rank of
a job, its rank, how rank 0's decision reaches the others) is asked of the
class, never switched on by name.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, Callable

from simcore.result import RunResult


class Executor(ABC):
    name: str = ""
    # A real backend measures a machine: its results vary run to run, and two
    # runs at once disturb each other's measurements.
    real: bool = False

    @abstractmethod
    def run(self, scenario) -> RunResult | None:
        """Run ``scenario``; one record per operation per rank (None on ranks other than 0 of a job)."""

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def unavailable_reason(cls) -> str:
        return ""

    # -- jobs: backends whose ranks a launcher starts (mpiexec, srun, torchrun) --------

    @classmethod
    def inside_job(cls) -> bool:
        """True when this process is one rank of a job this backend's launcher started."""
        return False

    @classmethod
    def announced_rank(cls) -> int | None:
        """The rank the launcher announces in the environment, read without starting the
        library (to print a start-up error once); None outside a job."""
        return None

    def job_rank(self) -> int:
        """This process's rank in its job (0 outside a job)."""
        return 0

    def job_size(self) -> int | None:
        """The number of ranks of the job this process belongs to, None outside a job."""
        return None

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank of the job (``value`` itself outside a job)."""
        return value


# name -> "module:Class", imported on first use.
_REGISTRY: dict[str, Any] = {
    "sim": "executors.simulated:SimulatedExecutor",
    "mpi": "executors.real.mpi:MPIExecutor",
    "torch": "executors.real.torchdist:TorchExecutor",
}


def register(name: str, target: str | Callable) -> None:
    """Add a backend: ``target`` is an Executor class or its ``"module:Class"``."""
    _REGISTRY[name] = target


def backends(real: bool | None = None) -> list[str]:
    """Registered backend names; ``real=True`` only the real ones, ``False`` only the simulated."""
    names = sorted(_REGISTRY)
    if real is None:
        return names
    return [n for n in names if executor_class(n).real == real]


def executor_class(name: str) -> type[Executor]:
    """The class registered as ``name`` (ValueError naming the known ones otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(backends())}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return target


def get_executor(name: str, **options) -> Executor:
    cls = executor_class(name)
    if not cls.is_available():
        raise RuntimeError(f"backend {name!r} cannot run here: {cls.unavailable_reason()}")
    return cls(**options)
