"""Flow-level network: transfers sharing a link share its bandwidth max-min fairly.

A message of n bytes is a flow on every link of its route from the moment it
is sent until its last byte has left (its rate is the max-min fair share, so
alone on its path it takes n / bottleneck bandwidth), and it is delivered the
path's latency later.  Alone on an uncontended path that is Hockney's
alpha + n * beta.

Rates are re-solved by progressive filling whenever a flow starts or ends, but
only over the flows connected to the change (in a large connected set, from
the touched links out only as far as rates move: simcore.maxmin), so flows
that share nothing cost O(1) each.  All starts and ends that happen
at one simulated instant are solved in one batch: the solve is scheduled at
that instant with a priority below SimPy's NORMAL, so it runs after every
process that wakes at that instant has issued its transfers.

A flow alone in its component gets a single event, its delivery; it is not
taken off its links when its last byte leaves but lazily, by the next solve
that meets it (it no longer competes, having finished) or by its delivery.
The last bytes of flows that share links are kept in the flow table's heap
(simcore.flowtable, simcore.maxmin), one entry per flow (a rate that falls
keeps its entry, which goes on to the new end when it surfaces), and the
network has one SimPy event pending for them, at the heap's earliest time:
events grow with messages, not with rate changes.  The solve, the heap and the flows' state
run compiled (numba) on arrays.

With ``burst_bytes`` > 0 every link is a token bucket, as a shaped link is
(a Linux htb or tbf shaper, a cloud NIC's burst allowance): an idle link
fills its bucket at its bandwidth, up to ``burst_bytes``, and a flow that
starts lets through at once what its share of the emptiest bucket on its
path holds, emptying that much from each: the flows that start on a link at
one instant share its bucket equally, whatever order they were issued in
(so both engines, which may issue them in different orders, agree).  A link
refills only while no flow is on it (one carrying less than its bandwidth
does not refill: the buckets of a shaped network matter at the start of a
message on an idle path, where this is exact).  A transfer that continues a
message already under way (``take_burst=False``) takes nothing.

Iteration is over insertion-ordered dicts and lists (a link's flows in the
order they joined it), never sets, so the order of events, and therefore
every result, is the same on every run.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import simpy

from simcore import maxmin as mm
from simcore.flowtable import FlowTable
from simcore.clock import LAST_AT_INSTANT, call_at, call_at_end_of_instant, now as clock_now, value as event_value
from simcore.maxmin import (ALONE, ARMED_N, COMP, COUNT, DUR, HSIZE, IDLE, LONE, MINCAP, NEAR_FAILED,
                                NEAR_SOLVED, OUT, RATE, RATES, REM, SOLVES, TEND, TLAST, VERSION)

# Connected sets of flows from this size are re-solved from the change outwards (maxmin.resolve);
# smaller ones are filled whole, which costs less than finding how far a change reaches.
INCREMENTAL_MIN_FLOWS = 64
# ... unless the change touches more than 1/NEAR_SEED_SHARE of the set already, and giving up where the
# re-solve would reach 1/NEAR_LIMIT_SHARE of it: past that, filling the set whole costs less.
NEAR_SEED_SHARE = 16
NEAR_LIMIT_SHARE = 8
NAN = float("nan")


class FlowNetwork:
    """Max-min fair sharing of directed links among concurrent flows.

    ``capacities_bytes_per_s[i]`` is the bandwidth of directed link ``i``.
    ``transfer`` moves ``nbytes`` along ``links`` and calls
    ``on_delivered(message)`` when the last byte has arrived, ``latency_s``
    after it left.
    """

    def __init__(
        self,
        env: simpy.Environment,
        capacities_bytes_per_s: Sequence[float],
        on_delivered: Callable[[object], None],
        burst_bytes: float = 0.0,
    ):
        if not 0.0 <= burst_bytes < float("inf"):
            raise ValueError(f"burst_bytes must be finite and >= 0, got {burst_bytes!r}")
        self.env = env
        self.on_delivered = on_delivered
        self._Timeout = simpy.Timeout
        self.capacity_bytes_per_s = [float(c) for c in capacities_bytes_per_s]
        self.table = FlowTable(self.capacity_bytes_per_s)
        # Per slot, what the SimPy side keeps of a flow: its message, latency and links.
        self._message: list = []
        self._latency: list[float] = []
        self._links: list[tuple[int, ...]] = []
        self._touched: dict[int, None] = {}
        self._solve_pending = False
        self._wake_s: float | None = None  # the earliest pending wake-up for the heap's last bytes
        self.wakes = 0
        self.bytes_on_link = [0.0] * len(self.capacity_bytes_per_s)
        self.flows_started = 0
        # Token buckets (see the module's docstring): each link's tokens as of a time; when the last byte
        # of the last flow that left it left is the table's IDLE column.
        self.burst_bytes = float(burst_bytes)
        links = len(self.capacity_bytes_per_s)
        self._tokens = [self.burst_bytes] * links
        self._tokens_as_of_s = [0.0] * links
        self._starting: dict[int, None] = {}  # slots of the flows issued since the last solve that take the buckets
        # Links a fast path computed ahead (simcore.collective_path): until when each is reserved, by whom,
        # and what to call when a transfer needs one before then.  None until a fast path reserves links.
        self.reserved_until_s: list[float] | None = None
        self.reserved_by: list | None = None
        self._on_reserved: Callable[[object, float], None] | None = None
        # Link -> the tag of messages that may cross it while it is reserved (simcore.folded_path: a
        # collective held for its last members lets the one before it on the same ring finish).
        self.reserved_passes: dict[int, int] = {}

    def counts(self) -> dict[str, int]:
        """How much solving a run took: solves, rates computed, re-solves that stayed near their change
        and those that reached too far (the connected set was then filled whole), last bytes put on the
        heap and lone deliveries scheduled ("armed"), and the SimPy wake-ups the heap took."""
        C = self.table.C
        return {"solves": int(C[SOLVES]), "rates": int(C[RATES]), "near_solved": int(C[NEAR_SOLVED]),
                "near_failed": int(C[NEAR_FAILED]), "armed": int(C[ARMED_N]), "wakes": self.wakes}

    def enable_reservations(self, on_reserved: Callable[[object, float], None]) -> None:
        """Links may be reserved (``reserved_until_s``, ``reserved_by``); a transfer that needs one before
        its reservation ends first calls ``on_reserved(owner, now)``, which must hand the owner's traffic
        back to the network and clear its reservations."""
        links = len(self.capacity_bytes_per_s)
        self.reserved_until_s = [-float("inf")] * links
        self.reserved_by = [None] * links
        self._on_reserved = on_reserved

    def transfer(
        self,
        links: tuple[int, ...],
        min_capacity_bytes_per_s: float,
        latency_s: float,
        nbytes: int,
        message: object,
        work_bytes: float | None = None,
        take_burst: bool = True,
    ) -> None:
        """``work_bytes`` (default ``nbytes``) is what the bandwidth must move: a
        calibrated machine moves n bytes as if they were n / efficiency(n).
        ``take_burst=False``: the transfer continues a message whose start took
        the buckets (see the module's docstring)."""
        reserved = self.reserved_until_s
        if nbytes and reserved is not None:
            now = clock_now(self.env)
            passing = self.reserved_passes
            for link in links:
                if reserved[link] > now:
                    if passing and passing.get(link) == message[2]:
                        continue  # the collective before its holder, on its own links
                    self._on_reserved(self.reserved_by[link], now)
        self.flows_started += 1
        if nbytes and links:
            bytes_on_link = self.bytes_on_link
            touched = self._touched
            for link in links:
                bytes_on_link[link] += nbytes
                touched[link] = None
            slot = self._new_flow(links, min_capacity_bytes_per_s, latency_s,
                                  nbytes if work_bytes is None else work_bytes, clock_now(self.env), message)
            if self.burst_bytes and take_burst:
                self._starting[slot] = None
            if not self._solve_pending:
                self._schedule_solve()
        else:
            self._deliver_after(latency_s, message)

    # -- what fast paths ask of the network ------------------------------------

    def link_quiet(self, link: int, t0: float) -> bool:
        """No flow on ``link`` still has bytes to send at ``t0`` (lingering ones only wait for delivery)."""
        t = self.table
        if t.LI[link, COUNT] == 0:
            return True
        return mm.link_quiet(link, t0, t.F, t.E, t.LI, t.K)

    def link_free(self, link: int, t0: float) -> bool:
        """No flow competes on ``link`` at ``t0`` and no fast path holds it."""
        if self.reserved_until_s is not None and self.reserved_until_s[link] > t0:
            return False
        return self.link_quiet(link, t0)

    def continue_alone(self, links, min_capacity_bytes_per_s: float, latency_s: float, work_bytes: float,
                       start_s: float, last_byte_s: float, delivered_s: float, message) -> None:
        """A flow a fast path computed alone on its path since ``start_s`` goes on from now as the network's:
        its last byte leaves at ``last_byte_s`` and it is delivered at ``delivered_s`` (the fast path's
        floats) unless another flow comes to share its links first."""
        slot = self._new_flow(links, min_capacity_bytes_per_s, latency_s, work_bytes, start_s, message)
        t = self.table
        t.F[slot, RATE] = min_capacity_bytes_per_s
        t.F[slot, TEND] = last_byte_s
        t.I[slot, ALONE] = 1
        t.I[slot, VERSION] += 1
        call_at(self.env, delivered_s, self._delivered_alone, (slot, int(t.I[slot, VERSION])))

    def message_of(self, slot: int):
        """The message the flow in ``slot`` carries."""
        return self._message[slot]

    def deliver_at(self, delivered_s: float, message) -> None:
        """A message whose last byte has left is delivered at ``delivered_s``."""
        call_at(self.env, delivered_s, self._deliver_value, message)

    def resume(self, links, min_capacity_bytes_per_s: float, latency_s: float, remaining_bytes: float,
               message) -> None:
        """A message under way (its bytes counted on its links already) goes on from now with
        ``remaining_bytes``, sharing its links as any flow does."""
        self._new_flow(links, min_capacity_bytes_per_s, latency_s, remaining_bytes, clock_now(self.env), message)
        for link in links:
            self._touched[link] = None
        if not self._solve_pending:
            self._schedule_solve()

    # -- internals -----------------------------------------------------------

    def _new_flow(self, links, min_capacity_bytes_per_s: float, latency_s: float, work_bytes: float,
                  start_s: float, message) -> int:
        """A flow on ``links`` (joined to them, not yet solved), in a slot of the table."""
        t = self.table
        slot = t.take_slot(links)
        if slot >= len(self._message):
            more = t.F.shape[0] - len(self._message)
            self._message.extend([None] * more)
            self._latency.extend([0.0] * more)
            self._links.extend([()] * more)
        self._message[slot] = message
        self._latency[slot] = latency_s
        self._links[slot] = links
        row = t.F[slot]
        row[REM] = work_bytes
        row[MINCAP] = min_capacity_bytes_per_s
        row[TLAST] = start_s
        mm.attach(slot, t.I, t.FL, t.E, t.LI, t.K)
        return slot

    def _end(self, slot: int):
        """The slot's flow is done: its message (its slot is free again)."""
        message = self._message[slot]
        self._message[slot] = None
        self.table.release(slot)
        return message

    def _deliver_after(self, latency_s: float, message: object) -> None:
        if latency_s > 0:
            self._Timeout(self.env, latency_s, message).callbacks.append(self._deliver_value)
        else:
            self.on_delivered(message)

    def _grant_bursts(self, now: float) -> None:
        """The flows that start now pass their share of the buckets on their paths at once; one
        that passes whole is delivered after its latency, having taken no bandwidth."""
        starting, self._starting = self._starting, {}
        t = self.table
        tokens = self._tokens
        sharers: dict[int, int] = {}  # link -> flows starting on it now
        for slot in starting:
            for link in self._links[slot]:
                if link in sharers:
                    sharers[link] += 1
                    continue
                sharers[link] = 1
                idle_from = max(self._tokens_as_of_s[link], float(t.LF[link, IDLE]))
                for other in t.slots_on(link):
                    if other in starting:
                        continue
                    end = float(t.F[other, TEND])
                    if not end <= now:
                        idle_from = now  # busy: no refill
                        break
                    idle_from = max(idle_from, end)
                if idle_from < now:
                    tokens[link] = min(self.burst_bytes,
                                       tokens[link] + self.capacity_bytes_per_s[link] * (now - idle_from))
                self._tokens_as_of_s[link] = now
        shares = {link: tokens[link] / count for link, count in sharers.items()}
        for slot in starting:
            links = self._links[slot]
            remaining = float(t.F[slot, REM])
            take = min(remaining, min(shares[link] for link in links))
            if take <= 0.0:
                continue
            for link in links:
                tokens[link] -= take
            remaining -= take
            t.F[slot, REM] = remaining
            if remaining <= 0.0:
                t.F[slot, TEND] = now
                mm.unlink(slot, t.F, t.I, t.FL, t.E, t.LI, t.LF, t.K, False)
                for link in links:
                    if t.LI[link, COUNT]:
                        self._touched[link] = None
                latency_s = self._latency[slot]
                self._deliver_after(latency_s, self._end(slot))

    def _schedule_solve(self) -> None:
        self._solve_pending = True
        call_at_end_of_instant(self.env, LAST_AT_INSTANT, self._solve)

    def _deliver_value(self, event) -> None:
        self.on_delivered(event_value(event))

    def _delivered_alone(self, event) -> None:
        slot, version = event_value(event)
        t = self.table
        if t.I[slot, VERSION] != version:
            return
        mm.unlink(slot, t.F, t.I, t.FL, t.E, t.LI, t.LF, t.K, bool(self.burst_bytes))
        self.on_delivered(self._end(slot))

    def _solve(self, _event) -> None:
        self._solve_pending = False
        now = clock_now(self.env)
        # A message the buckets pass whole is delivered at once, and its receiver may start the next
        # transfer (a channel's next job): that one takes the buckets too, before any rate is solved.
        while self._starting:
            self._grant_bursts(now)
        touched, self._touched = self._touched, {}
        t = self.table
        t.heap_room(t.F.shape[0])
        links = np.fromiter(touched, np.int64, len(touched))
        lone = mm.solve(links, len(links), now, t.F, t.I, t.FL, t.E, t.LI, t.LF, t.K, t.Hf, t.Hi, t.C, t.SI, t.SF,
                        bool(self.burst_bytes), INCREMENTAL_MIN_FLOWS, NEAR_SEED_SHARE, NEAR_LIMIT_SHARE)
        if lone:
            Timeout, env, latency, delivered_alone = self._Timeout, self.env, self._latency, self._delivered_alone
            for slot, duration, version in zip(t.SI[:lone, LONE].tolist(), t.F[t.SI[:lone, LONE], DUR].tolist(),
                                               t.I[t.SI[:lone, LONE], VERSION].tolist()):
                Timeout(env, duration + latency[slot], (slot, version)).callbacks.append(delivered_alone)
        self._ensure_wake()

    def _ensure_wake(self) -> None:
        """One SimPy event pending at the heap's earliest time (earlier ones are kept: they find nothing due)."""
        t = self.table
        if t.C[HSIZE]:
            top = float(t.Hf[0])
            # (A flow at rate 0 would end at infinity: no event for it; the run ends without it.)
            if top < float("inf") and (self._wake_s is None or top < self._wake_s):
                self._wake_s = top
                self.wakes += 1
                call_at(self.env, top, self._wake, None)

    def _wake(self, _event) -> None:
        now = clock_now(self.env)
        if self._wake_s is not None and self._wake_s <= now:
            self._wake_s = None
        t = self.table
        ended, touched = mm.due(now, t.F, t.I, t.FL, t.E, t.LI, t.LF, t.K, t.Hf, t.Hi, t.C, t.SI,
                                bool(self.burst_bytes))
        if touched:
            for link in t.LI[:touched, OUT].tolist():
                self._touched[link] = None
            if not self._solve_pending:
                self._schedule_solve()
        if ended:
            latency = self._latency
            for slot in t.SI[:ended, COMP].tolist():
                self._deliver_after(latency[slot], self._end(slot))
        self._ensure_wake()
