"""The engine's clock: the one place that reaches past SimPy's public API.

The engine schedules events at absolute times (a fast path's replayed floats,
``now + (when - now)`` would round differently), at priorities SimPy's public
``Event.succeed`` does not offer (after every process woken at an instant,
before or after the network's solve), and reads how many events SimPy has
numbered.  Each of those needs SimPy's queue, event-id counter or an event's
value and outcome slots; everything that touches them is here, so a SimPy
upgrade is checked in one module (``tests/test_layout.py`` fails on any other
use of a private attribute across modules).
"""
from __future__ import annotations

import heapq

import simpy

NORMAL = simpy.events.NORMAL
# Run after every process woken at an instant (NORMAL, 1): a collective's
# members that arrive at one instant are all in before it is decided (1.5),
# and the network solves rates after everything else at that instant (2).
AFTER_PROCESSES = 1.5
LAST_AT_INSTANT = 2


def now(env: simpy.Environment) -> float:
    """The current simulated time (``env.now`` without the property's call, on hot paths)."""
    return env._now


def _triggered(env: simpy.Environment, value) -> simpy.Event:
    event = simpy.Event(env)
    event._ok = True
    event._value = value
    return event


def event_at(env: simpy.Environment, when_s: float) -> simpy.Event:
    """An event that fires at the absolute time ``when_s``."""
    event = _triggered(env, None)
    heapq.heappush(env._queue, (when_s, NORMAL, next(env._eid), event))
    return event


def call_at(env: simpy.Environment, when_s: float, callback, value) -> None:
    """``callback(event)`` at the absolute time ``when_s``, with ``event.value`` = ``value``."""
    event = _triggered(env, value)
    event.callbacks.append(callback)
    heapq.heappush(env._queue, (when_s, NORMAL, next(env._eid), event))


def succeed_at(env: simpy.Environment, event: simpy.Event, when_s: float) -> None:
    """Fire the pending ``event`` (processes wait on it already) at the absolute time ``when_s``."""
    event._ok = True
    event._value = None
    heapq.heappush(env._queue, (when_s, NORMAL, next(env._eid), event))


def call_at_end_of_instant(env: simpy.Environment, priority: float, callback, value=None) -> None:
    """``callback(event)`` at the current instant, after the events of a lower ``priority`` number."""
    event = _triggered(env, value)
    event.callbacks.append(callback)
    env.schedule(event, priority, 0)


def call_after(env: simpy.Environment, delay_s: float, callback, value) -> None:
    """``callback(event)`` ``delay_s`` from now (a timeout: now + delay, as SimPy adds them)."""
    simpy.Timeout(env, delay_s, value).callbacks.append(callback)


def value(event: simpy.Event):
    """A fired event's value (inside its callbacks, where it is always set)."""
    return event._value


def events_scheduled(env: simpy.Environment) -> int:
    """Events SimPy has numbered (all of them processed when a run ends)."""
    # SimPy numbers events with an itertools.count; reading it costs nothing
    # per event, unlike counting in an overridden step().
    counter = getattr(env, "_eid", None)
    return int(repr(counter)[6:-1]) if counter is not None else -1
