"""The engine: one interpreter runs per-rank programs of operations on a topology.

Each rank is a SimPy process that executes its operations in order.  Compute
follows the roofline: max(flops / (peak x GEMM efficiency), nbytes / memory
bandwidth) times the rank's straggler slowdown, where the peak is the node's
for the op's precision and the efficiency its table's value at the op's GEMM
shape (``Topology.peak_flops_per_s``, ``Topology.gemm_efficiency``); a plain
``Compute(flops)`` takes flops / flops_per_s.  Messages are matched per
(source, destination, tag) in FIFO order, as MPI's non-overtaking rule does;
a send completes when its last byte arrives (``simcore.messages``).
Collectives run the point-to-point steps their algorithm lowers to
(``workloads.collectives``), so the simulator executes exactly the steps a
real run in algorithm mode does.  A collective on a process group
(``workloads.groups``) runs among the group's ranks, over the topology's
routes between them; collectives of different groups run at once and share
links as any flows do.  Messages on different groups never match, as on
different MPI communicators.

Fast paths are strategies the interpreter consults; each gives the same
simulated times as running without it (``tests/test_fast_engine.py``
compares them on random scenarios, 1e-9 relative), and ``fast_paths=()``
(``REFERENCE``) runs every operation one event at a time, message by message:

- ``merged_computes``: a run of computes costs one event; their records are
  the same sums of durations the one-at-a-time timeouts add up.
- ``alone_collectives``, ``fluid_rings``, ``held_rings``: collectives
  computed whole rather than message by message (``simcore.collective_path``).
- ``symmetric_ranks``: ranks in classes that behave alike (``simcore.symmetry``)
  simulated once per class, the others given their representative's records;
  the collective strategies stand aside then (a turned group's collective is
  one process, run message by message).

Simultaneous events are processed in the order they were scheduled (SimPy's
event id), and the network solves rates after all of them (see
``simcore.network``), so a seed determines the result bit for bit.
"""
from __future__ import annotations

import gc
import time
from math import inf as _INF
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import simpy
from simpy.core import EmptySchedule

from simcore.calibration import Calibration
from simcore.clock import event_at, events_scheduled, now as clock_now
from simcore.collective_path import COLLECTIVE_PATHS, CollectivePath
from simcore.diagnostics import (
    DeadlockError,
    NonFiniteResultError,
    SimulationError,
    non_finite_compute,
    non_finite_result,
)
from simcore.folded_path import FoldedCollectives
from simcore.messages import Messages
from simcore.recordlog import RecordLog
from simcore.result import RunResult, group_comm_table, images_of_records
from simcore.stragglers import SlowdownSampler, rank_streams
from simcore.symmetry import find_symmetry, rep_pairs, shadowed_routes
from topologies import Topology
from workloads.collectives import lower, lower_in_group, root_peer
from workloads.groups import WORLD, ProcessGroups
from workloads.ops import Collective, Compute, Irecv, Isend, Operation, Recv, Send, Wait, wait_group
from workloads.stragglers import StragglerSpec
from workloads.validate import Programs, distinct_programs, validated

__all__ = ["FAST_PATHS", "PROGRESS_EVERY_EVENTS", "REFERENCE", "DeadlockError", "NonFiniteResultError",
           "SimulationError", "Simulator", "simulate"]

PROGRESS_EVERY_EVENTS = 200_000
FAST_PATHS = ("merged_computes",) + COLLECTIVE_PATHS + ("symmetric_ranks",)
REFERENCE = ()  # every fast path off: the interpreter the fast paths are tested against


class Simulator:
    """Simulates ``programs[r]`` (a list of operations) on rank ``r`` of ``topology``.

    ``fast_paths``: the strategies to use, a subset of ``FAST_PATHS`` (all by default).
    """

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
        fast_paths: Iterable[str] = FAST_PATHS,
        expand_records: bool = True,
    ):
        self.topology = topology
        # False: a folded run's result keeps its representatives' records only (RunResult.rep_of says whose
        # each rank's are), so its memory grows with the classes, not the ranks.
        self.expand_records = expand_records
        # A scenario's programs are kept as they are (checked already, see below); others are copied.
        self.programs = programs if isinstance(programs, Programs) else [list(p) for p in programs]
        self.seed = int(seed)
        self.stragglers = stragglers or StragglerSpec()
        self.count_idle_energy = count_idle_energy
        self.name = name
        fast_paths = tuple(fast_paths)
        unknown = [f for f in fast_paths if f not in FAST_PATHS]
        if unknown:
            raise ValueError(f"unknown fast path {unknown[0]!r}; known: {', '.join(FAST_PATHS)}")
        # A measured machine's corrections (simcore.calibration): the time a
        # lowered collective spends reducing each byte it receives, and per-size
        # bandwidth factors for messages and for the library's own collectives.
        self.calibration = calibration or Calibration()
        self.reduce_s_per_byte = float(self.calibration.reduce_s_per_byte)
        self.message_efficiency = self.calibration.message_efficiency
        self.collective_efficiency = self.calibration.collective_efficiency
        # Start every operation index on all ranks together, as a real run
        # timed with a barrier before each operation does (the barrier itself
        # costs nothing here: the real run does not time it either).
        self.aligned = aligned
        if aligned and len({len(p) for p in self.programs}) != 1:
            raise ValueError("aligned simulation needs every rank to run the same number of operations")
        self.merge_computes = "merged_computes" in fast_paths
        self.fold = "symmetric_ranks" in fast_paths
        self.symmetry = None
        self._symmetry_sought = False
        self.fold_note = "" if self.fold else "off"
        # The collective paths assume a send completes as its message arrives, on links without buckets.
        exact = not self.calibration.buffered_sends and not self.calibration.link_burst_bytes
        self.collective_paths = tuple(f for f in fast_paths if f in COLLECTIVE_PATHS) if exact else ()
        self.nranks = topology.nranks
        self.world = tuple(range(self.nranks))
        self.groups = topology.groups()
        self.process_groups = process_groups or ProcessGroups(self.nranks)
        # Checked once: a scenario's programs (workloads.validate.Programs) were checked as it loaded.
        self.programs = validated(self.programs, self.nranks, self.groups, self.process_groups)
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
        # The first compute of each precision, per distinct program: ranks often run equal programs (a
        # pipeline stage's), and a training step's are millions of operations; programs repeat a few
        # compute objects many times, each looked at once.
        distinct, program_of = distinct_programs(self.programs)
        precisions_of = [list({op.precision: op for op in {id(op): op for op in program}.values()
                               if type(op) is Compute}.values()) for program in distinct]
        for rank, program in enumerate(self.programs):
            known = {"": topo.rank_flops_per_s[rank]}
            for op in precisions_of[program_of[rank]]:
                if op.precision not in known:
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

    # -- what the fast paths read ----------------------------------------------------

    @property
    def net(self):
        return self.messages.net

    def counters(self) -> dict[str, int]:
        """How often each collective fast path ran and handed back (zeros where it is off)."""
        counts = self._collectives.counters() if self._collectives is not None else dict(CollectivePath.ZERO)
        folded = getattr(self, "_folded", None)
        counts.update(folded.counters() if folded is not None else FoldedCollectives.ZERO)
        return counts

    # -- the run -----------------------------------------------------------------

    def run(self, progress: Callable[[float, int], None] | None = None) -> RunResult:
        """Simulate to the end; ``progress(simulated_s, events)`` is called every
        ``PROGRESS_EVERY_EVENTS`` events (it may print; it cannot change the run)."""
        wall0 = time.perf_counter()
        env = simpy.Environment()
        self.env = env
        self.messages = Messages(env, self.topology, self.calibration, self._size_mismatch)
        if self.fold and not self._symmetry_sought:
            self.find_symmetry()
        sym = self.symmetry
        # Folded, a collective on a turned group runs message by message: its members are one process.
        paths = self.collective_paths if sym is None else ()
        self._collectives = CollectivePath(self, paths) if paths else None
        self._folded = None
        if sym is not None:
            self.messages.fold(self._fold_routes, sym.canonical)
            self._folded = FoldedCollectives(self, self._fold_routes)
        self._log = RecordLog()
        self._compute_s = [0.0] * self.nranks
        self._comm_s = [0.0] * self.nranks
        self._wait_s = [0.0] * self.nranks
        self._end_s = [None] * self.nranks
        self._current: list[tuple[int, Operation] | None] = [None] * self.nranks
        self._align_events: dict[int, list] = {}
        streams = rank_streams(self.seed, self.nranks)
        self._samplers = [SlowdownSampler(self.stragglers, r, streams[r]) for r in range(self.nranks)]
        for rank in (range(self.nranks) if sym is None else sym.reps):
            env.process(self._rank(rank))
        failure = self._loop(env, progress)
        wall_s = time.perf_counter() - wall0
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite result is reported below
            result = self._result(wall_s)
        if failure is not None:
            raise type(failure)(str(failure), partial=result)
        not_finite = non_finite_result(result, self.topology, self.stragglers)
        if not_finite:
            # Before the deadlock check: NaN times disorder SimPy's queue, so a
            # "deadlock" after them is a symptom, not the cause.
            raise NonFiniteResultError(not_finite, partial=result)
        unfinished = [r for r in self._simulated() if self._end_s[r] is None]
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

    def find_symmetry(self) -> None:
        """Ranks in classes that behave alike (simcore.symmetry) into ``symmetry``, or why not into
        ``fold_note``; once (``run`` calls it where the caller has not)."""
        self._symmetry_sought = True
        cal = self.calibration
        sym, why = find_symmetry(self.topology, self.programs, self.process_groups,
                                 stragglers_active=self.stragglers.active, aligned=self.aligned,
                                 buffered=cal.buffered_sends or bool(cal.link_burst_bytes),
                                 pair_efficiency=self.message_efficiency is not None)
        if sym is not None:
            pairs = rep_pairs(sym, self.programs, self.process_groups, self.groups)
            routes, why = shadowed_routes(sym, self.topology, pairs)
            if routes is None:
                sym = None
            else:
                self._fold_routes = routes
        self.symmetry = sym
        self.fold_note = why

    def _symmetry_line(self, simulated: int) -> str:
        """The one line that says whether rank classes were simulated once each, or why not."""
        if self.symmetry is not None:
            dims = " and ".join(f"{d} (shift {k})" if k > 1 else d for d, k in self.symmetry.steps.items())
            return f"{simulated} of {self.nranks} ranks simulated, the others their images under {dims} shifts"
        if self.fold_note == "off":
            return "off: every rank simulated"
        return f"every rank simulated: {self.fold_note}"

    def _simulated(self):
        return range(self.nranks) if self.symmetry is None else self.symmetry.reps

    def _loop(self, env: simpy.Environment, progress) -> SimulationError | None:
        """Process events until none is left; the error that stopped the run, if one did."""
        # Millions of short-lived events, flows and tuples, none in cycles that
        # outlive a step: the cyclic collector's passes over them only cost time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
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
                            progress(env.now, events_scheduled(env))
                    except EmptySchedule:
                        pass
                # No event is left; a fast path holding a collective for members that will now never
                # come hands what it holds back as messages, and the run goes on.
                holder = self._collectives if self._collectives is not None else self._folded
                if holder is None or not holder.drained():
                    return None
        except SimulationError as exc:
            return exc
        finally:
            if gc_was_enabled:
                gc.enable()

    # -- the interpreter -----------------------------------------------------------

    def _rank(self, rank: int):
        env = self.env
        add_record = self._log.add
        computes = self._compute_runner(rank)
        idle_w = self.topology.rank_idle_power_w[rank] * (1.0 if self.count_idle_energy else 0.0)
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
        messages = self.messages
        merge = self.merge_computes and not aligned
        folded = self._folded
        private_plan = folded.private_plan if folded is not None and self.merge_computes else None
        run_private = folded.run_private if private_plan is not None else None
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
            plan = private_plan(rank, op) if private_plan is not None and type(op) is Collective else None
            if type(op) is Compute or plan is not None:
                # Computes, and collectives on links only this rank's own cross (simcore.folded_path), run
                # one after another up to the next operation that meets another rank.
                end_s = clock_now(env)
                failure = ""
                while True:
                    if plan is None:
                        index, end_s, failure = computes(index, end_s)
                        if failure:
                            break
                    else:
                        gi = number[op.group]
                        coll_seq[gi] += 1
                        start = end_s
                        end_s, link_e = run_private(plan, start)
                        self._comm_s[rank] += end_s - start
                        add_record((rank, index, op.group, op.kind, op.algorithm, root_peer(op), op.nbytes, 0.0,
                                    start, end_s, idle_w * (end_s - start) + link_e))
                    if index + 1 == nops:
                        break
                    op = program[index + 1]
                    plan = private_plan(rank, op) if private_plan is not None and type(op) is Collective else None
                    if plan is None and (type(op) is not Compute or not merge):
                        break
                    index += 1
                current[rank] = (index, program[index])
                if end_s > clock_now(env):
                    yield event_at(env, end_s)
                if failure:  # inf or NaN: stop here, where the cause is known, with what came before done
                    raise NonFiniteResultError(failure)
                continue
            start = env.now
            # The link energy of the bytes this operation sends, kept per
            # operation: a background collective's bytes are its own.
            link_j = [0.0]
            if type(op) is Collective:
                gi = number[op.group]
                coll_seq[gi] += 1
                # Collectives get negative tags, users' messages non-negative ones.
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
                    messages.send(rank, world_peer, op.nbytes, tag, waiter, link_j)
                else:
                    messages.post_recv(world_peer, rank, op.nbytes, tag, waiter)
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
            add_record((rank, index, group, op.kind, algorithm, peer, nbytes, 0.0, start, env.now, energy))
        pending = [h for h in handles.values() if not h.processed]
        if pending:
            # A program that never waits for its last non-blocking operations
            # still ends only when they complete: the communication stream
            # drained, every isend delivered and every irecv matched (else a
            # deadlock names it), so each of them gets its record.
            current[rank] = (len(program), Wait(("<end of program>",)))
            start = env.now
            yield env.all_of(pending)
            self._wait_s[rank] += env.now - start
        current[rank] = None
        self._end_s[rank] = env.now

    def _compute_runner(self, rank: int):
        """``run(index, t)``: the compute at ``index`` of ``rank``'s program, started at ``t``, recorded, and
        with merged computes the ones right after it too; gives (the last one's index, its end, and ''
        or why its time is not finite)."""
        add_ints, add_floats, add_bytes, add_flops = self._log.compute_columns()
        cost_of = self._compute_cost(rank)
        # Programs repeat a few Compute objects (a training step: one per layer kind) thousands of times.
        costs: dict[int, tuple] = {}
        busy_w = self.topology.rank_busy_power_w[rank]
        sampler = self._samplers[rank]
        draws = sampler.applies  # else every slowdown is 1.0, drawn from nothing
        compute_s = self._compute_s
        # Aligned: every operation waits for its barrier, so one compute at a time.
        merge = self.merge_computes and not self.aligned
        program = self.programs[rank]
        last = len(program) - 1

        def run(index: int, t: float) -> tuple[int, float, str]:
            while True:
                op = program[index]
                cost = costs.get(id(op))
                if cost is None:
                    cost = costs[id(op)] = cost_of(op)
                base, peak, nbytes, flops = cost
                slowdown = sampler.next() if draws else 1.0
                duration = base * slowdown if draws else base
                if not duration < _INF:
                    return index, t, non_finite_compute(self.topology, rank, index, op, duration, peak, slowdown)
                end = t + duration if duration > 0 else t
                compute_s[rank] += duration
                add_ints((rank, index))
                add_floats((t, end, busy_w * duration))
                add_bytes(nbytes)
                add_flops(flops)
                t = end
                if not merge or index == last or type(program[index + 1]) is not Compute:
                    return index, t, ""
                index += 1

        return run

    def _compute_cost(self, rank: int):
        """``cost(op)`` of a Compute on ``rank``: (its time before slowdown, the peak it runs at, bytes, flops)."""
        topo = self.topology
        flops_per_s = topo.rank_flops_per_s[rank]
        peaks = self._peaks[rank]
        memory_bytes_per_s = topo.rank_memory_bandwidth_bytes_per_s[rank]
        efficiency: dict[tuple, float] = {}  # GEMM shape -> fraction of peak, as programs repeat shapes

        def cost(op: Compute) -> tuple:
            if op.precision or op.gemm or op.nbytes:
                peak = peaks[op.precision]
                if op.gemm:
                    fraction = efficiency.get(op.gemm)
                    if fraction is None:
                        fraction = efficiency[op.gemm] = topo.gemm_efficiency(rank, *op.gemm)
                    peak = peak * fraction
                return max(op.flops / peak, op.nbytes / memory_bytes_per_s), peak, op.nbytes, op.flops
            return op.flops / flops_per_s, flops_per_s, op.nbytes, op.flops

        return cost

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
        self._log.add((rank, index, op.group, op.kind, op.algorithm, root_peer(op), op.nbytes, 0.0, start,
                       self.env.now, link_j[0]))
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
            self.messages.send(rank, world_peer, op.nbytes, tag, waiter, link_j)
        else:
            self.messages.post_recv(world_peer, rank, op.nbytes, tag, waiter)
            if not waiter[0]:
                done.succeed()  # the message was already here

        def record(_event):
            self._log.add((rank, index, group, op.kind, "", op.peer, op.nbytes, 0.0, start, env.now, link_j[0]))

        done.callbacks.append(record)
        return done

    # -- collectives ---------------------------------------------------------------

    def members(self, rank: int, op: Collective) -> tuple[int, ...]:
        """The world ranks of the group ``op`` runs on, as seen from ``rank``."""
        return self.world if op.group == WORLD else self.process_groups.members(op.group, rank)

    def lowered(self, rank: int, op: Collective):
        """``rank``'s steps of collective ``op``: (sends, receives) each, peers as world ranks."""
        if op.group == WORLD:
            return lower(op, rank, self.nranks, self.groups)
        pg = self.process_groups
        return lower_in_group(op, pg.members(op.group, rank), pg.index(op.group, rank), self.groups)

    def slowdown(self, op: Collective) -> float:
        """How much slower than its links a library's collective moves its bytes (a calibrated efficiency)."""
        return 1.0 / self.collective_efficiency(op.op, op.nbytes) if self.collective_efficiency else 1.0

    def _collective(self, rank: int, op: Collective, tag: int, link_j: list):
        if self._collectives is not None:
            yield from self._collectives.run(rank, op, tag, link_j)
        elif self._folded is not None:
            yield from self._folded.run(rank, op, tag, link_j)
        else:
            yield from self.steps(rank, iter(self.lowered(rank, op)), tag, link_j, self.slowdown(op))

    def steps(self, rank: int, steps, tag: int, link_j: list, slowdown: float):
        """Run ``steps`` (sends and receives each) message by message: each step's sends and receives
        at once, the next step when all are done and what was received is reduced."""
        env = self.env
        messages = self.messages
        reduce_s_per_byte = self.reduce_s_per_byte
        for sends, recvs in steps:
            waiter = [len(sends) + len(recvs), None]
            for t in sends:
                messages.send(rank, t.peer, t.nbytes, tag, waiter, link_j, slowdown)
            for t in recvs:
                messages.post_recv(t.peer, rank, t.nbytes, tag, waiter)
            if waiter[0]:
                waiter[1] = env.event()
                yield waiter[1]
            if reduce_s_per_byte:
                reduced = sum(t.nbytes for t in recvs if t.reduce)
                if reduced:
                    yield env.timeout(reduced * reduce_s_per_byte)

    # -- what went wrong ----------------------------------------------------------------

    def _size_mismatch(self, src: int, dst: int, tag: int, recv_nbytes: int, send_nbytes: int):
        current = self._current[dst]
        where = f" in op {current[0]} ({current[1].kind})" if current else ""
        raise SimulationError(
            f"at t={self.env.now:.6g} s rank {dst}{where} receives {recv_nbytes} B from rank {src} "
            f"({self._tag_name(tag)}) but the matching send carries {send_nbytes} B"
        )

    def _unreceived(self) -> list[str]:
        lines = []
        for (src, dst, tag), queue in self.messages.arrived.items():
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

    def _deadlock_message(self, unfinished: list[int]) -> str:
        waits: dict[int, list[str]] = {}
        for (src, dst, tag), queue in self.messages.waiting.items():
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

    # -- results -------------------------------------------------------------------

    def _result(self, wall_s: float) -> RunResult:
        topo = self.topology
        records = self._log.frame([len(p) for p in self.programs])
        sym = self.symmetry
        simulated = list(self._simulated())
        ends = [self._end_s[r] for r in simulated if self._end_s[r] is not None]
        makespan = max(ends) if ends else self.env.now
        if len(ends) < len(simulated):
            makespan = self.env.now
        n = self.nranks
        compute_s = np.array(self._compute_s)
        comm_s = np.array(self._comm_s)
        end_s = np.array([e if e is not None else makespan for e in self._end_s])
        own_wait_s = np.array(self._wait_s)
        link_bytes = np.array(self.net.bytes_on_link)
        messages = self.messages.count
        per_group = None
        if sym is not None:
            # Every rank is its representative's image: the same times, records and bytes.
            rep_of = sym.rep_of
            compute_s, comm_s, end_s, own_wait_s = (a[rep_of] for a in (compute_s, comm_s, end_s, own_wait_s))
            # A rank's exposed communication per group is its representative's: found on theirs alone.
            per_group = images_of_records(group_comm_table(records, self.programs, float(makespan)), rep_of)
            if self.expand_records:
                records = images_of_records(records, rep_of)
            link_bytes = _images_of_link_bytes(link_bytes, sym)
            messages *= sym.size
        wait_s = own_wait_s + (makespan - end_s)
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
                "slowdown": [s.node_factor if s.spec.scope == "node" else np.nan for s in self._samplers],
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
            "messages": messages,
            "simulated_ranks": len(simulated),
            "symmetry": self._symmetry_line(len(simulated)),
            "events": events_scheduled(self.env),
            "wall_s": round(wall_s, 4),
        }
        if sym is not None and not self.expand_records:
            summary["operations"] = int(sum(len(p) for p in self.programs))
        return RunResult(records=records, summary=summary, per_rank=per_rank, per_link=per_link, per_node=per_node,
                         rep_of=None if sym is None or self.expand_records else sym.rep_of,
                         servers=topo.groups(),
                         per_group=per_group if per_group is not None
                         else group_comm_table(records, self.programs, float(makespan)))


def _images_of_link_bytes(link_bytes: np.ndarray, sym) -> np.ndarray:
    """Bytes on every link from those on the representatives' links (their own and their images')."""
    used = np.flatnonzero(link_bytes)
    if not len(used):
        return link_bytes
    images = sym.link_images(used)
    out = np.zeros_like(link_bytes)
    out[images.ravel()] = np.broadcast_to(link_bytes[used], images.shape).ravel()
    return out


def simulate(topology: Topology, programs, **kwargs) -> RunResult:
    return Simulator(topology, programs, **kwargs).run()
