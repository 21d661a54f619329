"""Collectives computed whole: the interpreter's collective fast paths.

A collective's members that start it at one instant are gathered, and the
collective is decided once they all are in (after every process woken at
that instant, before the network solves):

- ``alone_collectives``: a collective whose members all start it at one
  instant and whose messages have their links to themselves is computed
  whole, in one pass (``simcore.fastpath``; in numpy for a large ring), its
  links reserved until its last byte has left; its members resume at their
  end times.  If another message needs a reserved link earlier, the
  collective is replayed up to that instant and continues message by
  message, as the interpreter runs it without fast paths.
- ``fluid_rings``: ring collectives that start at one instant and share
  links (several groups' rings through one uplink) run together as a fluid
  model (``simcore.fluid``): each step of each ring is a fluid flow, rates
  come from max-min progressive filling in numpy, and the batch is handed
  back to message-by-message simulation at the first instant anything else
  touches its links.
- ``held_rings``: a large ring collective whose members arrive at different
  times (stragglers, a previous collective ending unevenly) holds its links
  from the first member's arrival; when the last one arrives it is computed
  whole with each member's own start, unless another message needed one of
  its links first, in which case it is materialized as messages.

The simulated times are those of message-by-message simulation up to
floating-point rounding: ``tests/test_fast_engine.py`` compares every record
on random scenarios (1e-9 relative; 1e-8 for the fluid batches, whose rates
are summed in another order), ``benchmarks/sim_speed.py`` times both.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import simpy

from simcore.clock import AFTER_PROCESSES, call_at, call_at_end_of_instant, now as clock_now, succeed_at
from simcore.diagnostics import SimulationError
from simcore.fastpath import BUSY, RING_OPS, VECTOR_MIN_MEMBERS, Schedule, Trace, ring_schedule
from simcore.fluid import FluidRings
from workloads.ops import Collective

COLLECTIVE_PATHS = ("alone_collectives", "fluid_rings", "held_rings")
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


class CollectivePath:
    """The collective fast paths ``paths`` (names from ``COLLECTIVE_PATHS``) of one run of ``sim``
    (a ``simcore.engine.Simulator``, whose ``steps`` run a collective message by message)."""

    ZERO = {"fast_collectives": 0, "fluid_batches": 0, "fluid_handed_back": 0, "held": 0,
            "held_handed_back": 0, "materialized": 0}

    def __init__(self, sim, paths: tuple[str, ...]):
        self.sim = sim
        self.env = sim.env
        self.messages = sim.messages
        self.net = sim.messages.net
        self.alone = "alone_collectives" in paths
        self.fluid = "fluid_rings" in paths
        self.holds = "held_rings" in paths
        # Another message that needs a reserved link first hands the collective back as messages.
        self.net.enable_reservations(self._materialize)
        self._instances: dict[tuple, _Instance] = {}
        self._not_alone: set[tuple] = set()
        self._traces: dict[tuple, Trace] = {}
        self._deciding: list[_Instance] = []  # created at this instant, not decided yet
        self._held: dict[int, _Instance] = {}  # ring collectives waiting for their last member, links held
        self._ring_links: dict[tuple, tuple] = {}  # ring members -> (its links, do two of its messages share one)
        self.fast_collectives = 0
        self.fluid_batches = 0
        self.fluid_handed_back = 0
        self.held = 0
        self.held_handed_back = 0
        self.materialized = 0

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.ZERO}

    def run(self, rank: int, op: Collective, tag: int, link_j: list):
        """Rank ``rank``'s part of collective ``op``: gathered with the other members that start it at this
        instant, and computed whole where a fast path can, else message by message."""
        members = self.sim.members(rank, op)
        if len(members) == 1:
            yield from self._plain(rank, op, tag, link_j)
            return
        key = (members, tag)
        env = self.env
        inst = self._instances.get(key)
        if inst is None:
            inst = self._instances[key] = _Instance(members, tag, clock_now(env))
            self._deciding.append(inst)
            # Decided once every member that arrives at this instant is in, before the network solves.
            call_at_end_of_instant(env, AFTER_PROCESSES, self._decide, key)
        elif inst.event_path:
            inst.arrived += 1
            if inst.arrived == len(members):
                del self._instances[key]
            yield from self._plain(rank, op, tag, link_j)
            return
        done = env.event()
        inst.waiting.append((rank, op, link_j, done))
        if inst.held:
            if self._prior_busy(inst, members.index(rank), clock_now(env)):
                # Its own part of the collective before this one still runs: they share its links.
                inst.waiting.pop()
                self._materialize_held(inst, clock_now(env))
                inst.arrived += 1
                if inst.arrived == len(members):
                    del self._instances[key]
                yield from self._plain(rank, op, tag, link_j)
                return
            inst.arrival_s[rank] = clock_now(env)
            if len(inst.waiting) == len(members):
                self._release_held(inst)
        yield done

    def _decide(self, event) -> None:
        inst = self._instances.get(event.value)
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
            plan = self._plan(inst) if self.alone else BUSY
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
        if (not self.holds or self.sim.message_efficiency or self.sim.aligned or len(members) < FLUID_MIN_LANES
                or op.op not in RING_OPS or op.algorithm != "ring"):
            return False
        links, overlap = self._ring_links_of(members)
        net = self.net
        t0 = inst.t0
        priors = {}
        for link in links:
            if net.link_free(link, t0):
                continue
            # Held by the collective before this one on the same ring, whose every link carries one member's
            # messages: each member starts this one after its own part of that one, so they never meet.
            prior = net.reserved_by[link]
            if (overlap or type(prior) is not _Instance or prior.held or prior.plan is None
                    or prior.members != members or not net.link_quiet(link, t0)):
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
        slowdown = self.sim.slowdown(op)
        if not self._ring_links_of(members)[1]:
            # Every message alone on its links: the max-plus recursion, in numpy.
            self._commit(inst, ring_schedule(self.sim, members, op, inst.t0, slowdown, starts=inst.starts))
            return
        fluid = FluidRings(self.sim, [(members, op, slowdown)], inst.t0, starts=inst.starts)
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
        fluid = FluidRings(self.sim, [(members, op, self.sim.slowdown(op))], inst.t0, starts=starts)
        fluid.run(stop_s=now)
        by_rank = {rank: (link_j, done) for rank, _, link_j, done in inst.waiting}

        def waits_for(_inst, _i, rank, link_j_now):
            link_j, done = by_rank[rank]
            link_j[0] = link_j_now
            return link_j, done

        self._hand_over(fluid, now, [inst], waits_for)
        inst.waiting = []

    def drained(self) -> bool:
        """Called when no event is left: True if collectives held for members that will never come
        were handed back as messages (the run goes on)."""
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
        if len(inst.waiting) != len(inst.members) or self.sim.message_efficiency:
            return None
        op = inst.waiting[0][1]
        if op.op not in RING_OPS or op.algorithm != "ring":
            return None
        return self._ring_links_of(inst.members)

    def _ring_links_of(self, members):
        cached = self._ring_links.get(members)
        if cached is None:
            p = len(members)
            links = [link for i in range(p) for link in self.messages.route(members[i], members[(i + 1) % p])[0]]
            cached = self._ring_links[members] = (frozenset(links), len(set(links)) < len(links))
        return cached

    def _fluid_batches(self, pending: list) -> list[list[_Instance]]:
        """Sets of ring collectives started at this instant that share links (or a ring whose own
        messages do), large enough for the fluid model; the others are decided one by one."""
        if not self.fluid:
            return []
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
            rings.append((inst.members, op, self.sim.slowdown(op)))
        fluid = FluidRings(self.sim, rings, batch[0].t0)
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

    def _ops(self, inst: _Instance) -> tuple:
        by_rank = {rank: op for rank, op, _, _ in inst.waiting}
        return tuple(by_rank[r] for r in inst.members)

    def _schedule(self, inst: _Instance, ops: tuple) -> Schedule:
        return Schedule(self.sim, inst.members, [self.sim.lowered(r, op) for r, op in zip(inst.members, ops)],
                        inst.t0, inst.tag, self.sim.slowdown(ops[0]), inst.starts)

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
                and not self.sim.message_efficiency):
            plan = ring_schedule(self.sim, inst.members, op, inst.t0, self.sim.slowdown(op))
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
        self.messages.count += plan.messages
        bytes_on_link = net.bytes_on_link
        for link, nbytes in plan.link_bytes.items():
            bytes_on_link[link] += nbytes
        reserved = net.reserved_until_s
        by = net.reserved_by
        for link, until in plan.busy_until_s.items():
            reserved[link] = until
            by[link] = owner

    def _resume_members(self, inst: _Instance, end_s, link_j) -> None:
        env = self.env
        position = {rank: i for i, rank in enumerate(inst.members)}
        inst.done = [None] * len(inst.members)
        for rank, op, member_link_j, done in inst.waiting:
            i = position[rank]
            member_link_j[0] = link_j[i]  # a fresh [0.0] per operation
            inst.done[i] = (member_link_j, done)
            # The member's own event, due at its end: one event per member.
            succeed_at(env, done, end_s[i])

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
        self.messages.count -= plan.messages - messages
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
                    net.continue_alone(links, cap, latency_s, work, start, last_s, delivered, message)
                else:
                    net.deliver_at(delivered, message)
            for peer, delivered, nbytes, _ in cur_recvs[i]:
                if delivered is None or delivered > now:
                    self.messages.add_waiting(peer, rank, tag, nbytes, waiter)
        # Messages delivered by now whose receive is not posted yet.
        for (src, dst), queue in sent.items():
            for delivered, nbytes, _ in queue:
                if delivered <= now:
                    self.messages.add_arrived(src, dst, tag, nbytes)
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
        self.messages.count -= plan.messages
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
        self.messages.count += state["messages"]
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
                        self.messages.add_arrived(left_rank, rank, tag, int(fluid.send_nbytes(left, later)))
                if s < 0:
                    continue  # not arrived yet: it will start as the reference engine starts it
                member_link_j, member_done = waits_for(inst, i, rank, float(link_j[j]))
                steps = itertools.islice(self.sim.lowered(rank, op_of[rank]), s + 1, None)
                own = history[hist_base[j] + s]
                theirs = history[hist_base[left] + s]
                resume_s = float(pending[j]) if pending[j] < math.inf else None
                # With its step's end known (resume_s), what is still in flight goes on with nothing waiting on it.
                waiter = [int(not own <= now) + int(not theirs <= now), None]
                right_rank = members[(i + 1) % p]
                message = (rank, right_rank, tag, int(fluid.send_nbytes(j, s)), waiter)
                if active[j]:
                    links, cap, latency_s, _ = self.messages.route(rank, right_rank)
                    net.resume(links, cap, latency_s, float(remaining[j]), message)
                elif own > now:
                    net.deliver_at(float(own), message)
                if not theirs <= now:
                    self.messages.add_waiting(left_rank, rank, tag, int(fluid.send_nbytes(left, s)), waiter)
                if resume_s is not None:
                    # Its step ends at a known time; the next starts after the reduction.
                    env.process(self._continue(rank, steps, None, 0, resume_s, member_link_j, slowdown, tag,
                                               member_done))
                else:
                    env.process(self._continue(rank, steps, waiter, int(fluid.reduced_nbytes(np.array([j]), s)[0]),
                                               None, member_link_j, slowdown, tag, member_done))

    def _continue(self, rank, steps, waiter, reduced, resume_s, link_j, slowdown, tag, done):
        """The rest of a materialized member's collective, from the step it is in, message by message."""
        env = self.env
        reduce_s_per_byte = self.sim.reduce_s_per_byte
        if waiter is not None:
            if waiter[0]:
                waiter[1] = env.event()
                yield waiter[1]
            if reduce_s_per_byte and reduced:
                yield env.timeout(reduced * reduce_s_per_byte)
        elif resume_s is not None and resume_s > env.now:
            ev = simpy.Event(env)
            call_at(env, resume_s, lambda _e, ev=ev: ev.succeed(), None)
            yield ev
        yield from self.sim.steps(rank, steps, tag, link_j, slowdown)
        done.succeed()

    def _plain(self, rank: int, op: Collective, tag: int, link_j: list):
        sim = self.sim
        yield from sim.steps(rank, iter(sim.lowered(rank, op)), tag, link_j, sim.slowdown(op))

    def _event_path(self, rank, op, tag, link_j, done):
        yield from self._plain(rank, op, tag, link_j)
        done.succeed()

