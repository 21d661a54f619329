"""Executors: run a scenario's per-rank programs, simulated or for real."""
from executors.base import Executor, backends, executor_class, get_executor, register

__all__ = ["Executor", "backends", "executor_class", "get_executor", "register"]
