"""A folded run's collectives computed whole while their links are their own.

In a run of symmetric rank classes (``simcore.symmetry``) only
representatives run, and a collective's group holds one representative or
several (a ring of 128 data-parallel ranks over four leaf switches folds to
32 representatives, its other members their images).  Every member does what
its representative does at the same instants, so a step's message that a
representative receives is the one its sender's representative sends, seen
through the symmetry (``Messages.matched_as``).  Where every step of every
representative is one send and one receive so matched, and no link carries
the messages (with their images' shadows) of two representatives, each
message is alone on its path: step k of representative i starts at
``s[k][i]``, its message is delivered at ``s + (bytes / bottleneck +
latency)``, and the step ends when that and the message it receives (its
sender's, ``pred[k][i]``) are in, plus the reduction.  That recursion, from
each representative's own start, is the whole collective.

A group of one representative is computed at once.  A group of several is
decided once those that start it at one instant are in: all of them, and it
is computed; else its links are held from then until the last one starts
(the collective before it on the same ring may finish on them meanwhile:
each representative starts this one after its own part of that one), and it
is computed then.  Its links are reserved until their last byte has left; a
message that needs one earlier hands the collective back where it is: each
representative's message under way becomes the network's flow (its
remaining bytes, or its delivery), messages delivered wait to be received,
and the steps after run message by message, as the interpreter runs them
without this path.  The times are the message path's up to rounding
(``tests/test_symmetry.py``).
"""
from __future__ import annotations

import math

import numpy as np

from workloads.ops import Collective

from simcore.clock import AFTER_PROCESSES, call_at_end_of_instant, event_at, now as clock_now, succeed_at


class _Plan:
    """A collective's steps on one group, checked, as arrays over (step, representative)."""

    __slots__ = ("reps", "steps", "nsteps", "sends", "recvs", "routes", "work", "dur", "dur_lat", "red", "pred",
                 "energy_per_byte", "energy_j", "link_bytes", "last_use", "owner", "links", "closed", "seq")

    def __init__(self, reps, steps, sends, recvs, routes, work, dur, lat, red, pred, energy_per_byte, owner,
                 reduce_s_per_byte):
        self.reps, self.steps, self.sends, self.recvs, self.routes = reps, steps, sends, recvs, routes
        self.nsteps = len(sends)
        self.work, self.dur, self.red, self.pred = work, dur, red, pred
        self.dur_lat = dur + lat
        self.energy_per_byte = energy_per_byte
        self.owner = owner  # link -> the one representative whose messages cross it
        R = len(reps)
        self.energy_j = [sum(sends[k][i].nbytes * energy_per_byte[k][i] for k in range(self.nsteps))
                         for i in range(R)]
        link_bytes: dict[int, int] = {}
        last_use: dict[int, tuple[int, int]] = {}
        for k in range(self.nsteps):
            for i in range(R):
                nbytes = sends[k][i].nbytes
                for link in routes[k][i]:
                    link_bytes[link] = link_bytes.get(link, 0) + nbytes
                    last_use[link] = (k, i)
        self.link_bytes = link_bytes
        self.last_use = last_use
        self.links = tuple(last_use)
        # Whether every representative's end waits on every one's start: then none can finish while
        # another has not started, and the collective may be held for its last ones.
        depends = np.eye(R, dtype=bool)
        for k in range(self.nsteps):
            depends = depends | depends[pred[k]]
        self.closed = bool(depends.all())
        # One representative: per step (duration, duration + latency, reduced bytes, links whose last byte
        # it sends), for the scalar recursion of the hot path.
        if R == 1:
            last_at: dict[int, list] = {}
            for link, (k, _) in last_use.items():
                last_at.setdefault(k, []).append(link)
            r = reduce_s_per_byte
            self.seq = [(float(dur[k, 0]), float(self.dur_lat[k, 0]), float(red[k, 0]) * r if r and red[k, 0] else 0.0,
                         tuple(last_at.get(k, ()))) for k in range(self.nsteps)]


class _Whole:
    """One collective of a group's representatives: held for its last ones, then computed whole."""

    __slots__ = ("plan", "tag", "slowdown", "waiting", "arrival_s", "held", "priors", "committed", "handed",
                 "event_path", "arrived")

    def __init__(self, plan, tag, slowdown, waiting=None, arrival_s=None):
        self.plan, self.tag, self.slowdown = plan, tag, slowdown
        R = len(plan.reps)
        self.waiting: list = waiting or [None] * R  # (rank, link_j, done) per representative
        self.arrival_s: list[float] = arrival_s or [math.inf] * R
        self.arrived = 0
        self.held = False
        self.priors: list[_Whole] = []  # computed collectives on the same ring still running on held links
        self.committed = False
        self.handed = False
        self.event_path = False


class FoldedCollectives:
    """The collectives of one folded run of ``sim`` (a ``simcore.engine.Simulator``) whose representatives'
    messages take ``routes`` ((representative, peer) -> (links with shadows, ...), ``simcore.symmetry``)."""

    ZERO = {"folded_whole": 0, "folded_held": 0, "folded_handed_back": 0}

    def __init__(self, sim, routes: dict):
        self.sim = sim
        self.env = sim.env
        self.messages = sim.messages
        self.net = sim.messages.net
        self.rep_of = sim.symmetry.rep_of.tolist()
        self.net.enable_reservations(self._hand_back)
        self._plans: dict[tuple, _Plan | None] = {}
        self._reps: dict[tuple, tuple | None] = {}
        self._gathering: dict[tuple, _Whole] = {}
        self._held: dict[int, _Whole] = {}
        # Link -> (plan, tag) of the last collective of several representatives that ran on it message by
        # message: its messages may still cross it when the next one on that ring is held.
        self._on_messages: dict[int, tuple] = {}
        self.whole = 0
        self.held = 0
        self.handed_back = 0
        # Per link, the (representative, peer) pairs whose messages (or images' shadows) cross it.
        self._pairs_on: dict[int, set] = {}
        for pair, route in routes.items():
            for link in route[0]:
                self._pairs_on.setdefault(link, set()).add(pair)
        self._private: dict[tuple, _Plan | None] = {}  # (rank, id(op)) -> plan (programs keep their ops alive)
        self._overlapped: dict[tuple, bool] = {}

    def counters(self) -> dict[str, int]:
        return {"folded_whole": self.whole, "folded_held": self.held, "folded_handed_back": self.handed_back}

    def _reps_in(self, members: tuple) -> tuple | None:
        """The representatives among ``members``, in group order, if every member's representative is one
        of them; else None (the collective runs message by message)."""
        found = self._reps.get(members, False)
        if found is False:
            rep_of = self.rep_of
            reps = tuple(m for m in members if rep_of[m] == m)
            found = reps if {rep_of[m] for m in members} <= set(reps) else None
            self._reps[members] = found
        return found

    def run(self, rank: int, op, tag: int, link_j: list):
        """``rank``'s part of collective ``op``: whole where it can, else message by message."""
        sim = self.sim
        members = sim.members(rank, op)
        reps = self._reps_in(members)
        plan = None if reps is None else self._plan(reps, op)
        if plan is None:
            yield from sim.steps(rank, iter(sim.lowered(rank, op)), tag, link_j, sim.slowdown(op))
            return
        done = self.env.event()
        if len(reps) == 1:
            if not self._commit_one(plan, tag, sim.slowdown(op), rank, link_j, done):
                yield from sim.steps(rank, iter(sim.lowered(rank, op)), tag, link_j, sim.slowdown(op))
                return
            yield done
            return
        key = (members, tag)
        whole = self._gathering.get(key)
        if whole is None:
            whole = self._gathering[key] = _Whole(plan, tag, sim.slowdown(op))
            # Decided once every representative that starts it at this instant is in.
            call_at_end_of_instant(self.env, AFTER_PROCESSES, self._decide, whole)
        whole.arrived += 1
        if whole.arrived == len(reps):
            del self._gathering[key]
        if whole.event_path:
            yield from sim.steps(rank, iter(sim.lowered(rank, op)), tag, link_j, whole.slowdown)
            return
        i = reps.index(rank)
        whole.waiting[i] = (rank, link_j, done)
        whole.arrival_s[i] = clock_now(self.env)
        if whole.held and whole.arrived == len(reps):
            self._unhold(whole)
            self._commit(whole)
        yield done

    # -- collectives on links no one else uses ------------------------------------------

    def private_plan(self, rank: int, op) -> _Plan | None:
        """The plan of ``rank``'s blocking collective ``op`` where nothing but that rank's own blocking
        collectives on that group ever crosses its links (a tensor-parallel group's NVLinks): its times
        depend on its start alone, so the interpreter runs it inline (``run_private``), as a compute;
        else None."""
        # Keyed by the operation itself: a program repeats a few collective objects thousands of times.
        found = self._private.get((rank, id(op)), False)
        if found is not False:
            return found
        key = (rank, id(op))
        found = None
        members = self.sim.members(rank, op)
        if op.blocking and self._reps_in(members) == (rank,) and not self._overlaps(rank, op.group):
            plan = self._plan((rank,), op)
            if plan is not None and all(src == rank and dst in members for link in plan.links
                                        for src, dst in self._pairs_on.get(link, ())):
                found = plan
        self._private[key] = found
        return found

    def _overlaps(self, rank: int, group: str) -> bool:
        """Whether ``rank``'s program runs a non-blocking collective on ``group`` (it would share the links)."""
        program = self.sim.programs[rank]
        key = (id(program), group)
        found = self._overlapped.get(key)
        if found is None:
            found = self._overlapped[key] = any(
                type(op) is Collective and op.group == group and not op.blocking for op in {id(o): o for o in program}.values())
        return found

    def run_private(self, plan: _Plan, t: float) -> tuple[float, float]:
        """A private collective (``private_plan``) started at ``t``: (its end, its link energy), its bytes
        and messages counted, as ``_commit_one`` would at ``t``."""
        for dur, dur_lat, red_s, _ in plan.seq:
            d = t + dur_lat
            t = d + red_s if red_s else d
        self._count_whole(plan)
        return t, plan.energy_j[0]

    def _count_whole(self, plan: _Plan) -> None:
        """What a collective computed whole adds to the run's counts: its bytes on each link, its messages."""
        bytes_on_link = self.net.bytes_on_link
        for link, nbytes in plan.link_bytes.items():
            bytes_on_link[link] += nbytes
        self.messages.count += plan.nsteps * len(plan.reps)
        self.whole += 1

    def _decide(self, event) -> None:
        whole = event.value
        if whole.arrived == len(whole.plan.reps):
            if self._links_free(whole.plan):
                self._commit(whole)
            else:
                self._to_messages(whole)
        elif not (whole.plan.closed and self._hold(whole)):
            self._to_messages(whole)

    # -- the plan ------------------------------------------------------------------------

    def _plan(self, reps: tuple, op) -> _Plan | None:
        """The checked steps of ``op`` on the group of ``reps``, or None where they do not make a recursion
        of lone messages."""
        key = (reps, op.group, op.op, op.algorithm, op.nbytes, op.root, op.inter_algorithm, op.send_nbytes)
        plan = self._plans.get(key, False)
        if plan is False:
            plan = self._plans[key] = self._make_plan(reps, op)
        return plan

    def _make_plan(self, reps: tuple, op) -> _Plan | None:
        sim, messages = self.sim, self.messages
        rep_of = self.rep_of
        position = {rank: i for i, rank in enumerate(reps)}
        steps = [list(sim.lowered(rank, op)) for rank in reps]
        nsteps = len(steps[0])
        if nsteps == 0 or any(len(s) != nsteps for s in steps):
            return None
        slowdown = sim.slowdown(op)
        R = len(reps)
        sends = [[None] * R for _ in range(nsteps)]
        recvs = [[None] * R for _ in range(nsteps)]
        routes = [[()] * R for _ in range(nsteps)]
        energy_per_byte = [[0.0] * R for _ in range(nsteps)]
        work = np.zeros((nsteps, R))
        dur = np.zeros((nsteps, R))
        lat = np.zeros((nsteps, R))
        red = np.zeros((nsteps, R))
        pred = np.full((nsteps, R), -1, np.int64)
        owner: dict[int, int] = {}
        for i, rank in enumerate(reps):
            for k, (step_sends, step_recvs) in enumerate(steps[i]):
                if len(step_sends) != 1 or len(step_recvs) != 1:
                    return None
                send, recv = step_sends[0], step_recvs[0]
                sends[k][i], recvs[k][i] = send, recv
                links, min_cap, latency_s, energy_per_byte[k][i] = messages.route(rank, send.peer)
                flows = bool(send.nbytes and links)
                w = send.nbytes * slowdown if slowdown != 1.0 else send.nbytes
                work[k, i] = w
                dur[k, i] = w / min_cap if flows else 0.0
                lat[k, i] = latency_s
                red[k, i] = recv.nbytes if recv.reduce else 0
                routes[k][i] = links if flows else ()
                for link in routes[k][i]:
                    if owner.setdefault(link, i) != i:
                        return None  # two representatives' messages would share it
        for k in range(nsteps):
            for q, rank in enumerate(reps):
                send = sends[k][q]
                i = position.get(rep_of[send.peer])
                if i is None or pred[k, i] >= 0:
                    return None
                src, _ = messages.matched_as(rank, send.peer)
                recv = recvs[k][i]
                if recv.peer != src or recv.nbytes != send.nbytes:
                    return None
                pred[k, i] = q
        return _Plan(reps, steps, sends, recvs, routes, work, dur, lat, red, pred, energy_per_byte, owner,
                     sim.reduce_s_per_byte)

    def _links_free(self, plan: _Plan) -> bool:
        now = clock_now(self.env)
        link_free = self.net.link_free
        return all(link_free(link, now) for link in plan.links)

    # -- computed whole ------------------------------------------------------------------

    def _commit_one(self, plan: _Plan, tag: int, slowdown: float, rank: int, link_j: list, done) -> bool:
        """A group with one representative: its collective whole from now, if its links are free (the
        scalar form of ``_commit``, on the hot path)."""
        net, env = self.net, self.env
        t = clock_now(env)
        reserved = net.reserved_until_s
        link_free = net.link_free
        for link in plan.links:
            if reserved[link] > t or not link_free(link, t):
                return False
        whole = _Whole(plan, tag, slowdown, [(rank, link_j, done)], [t])
        whole.committed = True
        by = net.reserved_by
        for dur, dur_lat, red_s, last_links in plan.seq:
            if last_links:
                until = t + dur
                for link in last_links:
                    if until > reserved[link]:
                        reserved[link] = until
                        by[link] = whole
            d = t + dur_lat
            t = d + red_s if red_s else d
        self._count_whole(plan)
        link_j[0] += plan.energy_j[0]
        succeed_at(env, done, t)
        return True

    def _commit(self, whole: _Whole) -> None:
        """Every representative in, from its own start: the whole collective, its links reserved until their
        last byte (a reservation lapses by itself), each representative resuming at its end."""
        plan, net, env = whole.plan, self.net, self.env
        start, last, delivered, end = self._times(plan, whole.arrival_s)
        whole.committed = True
        self._count_whole(plan)
        for i, (_, link_j, _) in enumerate(whole.waiting):
            link_j[0] += plan.energy_j[i]
        reserved, by = net.reserved_until_s, net.reserved_by
        for link, (k, i) in plan.last_use.items():
            until = last[k][i]
            if until > reserved[link]:
                reserved[link] = until
                by[link] = whole
        final = end[-1]
        for i, (_, _, done) in enumerate(whole.waiting):
            succeed_at(env, done, final[i])

    def _times(self, plan: _Plan, starts: list[float]) -> tuple:
        """(start, last byte, delivered, end) of each step of each representative, as lists of rows; a
        representative not started (an infinite start) and those waiting on it never end."""
        r = self.sim.reduce_s_per_byte
        K = plan.nsteps
        if len(plan.reps) == 1:
            start, last, delivered, end = [], [], [], []
            t = starts[0]
            for dur, dur_lat, red_s, _ in plan.seq:
                start.append((t,))
                last.append((t + dur,))
                d = t + dur_lat
                delivered.append((d,))
                t = d + red_s if red_s else d
                end.append((t,))
            return start, last, delivered, end
        R = len(plan.reps)
        starts_a = np.empty((K, R))
        dels = np.empty((K, R))
        ends = np.empty((K, R))
        s = np.array(starts, dtype=float)
        dur_lat, red, pred = plan.dur_lat, plan.red, plan.pred
        for k in range(K):
            starts_a[k] = s
            d = s + dur_lat[k]
            dels[k] = d
            s = np.maximum(d, d[pred[k]])
            if r:
                s = s + red[k] * r
            ends[k] = s
        lasts = starts_a + plan.dur
        return starts_a.tolist(), lasts.tolist(), dels.tolist(), ends.tolist()

    def _release(self, whole: _Whole, now: float) -> None:
        reserved, by = self.net.reserved_until_s, self.net.reserved_by
        for link in whole.plan.links:
            if by[link] is whole:
                reserved[link] = now
                by[link] = None

    # -- held for the last representatives ------------------------------------------------

    def _hold(self, whole: _Whole) -> bool:
        """Hold the links of a collective some representatives have started until the others do; False
        where another's traffic is on them."""
        plan, net = whole.plan, self.net
        now = clock_now(self.env)
        reserved, by = net.reserved_until_s, net.reserved_by
        priors: dict[int, _Whole] = {}
        passes: dict[int, int] = {}
        for link in plan.links:
            # The last collective that ran on it message by message, if on this ring with this owner: its
            # owner starts this one after its own part of that one, so that one's messages may pass.
            on = self._on_messages.get(link)
            if on is not None and (on[0].reps != plan.reps or on[0].owner.get(link) != plan.owner[link]):
                on = None
            if reserved[link] > now:
                # Reserved by the collective before this one on the ring, on the same representative's
                # messages, for the same reason.
                prior = by[link]
                if (type(prior) is not _Whole or not prior.committed or prior.plan.reps != plan.reps
                        or prior.plan.owner.get(link) != plan.owner[link] or not net.link_quiet(link, now)):
                    return False
                priors[id(prior)] = prior
            elif not net.link_quiet(link, now):
                if on is None or any(net.message_of(slot)[2] != on[1] for slot in net.table.slots_on(link)):
                    return False
            if on is not None:
                passes[link] = on[1]
        for link in plan.links:
            reserved[link] = math.inf
            by[link] = whole
        net.reserved_passes.update(passes)
        whole.priors = list(priors.values())
        whole.held = True
        self._held[id(whole)] = whole
        self.held += 1
        return True

    def _unhold(self, whole: _Whole) -> None:
        net = self.net
        reserved, by, passes = net.reserved_until_s, net.reserved_by, net.reserved_passes
        for link in whole.plan.links:
            if by[link] is whole:
                reserved[link] = -math.inf
                by[link] = None
            passes.pop(link, None)
        whole.held = False
        del self._held[id(whole)]

    def drained(self) -> bool:
        """Called when no event is left: True if collectives held for representatives that will never come
        were handed back as messages (the run goes on)."""
        if not self._held:
            return False
        for whole in list(self._held.values()):
            self._hand_back(whole, self.env.now)
        return True

    def _to_messages(self, whole: _Whole) -> None:
        """The representatives in so far, and those to come, run it message by message."""
        whole.event_path = True
        plan = whole.plan
        for link in plan.links:
            self._on_messages[link] = (plan, whole.tag)
        for entry in whole.waiting:
            if entry is not None:
                rank, link_j, done = entry
                self.env.process(self._message_path(rank, plan.steps[plan.reps.index(rank)], whole, link_j, done))

    def _message_path(self, rank, steps, whole, link_j, done):
        yield from self.sim.steps(rank, iter(steps), whole.tag, link_j, whole.slowdown)
        done.succeed()

    # -- handed back ---------------------------------------------------------------------

    def _hand_back(self, whole: _Whole, now: float) -> None:
        """Another message needs a link of ``whole`` at ``now``: each representative's step under way goes
        on as the network's, the rest message by message."""
        if whole.handed:
            return
        plan = whole.plan
        held = whole.held
        if held:
            # Some representatives are still to come: what those in have done by now, from their starts.
            self._unhold(whole)
            for prior in whole.priors:
                self._hand_back(prior, now)
            whole.event_path = True
            for link in plan.links:
                self._on_messages[link] = (plan, whole.tag)
        times = self._times(plan, whole.arrival_s)
        if not held:
            self._release(whole, now)
            if now >= max(times[3][-1]):
                return  # it ends at this instant: nothing is left to hand back
        whole.handed = True
        self.handed_back += 1
        messages, net, env = self.messages, self.net, self.env
        K, R = plan.nsteps, len(plan.reps)
        start, last, delivered, end = times
        # Each representative's step at ``now`` (K: finished).
        step = [next((k for k in range(K) if end[k][i] > now), K) for i in range(R)]
        bytes_on_link = net.bytes_on_link
        for i in range(R):
            entry = whole.waiting[i]
            # A computed collective counted every step; the message path counts those after the current one
            # again.  A held one counted none: what has been sent by now is counted here.
            steps = range(step[i] + 1, K) if not held else range(min(step[i] + 1, K) if entry is not None else 0)
            sign = -1 if not held else 1
            for k in steps:
                send = plan.sends[k][i]
                for link in plan.routes[k][i]:
                    bytes_on_link[link] += sign * send.nbytes
                if entry is not None:
                    entry[1][0] += sign * send.nbytes * plan.energy_per_byte[k][i]
                messages.count += sign
        tag = whole.tag
        for i in range(R):
            entry = whole.waiting[i]
            k = step[i]
            if entry is None:
                # Not started: it will run message by message; what was sent to it by now waits for it.
                for later in range(K):
                    q = int(plan.pred[later, i])
                    if delivered[later][q] <= now:
                        recv = plan.recvs[later][i]
                        messages.add_arrived(recv.peer, plan.reps[i], tag, recv.nbytes)
                continue
            if k == K:
                continue  # finished by now: its resume stands
            rank, link_j, done = entry
            # Its due event (if any) fires with nothing waiting on it; the continuation succeeds a new one.
            fresh = env.event()
            fresh.callbacks, done.callbacks = done.callbacks, []
            send, recv = plan.sends[k][i], plan.recvs[k][i]
            q = int(plan.pred[k, i])
            own, theirs = delivered[k][i], delivered[k][q]
            waiter = [int(own > now) + int(theirs > now), None]
            if own > now:
                src, dst = messages.matched_as(rank, send.peer)
                message = (src, dst, tag, send.nbytes, waiter)
                if now < last[k][i]:
                    links, min_cap, latency_s, _ = messages.route(rank, send.peer)
                    net.resume(links, min_cap, latency_s, plan.work[k, i] - (now - start[k][i]) * min_cap, message)
                else:
                    net.deliver_at(own, message)
            if theirs > now:
                messages.add_waiting(recv.peer, rank, tag, recv.nbytes, waiter)
            # Its senders' messages for its later steps, delivered by now, wait to be received.
            for later in range(k + 1, K):
                q = int(plan.pred[later, i])
                if delivered[later][q] <= now:
                    later_recv = plan.recvs[later][i]
                    messages.add_arrived(later_recv.peer, rank, tag, later_recv.nbytes)
            reduced = recv.nbytes if recv.reduce else 0
            env.process(self._continue(whole, i, k, waiter if own > now or theirs > now else None, reduced,
                                       end[k][i], fresh))

    def _continue(self, whole: _Whole, i: int, k: int, waiter, reduced: int, end_s: float, done):
        env, sim = self.env, self.sim
        rank, link_j, _ = whole.waiting[i]
        if waiter is not None:
            if waiter[0]:
                waiter[1] = env.event()
                yield waiter[1]
            if sim.reduce_s_per_byte and reduced:
                yield env.timeout(reduced * sim.reduce_s_per_byte)
        elif end_s > env.now:
            yield event_at(env, end_s)
        yield from sim.steps(rank, iter(whole.plan.steps[i][k + 1:]), whole.tag, link_j, whole.slowdown)
        done.succeed()
