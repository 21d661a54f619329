"""Training with a parameter server: workers push gradients, servers push back parameters.

The first ``servers`` ranks hold the model, sharded evenly; every other rank is
a worker.  Each iteration a worker computes its gradient
(``flops_per_iteration``), pushes shard s of it to server s, then pulls shard
s of the updated model back from each server.  A server receives its shard
from every worker in rank order, applies the update (``server_flops_per_byte``
per byte received) and sends the shard back to the workers in rank order.  The
cost is therefore compute + the incast of all workers' pushes on each server's
link (W x model/S bytes through one link: the parameter server's bottleneck)
+ the update + W sequential pulls of model/S bytes per server.  With
``synchronous: false`` a server updates and replies to each push on its own
(asynchronous SGD); because a receive names its source it still serves the
workers round-robin in rank order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from topologies.text import short
from workloads.base import ProgramSize, WorkloadBase, check_int, check_nonnegative, register, split_bytes
from workloads.ops import Compute, Operation, Recv, Send


@register
@dataclass(frozen=True)
class ParameterServer(WorkloadBase):
    """``iterations`` of parameter-server training; servers are ranks 0..servers-1.

    The model is ``parameters * bytes_per_parameter`` bytes; server s holds
    shard s (``split_bytes``).  A server's update costs
    ``server_flops_per_byte`` x the bytes it received in that iteration.
    """

    kind: ClassVar[str] = "parameter_server"
    _int_fields: ClassVar[tuple[str, ...]] = ("parameters", "bytes_per_parameter", "servers", "iterations")

    parameters: int = 25_000_000
    bytes_per_parameter: int = 4
    servers: int = 1
    iterations: int = 1
    flops_per_iteration: float = 6 * 25_000_000 * 512 * 8
    server_flops_per_byte: float = 0.0
    synchronous: bool = True

    def __post_init__(self):
        check_int(self, ("parameters", "bytes_per_parameter", "servers", "iterations"), 1)
        check_nonnegative(self, ("flops_per_iteration", "server_flops_per_byte"))
        if not isinstance(self.synchronous, bool):
            raise ValueError(f"workload.synchronous must be true or false, got {short(self.synchronous)}")

    @property
    def model_bytes(self) -> int:
        return self.parameters * self.bytes_per_parameter

    def shard_bytes(self) -> list[int]:
        return split_bytes(self.model_bytes, self.servers)

    def size(self, nranks: int, groups=None) -> ProgramSize:
        servers = min(self.servers, nranks)
        workers = nranks - servers
        # Per iteration: a worker computes, pushes and pulls one shard per
        # server; a server receives, updates (at most once per push) and replies.
        per_iteration = workers * (1 + 2 * servers) + servers * 3 * workers
        return ProgramSize(operations=per_iteration * self.iterations)

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        if self.servers >= nranks:
            raise ValueError(
                f"workload.servers: {self.servers} server(s) leave no worker among {nranks} ranks"
            )
        servers = range(self.servers)
        workers = range(self.servers, nranks)
        shards = self.shard_bytes()
        programs: list[list[Operation]] = [[] for _ in range(nranks)]
        # Every worker pushes to the servers in the same order and every server
        # serves the workers in the same order, so no two ranks ever wait on
        # each other crosswise: the programs cannot deadlock even where a send
        # waits for its receive (rendezvous MPI).
        for _ in range(self.iterations):
            for w in workers:
                program = programs[w]
                program.append(Compute(self.flops_per_iteration, label="gradient"))
                program += [Send(s, shards[s]) for s in servers]
                program += [Recv(s, shards[s]) for s in servers]
            for s in servers:
                program = programs[s]
                if self.synchronous:
                    program += [Recv(w, shards[s]) for w in workers]
                    if self.server_flops_per_byte:
                        flops = self.server_flops_per_byte * shards[s] * len(workers)
                        program.append(Compute(flops, label="update"))
                    program += [Send(w, shards[s]) for w in workers]
                else:
                    for w in workers:
                        program.append(Recv(w, shards[s]))
                        if self.server_flops_per_byte:
                            program.append(Compute(self.server_flops_per_byte * shards[s], label="update"))
                        program.append(Send(w, shards[s]))
        return programs
