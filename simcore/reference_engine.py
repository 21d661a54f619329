"""The reference engine: runs per-rank programs of operations on a topology, one flow per message.

This is the engine as it was before the collective fast path
(``simcore.engine``), kept unchanged as the reference the fast engine is
tested against (``tests/test_fast_engine.py``) and timed against
(``benchmarks/sim_speed.py``).  Use ``simcore.engine.Simulator``.

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

Simultaneous events are processed in the order they were scheduled (SimPy's
event id), and the network solves rates after all of them (see
``simcore.network``), so a seed determines the result bit for bit.
"""
from __future__ import annotations

import gc
import math
import time
from collections import deque
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import simpy
from simpy.core import EmptySchedule

from simcore.calibration import Calibration
from simcore.network import FlowNetwork
from simcore.result import Record, RunResult, group_comm_table, records_frame
from topologies import Topology
from workloads.collectives import lower, lower_in_group, root_peer
from workloads.groups import WORLD, ProcessGroups
from workloads.ops import Collective, Compute, Irecv, Isend, Operation, Recv, Send, Wait, record_groups
from workloads.stragglers import SlowdownSampler, StragglerSpec, rank_streams
from workloads.validate import validate_programs


PROGRESS_EVERY_EVENTS = 200_000


class SimulationError(RuntimeError):
    """A scenario that cannot run to the end; ``partial`` holds what was computed."""

    def __init__(self, message: str, partial: RunResult | None = None):
        super().__init__(message)
        self.partial = partial


class DeadlockError(SimulationError):
    """Ranks wait for messages that never come."""


class NonFiniteResultError(SimulationError):
    """A time or an energy came out infinite or NaN: some value of the scenario
    (a latency, a bandwidth, a speed, a power) is too large or too small for
    float seconds and joules.  The message names the quantity and the values
    that likely caused it."""


_INF = math.inf
# Topology values beyond these are no physical machine; the message about a
# non-finite result names them as the likely cause.
_HUGE = 1e100
_TINY = 1e-100


class ReferenceSimulator:
    """Simulates ``programs[r]`` (a list of operations) on rank ``r`` of ``topology``."""

    def __init__(
        self,
        topology: Topology,
        programs: Sequence[Sequence[Operation]],
        *,
        seed: int = 0,
        stragglers: StragglerSpec | None = None,
        count_idle_energy: bool = True,
        name: str = "",
        calibration: Calibration | None = None,
        aligned: bool = False,
        process_groups: ProcessGroups | None = None,
    ):
        self.topology = topology
        self.programs = [list(p) for p in programs]
        self.seed = int(seed)
        self.stragglers = stragglers or StragglerSpec()
        self.count_idle_energy = count_idle_energy
        self.name = name
        # A measured machine's corrections (simcore.calibration): the time a
        # lowered collective spends reducing each byte it receives, and per-size
        # bandwidth factors for messages and for the library's own collectives.
        self.calibration = calibration or Calibration()
        self.reduce_s_per_byte = float(self.calibration.reduce_s_per_byte)
        self.message_efficiency = self.calibration.message_efficiency
        self.collective_efficiency = self.calibration.collective_efficiency
        # Sends that complete before their bytes arrive (Calibration.eager_bytes,
        # send_buffer_bytes): the messages each (src, dst) has yet to deliver, in order.
        self.buffered_sends = self.calibration.buffered_sends
        self._channels: dict[tuple[int, int], deque] = {}
        # Start every operation index on all ranks together, as a real run
        # timed with a barrier before each operation does (the barrier itself
        # costs nothing here: the real run does not time it either).
        self.aligned = aligned
        if aligned and len({len(p) for p in self.programs}) != 1:
            raise ValueError("aligned simulation needs every rank to run the same number of operations")
        self.nranks = topology.nranks
        self.groups = topology.groups()
        self.process_groups = process_groups or ProcessGroups(self.nranks)
        validate_programs(self.programs, self.nranks, self.groups, self.process_groups)
        # Tags: a user's tag t on the group named names[i] is t * G + i; the
        # k-th collective (k >= 1) a rank starts on it is -(G * (k - 1) + i + 1).
        # Groups of one name are disjoint, so (src, dst, tag) never mixes them.
        self._group_names = self.process_groups.names
        self._group_number = {name: i for i, name in enumerate(self._group_names)}
        for rank in self.stragglers.ranks:
            if not 0 <= rank < self.nranks:
                raise ValueError(f"stragglers.ranks names rank {rank}, but there are {self.nranks} ranks")
        self._peaks = self._compute_peaks()

    def _compute_peaks(self) -> list[dict[str, float]]:
        """Per rank, the peak FLOP/s of every precision its Compute ops name
        ("" is flops_per_s), checked here so that a run never stops half-way
        on a precision the node lacks."""
        topo = self.topology
        peaks = []
        for rank, program in enumerate(self.programs):
            known = {"": topo.rank_flops_per_s[rank]}
            # Each distinct operation object once: programs repeat a few computes many times.
            for op in {id(op): op for op in program}.values():
                if type(op) is Compute and op.precision not in known:
                    try:
                        known[op.precision] = topo.peak_flops_per_s(rank, op.precision)
                    except ValueError as exc:
                        index = next(i for i, other in enumerate(program) if type(other) is Compute
                                     and other.precision == op.precision)
                        first = program[index]
                        label = f" {first.label!r}" if first.label else ""
                        raise ValueError(f"rank {rank} op {index} (compute{label}): precision {op.precision!r}: "
                                         f"{exc}") from None
            peaks.append(known)
        return peaks

    # -- the run -----------------------------------------------------------------

    def run(self, progress: Callable[[float, int], None] | None = None) -> RunResult:
        """Simulate to the end; ``progress(simulated_s, events)`` is called every
        ``PROGRESS_EVERY_EVENTS`` events (it may print; it cannot change the run)."""
        wall0 = time.perf_counter()
        env = simpy.Environment()
        self.env = env
        self.net = self._network(env)
        self._route_cache: dict[tuple[int, int], tuple] = {}
        self._arrived: dict[tuple, deque] = {}
        self._waiting: dict[tuple, deque] = {}
        self._records: list[tuple] = []
        self._compute_s = [0.0] * self.nranks
        self._comm_s = [0.0] * self.nranks
        self._wait_s = [0.0] * self.nranks
        self._end_s = [None] * self.nranks
        self._current: list[tuple[int, Operation] | None] = [None] * self.nranks
        self._messages = 0
        self._align_events: dict[int, list] = {}
        streams = rank_streams(self.seed, self.nranks)
        self._samplers = [SlowdownSampler(self.stragglers, r, streams[r]) for r in range(self.nranks)]
        for rank in range(self.nranks):
            env.process(self._rank(rank))
        # Millions of short-lived events, flows and tuples, none in cycles that
        # outlive a step: the cyclic collector's passes over them only cost time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        failure = None
        try:
            while True:
                if progress is None:
                    env.run()
                else:
                    step = env.step
                    try:
                        while True:
                            for _ in range(PROGRESS_EVERY_EVENTS):
                                step()
                            progress(env.now, _events_scheduled(env))
                    except EmptySchedule:
                        pass
                if not self._drained():
                    break
        except SimulationError as exc:
            failure = exc
        finally:
            if gc_was_enabled:
                gc.enable()
        wall_s = time.perf_counter() - wall0
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite result is reported below
            result = self._result(wall_s)
        if failure is not None:
            raise type(failure)(str(failure), partial=result)
        not_finite = self._non_finite(result)
        if not_finite:
            # Before the deadlock check: NaN times disorder SimPy's queue, so a
            # "deadlock" after them is a symptom, not the cause.
            raise NonFiniteResultError(not_finite, partial=result)
        unfinished = [r for r in range(self.nranks) if self._end_s[r] is None]
        if unfinished:
            raise DeadlockError(self._deadlock_message(unfinished), partial=result)
        unreceived = self._unreceived()
        if unreceived:
            raise SimulationError(
                "messages were sent but never received (a missing recv, or a tag or peer that does not match):\n  "
                + "\n  ".join(unreceived),
                partial=result,
            )
        return result

    def _drained(self) -> bool:
        """Called when no event is left: True if the engine scheduled more (the fast engine's held collectives)."""
        return False

    def _network(self, env: simpy.Environment) -> FlowNetwork:
        return FlowNetwork(env, self.topology.link_bandwidth_bytes_per_s, self._on_delivered(),
                           self.calibration.link_burst_bytes)

    def _on_delivered(self):
        return self._delivered_part if self.buffered_sends else self._delivered

    def _rank(self, rank: int):
        env = self.env
        records = self._records
        flops_per_s = self.topology.rank_flops_per_s[rank]
        peaks = self._peaks[rank]
        memory_bytes_per_s = self.topology.rank_memory_bandwidth_bytes_per_s[rank]
        efficiency: dict[tuple, float] = {}  # GEMM shape -> fraction of peak, as programs repeat shapes
        busy_w = self.topology.rank_busy_power_w[rank]
        # Records charge idle power only where the run does (count_idle).
        idle_w = self.topology.rank_idle_power_w[rank] * (1.0 if self.count_idle_energy else 0.0)
        sampler = self._samplers[rank]
        handles: dict[str, simpy.Event] = {}
        stream_tail: simpy.Event | None = None
        coll_seq = [0] * len(self._group_names)
        ngroups = len(self._group_names)
        number = self._group_number
        aligned = self.aligned
        program = self.programs[rank]
        groups_of = record_groups(program)
        for index, op in enumerate(program):
            self._current[rank] = (index, op)
            if aligned:
                barrier = self._align(index)
                if not barrier.processed:
                    arrived = env.now
                    yield barrier
                    self._wait_s[rank] += env.now - arrived
            start = env.now
            # The link energy of the bytes this operation sends, kept per
            # operation: a background collective's bytes are its own.
            link_j = [0.0]
            if type(op) is Compute:
                slowdown = sampler.next()
                if op.precision or op.gemm or op.nbytes:
                    peak = peaks[op.precision]
                    if op.gemm:
                        fraction = efficiency.get(op.gemm)
                        if fraction is None:
                            fraction = efficiency[op.gemm] = self.topology.gemm_efficiency(rank, *op.gemm)
                        peak = peak * fraction
                    duration = max(op.flops / peak, op.nbytes / memory_bytes_per_s) * slowdown
                else:
                    peak = flops_per_s
                    duration = op.flops / flops_per_s * slowdown
                if not duration < _INF:  # inf or NaN: stop here, where the cause is known
                    raise NonFiniteResultError(
                        _non_finite_compute(self.topology, rank, index, op, duration, peak, slowdown))
                if duration > 0:
                    yield env.timeout(duration)
                self._compute_s[rank] += duration
                records.append(Record(rank, index, "", "compute", "", -1, op.nbytes, op.flops, start, env.now,
                                      busy_w * duration))
                continue
            if type(op) is Collective:
                gi = number[op.group]
                coll_seq[gi] += 1
                # Collectives get negative tags, users' messages non-negative ones.
                tag = -(ngroups * (coll_seq[gi] - 1) + gi + 1)
                if not op.blocking:
                    done = env.event()
                    handles[op.handle] = done
                    env.process(self._nonblocking(rank, index, op, tag, stream_tail, done))
                    stream_tail = done
                    continue
                yield from self._collective(rank, op, tag, link_j)
                peer, nbytes, algorithm = root_peer(op), op.nbytes, op.algorithm
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
                peer, nbytes, algorithm = op.peer, op.nbytes, ""
                self._comm_s[rank] += env.now - start
            elif type(op) is Isend or type(op) is Irecv:
                handles[op.handle] = self._start_p2p(rank, index, op, groups_of[index])
                continue
            else:  # Wait
                pending = [handles[h] for h in op.handles if not handles[h].processed]
                if pending:
                    yield env.all_of(pending)
                peer, nbytes, algorithm = -1, 0, ""
                self._wait_s[rank] += env.now - start
            energy = idle_w * (env.now - start) + link_j[0]
            records.append(Record(rank, index, groups_of[index], op.kind, algorithm, peer, nbytes, 0.0, start,
                                  env.now, energy))
        pending = [h for h in handles.values() if not h.processed]
        if pending:
            # A program that never waits for its last non-blocking operations
            # still ends only when they complete: the communication stream
            # drained, every isend delivered and every irecv matched (else a
            # deadlock names it), so each of them gets its record.
            self._current[rank] = (len(self.programs[rank]), Wait(("<end of program>",)))
            start = env.now
            yield env.all_of(pending)
            self._wait_s[rank] += env.now - start
        self._current[rank] = None
        self._end_s[rank] = env.now

    def _align(self, index: int) -> simpy.Event:
        entry = self._align_events.get(index)
        if entry is None:
            entry = self._align_events[index] = [0, self.env.event()]
        entry[0] += 1
        if entry[0] == self.nranks:
            entry[1].succeed()
        return entry[1]

    def _nonblocking(self, rank, index, op, tag, previous, done):
        if previous is not None and not previous.processed:
            yield previous
        start = self.env.now
        link_j = [0.0]
        yield from self._collective(rank, op, tag, link_j)
        # Idle power is already counted for the rank's time line; a background
        # collective adds only the energy of the bytes it moved.
        self._records.append(
            Record(rank, index, op.group, op.kind, op.algorithm, root_peer(op), op.nbytes, 0.0, start, self.env.now,
                   link_j[0])
        )
        done.succeed()

    def _p2p_address(self, rank: int, op) -> tuple[int, int]:
        """(world rank of the peer, engine tag) of a send, recv, isend or irecv (see the tags in __init__)."""
        peer = op.peer if op.group == WORLD else self.process_groups.world_rank(op.group, rank, op.peer)
        return peer, op.tag * len(self._group_names) + self._group_number[op.group]

    def _start_p2p(self, rank: int, index: int, op, group: str) -> simpy.Event:
        # Isend/Irecv start now; the returned event fires when the message is
        # delivered, and its record (issue to completion) is written then.
        env = self.env
        start = env.now
        link_j = [0.0]
        done = env.event()
        waiter = [1, done]
        world_peer, tag = self._p2p_address(rank, op)
        if type(op) is Isend:
            self._send(rank, world_peer, op.nbytes, tag, waiter, link_j)
        else:
            self._post_recv(world_peer, rank, op.nbytes, tag, waiter)
            if not waiter[0]:
                done.succeed()  # the message was already here

        def record(_event):
            self._records.append(Record(rank, index, group, op.kind, "", op.peer, op.nbytes, 0.0, start, env.now,
                                        link_j[0]))

        done.callbacks.append(record)
        return done

    def _collective(self, rank: int, op: Collective, tag: int, link_j: list):
        env = self.env
        reduce_s_per_byte = self.reduce_s_per_byte
        slowdown = 1.0 / self.collective_efficiency(op.op, op.nbytes) if self.collective_efficiency else 1.0
        if op.group == WORLD:
            steps = lower(op, rank, self.nranks, self.groups)
        else:
            pg = self.process_groups
            steps = lower_in_group(op, pg.members(op.group, rank), pg.index(op.group, rank), self.groups)
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

    # -- messages ------------------------------------------------------------------

    def _route(self, src: int, dst: int):
        key = (src, dst)
        cached = self._route_cache.get(key)
        if cached is None:
            topo = self.topology
            route = topo.route(src, dst)
            bw = topo.link_bandwidth_bytes_per_s
            min_cap = min((bw[l] for l in route.links), default=float("inf"))
            energy_per_byte = sum(topo.link_energy_per_byte_j[l] for l in route.links)
            cached = (route.links, min_cap, route.latency_s, energy_per_byte)
            self._route_cache[key] = cached
        return cached

    def _send(self, src: int, dst: int, nbytes: int, tag: int, waiter: list, link_j: list,
              slowdown: float = 1.0) -> None:
        key = (src, dst)
        cached = self._route_cache.get(key)
        if cached is None:
            cached = self._route(src, dst)
        links, min_cap, latency_s, energy_per_byte = cached
        link_j[0] += nbytes * energy_per_byte
        self._messages += 1
        # The network moves the bytes the calibrated bandwidth would take to move.
        work = nbytes / self.message_efficiency(src, dst, nbytes) if self.message_efficiency else None
        if slowdown != 1.0:
            work = (nbytes if work is None else work) * slowdown
        if self.buffered_sends:
            self._send_buffered(src, dst, nbytes, tag, waiter, links, min_cap, latency_s, work)
            return
        self.net.transfer(links, min_cap, latency_s, nbytes, (src, dst, tag, nbytes, waiter), work)

    def _send_buffered(self, src, dst, nbytes, tag, waiter, links, min_cap, latency_s, work) -> None:
        """A send the transport takes before its bytes arrive.

        It returns at once if its message is eager or fits the send buffer,
        else once all but the buffer's bytes have arrived.  Messages from one
        rank to another leave one after the other, as bytes on one connection
        do, and so arrive in the order they were sent.
        """
        buffered = nbytes <= self.calibration.at_once_bytes
        if buffered:
            _release(waiter)
        job = (src, dst, tag, nbytes, None if buffered else waiter, links, min_cap, latency_s, work)
        channel = self._channels.get((src, dst))
        if channel is None:
            channel = self._channels[(src, dst)] = deque()
        channel.append(job)
        if len(channel) == 1:
            self._start_job(job)

    def _start_job(self, job: tuple) -> None:
        src, dst, tag, nbytes, waiter, links, min_cap, latency_s, work = job
        if waiter is None:
            self.net.transfer(links, min_cap, latency_s, nbytes, (job, False), work)
            return
        # The sender waits for all but the buffer's bytes; the rest leave as
        # they arrive and pay no latency of their own, so that alone on its
        # path the message arrives when one flow of nbytes would.
        head = nbytes - self.calibration.send_buffer_bytes
        self.net.transfer(links, min_cap, latency_s, head, (job, True),
                          None if work is None else work * head / nbytes)

    def _delivered_part(self, part: tuple) -> None:
        job, head = part
        src, dst, tag, nbytes, waiter, links, min_cap, latency_s, work = job
        if head:
            _release(waiter)
            tail = self.calibration.send_buffer_bytes
            # The tail continues the message: no bucket refilled while the head's last bytes crossed.
            self.net.transfer(links, min_cap, 0.0, tail, (job, False), None if work is None else work * tail / nbytes,
                              take_burst=False)
            return
        channel = self._channels[(src, dst)]
        channel.popleft()
        self._delivered((src, dst, tag, nbytes, [2, None]))  # its sender was released already
        if channel:
            self._start_job(channel[0])

    def _delivered(self, message: tuple) -> None:
        src, dst, tag, nbytes, waiter = message
        key = (src, dst, tag)
        waiting = self._waiting.get(key)
        if waiting:
            recv_nbytes, recv_waiter = waiting.popleft()
            if recv_nbytes != nbytes:
                self._size_mismatch(src, dst, tag, recv_nbytes, nbytes)
            _release(recv_waiter)
        else:
            arrived = self._arrived.get(key)
            if arrived is None:
                self._arrived[key] = deque((nbytes,))
            else:
                arrived.append(nbytes)
        _release(waiter)

    def _post_recv(self, src: int, dst: int, nbytes: int, tag: int, waiter: list) -> None:
        key = (src, dst, tag)
        arrived = self._arrived.get(key)
        if arrived:
            sent = arrived.popleft()
            if sent != nbytes:
                self._size_mismatch(src, dst, tag, nbytes, sent)
            waiter[0] -= 1
        else:
            self._waiting.setdefault(key, deque()).append((nbytes, waiter))

    def _size_mismatch(self, src: int, dst: int, tag: int, recv_nbytes: int, send_nbytes: int):
        current = self._current[dst]
        where = f" in op {current[0]} ({current[1].kind})" if current else ""
        raise SimulationError(
            f"at t={self.env.now:.6g} s rank {dst}{where} receives {recv_nbytes} B from rank {src} "
            f"({self._tag_name(tag)}) but the matching send carries {send_nbytes} B"
        )

    def _unreceived(self) -> list[str]:
        lines = []
        for (src, dst, tag), queue in self._arrived.items():
            if queue:
                sizes = ", ".join(f"{n} B" for n in queue)
                lines.append(f"rank {src} -> rank {dst} ({self._tag_name(tag)}): {len(queue)} message(s) of {sizes}")
        return lines

    def _tag_name(self, tag: int) -> str:
        # Negative tags are the engine's own, one per collective a rank starts on a group.
        ngroups = len(self._group_names)
        if tag >= 0:
            user, number = divmod(tag, ngroups)
            name = self._group_names[number]
            return f"tag {user}" + (f" on group {name}" if name else "")
        seq, number = divmod(-tag - 1, ngroups)
        name = self._group_names[number]
        return f"collective #{seq + 1}" + (f" on group {name}" if name else "")

    # -- results -------------------------------------------------------------------

    def _non_finite(self, result: RunResult) -> str:
        """'' if every summary number is finite, else what is not and the likely cause."""
        bad = [f"{key}={value}" for key, value in result.summary.items()
               if isinstance(value, float) and not math.isfinite(value)]
        if not bad:
            return ""
        lines = [f"the result is not finite: {', '.join(bad)}"]
        records = result.records
        if len(records):
            finite = np.isfinite(records["end_s"].to_numpy(float)) & np.isfinite(records["energy_j"].to_numpy(float))
            if not finite.all():
                first = records[~finite].sort_values("start_s", kind="stable").iloc[0]
                lines.append(
                    f"first operation with a non-finite end or energy: rank {int(first['rank'])} op "
                    f"{int(first['op_index'])} ({first['kind']}), end_s={first['end_s']}, energy_j={first['energy_j']}"
                )
        causes = self._extreme_values()
        lines.append("likely cause: " + ("; ".join(causes) if causes else
                     "values that overflow when added up (times are float seconds, energies float joules)"))
        return "\n  ".join(lines)

    def _extreme_values(self) -> list[str]:
        # The topology's values that no physical machine has; each alone can
        # overflow a time or an energy (1e308 s of latency, 1e-320 B/s).
        topo = self.topology
        found = []

        def link(i):
            u, v = topo.links[i]
            return f"link {_name(u)}->{_name(v)}"

        for what, values, extreme in (
            ("latency_s", topo.link_latency_s, lambda x: x > _HUGE),
            ("bandwidth_bytes_per_s", topo.link_bandwidth_bytes_per_s, lambda x: x < _TINY),
            ("energy_per_byte_j", topo.link_energy_per_byte_j, lambda x: x > _HUGE),
        ):
            hits = [i for i, x in enumerate(values) if extreme(x)]
            if hits:
                more = f" (and {len(hits) - 1} more links)" if len(hits) > 1 else ""
                found.append(f"{link(hits[0])} {what}={values[hits[0]]:.6g}{more}")
        for what, values, extreme in (
            ("flops_per_s", topo.rank_flops_per_s, lambda x: x < _TINY),
            ("idle_power_w", topo.rank_idle_power_w, lambda x: x > _HUGE),
            ("busy_power_w", topo.rank_busy_power_w, lambda x: x > _HUGE),
        ):
            hits = [r for r, x in enumerate(values) if extreme(x)]
            if hits:
                more = f" (and {len(hits) - 1} more ranks)" if len(hits) > 1 else ""
                found.append(f"rank {hits[0]} (node {_name(topo.ranks[hits[0]])}) {what}={values[hits[0]]:.6g}{more}")
        ranks = set(topo.ranks)
        for node, power in topo.graph.nodes(data="idle_power_w"):
            if node not in ranks and power is not None and power > _HUGE:
                found.append(f"node {_name(node)} idle_power_w={power:.6g}")
                break
        if self.stragglers.active:
            found.append(f"the straggler model {self.stragglers.kind} {self.stragglers.params}, whose factors "
                         "multiply compute times")
        return found

    def _deadlock_message(self, unfinished: list[int]) -> str:
        waits: dict[int, list[str]] = {}
        for (src, dst, tag), queue in self._waiting.items():
            for nbytes, _ in queue:
                what = f"a message of {nbytes} B from rank {src} ({self._tag_name(tag)})"
                waits.setdefault(dst, []).append(what)
        lines = []
        for rank in unfinished:
            current = self._current[rank]
            where = f"op {current[0]} ({current[1].kind})" if current else "the end of its program"
            what = "; ".join(waits.get(rank, [])) or "non-blocking collectives that cannot finish"
            lines.append(f"rank {rank} waits in {where} for {what}")
        head = f"deadlock at t={self.env.now:.6g} s: {len(unfinished)} rank(s) wait for messages that never come"
        unreceived = self._unreceived()
        if unreceived:
            lines.append("messages that arrived but match no receive: " + "; ".join(unreceived))
        return head + "\n  " + "\n  ".join(lines)

    def _sorted_records(self) -> pd.DataFrame:
        records = records_frame(self._records)
        return records.sort_values(["rank", "op_index"], kind="stable").reset_index(drop=True)

    def _result(self, wall_s: float) -> RunResult:
        topo = self.topology
        records = self._sorted_records()
        ends = [e for e in self._end_s if e is not None]
        makespan = max(ends) if ends else self.env.now
        if len(ends) < self.nranks:
            makespan = self.env.now
        n = self.nranks
        compute_s = np.array(self._compute_s)
        comm_s = np.array(self._comm_s)
        end_s = np.array([e if e is not None else makespan for e in self._end_s])
        wait_s = np.array(self._wait_s) + (makespan - end_s)
        busy_w = np.array(topo.rank_busy_power_w)
        idle_w = np.array(topo.rank_idle_power_w)
        idle_factor = 1.0 if self.count_idle_energy else 0.0
        rank_energy = busy_w * compute_s + idle_factor * idle_w * (makespan - compute_s)
        per_rank = pd.DataFrame(
            {
                "rank": np.arange(n),
                "node": [str(topo.node_of(r)) for r in range(n)],
                "compute_s": compute_s,
                "comm_s": comm_s,
                "wait_s": wait_s,
                "end_s": end_s,
                "slowdown": [s._node_factor if s.spec.scope == "node" else np.nan for s in self._samplers],
                "energy_j": rank_energy,
            }
        )
        rank_nodes = set(topo.ranks)
        other_nodes = [v for v in topo.graph.nodes if v not in rank_nodes]
        other_energy = [
            idle_factor * float(topo.graph.nodes[v].get("idle_power_w", 0.0)) * makespan for v in other_nodes
        ]
        per_node = pd.DataFrame(
            {
                "node": [str(topo.node_of(r)) for r in range(n)] + [str(v) for v in other_nodes],
                "role": ["compute"] * n + [str(topo.graph.nodes[v].get("role", "")) for v in other_nodes],
                "energy_j": list(rank_energy) + other_energy,
            }
        )
        link_bytes = np.array(self.net.bytes_on_link)
        link_energy = link_bytes * np.array(topo.link_energy_per_byte_j)
        used = np.nonzero(link_bytes)[0]
        per_link = pd.DataFrame(
            {
                "link": [f"{topo.links[i][0]}->{topo.links[i][1]}" for i in used],
                "bytes": link_bytes[used],
                "energy_j": link_energy[used],
            }
        )
        node_energy = float(rank_energy.sum())
        other_energy_total = float(sum(other_energy))
        link_energy_total = float(link_energy.sum())
        summary = {
            "scenario": self.name,
            "backend": "sim",
            "topology": topo.name,
            "nranks": n,
            "seed": self.seed,
            "makespan_s": float(makespan),
            "total_energy_j": node_energy + other_energy_total + link_energy_total,
            "node_energy_j": node_energy,
            "other_node_energy_j": other_energy_total,
            "link_energy_j": link_energy_total,
            "compute_s_mean": float(compute_s.mean()),
            "comm_s_mean": float(comm_s.mean()),
            "wait_s_mean": float(wait_s.mean()),
            "operations": int(len(records)),
            "messages": self._messages,
            "events": _events_scheduled(self.env),
            "wall_s": round(wall_s, 4),
        }
        return RunResult(records=records, summary=summary, per_rank=per_rank, per_link=per_link, per_node=per_node,
                         per_group=group_comm_table(records, self.programs, float(makespan)))


def _non_finite_compute(topology, rank, index, op, duration, peak, slowdown) -> str:
    return (f"rank {rank} op {index} (compute) would take {duration} s: {op.flops:.6g} flops at "
            f"{peak:.6g} flop/s (node {_name(topology.ranks[rank])}) with slowdown "
            f"{slowdown:.6g}; a speed near 0 or a flop count or straggler factor near 1e308 "
            "overflows float seconds")


def _name(node) -> str:
    text = str(node)
    return text if len(text) <= 40 else text[:37] + "..."


def _release(waiter: list) -> None:
    waiter[0] -= 1
    if waiter[0] == 0 and waiter[1] is not None:
        waiter[1].succeed()


def simulate_reference(topology: Topology, programs, **kwargs) -> RunResult:
    return ReferenceSimulator(topology, programs, **kwargs).run()


def _events_scheduled(env: simpy.Environment) -> int:
    """Events SimPy scheduled (all of them processed when a run ends)."""
    # SimPy numbers events with an itertools.count; reading it costs nothing
    # per event, unlike counting in an overridden step().
    counter = getattr(env, "_eid", None)
    return int(repr(counter)[6:-1]) if counter is not None else -1
