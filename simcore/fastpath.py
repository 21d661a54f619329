"""The collective fast path: a whole collective computed at once, without an event per message.

When every member of a collective starts it at the same instant and its
messages have their links to themselves (no other flow of the simulation on
any link they cross, and no two of its own messages on one link at once),
every message is alone on its path: it is delivered at
start + (bytes / bottleneck bandwidth + latency), exactly the float the flow
network computes for a flow alone in its component.  A member's step then
ends at the latest delivery among its sends and receives, and its next step
starts then (plus the calibrated reduction time).  ``Schedule`` evaluates that
recursion for all members in one pass, in order of step start times, so
that the check "no two of its messages on one link at once" is exact, and
finds every (link, time) the collective occupies.

The engine (``simcore.engine``) reserves those links until the collective's
last byte on each has left.  Should any other message need a reserved link
before then, the engine asks ``Schedule`` to replay the collective up to that
instant (``stop_s``) and hands its state to the event-driven path: the flows
in flight, the messages delivered and not yet received, the receives posted.
Everything before that instant was alone, so the replay is the reference
engine's history to the bit.  (A collective replayed from a recorded
``Trace`` is the exception: it adds precomputed offsets to its start, which
differs from the reference's step-by-step sums by rounding.)

``ring_schedule`` does the same for the ring all-reduce, reduce-scatter and
all-gather of a large group in numpy, one vector operation per step over all
members, with the same floats as ``Schedule``.
"""
from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from workloads.collectives import block_layout

# Why a fast evaluation gave up; an intra-collective overlap recurs for the
# same collective on the same ranks, so the engine stops trying it.
BUSY = "busy"          # a link is carrying another flow, or reserved by another collective
OVERLAP = "overlap"    # two of the collective's own messages would share a link
IRREGULAR = "irregular"  # a shape the evaluation does not follow (two messages to one peer in a step)

# Ring collectives of at least this many members are evaluated in numpy.
VECTOR_MIN_MEMBERS = 32
RING_OPS = ("allreduce", "reduce_scatter", "allgather")


class Plan:
    """What a collective does when every message is alone: per member its end
    time and link energy, per link its bytes and the time its last byte leaves."""

    __slots__ = ("end_s", "link_j", "link_bytes", "busy_until_s", "messages")

    def __init__(self, end_s, link_j, link_bytes, busy_until_s, messages):
        self.end_s = end_s
        self.link_j = link_j
        self.link_bytes = link_bytes
        self.busy_until_s = busy_until_s
        self.messages = messages


class Schedule:
    """One collective evaluated with every message alone on its path.

    ``steps[i]`` iterates member ``i``'s lowered steps (world-rank peers).
    ``run()`` returns a ``Plan``, or the reason (``BUSY``, ``OVERLAP``,
    ``IRREGULAR``) it cannot stand for the flow network.  ``run(stop_s)``
    stops before any step that starts after ``stop_s`` and keeps the state
    the engine needs to continue event by event.
    """

    def __init__(self, sim, members, steps, t0, tag, slowdown, starts=None):
        self.sim = sim
        self.members = members
        self.steps = steps
        self.t0 = t0
        self.tag = tag
        self.slowdown = slowdown
        self.starts = starts  # each member's start, where they differ (a collective held for its last member)

    def run(self, stop_s: float | None = None, record: bool = False):
        """``record``: also keep the collective's dataflow as a ``Trace`` (``self.trace``)."""
        m = len(self.members)
        keep = stop_s is not None
        st = _Evaluation(self, keep, record)
        heap = st.heap
        steps = self.steps
        rspb = self.sim.reduce_s_per_byte
        pending = st.pending
        pop = heapq.heappop
        push = heapq.heappush
        while heap:
            start, i = heap[0]
            if keep and start > stop_s:
                break
            pop(heap)
            step = next(steps[i], None)
            if step is None:
                st.end[i] = start
                continue
            sends, recvs = step
            if len(sends) > 1 and len({t.peer for t in sends}) < len(sends):
                return IRREGULAR  # which message a receive matches would depend on delivery order
            if keep:
                st.cur_sends[i] = []
                st.cur_recvs[i] = []
            step_sends = [] if record else None
            finish = self._sends(st, i, start, sends, step_sends)
            if type(finish) is str:
                return finish
            step_recvs = [] if record else None
            finish = self._recvs(st, i, recvs, finish, step_recvs)
            st.step_end[i] = finish
            red = sum(t.nbytes for t in recvs if t.reduce) if rspb else 0
            st.reduced[i] = red
            if record:
                st.entries.append((i, step_sends, step_recvs, red * rspb if red else None))
            if pending[i] == 0:
                push(heap, (finish + red * rspb if red else finish, i))
        if keep:
            self.state = (st.end, st.step_end, pending, st.reduced, st.cur_sends, st.cur_recvs, st.sent, st.posted,
                          st.link_j, st.link_bytes, st.messages, {i: s for s, i in heap})
            return None
        if any(e is None for e in st.end) or any(st.sent.values()) or any(st.posted.values()):
            return IRREGULAR
        if record:
            self.trace = Trace(m, st.nslots, [(i, sends, [e[3] for e in recvs], red)
                                              for i, sends, recvs, red in st.entries],
                               st.link_pairs, st.last_on, st.link_j, st.link_bytes, st.messages)
        return Plan(st.end, st.link_j, st.link_bytes, st.busy, st.messages)

    def _sends(self, st: "_Evaluation", i: int, start: float, sends, step_sends):
        """Member ``i``'s sends of a step starting at ``start``: each delivered alone on its path, matched
        to a posted receive or kept until one is.  The step's latest delivery, or why the collective
        cannot be evaluated alone (``BUSY``, ``OVERLAP``)."""
        (route, efficiency, slowdown, rspb, net, t0, keep, record, busy, link_bytes, last_on, sent, posted,
         step_end, pending, reduced, link_j) = st.context
        src = self.members[i]
        finish = start
        for t in sends:
            dst = t.peer
            nbytes = t.nbytes
            links, cap, latency_s, energy_per_byte = route(src, dst)
            link_j[i] += nbytes * energy_per_byte
            st.messages += 1
            work = None
            slot = st.nslots
            st.nslots += 1
            if nbytes and links:
                # As Messages.send and FlowNetwork.transfer compute it.
                work = nbytes / efficiency(src, dst, nbytes) if efficiency else None
                if slowdown != 1.0:
                    work = (nbytes if work is None else work) * slowdown
                work = float(nbytes if work is None else work)
                duration = work / cap
                last_s = start + duration
                delivered = start + (duration + latency_s)
                for link in links:
                    until = busy.get(link)
                    if until is None:
                        # (A replay skips this: it was checked at t0, and the network has moved on.)
                        if not keep and not net.link_free(link, t0):
                            return BUSY
                    elif until > start:
                        return OVERLAP
                    busy[link] = last_s
                    link_bytes[link] = link_bytes.get(link, 0) + nbytes
                    if record:
                        before = last_on.get(link)
                        if before is not None:
                            st.link_pairs.append((before, slot))
                        last_on[link] = slot
                if record:
                    step_sends.append((slot, duration + latency_s, duration))
            else:
                last_s = start
                delivered = start + latency_s if latency_s > 0 else start
                if record:
                    step_sends.append((slot, latency_s if latency_s > 0 else 0.0, None))
            if delivered > finish:
                finish = delivered
            if keep:
                st.cur_sends[i].append((dst, nbytes, work, links, cap, latency_s, start, last_s, delivered))
            key = (src, dst)
            waiting = posted.get(key)
            if waiting:
                j, entry = waiting.popleft()
                entry[1] = delivered
                entry[3] = slot
                if delivered > step_end[j]:
                    step_end[j] = delivered
                pending[j] -= 1
                if pending[j] == 0:
                    red = reduced[j]
                    heapq.heappush(st.heap, (step_end[j] + red * rspb if red else step_end[j], j))
            else:
                queue = sent.get(key)
                if queue is None:
                    sent[key] = deque(((delivered, nbytes, slot),))
                else:
                    queue.append((delivered, nbytes, slot))
        return finish

    def _recvs(self, st: "_Evaluation", i: int, recvs, finish: float, step_recvs) -> float:
        """Member ``i``'s receives of a step: matched to a message sent already, or posted to wait for one
        (the step then ends when that send is evaluated).  The step's latest delivery so far."""
        src = self.members[i]
        sent, posted = st.sent, st.posted
        for t in recvs:
            key = (t.peer, src)
            entry = [t.peer, None, t.nbytes, -1]  # peer, delivery time and slot once matched, bytes
            queue = sent.get(key)
            if queue:
                delivered, _, entry[3] = queue.popleft()
                entry[1] = delivered
                if delivered > finish:
                    finish = delivered
            else:
                st.pending[i] += 1
                waiting = posted.get(key)
                if waiting is None:
                    posted[key] = deque(((i, entry),))
                else:
                    waiting.append((i, entry))
            if st.keep:
                st.cur_recvs[i].append(entry)
            elif st.record:
                step_recvs.append(entry)
        return finish


class _Evaluation:
    """The state of one ``Schedule.run``: per member its step's end and what it waits for, per link when its
    last byte leaves, the messages sent and receives posted not yet matched, and the trace being recorded."""

    def __init__(self, schedule: Schedule, keep: bool, record: bool):
        m = len(schedule.members)
        t0 = schedule.t0
        self.keep = keep
        self.record = record
        self.busy: dict[int, float] = {}
        self.link_bytes: dict[int, int] = {}
        self.link_j = [0.0] * m
        self.messages = 0
        self.end = [None] * m
        self.step_end = list(schedule.starts) if schedule.starts is not None else [t0] * m
        self.pending = [0] * m
        self.reduced = [0] * m
        # The current step of each member: its sends (flows) and receives, kept only for a replay.
        self.cur_sends: list[list] | None = [[] for _ in range(m)] if keep else None
        self.cur_recvs: list[list] | None = [[] for _ in range(m)] if keep else None
        self.sent: dict[tuple[int, int], deque] = {}    # delivered or in flight, not yet matched: (delivery_s, nbytes)
        self.posted: dict[tuple[int, int], deque] = {}  # receives waiting for their send: (member, recv entry)
        self.heap = [(self.step_end[i], i) for i in range(m)]
        heapq.heapify(self.heap)
        # The trace: per step processed, (member, its sends (slot, delivery delay, last-byte delay),
        # its receive entries, reduction delay); per link, consecutive (slot, slot) uses.
        self.entries: list | None = [] if record else None
        self.nslots = 0
        self.last_on: dict[int, int] = {}
        self.link_pairs: list = []
        sim = schedule.sim
        # What each step's sends read, in one tuple: a step of one message costs few lookups.
        self.context = (sim.messages.route, sim.message_efficiency, schedule.slowdown, sim.reduce_s_per_byte,
                        sim.net, t0, keep, record, self.busy, self.link_bytes, self.last_on, self.sent, self.posted,
                        self.step_end, self.pending, self.reduced, self.link_j)


class Trace:
    """A collective's dataflow, recorded by ``Schedule.run(record=True)``, evaluated again at another start time.

    Its delays (bytes / bottleneck + latency per message, the reduction per
    step) and which message each receive waits for do not depend on when the
    collective starts, so each member's end and each link's last byte are
    fixed offsets from the start: the recording evaluates them once, from
    start 0, and the same collective on the same ranks later costs one
    addition per member and per link.  (The reference adds the delays to the
    start one by one; the two differ by rounding, a few units in the last
    place.)  ``evaluate`` returns None where the collective cannot run alone
    at that time (a link in use), and the engine then evaluates it in full.
    """

    __slots__ = ("m", "links", "link_j", "link_bytes", "messages", "end_offsets_s", "busy_offsets_s", "nslots")

    def __init__(self, m, nslots, entries, link_pairs, last_on, link_j, link_bytes, messages):
        self.m = m
        self.nslots = nslots
        self.link_j = link_j
        self.link_bytes = link_bytes
        self.messages = messages
        self.links = list(last_on)
        start, first, last = _dataflow(m, nslots, entries, 0.0)
        # Offsets keep their order at any start (rounding is monotonic), so messages
        # that follow one another on a link from start 0 do so from any start.
        if any(first[b] < last[a] for a, b in link_pairs):
            self.end_offsets_s = None  # two of its messages touch on a link: not offsets, the engine evaluates it in full
        else:
            self.end_offsets_s = start
        self.busy_offsets_s = {link: last[slot] for link, slot in last_on.items()}

    def evaluate(self, net, t0: float):
        if self.end_offsets_s is None:
            return None
        for link in self.links:
            if not net.link_free(link, t0):
                return None
        return Plan([t0 + o for o in self.end_offsets_s], self.link_j, self.link_bytes,
                    {link: t0 + o for link, o in self.busy_offsets_s.items()}, self.messages)


def _dataflow(m: int, nslots: int, entries, t0: float):
    """A recorded dataflow from ``t0``: each member's end, each message's first and last byte."""
    start = [t0] * m
    delivered = [0.0] * nslots
    first = [0.0] * nslots
    last = [0.0] * nslots
    open_steps: list = [None] * m

    def close(i):
        # Member i's open step ends at its latest delivery, then waits its reduction.
        slots, reduce_s = open_steps[i]
        finish = start[i]
        for slot in slots:
            if delivered[slot] > finish:
                finish = delivered[slot]
        start[i] = finish + reduce_s if reduce_s is not None else finish

    for i, sends, recv_slots, reduce_s in entries:
        if open_steps[i] is not None:
            close(i)
        s = start[i]
        own = []
        for slot, delay_s, duration_s in sends:
            delivered[slot] = s + delay_s
            if duration_s is not None:
                first[slot] = s
                last[slot] = s + duration_s
            own.append(slot)
        open_steps[i] = (own + recv_slots, reduce_s)
    for i in range(m):
        if open_steps[i] is not None:
            close(i)
    return start, first, last


def ring_schedule(sim, members: tuple[int, ...], op, t0: float, slowdown: float, starts=None):
    """``Schedule(...).run()`` of a ring collective, one numpy step over all members at a time.

    The same floats as ``Schedule``: each message's delivery is
    start + (work / bottleneck + latency), each step ends at the later of the
    member's own delivery and its left neighbour's, and a reduce-scatter step
    adds the reduction time of the block received.  ``starts``: each member's
    start where they differ (its links were held for it since ``t0``, so
    they are not checked again).
    """
    net = sim.net
    p = len(members)
    routes = [sim.messages.route(members[i], members[(i + 1) % p]) for i in range(p)]
    all_links = [link for r in routes for link in r[0]]
    if len(set(all_links)) != len(all_links):
        return OVERLAP  # two members' messages would share a link in every step
    if starts is None:
        for link in all_links:
            if not net.link_free(link, t0):
                return BUSY
    cap = np.array([r[1] if r[0] else 1.0 for r in routes], dtype=float)
    latency = np.array([r[2] for r in routes], dtype=float)
    energy_per_byte = np.array([r[3] for r in routes], dtype=float)
    has_links = np.array([bool(r[0]) for r in routes])
    sizes = np.array([count for _, count in block_layout(op.nbytes, p)], dtype=np.int64)
    idx = np.arange(p)
    left = (idx - 1) % p
    rspb = sim.reduce_s_per_byte
    start = np.full(p, t0, dtype=float) if starts is None else np.array(starts, dtype=float)
    link_j = np.zeros(p)
    sent_bytes = np.zeros(p, dtype=np.int64)
    last_s = np.full(p, -np.inf)
    phases = {"allreduce": ("rs", "ag"), "reduce_scatter": ("rs",), "allgather": ("ag",)}[op.op]
    messages = 0
    for phase in phases:
        for k in range(p - 1):
            if phase == "rs":
                send_block = (idx - k - 1) % p
                recv_block = (idx - k - 2) % p
            else:
                send_block = (idx - k) % p
                recv_block = None
            nbytes = sizes[send_block]
            work = nbytes * slowdown if slowdown != 1.0 else nbytes.astype(float)
            duration = work / cap
            flows = (nbytes > 0) & has_links
            delivered = np.where(flows, start + (duration + latency), start + latency)
            last_s = np.where(flows, start + duration, last_s)
            link_j += nbytes * energy_per_byte
            sent_bytes += np.where(has_links, nbytes, 0)
            messages += p
            finish = np.maximum(delivered, delivered[left])
            if recv_block is not None and rspb:
                red = sizes[recv_block]
                start = np.where(red > 0, finish + red * rspb, finish)
            else:
                start = finish
    link_bytes: dict[int, int] = {}
    busy: dict[int, float] = {}
    for i, r in enumerate(routes):
        for link in r[0]:
            if sent_bytes[i]:
                link_bytes[link] = int(sent_bytes[i])
            if last_s[i] > -np.inf:
                busy[link] = float(last_s[i])
    return Plan([float(s) for s in start], [float(j) for j in link_j], link_bytes, busy, messages)
