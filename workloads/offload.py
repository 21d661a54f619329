"""Edge offloading: devices run some tasks themselves and ship the others to a server.

Each device has ``tasks`` independent tasks of ``task_flops``; a fraction
``offload_fraction`` of them goes to the device's server: the device sends the
task's input (``input_bytes``), the server computes it at its own speed and
sends the output (``output_bytes``) back.  A device keeps one offloaded task
in flight and computes its local tasks meanwhile, so an offloaded task costs
the device max(local work until the next offload, upload + queueing at the
server + server compute + download) instead of task_flops / device speed.
With many devices the server's queue and the shared uplink dominate: the
server handles the tasks one at a time, round-robin over its devices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from topologies.text import short
from workloads.base import (
    ProgramSize, WorkloadBase, check_int, check_nonnegative, rank_tuple, register, resolve_ranks, round_half_up,
)
from workloads.ops import Compute, Operation, Recv, Send


@register
@dataclass(frozen=True)
class EdgeOffload(WorkloadBase):
    """Partial offloading of ``tasks`` tasks per device.

    ``server_ranks``: the servers (default: the last rank; negative ranks
    count from the end).  ``devices``: default every other rank.  Device k of
    ``devices`` (in the listed order) uses ``server_ranks[k % len]``, which is
    ``edge_cloud``'s wiring of device i to edge server i % n_edge.

    k = round(offload_fraction x tasks) tasks (halves round up) are offloaded,
    spread evenly and starting with task 0: task t is offloaded when
    ceil((t+1) k / tasks) > ceil(t k / tasks).  A device sends task t's input,
    computes the local tasks up to its next offloaded task, then receives t's
    result before it sends the next input.  A server takes the offloaded tasks
    in task order and, for each, its devices in order: receive, compute, send.
    """

    kind: ClassVar[str] = "offload"
    _int_fields: ClassVar[tuple[str, ...]] = ("tasks", "input_bytes", "output_bytes")

    tasks: int = 10
    task_flops: float = 1.0e10
    input_bytes: int = 1_000_000
    output_bytes: int = 10_000
    offload_fraction: float = 0.5
    server_ranks: tuple[int, ...] = ()
    devices: tuple[int, ...] = ()

    def __post_init__(self):
        check_int(self, ("tasks",), 1)
        check_int(self, ("input_bytes", "output_bytes"), 0)
        check_nonnegative(self, ("task_flops",))
        f = self.offload_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise ValueError(f"workload.offload_fraction must be in [0, 1], got {short(f)}")
        object.__setattr__(self, "server_ranks", rank_tuple(self.server_ranks, "server_ranks"))
        object.__setattr__(self, "devices", rank_tuple(self.devices, "devices"))

    @property
    def offloaded_count(self) -> int:
        return min(self.tasks, round_half_up(self.offload_fraction * self.tasks))

    def offloaded(self) -> list[bool]:
        """``offloaded()[t]``: whether task t goes to the server."""
        k, n = self.offloaded_count, self.tasks
        return [-(-(t + 1) * k // n) > -(-t * k // n) for t in range(n)]

    def roles(self, nranks: int) -> tuple[tuple[int, ...], dict[int, int]]:
        """(devices in order, device -> server)."""
        servers = resolve_ranks(self.server_ranks or (-1,), nranks, "server_ranks")
        if self.devices:
            devices = resolve_ranks(self.devices, nranks, "devices")
            both = sorted(set(devices) & set(servers))
            if both:
                raise ValueError(f"workload.devices: rank(s) {short(both)} are also servers")
        else:
            devices = tuple(r for r in range(nranks) if r not in servers)
        if not devices:
            raise ValueError(f"workload.devices: no device among {nranks} ranks")
        return devices, {d: servers[k % len(servers)] for k, d in enumerate(devices)}

    def size(self, nranks: int, groups=None) -> ProgramSize:
        # Per device and task at most: a compute, or a send and a receive on
        # the device and a receive, compute and send on its server.
        return ProgramSize(operations=nranks * (5 * self.tasks + 1))

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        devices, server_of = self.roles(nranks)
        offloaded = self.offloaded()
        programs: list[list[Operation]] = [[] for _ in range(nranks)]
        for d in devices:
            server, program, in_flight = server_of[d], programs[d], False
            for t, remote in enumerate(offloaded):
                if not remote:
                    program.append(Compute(self.task_flops, label=f"task[{t}]"))
                    continue
                if in_flight:
                    program.append(Recv(server, self.output_bytes))
                program.append(Send(server, self.input_bytes))
                in_flight = True
            if in_flight:
                program.append(Recv(server, self.output_bytes))
        # A device receives task t's result before it sends the next input, and
        # the server finishes task t for a device before it receives the next,
        # so nothing waits crosswise even where a send waits for its receive.
        for t in (t for t, remote in enumerate(offloaded) if remote):
            for d in devices:
                program = programs[server_of[d]]
                program += [
                    Recv(d, self.input_bytes),
                    Compute(self.task_flops, label=f"task[{t}] of rank {d}"),
                    Send(d, self.output_bytes),
                ]
        return programs
