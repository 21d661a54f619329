"""The executor of a real backend: runs a rank inside a job, or launches a job."""
from __future__ import annotations

import atexit
from abc import abstractmethod
from typing import Any

from executors.base import Executor
from executors.emulation import EmulatedNetwork, EmulationError, plan_emulation, refusal
from executors.real.analysis import refuse_aligned
from executors.real.backend import RealBackend
from executors.real.launch import launch
from executors.real.options import RealOptions, RealRunError
from executors.real.runner import run_real


class RealExecutor(Executor):
    """A real backend's executor.

    Inside a job that the backend's launcher started (mpiexec, srun, torchrun)
    it runs this process's rank; rank 0 returns the RunResult, the others
    None.  From a plain process it launches such a job itself
    (``executors.real.launch``), which ends dead or stuck runs.

    A subclass supplies how its job is launched (``launch_command``), how a
    process knows it is inside one (``inside_job``, ``announced_rank``), and
    this rank's backend (``backend``); the rest is shared.
    """

    real = True

    def __init__(self, options: RealOptions | None = None, launcher_timeout_s: float | None = None,
                 hostfile: str | None = None):
        self.options = options or RealOptions()
        self.launcher_timeout_s = launcher_timeout_s
        self.hostfile = hostfile
        if hostfile is not None and not self.takes_hostfile:
            raise ValueError(f"backend {self.name!r} takes no hostfile; {self.hostfile_hint}")

    # A hostfile lists the machines of a launched job; only launchers that read one take it.
    takes_hostfile = False
    hostfile_hint = ""
    # On an emulated network, give a rank on several links a namespace of its
    # own with one interface (executors.emulation.plan_emulation's rank_hosts).
    one_interface_per_rank = False

    @classmethod
    def is_available(cls) -> bool:
        return cls.unavailable_reason() == ""

    @classmethod
    @abstractmethod
    def launch_command(cls, nranks: int, module_args: list[str], hostfile: str | None = None) -> list[str]:
        """The command that starts ``nranks`` processes of ``python -m <module_args>``."""

    @classmethod
    def emulated_launch_command(cls, nranks: int, module_args: list[str], network, run_dir: str) -> list[str]:
        """The command that starts ``nranks`` processes of ``python -m <module_args>``, rank r inside
        rank r's namespace of ``network`` (an ``EmulatedNetwork``), talking over its emulated links."""
        raise RealRunError(f"backend {cls.name!r} cannot run on an emulated network")

    @abstractmethod
    def backend(self) -> RealBackend:
        """This process's rank, set up (inside a job only)."""

    # One backend per process inside a job: a process group cannot be set up
    # again after it is torn down, and a command may run several scenarios.
    _job_backends: dict[str, RealBackend] = {}

    def job_backend(self) -> RealBackend:
        backend = RealExecutor._job_backends.get(self.name)
        if backend is None:
            backend = RealExecutor._job_backends[self.name] = self.backend()
            atexit.register(backend.close)
        return backend

    def job_rank(self) -> int:
        return self.job_backend().rank if self.inside_job() else 0

    def job_size(self) -> int | None:
        return self.job_backend().size if self.inside_job() else None

    def share(self, value: Any) -> Any:
        return self.job_backend().share(value) if self.inside_job() else value

    def run(self, scenario):
        if self.inside_job():
            return run_real(self.job_backend(), scenario, self.options)
        # Refused here, before any process starts (each rank would refuse it too, after start-up).
        refuse_aligned(scenario.programs(), self.options.timing, scenario.groups)
        if self.options.network == "emulated":
            return self._run_emulated(scenario)
        return launch(type(self), scenario, self.options, timeout_s=self.launcher_timeout_s,
                      hostfile=self.hostfile)

    def _run_emulated(self, scenario):
        if self.hostfile is not None:
            raise RealRunError("an emulated network is built on this machine: it takes no hostfile")
        try:
            plan = plan_emulation(scenario.topology, rank_hosts=self.one_interface_per_rank)
            reason = refusal(plan)
            if reason:
                raise EmulationError(reason)
            with EmulatedNetwork(plan) as network:
                return launch(type(self), scenario, self.options, timeout_s=self.launcher_timeout_s,
                              network=network)
        except EmulationError as exc:
            raise RealRunError(f"emulated network: {exc}") from None


__all__ = ["RealExecutor", "RealRunError"]
