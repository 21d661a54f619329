"""Federated averaging (FedAvg): rounds of local training, upload, aggregation, download.

Each round the selected clients train locally (``local_flops``, all local
epochs together), upload their model (``model_bytes``) to the aggregator,
which receives them in client order, averages them
(``aggregate_flops_per_byte`` x bytes received) and sends the new model back
to each client in turn.  A round costs the slowest client's local training +
the incast of all uploads on the aggregator's link (on an edge-cloud continuum
usually the devices' wireless links or the WAN) + the aggregation + one
download per client, one after another.  With ``hierarchical: true`` clients
upload to an edge aggregator, the edges average and forward one model each to
the cloud aggregator, and the new model travels back down the same way, so
only one model per edge crosses the WAN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from topologies.text import short
from workloads.base import (
    ProgramSize, WorkloadBase, check_int, check_nonnegative, rank_tuple, register, resolve_rank, resolve_ranks,
    round_half_up,
)
from workloads.ops import Compute, Operation, Recv, Send


@register
@dataclass(frozen=True)
class FederatedAveraging(WorkloadBase):
    """``rounds`` rounds of FedAvg.

    Roles (negative ranks count from the end):

    - ``aggregator``: the (cloud) aggregator, by default the last rank, which
      is the cloud node of an ``edge_cloud`` topology with one cloud node.
    - ``clients``: by default every rank that is neither the aggregator nor an
      edge aggregator.
    - ``hierarchical``: clients upload to edge aggregators.  ``edge_ranks``
      names them; client k of ``clients`` (in the listed order) then uses
      ``edge_ranks[k % len(edge_ranks)]``, which is ``edge_cloud``'s wiring
      of device i to edge server i % n_edge.  Without ``edge_ranks`` the
      topology's groups decide: in each group without the aggregator the
      highest rank is the edge aggregator and the others are its clients
      (``edge_cloud`` numbers devices before their edge server).

    ``clients_per_round`` (a fraction in (0, 1]) selects
    k = max(1, round(fraction x clients)) clients per round, deterministically:
    a window of k consecutive clients that moves by k each round, wrapping
    around, so every client takes part equally often.  In the hierarchical
    form an edge with no selected client sits the round out.
    """

    kind: ClassVar[str] = "federated"
    _int_fields: ClassVar[tuple[str, ...]] = ("model_bytes", "rounds", "aggregator")

    model_bytes: int = 4_000_000
    rounds: int = 1
    local_flops: float = 5.0e11
    aggregate_flops_per_byte: float = 0.25
    aggregator: int = -1
    clients: tuple[int, ...] = ()
    clients_per_round: float = 1.0
    hierarchical: bool = False
    edge_ranks: tuple[int, ...] = ()

    def __post_init__(self):
        check_int(self, ("model_bytes",), 0)
        check_int(self, ("rounds",), 1)
        check_int(self, ("aggregator",), None)
        check_nonnegative(self, ("local_flops", "aggregate_flops_per_byte"))
        object.__setattr__(self, "clients", rank_tuple(self.clients, "clients"))
        object.__setattr__(self, "edge_ranks", rank_tuple(self.edge_ranks, "edge_ranks"))
        f = self.clients_per_round
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"workload.clients_per_round must be a fraction in (0, 1], got {short(f)}")
        if not isinstance(self.hierarchical, bool):
            raise ValueError(f"workload.hierarchical must be true or false, got {short(self.hierarchical)}")
        if self.edge_ranks and not self.hierarchical:
            raise ValueError("workload.edge_ranks: only used with hierarchical: true")

    # -- roles -------------------------------------------------------------------

    def roles(self, nranks: int, groups=None) -> tuple[int, tuple[int, ...], dict[int, int]]:
        """(aggregator, clients in order, client -> edge aggregator; empty when flat)."""
        aggregator = resolve_rank(self.aggregator, nranks, "aggregator")
        given = resolve_ranks(self.clients, nranks, "clients") if self.clients else None
        if given is not None and aggregator in given:
            raise ValueError(f"workload.clients: includes the aggregator, rank {aggregator}")
        if not self.hierarchical:
            clients = given if given is not None else tuple(r for r in range(nranks) if r != aggregator)
            if not clients:
                raise ValueError(f"workload.clients: no client among {nranks} ranks")
            return aggregator, clients, {}
        if self.edge_ranks:
            edges = resolve_ranks(self.edge_ranks, nranks, "edge_ranks")
            if aggregator in edges:
                raise ValueError(f"workload.edge_ranks: includes the aggregator, rank {aggregator}")
            if given is not None:
                clients = given
            else:
                clients = tuple(r for r in range(nranks) if r != aggregator and r not in edges)
            for c in clients:
                if c in edges:
                    raise ValueError(f"workload.clients: rank {c} is also an edge aggregator")
            edge_of = {c: edges[k % len(edges)] for k, c in enumerate(clients)}
        else:
            if not groups:
                raise ValueError(
                    "workload.edge_ranks: hierarchical needs edge_ranks or a topology with groups"
                )
            members: dict[int, int] = {}
            for group in groups:
                if aggregator in group or len(group) < 2:
                    continue
                edge = max(group)
                members.update({r: edge for r in group if r != edge})
            if given is not None:
                for c in given:
                    if c not in members:
                        raise ValueError(
                            f"workload.clients: rank {c} has no edge aggregator (it is one, "
                            "or its group holds the aggregator)"
                        )
                clients = given
            else:
                clients = tuple(sorted(members))
            edge_of = {c: members[c] for c in clients}
        if not clients:
            raise ValueError(f"workload.clients: no client among {nranks} ranks")
        return aggregator, clients, edge_of

    def selected(self, clients: tuple[int, ...], round_index: int) -> list[int]:
        """The clients taking part in round ``round_index``, in client order."""
        n = len(clients)
        k = min(n, max(1, round_half_up(self.clients_per_round * n)))
        if k == n:
            return list(clients)
        start = (round_index * k) % n
        chosen = {(start + j) % n for j in range(k)}
        return [c for i, c in enumerate(clients) if i in chosen]

    # -- programs ----------------------------------------------------------------

    def size(self, nranks: int, groups=None) -> ProgramSize:
        # Per round at most: 3 ops per client (train, upload, download), and
        # per client 2 ops on its aggregator and 4 on its edge aggregator,
        # plus each aggregator's one aggregation.
        return ProgramSize(operations=self.rounds * (9 * nranks + 1))

    def _aggregate(self, uploads: int) -> list[Operation]:
        flops = self.aggregate_flops_per_byte * self.model_bytes * uploads
        return [Compute(flops, label="aggregate")] if flops else []

    def programs(self, nranks: int, groups=None) -> list[list[Operation]]:
        aggregator, clients, edge_of = self.roles(nranks, groups)
        nbytes = self.model_bytes
        programs: list[list[Operation]] = [[] for _ in range(nranks)]
        # Receivers take uploads in client order and send in the same order,
        # and every client sends before it receives, so the programs cannot
        # deadlock even where a send waits for its receive (rendezvous MPI).
        for round_index in range(self.rounds):
            chosen = self.selected(clients, round_index)
            for c in chosen:
                parent = edge_of.get(c, aggregator)
                programs[c] += [Compute(self.local_flops, label="local"), Send(parent, nbytes), Recv(parent, nbytes)]
            if not edge_of:
                programs[aggregator] += [Recv(c, nbytes) for c in chosen]
                programs[aggregator] += self._aggregate(len(chosen))
                programs[aggregator] += [Send(c, nbytes) for c in chosen]
                continue
            by_edge: dict[int, list[int]] = {}
            for c in chosen:
                by_edge.setdefault(edge_of[c], []).append(c)
            edges = sorted(by_edge)
            for e in edges:
                below = by_edge[e]
                programs[e] += [Recv(c, nbytes) for c in below]
                programs[e] += self._aggregate(len(below))
                programs[e] += [Send(aggregator, nbytes), Recv(aggregator, nbytes)]
                programs[e] += [Send(c, nbytes) for c in below]
            programs[aggregator] += [Recv(e, nbytes) for e in edges]
            programs[aggregator] += self._aggregate(len(edges))
            programs[aggregator] += [Send(e, nbytes) for e in edges]
        return programs
