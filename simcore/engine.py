"""The SimPy engine: runs per-rank programs of operations on a topology.

Each rank is a SimPy process that executes its operations in order.  Compute
follows the roofline: max(flops / (peak x GEMM efficiency), nbytes / memory
bandwidth) times the rank's straggler slowdown, where the peak is the node's
for the op's precision and the efficiency its table's value at the op's GEMM
shape (``Topology.peak_flops_per_s``, ``Topology.gemm_efficiency``); a plain
``Compute(flops)`` takes flops / flops_per_s.  Messages are
matched per (source, destination, tag) in FIFO order, as MPI's non-overtaking
rule does; a send completes when its last byte arrives.  Collectives run the
point-to-point steps their algorithm lowers to (``workloads.collectives``),
so the simulator executes exactly the steps a real run in algorithm mode does.
A collective on a process group (``workloads.groups``) runs among the
group's ranks, over the topology's routes between them; collectives of
different groups run at once and share links as any flows do.  Messages on
different groups never match, as on different MPI communicators.

This engine is the reference engine (``simcore.reference_engine``, one flow
and several SimPy events per message) plus the collective fast path
(``simcore.fastpath``): a collective whose members all start it at one
instant and whose messages have their links to themselves is computed whole,
in one pass (in numpy for a large ring), its links reserved until its last
byte has left; its members resume at their end times.  If another message
needs a reserved link earlier, the collective is replayed up to that instant
and continues message by message, as the reference engine runs it.

Two more cases skip the per-message work.  Ring collectives that start at one
instant and share links (several groups' rings through one uplink) are run
together as a fluid model (``simcore.fluid``): each step of each ring is a
fluid flow, rates come from max-min progressive filling in numpy, and the
batch is handed back to message-by-message simulation at the first instant
anything else touches its links.  A large ring collective whose members
arrive at different times (stragglers, a previous collective ending unevenly)
holds its links from the first member's arrival; when the last one arrives it
is computed whole with each member's own start, unless another message needed
one of its links first, in which case it is materialized as the reference
runs it.  The simulated times are the reference engine's up to floating-point
rounding: ``tests/test_fast_engine.py`` compares every record on random
scenarios (1e-9 relative; 1e-8 for the fluid batches, whose rates are summed
in another order), ``benchmarks/sim_speed.py`` times both engines.

Simultaneous events are processed in the order they were scheduled (SimPy's
event id), and the network solves rates after all of them (see
``simcore.network``), so a seed determines the result bit for bit.
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from array import array
from math import inf as _INF
from operator import itemgetter
from typing import Callable

import numpy as np
import pandas as pd
import simpy

from simcore.fastpath import BUSY, RING_OPS, VECTOR_MIN_MEMBERS, Schedule, Trace, link_free, ring_schedule
from simcore.fluid import FluidRings
from simcore.network import FlowNetwork, _Flow
from simcore.reference_engine import (
    PROGRESS_EVERY_EVENTS,
    DeadlockError,
    NonFiniteResultError,
    ReferenceSimulator,
    SimulationError,
    _non_finite_compute,
)
from simcore.result import RECORD_COLUMNS, TEXT_COLUMNS, RunResult
from topologies import Topology
from workloads.collectives import lower, lower_in_group, root_peer
from workloads.groups import WORLD
from workloads.ops import Collective, Compute, Irecv, Isend, Recv, Send, Wait, wait_group

__all__ = ["PROGRESS_EVERY_EVENTS", "DeadlockError", "NonFiniteResultError", "SimulationError", "Simulator",
           "simulate"]

# A collective's members that arrive at one instant are all in before this runs:
# after every process woken at that instant (NORMAL, 1), before the network's solve (2).
_DECIDE_PRIORITY = 1.5
_NORMAL = simpy.events.NORMAL
# Recorded dataflows kept per run (each collective shape on each group), and the largest kept.
MAX_TRACES = 4096
MAX_TRACE_MESSAGES = 200_000
# Ring collectives that start together and share links run as one fluid model
# (``simcore.fluid``) from this many members in all; fewer cost less message by message.
FLUID_MIN_LANES = 32


class _Instance:
    """One collective on one group, as its members arrive at it."""

    __slots__ = ("members", "tag", "t0", "waiting", "event_path", "arrived", "done", "plan", "decided", "held",
                 "arrival_s", "starts", "priors")

    def __init__(self, members, tag, t0):
        self.members = members
        self.tag = tag
        self.t0 = t0
        self.waiting: list[tuple] = []  # (rank, op, link_j, done event), in arrival order
        self.event_path = False
        self.arrived = 0
        self.decided = False
        self.held = False  # its links are held for it until its last member arrives
        self.arrival_s: dict[int, float] = {}
        self.starts = None  # each member's start, where they differ
        self.priors: list[_Instance] = []  # collectives on the same ring whose links it took over while held
        self.plan = None


class _Batch:
    """Ring collectives computed together as one fluid model; it holds their links."""

    __slots__ = ("instances", "fluid", "plan")

    def __init__(self, instances, fluid, plan):
        self.instances = instances
        self.fluid = fluid
        self.plan = plan


class _GuardedNetwork(FlowNetwork):
    """The flow network, with links reserved by fast collectives: a message that
    needs one before the collective has left it makes the collective continue
    message by message first."""

    def __init__(self, env, capacities_bytes_per_s, on_delivered, sim, burst_bytes=0.0):
        super().__init__(env, capacities_bytes_per_s, on_delivered, burst_bytes)
        self.sim = sim
        self.reserved_until_s = [-math.inf] * len(self.capacity_bytes_per_s)
        self.reserved_by: list[_Instance | None] = [None] * len(self.capacity_bytes_per_s)

    def transfer(self, links, min_capacity_bytes_per_s, latency_s, nbytes, message, work_bytes=None, take_burst=True):
        if nbytes:
            now = self.env._now
            reserved = self.reserved_until_s
            for link in links:
                if reserved[link] > now:
                    self.sim._materialize(self.reserved_by[link], now)
        super().transfer(links, min_capacity_bytes_per_s, latency_s, nbytes, message, work_bytes, take_burst)


# The engine's messages and collectives record validated integers here (rank,
# op index, peer, bytes) and floats in the rest; the reference's inference
# types them so too (int64, and float64 for flops, 0.0 in every such record).
_MESSAGE_DTYPES = {"rank": np.int64, "op_index": np.int64, "peer": np.int64, "nbytes": np.int64,
                   "flops": np.float64, "start_s": np.float64, "end_s": np.float64, "energy_j": np.float64}


def _message_columns(records: list) -> dict | None:
    """Columns of record tuples, text as (codes, strings); None where a value does not fit its type."""
    n = len(records)
    data = {}
    try:
        for j, name in enumerate(RECORD_COLUMNS):
            values = map(itemgetter(j), records)
            if name in TEXT_COLUMNS:
                codes, uniques = pd.factorize(np.fromiter(values, dtype=object, count=n), use_na_sentinel=False)
                if not all(type(u) is str for u in uniques):
                    return None
                data[name] = (codes, np.asarray(uniques, dtype=object))
            else:
                data[name] = np.fromiter(values, dtype=_MESSAGE_DTYPES[name], count=n)
    except (TypeError, ValueError, OverflowError):
        return None
    return data


def _text_column(parts: list, place) -> np.ndarray:
    """Strings from (codes, strings) parts, concatenated and put in order by ``place``."""
    index: dict[str, int] = {}
    remapped = []
    for codes, strings in parts:
        lookup = np.array([index.setdefault(s, len(index)) for s in strings], dtype=np.intp)
        remapped.append(lookup[codes])
    table = np.empty(len(index), dtype=object)
    table[:] = list(index)
    codes = remapped[0] if len(remapped) == 1 else np.concatenate(remapped)
    return table[place(codes)]


class Simulator(ReferenceSimulator):
    """Simulates ``programs[r]`` (a list of operations) on rank ``r`` of ``topology``.

    ``fast_path=False`` runs every collective message by message, as
    ``ReferenceSimulator`` does.
    """

    def __init__(self, *args, fast_path: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        # The fast paths assume a send completes as its message arrives, on links without buckets.
        self.fast_path = fast_path and not self.buffered_sends and not self.calibration.link_burst_bytes

    def run(self, progress: Callable[[float, int], None] | None = None) -> RunResult:
        self._instances: dict[tuple, _Instance] = {}
        self._not_alone: set[tuple] = set()
        self._traces: dict[tuple, Trace] = {}
        self._deciding: list[_Instance] = []  # created at this instant, not decided yet
        self._held: dict[int, _Instance] = {}  # ring collectives waiting for their last member, links held
        self._ring_links: dict[tuple, tuple] = {}  # ring members -> (its links, do two of its messages share one)
        self._world = tuple(range(self.nranks))
        # Packed C arrays: numpy takes them without a conversion per value.
        self._compute_ints = array("q")    # rank, op index of each compute record
        self._compute_floats = array("d")  # start, end, energy
        self._compute_bytes: list = []          # as the op gives them (int or float), typed like the reference's
        self._compute_flops: list = []
        self.fast_collectives = 0
        self.fluid_batches = 0
        self.fluid_handed_back = 0
        self.held = 0
        self.held_handed_back = 0
        self.materialized = 0
        return super().run(progress)

    def _sorted_records(self) -> pd.DataFrame:
        """The reference's records frame, from the compute columns and the other records' tuples.

        Sorting permutes every column; a text column is permuted as small
        integer codes and turned into strings once, in order (permuting an
        array of Python strings costs a cache miss per record).
        """
        n, m = len(self._compute_flops), len(self._records)
        compute = self._compute_columns(n) if n else None
        others = _message_columns(self._records) if m else None
        if (n and compute is None) or (m and others is None):
            # An unusual value (None, a huge integer): pandas infers every column, as in the reference.
            ints, floats = self._compute_ints, self._compute_floats
            self._records.extend((ints[2 * i], ints[2 * i + 1], "", "compute", "", -1, self._compute_bytes[i],
                                  self._compute_flops[i], floats[3 * i], floats[3 * i + 1], floats[3 * i + 2])
                                 for i in range(n))
            self._compute_flops = []
            return super()._sorted_records()
        parts = [part for part in (others, compute) if part is not None]
        if not parts:
            return super()._sorted_records()

        def joined(name):
            return parts[0][name] if len(parts) == 1 else np.concatenate([part[name] for part in parts])

        rank, index = joined("rank"), joined("op_index")
        lengths = np.fromiter(map(len, self.programs), dtype=np.int64, count=self.nranks)
        if len(rank) == int(lengths.sum()):
            # Every operation has its record, and (rank, op index) is unique:
            # record k goes to row first[rank] + index, no sort needed.
            first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            rows = first[rank] + index

            def place(values):
                out = np.empty_like(values)
                out[rows] = values
                return out
        else:
            # (rank, op index) is unique per record: one integer key, any sort gives the reference's order.
            order = np.argsort(rank * (int(index.max()) + 1) + index)

            def place(values):
                return values[order]
        columns = {}
        for name in RECORD_COLUMNS:
            columns[name] = _text_column([part[name] for part in parts], place) if name in TEXT_COLUMNS \
                else place(joined(name))
        return pd.DataFrame(columns, copy=False)

    def _compute_columns(self, n: int) -> dict | None:
        ints = np.frombuffer(self._compute_ints, dtype=np.int64).reshape(n, 2)
        floats = np.frombuffer(self._compute_floats, dtype=np.float64).reshape(n, 3)
        nbytes, flops = np.array(self._compute_bytes), np.array(self._compute_flops)
        if nbytes.dtype.kind not in "iuf" or flops.dtype.kind not in "iuf":
            return None
        zeros = np.zeros(n, dtype=np.intp)
        empty = (zeros, np.array([""], dtype=object))
        return {"rank": ints[:, 0], "op_index": ints[:, 1], "group": empty,
                "kind": (zeros, np.array(["compute"], dtype=object)), "algorithm": empty,
                "peer": np.full(n, -1, dtype=np.int64), "nbytes": nbytes, "flops": flops,
                "start_s": floats[:, 0], "end_s": floats[:, 1], "energy_j": floats[:, 2]}

    def _network(self, env: simpy.Environment) -> FlowNetwork:
        return _GuardedNetwork(env, self.topology.link_bandwidth_bytes_per_s, self._on_delivered(), self,
                               self.calibration.link_burst_bytes)

    # -- rank processes --------------------------------------------------------------

    def _rank(self, rank: int):
        """``ReferenceSimulator._rank``, but a run of computes costs one event: their
        records are the same sums of durations the reference's timeouts add up."""
        env = self.env
        records = self._records
        topo = self.topology
        flops_per_s = topo.rank_flops_per_s[rank]
        peaks = self._peaks[rank]
        memory_bytes_per_s = topo.rank_memory_bandwidth_bytes_per_s[rank]
        efficiency: dict[tuple, float] = {}  # GEMM shape -> fraction of peak, as programs repeat shapes
        busy_w = topo.rank_busy_power_w[rank]
        idle_w = topo.rank_idle_power_w[rank] * (1.0 if self.count_idle_energy else 0.0)
        sampler = self._samplers[rank]
        draws = sampler.applies  # else every slowdown is 1.0, drawn from nothing
        costs: dict[int, tuple] = {}  # id of a Compute of the program -> (its time before slowdown, peak, bytes, flops)
        compute_s = self._compute_s
        # Compute records, the bulk of a training step's, kept as columns (see _sorted_records).
        compute_ints = self._compute_ints.extend
        compute_floats = self._compute_floats.extend
        compute_bytes = self._compute_bytes.append
        compute_flops = self._compute_flops.append
        handles: dict[str, simpy.Event] = {}
        stream_tail: simpy.Event | None = None
        coll_seq = [0] * len(self._group_names)
        ngroups = len(self._group_names)
        number = self._group_number
        aligned = self.aligned
        program = self.programs[rank]
        nops = len(program)
        # The group each record carries (workloads.ops.record_groups), found as
        # the rank reaches each operation rather than in a pass over the program.
        group_of_handle: dict[str, str] = {}
        current = self._current
        index = -1
        while index + 1 < nops:
            index += 1
            op = program[index]
            current[rank] = (index, op)
            if aligned:
                barrier = self._align(index)
                if not barrier.processed:
                    arrived = env.now
                    yield barrier
                    self._wait_s[rank] += env.now - arrived
            if type(op) is Compute:
                t = env._now
                while True:
                    # Programs repeat a few Compute objects (a training step: one per layer kind) thousands of times.
                    cost = costs.get(id(op))
                    if cost is None:
                        if op.precision or op.gemm or op.nbytes:
                            peak = peaks[op.precision]
                            if op.gemm:
                                fraction = efficiency.get(op.gemm)
                                if fraction is None:
                                    fraction = efficiency[op.gemm] = topo.gemm_efficiency(rank, *op.gemm)
                                peak = peak * fraction
                            base = max(op.flops / peak, op.nbytes / memory_bytes_per_s)
                        else:
                            peak = flops_per_s
                            base = op.flops / flops_per_s
                        cost = costs[id(op)] = (base, peak, op.nbytes, op.flops)
                    base, peak, nbytes, flops = cost
                    if draws:
                        slowdown = sampler.next()
                        duration = base * slowdown
                    else:
                        slowdown = 1.0
                        duration = base
                    if not duration < _INF:
                        if t > env._now:
                            yield _event_at(env, t)  # fail where the reference does, with what it had done
                        current[rank] = (index, op)
                        raise NonFiniteResultError(_non_finite_compute(topo, rank, index, op, duration, peak,
                                                                       slowdown))
                    end = t + duration if duration > 0 else t
                    compute_s[rank] += duration
                    compute_ints((rank, index))
                    compute_floats((t, end, busy_w * duration))
                    compute_bytes(nbytes)
                    compute_flops(flops)
                    t = end
                    # Aligned: every operation waits for its barrier, so one at a time.
                    if aligned or index + 1 == nops or type(program[index + 1]) is not Compute:
                        break
                    index += 1
                    op = program[index]
                current[rank] = (index, op)
                if t > env._now:
                    yield _event_at(env, t)
                continue
            start = env.now
            link_j = [0.0]
            if type(op) is Collective:
                gi = number[op.group]
                coll_seq[gi] += 1
                tag = -(ngroups * (coll_seq[gi] - 1) + gi + 1)
                if not op.blocking:
                    done = env.event()
                    handles[op.handle] = done
                    group_of_handle[op.handle] = op.group
                    env.process(self._nonblocking(rank, index, op, tag, stream_tail, done))
                    stream_tail = done
                    continue
                yield from self._collective(rank, op, tag, link_j)
                peer, nbytes, algorithm, group = root_peer(op), op.nbytes, op.algorithm, op.group
                self._comm_s[rank] += env.now - start
            elif type(op) is Send or type(op) is Recv:
                waiter = [1, None]
                world_peer, tag = self._p2p_address(rank, op)
                if type(op) is Send:
                    self._send(rank, world_peer, op.nbytes, tag, waiter, link_j)
                else:
                    self._post_recv(world_peer, rank, op.nbytes, tag, waiter)
                if waiter[0]:
                    waiter[1] = env.event()
                    yield waiter[1]
                peer, nbytes, algorithm, group = op.peer, op.nbytes, "", op.group
                self._comm_s[rank] += env.now - start
            elif type(op) is Isend or type(op) is Irecv:
                handles[op.handle] = self._start_p2p(rank, index, op, op.group)
                group_of_handle[op.handle] = op.group
                continue
            else:  # Wait
                pending = [handles[h] for h in op.handles if not handles[h].processed]
                if pending:
                    yield env.all_of(pending)
                peer, nbytes, algorithm = -1, 0, ""
                group = wait_group(op, group_of_handle)
                self._wait_s[rank] += env.now - start
            energy = idle_w * (env.now - start) + link_j[0]
            records.append((rank, index, group, op.kind, algorithm, peer, nbytes, 0.0, start,
                            env.now, energy))  # a Record's fields, as a plain tuple
        pending = [h for h in handles.values() if not h.processed]
        if pending:
            current[rank] = (len(program), Wait(("<end of program>",)))
            start = env.now
            yield env.all_of(pending)
            self._wait_s[rank] += env.now - start
        current[rank] = None
        self._end_s[rank] = env.now

    # -- collectives ---------------------------------------------------------------

    def _lowered(self, rank: int, op: Collective):
        if op.group == WORLD:
            return lower(op, rank, self.nranks, self.groups)
        pg = self.process_groups
        return lower_in_group(op, pg.members(op.group, rank), pg.index(op.group, rank), self.groups)

    def _slowdown(self, op: Collective) -> float:
        return 1.0 / self.collective_efficiency(op.op, op.nbytes) if self.collective_efficiency else 1.0

    def _collective(self, rank: int, op: Collective, tag: int, link_j: list):
        members = self._world if op.group == WORLD else self.process_groups.members(op.group, rank)
        if not self.fast_path or len(members) == 1:
            yield from ReferenceSimulator._collective(self, rank, op, tag, link_j)
            return
        key = (members, tag)
        env = self.env
        inst = self._instances.get(key)
        if inst is None:
            inst = self._instances[key] = _Instance(members, tag, env._now)
            self._deciding.append(inst)
            ev = simpy.Event(env)
            ev._ok = True
            ev._value = key
            ev.callbacks.append(self._decide)
            env.schedule(ev, _DECIDE_PRIORITY, 0)
        elif inst.event_path:
            inst.arrived += 1
            if inst.arrived == len(members):
                del self._instances[key]
            yield from ReferenceSimulator._collective(self, rank, op, tag, link_j)
            return
        done = env.event()
        inst.waiting.append((rank, op, link_j, done))
        if inst.held:
            if self._prior_busy(inst, members.index(rank), env._now):
                # Its own part of the collective before this one still runs: they share its links.
                inst.waiting.pop()
                self._materialize_held(inst, env._now)
                inst.arrived += 1
                if inst.arrived == len(members):
                    del self._instances[key]
                yield from ReferenceSimulator._collective(self, rank, op, tag, link_j)
                return
            inst.arrival_s[rank] = env._now
            if len(inst.waiting) == len(members):
                self._release_held(inst)
        yield done

    def _decide(self, event) -> None:
        inst = self._instances.get(event._value)
        if inst is None or inst.decided:
            return  # decided with the others that started at this instant
        pending, self._deciding = self._deciding, []
        batches = self._fluid_batches(pending)
        batched = {id(i) for batch in batches for i in batch}
        for other in pending:
            if id(other) not in batched:
                self._decide_one(other)
        for batch in batches:
            self._run_batch(batch)

    def _decide_one(self, inst: _Instance) -> None:
        inst.decided = True
        if len(inst.waiting) == len(inst.members):
            plan = self._plan(inst)
            if not isinstance(plan, str):
                del self._instances[(inst.members, inst.tag)]
                self._commit(inst, plan)
                return
        elif self._hold(inst):
            return
        self._to_event_path(inst)

    # -- a ring collective whose members arrive at different times --------------------------

    def _hold(self, inst: _Instance) -> bool:
        """Hold a large ring collective's links from its first member's arrival until its last one's,
        then compute it whole with each member's own start; False where it cannot be held."""
        op = inst.waiting[0][1]
        members = inst.members
        if (self.message_efficiency or self.aligned or len(members) < FLUID_MIN_LANES or op.op not in RING_OPS
                or op.algorithm != "ring"):
            return False
        links, overlap = self._ring_links_of(members)
        net = self.net
        t0 = inst.t0
        priors = {}
        for link in links:
            if link_free(net, link, t0):
                continue
            # Held by the collective before this one on the same ring, whose every link carries one member's
            # messages: each member starts this one after its own part of that one, so they never meet.
            prior = net.reserved_by[link]
            if (overlap or type(prior) is not _Instance or prior.held or prior.plan is None
                    or prior.members != members or any(f.t_end_s is None or f.t_end_s > t0
                                                       for f in net._flows_on[link].values())):
                return False
            priors[id(prior)] = prior
        inst.priors = list(priors.values())
        position = {rank: i for i, rank in enumerate(members)}
        if any(self._prior_busy(inst, position[rank], t0) for rank, _, _, _ in inst.waiting):
            inst.priors = []
            return False
        for link in links:
            net.reserved_until_s[link] = math.inf
            net.reserved_by[link] = inst
        inst.held = True
        self.held += 1
        inst.arrival_s = {rank: t0 for rank, _, _, _ in inst.waiting}
        self._held[id(inst)] = inst
        return True

    def _prior_busy(self, inst: _Instance, i: int, now: float) -> bool:
        return any(prior.plan is not None and prior.plan.end_s[i] > now for prior in inst.priors)

    def _unhold(self, inst: _Instance) -> None:
        net = self.net
        for link in self._ring_links_of(inst.members)[0]:
            if net.reserved_by[link] is inst:
                net.reserved_until_s[link] = -math.inf
                net.reserved_by[link] = None
        inst.held = False
        del self._held[id(inst)]

    def _release_held(self, inst: _Instance) -> None:
        """Its last member is in: every member's messages, from its own start, as one plan."""
        self._unhold(inst)
        del self._instances[(inst.members, inst.tag)]
        members = inst.members
        inst.starts = [inst.arrival_s[r] for r in members]
        op = self._ops(inst)[0]
        slowdown = self._slowdown(op)
        if not self._ring_links_of(members)[1]:
            # Every message alone on its links: the max-plus recursion, in numpy.
            self._commit(inst, ring_schedule(self, members, op, inst.t0, slowdown, starts=inst.starts))
            return
        fluid = FluidRings(self, [(members, op, slowdown)], inst.t0, starts=inst.starts)
        plan = fluid.run()
        if isinstance(plan, str):
            raise SimulationError(f"internal error: a held ring collective cannot be computed ({plan})")
        self._commit_batch([inst], fluid, plan)

    def _materialize_held(self, inst: _Instance, now: float) -> None:
        """Another message needs a held collective's links: the members in so far continue message
        by message from the fluid model's state at ``now``; the others will start as the reference does."""
        self.materialized += 1
        self.held_handed_back += 1
        self._unhold(inst)
        for prior in inst.priors:
            if prior.plan is not None and any(t > now for t in prior.plan.busy_until_s.values()):
                self._materialize(prior, now)
        inst.event_path = True
        inst.arrived = len(inst.waiting)
        members = inst.members
        op = inst.waiting[0][1]
        starts = [inst.arrival_s.get(r, math.inf) for r in members]
        fluid = FluidRings(self, [(members, op, self._slowdown(op))], inst.t0, starts=starts)
        fluid.run(stop_s=now)
        by_rank = {rank: (link_j, done) for rank, _, link_j, done in inst.waiting}

        def waits_for(_inst, _i, rank, link_j_now):
            link_j, done = by_rank[rank]
            link_j[0] = link_j_now
            return link_j, done

        self._hand_over(fluid, now, [inst], waits_for)
        inst.waiting = []

    def _drained(self) -> bool:
        if not self._held:
            return False
        # No event is left, so no member still to come will arrive: what the others sent goes on.
        for inst in list(self._held.values()):
            self._materialize_held(inst, self.env.now)
        return True

    def _to_event_path(self, inst: _Instance) -> None:
        inst.decided = True
        inst.event_path = True
        inst.arrived = len(inst.waiting)
        if inst.arrived == len(inst.members):
            del self._instances[(inst.members, inst.tag)]
        for rank, op, link_j, done in inst.waiting:
            self.env.process(self._event_path(rank, op, inst.tag, link_j, done))
        inst.waiting = []

    # -- ring collectives that share links: one fluid model ----------------------------------

    def _ring_candidate(self, inst: _Instance):
        """(links, self-overlapping) of a complete ring collective the fluid model can run, else None."""
        if len(inst.waiting) != len(inst.members) or self.message_efficiency:
            return None
        op = inst.waiting[0][1]
        if op.op not in RING_OPS or op.algorithm != "ring":
            return None
        return self._ring_links_of(inst.members)

    def _ring_links_of(self, members):
        cached = self._ring_links.get(members)
        if cached is None:
            p = len(members)
            links = [link for i in range(p) for link in self._route(members[i], members[(i + 1) % p])[0]]
            cached = self._ring_links[members] = (frozenset(links), len(set(links)) < len(links))
        return cached

    def _fluid_batches(self, pending: list) -> list[list[_Instance]]:
        """Sets of ring collectives started at this instant that share links (or a ring whose own
        messages do), large enough for the fluid model; the others are decided one by one."""
        candidates = []
        for inst in pending:
            if not inst.decided:
                found = self._ring_candidate(inst)
                if found is not None:
                    candidates.append((inst, found[0], found[1]))
        if not candidates or (len(candidates) == 1 and not candidates[0][2]):
            return []
        parent = list(range(len(candidates)))

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        owner: dict[int, int] = {}
        for c, (_, links, _) in enumerate(candidates):
            for link in links:
                o = owner.setdefault(link, c)
                if o != c:
                    parent[find(o)] = find(c)
        groups: dict[int, list[int]] = {}
        for c in range(len(candidates)):
            groups.setdefault(find(c), []).append(c)
        batches = []
        for group in groups.values():
            if len(group) == 1 and not candidates[group[0]][2]:
                continue  # alone: the collective fast path
            if sum(len(candidates[c][0].members) for c in group) >= FLUID_MIN_LANES:
                batches.append([candidates[c][0] for c in group])
        return batches

    def _run_batch(self, batch: list[_Instance]) -> None:
        for inst in batch:
            inst.decided = True
        rings = []
        for inst in batch:
            op = inst.waiting[0][1]
            rings.append((inst.members, op, self._slowdown(op)))
        fluid = FluidRings(self, rings, batch[0].t0)
        plan = fluid.run()
        if isinstance(plan, str):
            for inst in batch:
                self._to_event_path(inst)
            return
        for inst in batch:
            del self._instances[(inst.members, inst.tag)]
        self._commit_batch(batch, fluid, plan)

    def _commit_batch(self, batch: list[_Instance], fluid: FluidRings, plan) -> None:
        owner = _Batch(batch, fluid, plan)
        self.fluid_batches += 1
        self._reserve(owner, plan)
        for c, inst in enumerate(batch):
            base = fluid.bases[c]
            self._resume_members(inst, plan.end_s[base:base + len(inst.members)],
                                 plan.link_j[base:base + len(inst.members)])

    def _event_path(self, rank, op, tag, link_j, done):
        yield from ReferenceSimulator._collective(self, rank, op, tag, link_j)
        done.succeed()

    def _ops(self, inst: _Instance) -> tuple:
        by_rank = {rank: op for rank, op, _, _ in inst.waiting}
        return tuple(by_rank[r] for r in inst.members)

    def _schedule(self, inst: _Instance, ops: tuple) -> Schedule:
        return Schedule(self, inst.members, [self._lowered(r, op) for r, op in zip(inst.members, ops)],
                        inst.t0, inst.tag, self._slowdown(ops[0]), inst.starts)

    def _plan(self, inst: _Instance):
        ops = self._ops(inst)
        op = ops[0]
        # What the steps depend on (members of one collective agree on all of it, validate_programs checks,
        # but for alltoallv's counts); not the handle, which names each instance.
        shape = (inst.members, op.op, op.algorithm, op.nbytes, op.root, op.inter_algorithm,
                 tuple(o.send_nbytes for o in ops) if op.op == "alltoallv" else ())
        if shape in self._not_alone:
            return BUSY
        trace = self._traces.get(shape)
        if trace is not None:
            plan = trace.evaluate(self.net, inst.t0)
            if plan is not None:
                return plan
        if (op.op in RING_OPS and op.algorithm == "ring" and len(inst.members) >= VECTOR_MIN_MEMBERS
                and not self.message_efficiency):
            plan = ring_schedule(self, inst.members, op, inst.t0, self._slowdown(op))
        else:
            schedule = self._schedule(inst, ops)
            record = trace is None and len(self._traces) < MAX_TRACES
            plan = schedule.run(record=record)
            if record and not isinstance(plan, str) and schedule.trace.nslots <= MAX_TRACE_MESSAGES:
                self._traces[shape] = schedule.trace
        if isinstance(plan, str) and plan != BUSY:
            self._not_alone.add(shape)  # its own messages share links: it would fail again
        return plan

    def _commit(self, inst: _Instance, plan) -> None:
        """Every member resumes at its end time; the collective's links are reserved until its last byte."""
        self.fast_collectives += 1
        inst.plan = plan
        self._reserve(inst, plan)
        self._resume_members(inst, plan.end_s, plan.link_j)

    def _reserve(self, owner, plan) -> None:
        net = self.net
        self._messages += plan.messages
        bytes_on_link = net.bytes_on_link
        for link, nbytes in plan.link_bytes.items():
            bytes_on_link[link] += nbytes
        reserved = net.reserved_until_s
        by = net.reserved_by
        for link, until in plan.busy_until_s.items():
            reserved[link] = until
            by[link] = owner

    def _resume_members(self, inst: _Instance, end_s, link_j) -> None:
        queue = self.env._queue
        eid = self.env._eid
        position = {rank: i for i, rank in enumerate(inst.members)}
        inst.done = [None] * len(inst.members)
        for rank, op, member_link_j, done in inst.waiting:
            i = position[rank]
            member_link_j[0] = link_j[i]  # a fresh [0.0] per operation
            inst.done[i] = (member_link_j, done)
            # The member's own event, due at its end: one event per member.
            done._ok = True
            done._value = None
            heapq.heappush(queue, (end_s[i], _NORMAL, next(eid), done))

    def _rewait(self, inst: _Instance, i: int, link_j_now: float):
        """Member ``i`` no longer ends at its planned time: it waits on a new event, with the link
        energy of what it has sent by now."""
        member_link_j, due = inst.done[i]
        done = self.env.event()
        done.callbacks, due.callbacks = due.callbacks, []  # the due event fires with nothing waiting on it
        inst.done[i] = (member_link_j, done)
        member_link_j[0] = link_j_now
        return member_link_j, done

    def _materialize(self, inst: _Instance, now: float) -> None:
        """``inst``'s members continue message by message from ``now``: the replay
        gives each one's step, its messages in flight and the ones not yet received."""
        if isinstance(inst, _Batch):
            self._materialize_batch(inst, now)
            return
        if inst.held:
            self._materialize_held(inst, now)
            return
        self.materialized += 1
        env = self.env
        net = self.net
        plan = inst.plan
        inst.plan = None  # message by message from here on
        for link in plan.busy_until_s:
            if net.reserved_by[link] is inst:
                net.reserved_until_s[link] = -math.inf
                net.reserved_by[link] = None
        # Fresh generators: the commit's evaluation consumed its own.
        schedule = self._schedule(inst, self._ops(inst))
        schedule.run(stop_s=now)
        (end, step_end, pending, reduced, cur_sends, cur_recvs, sent, posted, link_j, link_bytes, messages,
         next_start) = schedule.state
        # Undo what the commit counted for messages that now start later, message by message.
        self._messages -= plan.messages - messages
        for link, nbytes in plan.link_bytes.items():
            net.bytes_on_link[link] -= nbytes - link_bytes.get(link, 0)
        members = inst.members
        tag = inst.tag
        waiters = [None] * len(members)
        for i, rank in enumerate(members):
            if end[i] is not None:
                continue  # finished by now: its resume stands
            self._rewait(inst, i, link_j[i])
            outstanding = sum(1 for s in cur_sends[i] if s[8] > now)
            outstanding += sum(1 for r in cur_recvs[i] if r[1] is None or r[1] > now)
            if outstanding:
                waiters[i] = [outstanding, None]
        for i, rank in enumerate(members):
            if end[i] is not None:
                continue
            waiter = waiters[i]
            for dst, nbytes, work, links, cap, latency_s, start, last_s, delivered in cur_sends[i]:
                if delivered <= now:
                    continue
                message = (rank, dst, tag, nbytes, waiter)
                if work is not None and last_s > now:
                    flow = _Flow(net._next_fid, links, cap, latency_s, work, start, message)
                    net._next_fid += 1
                    flow.rate_bytes_per_s = cap
                    flow.t_end_s = last_s
                    flow.alone = True
                    flow.version = 1
                    for link in links:
                        net._flows_on[link][flow.fid] = flow
                    _at(env, delivered, net._delivered_alone, (flow, 1))
                else:
                    _at(env, delivered, net._deliver_value, message)
            for peer, delivered, nbytes, _ in cur_recvs[i]:
                if delivered is None or delivered > now:
                    self._waiting.setdefault((peer, rank, tag), deque()).append((nbytes, waiter))
        # Messages delivered by now whose receive is not posted yet.
        for (src, dst), queue in sent.items():
            for delivered, nbytes, _ in queue:
                if delivered <= now:
                    arrived = self._arrived.get((src, dst, tag))
                    if arrived is None:
                        self._arrived[(src, dst, tag)] = deque((nbytes,))
                    else:
                        arrived.append(nbytes)
        for i, rank in enumerate(members):
            if end[i] is not None:
                continue
            member_link_j, done = inst.done[i]
            env.process(self._continue(rank, schedule.steps[i], waiters[i], reduced[i],
                                       next_start.get(i), member_link_j, schedule.slowdown, tag, done))

    def _materialize_batch(self, batch: _Batch, now: float) -> None:
        """The batch's rings continue message by message from ``now``, from the fluid model's state there."""
        self.materialized += 1
        self.fluid_handed_back += 1
        net = self.net
        plan = batch.plan
        for link in plan.busy_until_s:
            if net.reserved_by[link] is batch:
                net.reserved_until_s[link] = -math.inf
                net.reserved_by[link] = None
        fluid = batch.fluid
        fluid.run(stop_s=now)
        # The commit counted every message; those not sent by now will be counted as they are.
        self._messages -= plan.messages
        for link, nbytes in plan.link_bytes.items():
            net.bytes_on_link[link] -= nbytes
        self._hand_over(fluid, now, batch.instances,
                        lambda inst, i, rank, link_j_now: self._rewait(inst, i, link_j_now))

    def _hand_over(self, fluid: FluidRings, now: float, instances, waits_for) -> None:
        """Rings of ``fluid`` (stopped at ``now``) continue message by message: each member's messages in
        flight, the receive it has posted, the messages delivered for its later steps.  ``waits_for(inst, i,
        rank, link_j_now)`` gives a member's (link energy list, event to succeed at its end), or None for one
        with nothing to continue."""
        env = self.env
        net = self.net
        state = fluid.state
        step, pending, done, active = state["step"], state["pending"], state["done"], state["active"]
        remaining, history, link_j = state["remaining"], state["history"], state["link_j"]
        self._messages += state["messages"]
        sent_now = np.bincount(fluid.entry_link, weights=state["sent_bytes"][fluid.entry_lane].astype(float),
                               minlength=len(fluid.links))
        for link, nbytes in zip(fluid.links.tolist(), sent_now.tolist()):
            net.bytes_on_link[link] += int(nbytes)
        hist_base = fluid.hist_base
        for c, inst in enumerate(instances):
            members = inst.members
            p = len(members)
            base = fluid.bases[c]
            tag = inst.tag
            op_of = {rank: op for rank, op, _, _ in inst.waiting}
            slowdown = fluid.slowdown[base]
            for i, rank in enumerate(members):
                j = base + i
                if done[j]:
                    continue  # finished by now: its resume stands
                s = int(step[j])
                left = base + (i - 1) % p
                left_rank = members[(i - 1) % p]
                # The left neighbour's messages for this member's later steps, delivered by now, wait to be received.
                for later in range(s + 1, min(int(step[left]), int(fluid.nsteps[left]) - 1) + 1):
                    if history[hist_base[left] + later] <= now:
                        self._arrived.setdefault((left_rank, rank, tag), deque()).append(
                            int(fluid.send_nbytes(left, later)))
                if s < 0:
                    continue  # not arrived yet: it will start as the reference engine starts it
                member_link_j, member_done = waits_for(inst, i, rank, float(link_j[j]))
                steps = itertools.islice(self._lowered(rank, op_of[rank]), s + 1, None)
                own = history[hist_base[j] + s]
                theirs = history[hist_base[left] + s]
                resume_s = float(pending[j]) if pending[j] < math.inf else None
                # With its step's end known (resume_s), what is still in flight goes on with nothing waiting on it.
                waiter = [int(not own <= now) + int(not theirs <= now), None]
                right_rank = members[(i + 1) % p]
                message = (rank, right_rank, tag, int(fluid.send_nbytes(j, s)), waiter)
                if active[j]:
                    links, cap, latency_s, _ = self._route(rank, right_rank)
                    flow = _Flow(net._next_fid, links, cap, latency_s, float(remaining[j]), now, message)
                    net._next_fid += 1
                    for link in links:
                        net._flows_on[link][flow.fid] = flow
                        net._touched[link] = None
                    if not net._solve_pending:
                        net._schedule_solve()
                elif own > now:
                    _at(env, float(own), net._deliver_value, message)
                if not theirs <= now:
                    self._waiting.setdefault((left_rank, rank, tag), deque()).append(
                        (int(fluid.send_nbytes(left, s)), waiter))
                if resume_s is not None:
                    # Its step ends at a known time; the next starts after the reduction.
                    env.process(self._continue(rank, steps, None, 0, resume_s, member_link_j, slowdown, tag,
                                               member_done))
                else:
                    env.process(self._continue(rank, steps, waiter, int(fluid.reduced_nbytes(np.array([j]), s)[0]),
                                               None, member_link_j, slowdown, tag, member_done))

    def _continue(self, rank, steps, waiter, reduced, resume_s, link_j, slowdown, tag, done):
        """The rest of a materialized member's collective, as ``ReferenceSimulator._collective`` runs it."""
        env = self.env
        reduce_s_per_byte = self.reduce_s_per_byte
        if waiter is not None:
            if waiter[0]:
                waiter[1] = env.event()
                yield waiter[1]
            if reduce_s_per_byte and reduced:
                yield env.timeout(reduced * reduce_s_per_byte)
        elif resume_s is not None and resume_s > env.now:
            ev = simpy.Event(env)
            _at(env, resume_s, lambda _e, ev=ev: ev.succeed(), None)
            yield ev
        for sends, recvs in steps:
            waiter = [len(sends) + len(recvs), None]
            for t in sends:
                self._send(rank, t.peer, t.nbytes, tag, waiter, link_j, slowdown)
            for t in recvs:
                self._post_recv(t.peer, rank, t.nbytes, tag, waiter)
            if waiter[0]:
                waiter[1] = env.event()
                yield waiter[1]
            if reduce_s_per_byte:
                reduced = sum(t.nbytes for t in recvs if t.reduce)
                if reduced:
                    yield env.timeout(reduced * reduce_s_per_byte)
        done.succeed()


def _event_at(env: simpy.Environment, when_s: float) -> simpy.Event:
    """An event that fires at the absolute time ``when_s``."""
    ev = simpy.Event(env)
    ev._ok = True
    ev._value = None
    heapq.heappush(env._queue, (when_s, _NORMAL, next(env._eid), ev))
    return ev


def _at(env: simpy.Environment, when_s: float, callback, value) -> None:
    """Run ``callback`` at the absolute time ``when_s``: the replay's floats, not now + (when - now)."""
    ev = simpy.Event(env)
    ev._ok = True
    ev._value = value
    ev.callbacks.append(callback)
    heapq.heappush(env._queue, (when_s, _NORMAL, next(env._eid), ev))


def simulate(topology: Topology, programs, **kwargs) -> RunResult:
    return Simulator(topology, programs, **kwargs).run()
