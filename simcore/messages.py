"""Messages between ranks: routes, sends as flows, matching by (source, destination, tag) in FIFO order.

A send completes when its last byte arrives, unless the transport takes it
before (a profile's ``eager_bytes`` and ``send_buffer_bytes``, see
``simcore.calibration``).  Receives match messages per (source,
destination, tag) in the order they were sent, as MPI's non-overtaking rule
does.  A waiter is ``[count, event]``: what a rank waits for (its sends and
receives of one step) counts down, and the event fires when none is left.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import simpy

from simcore.calibration import Calibration
from simcore.network import FlowNetwork
from topologies import Topology


def release(waiter: list) -> None:
    waiter[0] -= 1
    if waiter[0] == 0 and waiter[1] is not None:
        waiter[1].succeed()


class Messages:
    """The point-to-point layer of one run, over its own flow network (``self.net``).

    ``tag_name(tag)`` names an engine tag in messages to the user;
    ``size_mismatch(src, dst, tag, recv_nbytes, send_nbytes)`` raises the
    engine's error for a receive whose size is not the send's.
    """

    def __init__(self, env: simpy.Environment, topology: Topology, calibration: Calibration,
                 size_mismatch: Callable[[int, int, int, int, int], None]):
        self.topology = topology
        self.calibration = calibration
        self.size_mismatch = size_mismatch
        # The network moves the bytes the calibrated bandwidth would take to move.
        self.message_efficiency = calibration.message_efficiency
        # Sends that complete before their bytes arrive (Calibration.eager_bytes,
        # send_buffer_bytes): the messages each (src, dst) has yet to deliver, in order.
        self.buffered_sends = calibration.buffered_sends
        self._channels: dict[tuple[int, int], deque] = {}
        self.net = FlowNetwork(env, topology.link_bandwidth_bytes_per_s,
                               self._delivered_part if self.buffered_sends else self.delivered,
                               calibration.link_burst_bytes)
        self._routes: dict[tuple[int, int], tuple] = {}
        self.arrived: dict[tuple, deque] = {}   # (src, dst, tag) -> sizes delivered, not yet received
        self.waiting: dict[tuple, deque] = {}   # (src, dst, tag) -> (size, waiter) of receives posted
        self.count = 0  # messages sent
        self._canonical: dict | None = None

    def fold(self, routes: dict, canonical) -> None:
        """Only representatives of rank classes run (simcore.symmetry): ``routes`` are their pairs' routes
        with their images' shadows, and a message is matched as the image of it that arrives at a
        representative, ``canonical(src, dst)``."""
        self._routes.update(routes)
        self._canonical = {pair: canonical(*pair) for pair in routes}

    def matched_as(self, src: int, dst: int) -> tuple[int, int]:
        """The (source, destination) a message from ``src`` to ``dst`` is matched as (see ``fold``)."""
        return self._canonical[(src, dst)] if self._canonical is not None else (src, dst)

    def route(self, src: int, dst: int) -> tuple:
        """(links, bottleneck bandwidth, latency, energy per byte) from ``src`` to ``dst``."""
        cached = self._routes.get((src, dst))
        if cached is None:
            topo = self.topology
            route = topo.route(src, dst)
            bw = topo.link_bandwidth_bytes_per_s
            min_cap = min((bw[l] for l in route.links), default=float("inf"))
            energy_per_byte = sum(topo.link_energy_per_byte_j[l] for l in route.links)
            cached = self._routes[(src, dst)] = (route.links, min_cap, route.latency_s, energy_per_byte)
        return cached

    def send(self, src: int, dst: int, nbytes: int, tag: int, waiter: list, link_j: list,
             slowdown: float = 1.0) -> None:
        """Send ``nbytes``; ``waiter`` is released when the send completes, ``link_j[0]`` gains its link energy."""
        cached = self._routes.get((src, dst))
        if cached is None:
            cached = self.route(src, dst)
        links, min_cap, latency_s, energy_per_byte = cached
        link_j[0] += nbytes * energy_per_byte
        self.count += 1
        work = nbytes / self.message_efficiency(src, dst, nbytes) if self.message_efficiency else None
        if slowdown != 1.0:
            work = (nbytes if work is None else work) * slowdown
        if self.buffered_sends:
            self._send_buffered(src, dst, nbytes, tag, waiter, links, min_cap, latency_s, work)
            return
        if self._canonical is not None:
            src, dst = self._canonical[(src, dst)]
        self.net.transfer(links, min_cap, latency_s, nbytes, (src, dst, tag, nbytes, waiter), work)

    def post_recv(self, src: int, dst: int, nbytes: int, tag: int, waiter: list) -> None:
        key = (src, dst, tag)
        arrived = self.arrived.get(key)
        if arrived:
            sent = arrived.popleft()
            if sent != nbytes:
                self.size_mismatch(src, dst, tag, nbytes, sent)
            waiter[0] -= 1
        else:
            self.waiting.setdefault(key, deque()).append((nbytes, waiter))

    def delivered(self, message: tuple) -> None:
        """The network's callback: ``message`` (src, dst, tag, nbytes, sender's waiter) has arrived."""
        src, dst, tag, nbytes, waiter = message
        key = (src, dst, tag)
        waiting = self.waiting.get(key)
        if waiting:
            recv_nbytes, recv_waiter = waiting.popleft()
            if recv_nbytes != nbytes:
                self.size_mismatch(src, dst, tag, recv_nbytes, nbytes)
            release(recv_waiter)
        else:
            self.add_arrived(src, dst, tag, nbytes)
        release(waiter)

    def add_arrived(self, src: int, dst: int, tag: int, nbytes: int) -> None:
        """A message delivered with no receive posted yet (a fast path hands its own over here)."""
        arrived = self.arrived.get((src, dst, tag))
        if arrived is None:
            self.arrived[(src, dst, tag)] = deque((nbytes,))
        else:
            arrived.append(nbytes)

    def add_waiting(self, src: int, dst: int, tag: int, nbytes: int, waiter: list) -> None:
        """A receive posted whose message has not arrived (a fast path hands its own over here)."""
        self.waiting.setdefault((src, dst, tag), deque()).append((nbytes, waiter))

    # -- sends the transport takes before their bytes arrive --------------------------

    def _send_buffered(self, src, dst, nbytes, tag, waiter, links, min_cap, latency_s, work) -> None:
        """It returns at once if its message is eager or fits the send buffer,
        else once all but the buffer's bytes have arrived.  Messages from one
        rank to another leave one after the other, as bytes on one connection
        do, and so arrive in the order they were sent."""
        buffered = nbytes <= self.calibration.at_once_bytes
        if buffered:
            release(waiter)
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
            release(waiter)
            tail = self.calibration.send_buffer_bytes
            # The tail continues the message: no bucket refilled while the head's last bytes crossed.
            self.net.transfer(links, min_cap, 0.0, tail, (job, False), None if work is None else work * tail / nbytes,
                              take_burst=False)
            return
        channel = self._channels[(src, dst)]
        channel.popleft()
        self.delivered((src, dst, tag, nbytes, [2, None]))  # its sender was released already
        if channel:
            self._start_job(channel[0])
