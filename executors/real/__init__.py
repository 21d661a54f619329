"""Real runs: the scenario's operations executed over MPI or torch.distributed, and timed.

The package, one concern a module:

- ``options``: what a run is asked to do (``RealOptions``) and its error type;
- ``status``: each rank's status file, read by the launcher while it runs;
- ``analysis``: what a program allows (aligned timing or not);
- ``backend``: the interface a backend implements for one rank (``RealBackend``);
- ``runner``: a rank's program, run and timed (``run_real``), the same for every backend;
- ``stream``: the communication stream of non-blocking collectives;
- ``executor``: ``RealExecutor``, inside a job or launching one;
- ``launch`` and ``worker``: a launched job, watched until it ends;
- ``watch``: the ranks of a launched job as the launcher sees them;
- ``procs``: their processes, read and ended from outside (/proc, pidfds);
- ``blame``: which rank made a failed run fail, and the message that says so;
- ``mpi`` and ``torchdist``: the backends, reached through the registry
  (``executors.executor_class('mpi')``), never imported by name elsewhere.
"""
from executors.real.analysis import aligned_problem, choose_timing
from executors.real.backend import KERNEL_N, RealBackend
from executors.real.executor import RealExecutor
from executors.real.options import MODES, NETWORKS, TIMINGS, RealOptions, RealRunError, parse_fault
from executors.real.runner import run_real
from executors.real.status import RankStatus, read_status

__all__ = [
    "KERNEL_N", "MODES", "NETWORKS", "TIMINGS", "RankStatus", "RealBackend", "RealExecutor", "RealOptions", "RealRunError",
    "aligned_problem", "choose_timing", "parse_fault", "read_status", "run_real",
]
