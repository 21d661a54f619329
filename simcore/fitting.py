"""Fits that turn a real machine's measurements into a profile's figures.

Latency and bandwidth per link class (``fit_hockney``) with a per-size
efficiency curve where one line does not fit (``efficiency_curve``); the
reduction cost and the native-collective corrections are fitted through the
simulator (``fit_reduce_cost``, ``fit_collective_efficiency``), which is why
they live in the engine's layer.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from simcore.calibration import Calibration
from simcore.engine import Simulator
from simcore.result import op_times
from workloads.ops import Collective



def fit_hockney(sizes: Sequence[int], times_s: Sequence[float]) -> tuple[float, float]:
    """Latency and bandwidth of t = a + n/B, least squares on relative error.

    Relative error weighs a 1 KiB message as much as a 64 MiB one, so the
    latency comes from the small sizes and the bandwidth from the large.
    """
    n = np.asarray(sizes, dtype=float)
    t = np.asarray(times_s, dtype=float)
    if len(set(n.tolist())) < 2 or not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError("need at least two distinct sizes with finite positive times to fit latency and bandwidth")
    design = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (latency_s, seconds_per_byte), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    largest = int(np.argmax(n))
    if seconds_per_byte <= 0 or n[largest] * seconds_per_byte < 0.05 * t[largest]:
        # Times that barely grow with size: latency-bound throughout, and the
        # fitted bandwidth would be anything.  The largest message bounds it.
        seconds_per_byte = float(t[largest] / max(n[largest], 1.0))
    return max(float(latency_s), 0.0), 1.0 / float(seconds_per_byte)


def efficiency_curve(sizes, times_s, latency_s: float, bandwidth_bytes_per_s: float,
                     tolerance: float = 0.1) -> tuple[tuple[int, float], ...]:
    """Per-size factors making the line pass through each measurement; () if it fits within ``tolerance``."""
    predicted = [latency_s + n / bandwidth_bytes_per_s for n in sizes]
    if all(abs(p - t) <= tolerance * t for p, t in zip(predicted, times_s)):
        return ()
    points = []
    for n, t in zip(sizes, times_s):
        transfer_s = t - latency_s
        if n <= 0 or transfer_s <= 0:
            continue
        factor = n / (bandwidth_bytes_per_s * transfer_s)
        points.append((int(n), float(min(max(factor, 0.01), 100.0))))
    return tuple(sorted(points))


# A send that returns within this fraction of its message's one-way time
# did not wait for its bytes to arrive.
EAGER_FRACTION = 0.1


def fit_send_buffering(sizes: Sequence[int], one_way_s: Sequence[float], send_s: Sequence[float],
                       bytes_per_s: float) -> tuple[int, int]:
    """``(eager_bytes, send_buffer_bytes)`` from a ping-pong: each size's one-way time and
    how long its send took, on a path that moves ``bytes_per_s``.

    The eager limit is the largest size whose send returned at once; the
    buffer, what the largest size's send left in flight: the bytes its path
    moves between the send's return and the message's arrival.
    """
    if not (len(sizes) == len(one_way_s) == len(send_s)) or not sizes:
        raise ValueError("fit_send_buffering needs one one-way time and one send time per size")
    if not bytes_per_s > 0:
        raise ValueError(f"bytes_per_s must be > 0, got {bytes_per_s!r}")
    eager = max((int(n) for n, t, s in zip(sizes, one_way_s, send_s) if s <= EAGER_FRACTION * t), default=0)
    largest = max(range(len(sizes)), key=lambda i: sizes[i])
    if sizes[largest] <= eager:
        return eager, 0
    early_s = max(one_way_s[largest] - send_s[largest], 0.0)
    return eager, min(int(early_s * bytes_per_s), int(sizes[largest]))


def fit_reduce_cost(scenario, measured_s: dict[int, float]) -> float:
    """Seconds per reduced byte that make ``scenario`` (already on its profile's machine) match.

    ``measured_s`` maps op index to the measured time of that operation (all
    ranks start it together).  Simulated time is linear in the reduction cost,
    so one extra simulation with a unit cost gives each operation's
    sensitivity, and least squares gives the cost (never negative).
    """
    def times(reduce_s_per_byte: float) -> dict[int, float]:
        calibration = Calibration(reduce_s_per_byte=reduce_s_per_byte,
                                  message_efficiency=scenario.profile.message_efficiency(scenario.nranks))
        return _simulated_op_times(scenario, calibration)

    unit = 1e-9
    base, bumped = times(0.0), times(unit)
    indices = sorted(measured_s)
    sensitivity = np.array([(bumped[i] - base[i]) / unit for i in indices])
    residual = np.array([measured_s[i] - base[i] for i in indices])
    if not np.any(sensitivity > 0):
        return 0.0
    return max(float(np.dot(sensitivity, residual) / np.dot(sensitivity, sensitivity)), 0.0)


def fit_collective_efficiency(scenario, measured_s: dict[int, float]):
    """Per-op (nbytes, factor) curves that make ``scenario``'s collectives take their measured times.

    ``scenario`` runs on its profile's machine (without collective
    corrections) and ``measured_s`` maps op index to the measured time of a
    collective run natively.  A factor f divides the bandwidth of every step of
    the collective, so its time is a + b/f; simulating with f = 1 and f = 1/2
    gives a and b, and f = b / (measured - a).  Several measurements of one
    (op, size) take their median.
    """
    program = scenario.programs()[0]
    ops = {i: program[i] for i in measured_s if isinstance(program[i], Collective)}
    profile = scenario.profile

    def times(factor: float) -> dict[int, float]:
        calibration = Calibration(reduce_s_per_byte=profile.reduce_s_per_byte,
                                  message_efficiency=profile.message_efficiency(scenario.nranks),
                                  collective_efficiency=lambda op, nbytes: factor)
        return _simulated_op_times(scenario, calibration)

    full, half = times(1.0), times(0.5)
    by_key: dict[tuple[str, int], list[float]] = {}
    for i, op in ops.items():
        b = half[i] - full[i]
        a = full[i] - b
        if b > 0 and measured_s[i] > a:
            factor = min(max(b / (measured_s[i] - a), 0.01), 100.0)
            by_key.setdefault((op.op, op.nbytes), []).append(factor)
    curves: dict[str, list] = {}
    for (op, nbytes), values in sorted(by_key.items()):
        curves.setdefault(op, []).append((nbytes, float(np.median(values))))
    return {op: tuple(points) for op, points in curves.items()}


def _simulated_op_times(scenario, calibration: Calibration) -> dict[int, float]:
    """{op_index: the slowest rank's time} of ``scenario`` simulated with ``calibration``."""
    result = Simulator(scenario.topology, scenario.programs(), seed=scenario.seed, calibration=calibration,
                       process_groups=scenario.groups).run()
    table = op_times(result.records)
    return dict(zip(table["op_index"].astype(int), table["time_s"].astype(float)))


def fit_link_burst(sizes: Sequence[int], one_way_s: Sequence[float], overhead_s: float,
                   bytes_per_s: float) -> tuple[int, float]:
    """``(burst_bytes, efficiency)`` of a shaped link from a ping-pong's one-way times.

    A message that starts on an idle token-bucket link lets a bucket's bytes
    through at once (``simcore.network``), so beyond the overhead its time is
    ``(n / efficiency - burst) / bytes_per_s``: a line in n whose intercept is
    the bucket, fitted on relative error over the sizes whose transfer is
    most of their time and that are at least twice the bucket (a message
    within it is all overhead, one a few times it gains only part of it):
    first on the sizes from a sixteenth of the largest up, which no plausible
    bucket bends, then on those at least twice the bucket fitted.  A negative
    intercept (a link that loses time at a start instead of gaining it) fits
    as no bucket, and so do fewer than two usable sizes; a bucket so large
    that fewer than two sizes are twice it keeps the first fit.
    """
    if len(sizes) != len(one_way_s) or not sizes:
        raise ValueError("fit_link_burst needs one one-way time per size")
    if not bytes_per_s > 0:
        raise ValueError(f"bytes_per_s must be > 0, got {bytes_per_s!r}")
    points = sorted((float(n), float(t)) for n, t in zip(sizes, one_way_s)
                    if n / bytes_per_s >= 10 * overhead_s and t > overhead_s)
    if not points:
        raise ValueError("fit_link_burst needs a size whose transfer outweighs the overhead")
    largest_n, largest_t = points[-1]
    no_bucket = (0, largest_n / ((largest_t - overhead_s) * bytes_per_s))
    least_n = largest_n / 16
    fit = None  # (burst, efficiency)
    for _ in range(5):
        used = [(n, t) for n, t in points if n >= least_n]
        if len(used) < 2:
            break  # a bucket too large for the sizes above it: keep the fit before
        n = np.array([p[0] for p in used])
        y = (np.array([p[1] for p in used]) - overhead_s) * bytes_per_s
        design = np.stack([n, -np.ones_like(n)], axis=1) / y[:, None]
        (inverse_efficiency, fitted), *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)
        if fitted <= 0:
            return no_bucket
        settled = fit is not None and round(fitted) == fit[0]
        fit, least_n = (round(float(fitted)), float(1.0 / inverse_efficiency)), 2 * float(fitted)
        if settled:
            break
    return fit if fit is not None else no_bucket
