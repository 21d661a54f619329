"""One executor interface, several backends, one registry keyed by name.

A backend imports its heavy library (simpy, mpi4py, torch) inside its own
module only, so ``executors`` imports cheaply and ``is_available()`` can say
whether a backend can run here without failing on import.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Callable

from simcore.result import RunResult


class Executor(ABC):
    name: str = ""

    @abstractmethod
    def run(self, scenario) -> RunResult:
        """Run ``scenario`` and return one record per operation per rank."""

    @classmethod
    def is_available(cls) -> bool:
        return True

    @classmethod
    def unavailable_reason(cls) -> str:
        return ""


# name -> "module:Class", imported on first use.
_REGISTRY: dict[str, str] = {
    "sim": "executors.simulated:SimulatedExecutor",
    "mpi": "executors.mpi:MPIExecutor",
    "torch": "executors.torchdist:TorchExecutor",
}


def register(name: str, target: str | Callable) -> None:
    _REGISTRY[name] = target


def backends() -> list[str]:
    return sorted(_REGISTRY)


def get_executor(name: str, **options) -> Executor:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(backends())}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    if not target.is_available():
        raise RuntimeError(f"backend {name!r} cannot run here: {target.unavailable_reason()}")
    return target(**options)
