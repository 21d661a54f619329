"""A folded run's collectives computed whole while their links are their own.

In a run of symmetric rank classes (``simcore.symmetry``) a representative
runs a collective on a turned group alone: every member does what it does
at the same instants, so in each step of a ring the message it receives is
the image of the one it sends.  Where every step is one send and one
receive of that kind, and the links of its messages (with their images'
shadows) carry nothing else, each message is alone on its path: step k ends
at start + (bytes / bottleneck + latency) + the reduction, and the whole
collective is one event.  Its links are reserved until its last byte has
left; a message that needs one earlier hands the collective back where it
is: the step under way becomes the network's flow (its remaining bytes, or
its delivery), and the steps after it run message by message, as the
interpreter runs them without this path.  The times are the message path's
up to rounding (``tests/test_symmetry.py``).
"""
from __future__ import annotations

from simcore.clock import call_at, now as clock_now


class _Whole:
    """One collective of one representative, computed whole."""

    __slots__ = ("rank", "tag", "plan", "times", "link_j", "slowdown", "steps", "done", "handed", "links")

    def __init__(self, rank, tag, plan, times, link_j, slowdown, steps, done, links):
        self.rank, self.tag, self.plan, self.times = rank, tag, plan, times
        self.link_j, self.slowdown, self.steps, self.done = link_j, slowdown, steps, done
        self.handed = False
        self.links = links


class FoldedCollectives:
    """The collectives of one folded run of ``sim`` (a ``simcore.engine.Simulator``)."""

    ZERO = {"folded_whole": 0, "folded_handed_back": 0}

    def __init__(self, sim):
        self.sim = sim
        self.env = sim.env
        self.messages = sim.messages
        self.net = sim.messages.net
        self.net.enable_reservations(self._hand_back)
        self._plans: dict[tuple, tuple | None] = {}
        self.whole = 0
        self.handed_back = 0

    def counters(self) -> dict[str, int]:
        return {"folded_whole": self.whole, "folded_handed_back": self.handed_back}

    def _plan(self, rank: int, op):
        """(the lowered steps, per step (send, recv, links, work, duration, latency, reduced bytes, energy per
        byte), every link) where each step is one send whose image is the step's one receive; else None."""
        key = (id(op), rank)
        if key in self._plans:
            return self._plans[key]
        sim, messages = self.sim, self.messages
        steps = list(sim.lowered(rank, op))
        slowdown = sim.slowdown(op)
        plan = []
        links_used: dict[int, None] = {}
        for sends, recvs in steps:
            if len(sends) != 1 or len(recvs) != 1:
                plan = None
                break
            send, recv = sends[0], recvs[0]
            if messages.matched_as(rank, send.peer) != (recv.peer, rank) or send.nbytes != recv.nbytes:
                plan = None
                break
            links, min_cap, latency_s, energy_per_byte = messages.route(rank, send.peer)
            work = send.nbytes * slowdown if slowdown != 1.0 else send.nbytes
            flows = bool(send.nbytes and links)
            duration = work / min_cap if flows else 0.0
            plan.append((send, recv, links if flows else (), work, duration, latency_s,
                         recv.nbytes if recv.reduce else 0, energy_per_byte))
            for link in (links if flows else ()):
                links_used[link] = None
        result = None if plan is None else (steps, tuple(plan), tuple(links_used))
        self._plans[key] = result
        return result

    def run(self, rank: int, op, tag: int, link_j: list):
        """``rank``'s part of collective ``op``: whole where it can, else message by message."""
        sim, env, net = self.sim, self.env, self.net
        planned = self._plan(rank, op)
        now = clock_now(env)
        if planned is None or not all(net.link_free(link, now) for link in planned[2]):
            yield from sim.steps(rank, iter(sim.lowered(rank, op)), tag, link_j, sim.slowdown(op))
            return
        steps, plan, links = planned
        r = sim.reduce_s_per_byte
        times = []
        t = now
        bytes_on_link = net.bytes_on_link
        last_byte = {}
        for send, recv, step_links, work, duration, latency_s, reduced, energy_per_byte in plan:
            last = t + duration
            delivered = t + (duration + latency_s)
            end = delivered + reduced * r if r and reduced else delivered
            times.append((t, last, delivered, end))
            for link in step_links:
                bytes_on_link[link] += send.nbytes
                last_byte[link] = last
            link_j[0] += send.nbytes * energy_per_byte
            t = end
        self.messages.count += len(plan)
        done = env.event()
        whole = _Whole(rank, tag, plan, times, link_j, sim.slowdown(op), steps, done, links)
        reserved, by = net.reserved_until_s, net.reserved_by
        for link, until in last_byte.items():
            if until > reserved[link]:
                reserved[link] = until
                by[link] = whole
        self.whole += 1
        call_at(env, t, self._finish, whole)
        yield done

    def _finish(self, event) -> None:
        whole = event.value
        if whole.handed:
            return
        self._release(whole, clock_now(self.env))
        whole.done.succeed()

    def _release(self, whole: _Whole, now: float) -> None:
        reserved, by = self.net.reserved_until_s, self.net.reserved_by
        for link in whole.links:
            if by[link] is whole:
                reserved[link] = now
                by[link] = None

    def _hand_back(self, whole: _Whole, now: float) -> None:
        """Another message needs a link of ``whole`` at ``now``: the step under way goes on as the network's,
        the rest message by message."""
        if whole.handed:
            return
        self._release(whole, now)
        times = whole.times
        if now >= times[-1][3]:
            return  # it ends at this instant: nothing is left to hand back
        whole.handed = True
        self.handed_back += 1
        k = next(i for i, (_, _, _, end) in enumerate(times) if end > now)
        messages, net = self.messages, self.net
        # The steps after k were counted as computed whole: the message path counts them again.
        for send, _, step_links, _, _, _, _, energy_per_byte in whole.plan[k + 1:]:
            for link in step_links:
                net.bytes_on_link[link] -= send.nbytes
            whole.link_j[0] -= send.nbytes * energy_per_byte
        messages.count -= len(whole.plan) - k - 1
        send, recv, step_links, work, duration, latency_s, reduced, _ = whole.plan[k]
        start, last, delivered, end = times[k]
        waiter = None
        if now < delivered:
            waiter = [2, None]
            messages.post_recv(recv.peer, whole.rank, recv.nbytes, whole.tag, waiter)
            src, dst = messages.matched_as(whole.rank, send.peer)
            message = (src, dst, whole.tag, send.nbytes, waiter)
            if now < last:
                _, min_cap, _, _ = messages.route(whole.rank, send.peer)
                net.resume(step_links, min_cap, latency_s, work - (now - start) * min_cap, message)
            else:
                net.deliver_at(delivered, message)
        self.env.process(self._continue(whole, k, waiter, reduced, end))

    def _continue(self, whole: _Whole, k: int, waiter, reduced: int, end_s: float):
        env, sim = self.env, self.sim
        if waiter is not None:
            if waiter[0]:
                waiter[1] = env.event()
                yield waiter[1]
            if sim.reduce_s_per_byte and reduced:
                yield env.timeout(reduced * sim.reduce_s_per_byte)
        elif end_s > env.now:
            yield env.timeout(end_s - env.now)
        yield from sim.steps(whole.rank, iter(whole.steps[k + 1:]), whole.tag, whole.link_j, whole.slowdown)
        whole.done.succeed()
