"""Flow-level network: transfers sharing a link share its bandwidth max-min fairly.

A message of n bytes is a flow on every link of its route from the moment it
is sent until its last byte has left (its rate is the max-min fair share, so
alone on its path it takes n / bottleneck bandwidth), and it is delivered the
path's latency later.  Alone on an uncontended path that is Hockney's
alpha + n * beta.

Rates are re-solved by progressive filling whenever a flow starts or ends, but
only over the connected component of flows that share links with the change,
so flows that share nothing cost O(1) each.  All starts and ends that happen
at one simulated instant are solved in one batch: the solve is scheduled at
that instant with a priority below SimPy's NORMAL, so it runs after every
process that wakes at that instant has issued its transfers.

A flow alone in its component gets a single event, its delivery; it is not
taken off its links when its last byte leaves but lazily, by the next solve
that meets it (it no longer competes, having finished) or by its delivery.
Flows that share links get an event when their last byte leaves, which frees
their share for the others, and their delivery after the latency.

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

Iteration is over insertion-ordered dicts, never sets, so the order of events,
and therefore every result, is the same on every run.
"""
from __future__ import annotations

from typing import Callable, Sequence

import simpy

from simcore import maxmin
from simcore.clock import LAST_AT_INSTANT, call_at, call_at_end_of_instant, now as clock_now

# Connected sets of flows from this size are re-solved from the change outwards (maxmin.resolve);
# smaller ones are filled whole, which costs less than finding how far a change reaches.
INCREMENTAL_MIN_FLOWS = 64
# ... unless the change touches more than 1/NEAR_SEED_SHARE of the set already, and giving up where the
# re-solve would reach 1/NEAR_LIMIT_SHARE of it: past that, filling the set whole costs less.
NEAR_SEED_SHARE = 16
NEAR_LIMIT_SHARE = 8


class Flow:
    __slots__ = ("fid", "links", "min_capacity_bytes_per_s", "latency_s", "remaining_bytes", "rate_bytes_per_s", "t_last_s", "t_end_s",
                 "version", "alone", "message", "armed_s")

    def __init__(self, fid, links, min_capacity_bytes_per_s, latency_s, nbytes, now, message):
        self.fid = fid
        self.links = links
        self.min_capacity_bytes_per_s = min_capacity_bytes_per_s
        self.latency_s = latency_s
        self.remaining_bytes = float(nbytes)
        self.rate_bytes_per_s = 0.0
        self.t_last_s = now
        self.t_end_s = None  # when the last byte leaves, at the current rate
        self.version = 0
        self.armed_s = None  # when its pending last-byte event fires (None: none, or its lone delivery)
        self.alone = False  # its pending event is a delivery that frees no bandwidth for others
        self.message = message


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
        self._flows_on: list[dict[int, Flow]] = [dict() for _ in self.capacity_bytes_per_s]
        self._touched: dict[int, None] = {}
        self._solve_pending = False
        self._next_fid = 0
        self.bytes_on_link = [0.0] * len(self.capacity_bytes_per_s)
        self.flows_started = 0
        self.solves = 0
        self._rates = 0  # flows whose rate a solve computed (whether or not it changed)
        self.armed = 0  # events scheduled for flows' last bytes and lone deliveries
        self._near_solved = 0  # re-solves from the change outwards that stayed near it
        self._near_failed = 0  # ... and that reached too far
        # Token buckets (see the module's docstring): each link's tokens as of
        # a time, and when the last byte of the last flow that left it left.
        self.burst_bytes = float(burst_bytes)
        links = len(self.capacity_bytes_per_s)
        self._tokens = [self.burst_bytes] * links
        self._tokens_as_of_s = [0.0] * links
        self._idle_from_s = [0.0] * links
        self._starting: dict[int, Flow] = {}  # flows issued since the last solve that take the buckets
        # Links a fast path computed ahead (simcore.collective_path): until when each is reserved, by whom,
        # and what to call when a transfer needs one before then.  None until a fast path reserves links.
        self.reserved_until_s: list[float] | None = None
        self.reserved_by: list | None = None
        self._on_reserved: Callable[[object, float], None] | None = None

    def counts(self) -> dict[str, int]:
        """How much solving a run took: solves, rates computed, re-solves that stayed near their change
        and those that reached too far (the connected set was then filled whole), and the events
        scheduled for flows' last bytes and lone deliveries."""
        return {"solves": self.solves, "rates": self._rates, "near_solved": self._near_solved,
                "near_failed": self._near_failed, "armed": self.armed}

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
            for link in links:
                if reserved[link] > now:
                    self._on_reserved(self.reserved_by[link], now)
        self.flows_started += 1
        if nbytes and links:
            bytes_on_link = self.bytes_on_link
            flows_on = self._flows_on
            touched = self._touched
            fid = self._next_fid
            self._next_fid = fid + 1
            flow = Flow(fid, links, min_capacity_bytes_per_s, latency_s, nbytes if work_bytes is None else work_bytes,
                         clock_now(self.env), message)
            for link in links:
                bytes_on_link[link] += nbytes
                flows_on[link][fid] = flow
                touched[link] = None
            if self.burst_bytes and take_burst:
                self._starting[fid] = flow
            if not self._solve_pending:
                self._schedule_solve()
        else:
            self._deliver_after(latency_s, message)

    # -- what fast paths ask of the network ------------------------------------

    def link_quiet(self, link: int, t0: float) -> bool:
        """No flow on ``link`` still has bytes to send at ``t0`` (lingering ones only wait for delivery)."""
        for flow in self._flows_on[link].values():
            if flow.t_end_s is None or flow.t_end_s > t0:
                return False
        return True

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
        flow = Flow(self._next_fid, links, min_capacity_bytes_per_s, latency_s, work_bytes, start_s, message)
        self._next_fid += 1
        flow.rate_bytes_per_s = min_capacity_bytes_per_s
        flow.t_end_s = last_byte_s
        flow.alone = True
        flow.version = 1
        for link in links:
            self._flows_on[link][flow.fid] = flow
        call_at(self.env, delivered_s, self._delivered_alone, (flow, 1))

    def deliver_at(self, delivered_s: float, message) -> None:
        """A message whose last byte has left is delivered at ``delivered_s``."""
        call_at(self.env, delivered_s, self._deliver_value, message)

    def resume(self, links, min_capacity_bytes_per_s: float, latency_s: float, remaining_bytes: float,
               message) -> None:
        """A message under way (its bytes counted on its links already) goes on from now with
        ``remaining_bytes``, sharing its links as any flow does."""
        flow = Flow(self._next_fid, links, min_capacity_bytes_per_s, latency_s, remaining_bytes,
                    clock_now(self.env), message)
        self._next_fid += 1
        for link in links:
            self._flows_on[link][flow.fid] = flow
            self._touched[link] = None
        if not self._solve_pending:
            self._schedule_solve()

    # -- internals -----------------------------------------------------------

    def _deliver_after(self, latency_s: float, message: object) -> None:
        if latency_s > 0:
            self._Timeout(self.env, latency_s, message).callbacks.append(self._deliver_value)
        else:
            self.on_delivered(message)

    def _grant_bursts(self, now: float) -> None:
        """The flows that start now pass their share of the buckets on their paths at once; one
        that passes whole is delivered after its latency, having taken no bandwidth."""
        starting, self._starting = self._starting, {}
        flows_on = self._flows_on
        tokens = self._tokens
        sharers: dict[int, int] = {}  # link -> flows starting on it now
        for flow in starting.values():
            for link in flow.links:
                if link in sharers:
                    sharers[link] += 1
                    continue
                sharers[link] = 1
                idle_from = max(self._tokens_as_of_s[link], self._idle_from_s[link])
                for fid, other in flows_on[link].items():
                    if fid in starting:
                        continue
                    if other.t_end_s is None or other.t_end_s > now:
                        idle_from = now  # busy: no refill
                        break
                    idle_from = max(idle_from, other.t_end_s)
                if idle_from < now:
                    tokens[link] = min(self.burst_bytes,
                                       tokens[link] + self.capacity_bytes_per_s[link] * (now - idle_from))
                self._tokens_as_of_s[link] = now
        shares = {link: tokens[link] / count for link, count in sharers.items()}
        for flow in starting.values():
            take = min(flow.remaining_bytes, min(shares[link] for link in flow.links))
            if take <= 0.0:
                continue
            for link in flow.links:
                tokens[link] -= take
            flow.remaining_bytes -= take
            if flow.remaining_bytes <= 0.0:
                flow.t_end_s = now
                for link in flow.links:
                    on_link = flows_on[link]
                    on_link.pop(flow.fid, None)
                    if on_link:
                        self._touched[link] = None
                self._deliver_after(flow.latency_s, flow.message)

    def _note_left(self, flow: Flow) -> None:
        """Before ``flow`` leaves its links: their buckets refill from when its last byte left."""
        idle_from = self._idle_from_s
        end = flow.t_end_s
        for link in flow.links:
            if flow.fid in self._flows_on[link] and end > idle_from[link]:
                idle_from[link] = end

    def _schedule_solve(self) -> None:
        self._solve_pending = True
        call_at_end_of_instant(self.env, LAST_AT_INSTANT, self._solve)

    def _last_byte_left(self, event) -> None:
        flow, version = event.value
        if flow.version != version:
            return  # superseded by a later rate change
        flow.armed_s = None
        if flow.t_end_s > clock_now(self.env):
            # Its rate fell since this was set: its last byte leaves later, and this event goes on to then.
            self._arm(flow, flow.t_end_s)
            return
        self._detach(flow, touch=True)
        if flow.latency_s > 0:
            self._Timeout(self.env, flow.latency_s, flow.message).callbacks.append(self._deliver_value)
        else:
            self.on_delivered(flow.message)

    def _deliver_value(self, event) -> None:
        self.on_delivered(event.value)

    def _delivered_alone(self, event) -> None:
        flow, version = event.value
        if flow.version != version:
            return
        self._detach(flow, touch=False)
        self.on_delivered(flow.message)

    def _detach(self, flow: Flow, touch: bool) -> None:
        fid = flow.fid
        flows_on = self._flows_on
        touched = self._touched
        if self.burst_bytes:
            self._note_left(flow)
        for link in flow.links:
            on_link = flows_on[link]
            if on_link.pop(fid, None) is not None and touch and on_link:
                touched[link] = None
        if touch and touched and not self._solve_pending:
            self._schedule_solve()

    def _solve(self, _event) -> None:
        self._solve_pending = False
        self.solves += 1
        now = clock_now(self.env)
        if self._starting:
            self._grant_bursts(now)
        flows_on = self._flows_on
        capacity = self.capacity_bytes_per_s
        touched, self._touched = self._touched, {}
        seen: set[int] = set()
        for start in touched:
            if start in seen or not flows_on[start]:
                continue
            seen.add(start)
            links: list[int] = []
            component = self._component(start, seen, now, links)
            if not component:
                continue
            if len(component) == 1:
                self._rates += 1
                for flow in component.values():
                    self._set_rate(flow, flow.min_capacity_bytes_per_s, now, alone=True)
                continue
            if (len(component) >= INCREMENTAL_MIN_FLOWS and self._near_failed <= 2 * self._near_solved + 8
                    and self._resolve_near(component, links, touched, now)):
                continue
            self._rates += len(component)
            spare: dict[int, float] = {}
            count: dict[int, int] = {}
            for flow in component.values():
                for link in flow.links:
                    if link not in spare:
                        spare[link] = capacity[link]
                        count[link] = len(flows_on[link])
            for flow, rate in maxmin.fill(component, flows_on, spare, count):
                self._set_rate(flow, rate, now, alone=False)

    def _resolve_near(self, component: dict[int, Flow], links: list[int], touched: dict, now: float) -> bool:
        """Re-solve ``component`` from the flows on its touched ``links`` out only as far as rates move
        (``maxmin.resolve``); False where that would reach 1/NEAR_LIMIT_SHARE of it (the caller fills it whole).
        Where changes mostly reach that far (dense traffic, rates tightly coupled), the caller stops
        trying: it tries while failures are at most twice the successes, plus 8."""
        flows_on = self._flows_on
        seed: dict[int, Flow] = {}
        for link in links:
            if link in touched:
                for fid, flow in flows_on[link].items():
                    if fid in component:
                        seed[fid] = flow
        if len(seed) * NEAR_SEED_SHARE > len(component):
            return False  # the change touches much of it already: filling it whole costs less
        fixed = maxmin.resolve(seed, flows_on, self.capacity_bytes_per_s, now, len(component) // NEAR_LIMIT_SHARE)
        if fixed is None:
            self._near_failed += 1
            return False
        self._near_solved += 1
        self._rates += len(fixed)
        for flow, rate in fixed:
            old = flow.rate_bytes_per_s
            # A rate that moved by rounding only (the same share, summed in another order) keeps its event.
            if old != rate and abs(rate - old) <= maxmin.SLACK * rate:
                rate = old
            self._set_rate(flow, rate, now, alone=False)
        return True

    def _component(self, start: int, seen: set[int], now: float, links: list[int]) -> dict[int, Flow]:
        """The flows connected to link ``start`` through shared links (fid -> flow), and in ``links`` the
        links they cross; lingering flows met on the way, whose last byte has left, leave their links."""
        flows_on = self._flows_on
        component: dict[int, Flow] = {}
        stack = [start]
        while stack:
            link = stack.pop()
            links.append(link)
            on_link = flows_on[link]
            finished = None
            for fid, flow in on_link.items():
                if fid in component:
                    continue
                if flow.t_end_s is not None and flow.t_end_s <= now:
                    # Its last byte has left: it lingers only until delivery.
                    finished = (finished or []) + [flow]
                    continue
                component[fid] = flow
                for other in flow.links:
                    if other not in seen:
                        seen.add(other)
                        stack.append(other)
            if finished:
                if self.burst_bytes:
                    for flow in finished:
                        self._note_left(flow)
                for flow in finished:
                    for other in flow.links:
                        flows_on[other].pop(flow.fid, None)
        return component

    def _set_rate(self, flow: Flow, rate_bytes_per_s: float, now: float, alone: bool) -> None:
        if rate_bytes_per_s == flow.rate_bytes_per_s and alone == flow.alone:
            # Unchanged.  (A flow that was alone and now shares at the same
            # rate still needs a new event: its lone delivery would never free
            # bandwidth for the others when its last byte leaves.)
            return
        if flow.rate_bytes_per_s:
            flow.remaining_bytes -= flow.rate_bytes_per_s * (now - flow.t_last_s)
            if flow.remaining_bytes < 0.0:
                flow.remaining_bytes = 0.0
        flow.t_last_s = now
        flow.rate_bytes_per_s = rate_bytes_per_s
        flow.alone = alone
        duration = flow.remaining_bytes / rate_bytes_per_s
        flow.t_end_s = now + duration
        # The event's value carries (flow, version): a later rate change bumps
        # the version and so cancels this event without touching the queue.
        if alone:
            flow.version += 1
            flow.armed_s = None
            self.armed += 1
            self._Timeout(self.env, duration + flow.latency_s, (flow, flow.version)).callbacks.append(
                self._delivered_alone
            )
        elif flow.armed_s is None or flow.armed_s > flow.t_end_s:
            flow.version += 1
            flow.armed_s = flow.t_end_s
            self.armed += 1
            self._Timeout(self.env, duration, (flow, flow.version)).callbacks.append(self._last_byte_left)
        # else: its pending event fires no later than its last byte now leaves, and goes on from there
        # (one pending event per flow, not one per rate change).

    def _arm(self, flow: Flow, when_s: float) -> None:
        flow.armed_s = when_s
        self.armed += 1
        call_at(self.env, when_s, self._last_byte_left, (flow, flow.version))
