"""What a real run is asked to do: options, the injected faults of the tests, and its one error type."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODES = ("native", "algorithm")
TIMINGS = ("auto", "aligned", "free")
# host: the ranks talk over whatever this machine gives them (shared memory,
# loopback, the cluster's network); emulated: over the scenario's own
# topology, built on this machine (executors.emulation).
NETWORKS = ("host", "emulated")


class RealRunError(RuntimeError):
    """A real run that could not finish; the message names the rank and operation."""


@dataclass(frozen=True)
class RealOptions:
    mode: str = "native"
    warmup: int = 1
    repeats: int = 3
    timing: str = "auto"
    timeout_s: float = 120.0
    check: bool = False
    # One core per rank when the machine has a core for every local rank:
    # unpinned ranks that the OS puts on one core make shared-memory transfers
    # several times slower, and differently from launch to launch.
    pin: bool = True
    # Test hook, "ACTION:RANK:OP" with ACTION exit, hang or raise: that rank
    # dies (saying so), stops (SIGSTOP to itself, as a hung process looks
    # from outside: no heartbeat), or hits a Python error at that operation,
    # to prove that failures end the run cleanly and name that rank.
    fault: str = ""
    network: str = "host"
    # The memory limit the launcher loaded the scenario under; each rank loads it again under it
    # (None: the default, topologies.limits.DEFAULT_MAX_MEMORY_BYTES).
    max_memory_bytes: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.timing not in TIMINGS:
            raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, got {self.timing!r}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {self.network!r}")
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {self.warmup} and {self.repeats}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.fault:
            parse_fault(self.fault)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_fault(text: str) -> tuple[str, int, int]:
    try:
        action, rank, op = text.split(":")
        if action not in ("exit", "hang", "raise"):
            raise ValueError
        return action, int(rank), int(op)
    except ValueError:
        raise ValueError(f"fault must look like exit:RANK:OP, hang:RANK:OP or raise:RANK:OP, got {text!r}") from None
