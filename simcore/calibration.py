"""Calibration: what the engine takes from a measured machine.

``Calibration`` is the one object the ``Simulator`` receives for a measured
machine (``topologies.profile.MachineProfile``): the time a lowered
collective spends reducing each received byte, a per-size bandwidth factor
per pair of ranks, and a per-op, per-size factor for the library's own
collectives.  ``simcore.fitting`` turns measurements into a profile's figures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from topologies.profile import MachineProfile, check_transport_bytes


@dataclass(frozen=True)
class Calibration:
    """Measured corrections the engine applies; the default changes nothing.

    ``reduce_s_per_byte``: seconds per byte a lowered collective reduces.
    ``message_efficiency(src, dst, nbytes)``: factor on the bandwidth of a
    message between two ranks.  ``collective_efficiency(op, nbytes)``: factor
    on the bandwidth of every step of a collective run natively.
    ``eager_bytes``, ``send_buffer_bytes``: a send of at most ``eager_bytes``
    completes as it starts, a larger one once all but its last
    ``send_buffer_bytes`` have arrived; its receiver still waits for every
    byte, and messages between two ranks arrive in the order they were sent.
    ``link_burst_bytes``: every link is a token bucket of this many bytes
    (a shaped link's burst: ``simcore.network``); 0, none.
    """

    reduce_s_per_byte: float = 0.0
    message_efficiency: Callable[[int, int, int], float] | None = None
    collective_efficiency: Callable[[str, int], float] | None = None
    eager_bytes: int = 0
    send_buffer_bytes: int = 0
    link_burst_bytes: int = 0

    def __post_init__(self):
        if not 0 <= self.reduce_s_per_byte < float("inf"):
            raise ValueError(f"reduce_s_per_byte must be finite and >= 0, got {self.reduce_s_per_byte!r}")
        check_transport_bytes(self)

    @property
    def buffered_sends(self) -> bool:
        return bool(self.eager_bytes or self.send_buffer_bytes)

    @property
    def at_once_bytes(self) -> int:
        """The largest send that completes as it starts: eager, or whole in the send buffer."""
        return max(self.eager_bytes, self.send_buffer_bytes)

    @classmethod
    def from_profile(cls, profile: MachineProfile | None, nranks: int, *, native: bool = True) -> "Calibration":
        """The corrections ``profile`` measured, for ``nranks`` ranks; ``native=False`` leaves out
        those of the library's own collectives (a run in algorithm mode does not use them)."""
        if profile is None:
            return cls()
        return cls(reduce_s_per_byte=profile.reduce_s_per_byte,
                   message_efficiency=profile.message_efficiency(nranks),
                   collective_efficiency=profile.collective_factor(native),
                   eager_bytes=profile.eager_bytes, send_buffer_bytes=profile.send_buffer_bytes,
                   link_burst_bytes=profile.link_burst_bytes)
