"""Ring collectives whose messages share links, computed together as a fluid model in numpy.

The collective fast path (``simcore.fastpath``) stands for the flow network
only while every message is alone on its path.  Ring all-reduces,
reduce-scatters and all-gathers that start together and share links (one ring
per GPU position crossing the same server uplinks, or one ring laid on a tree
whose neighbours' routes meet on the uplinks) are the common case where they
are not.  There every member of every ring ("lane") has at most one message
in flight, to its right neighbour over a fixed route, so the state of the
whole set is a handful of arrays over lanes, and the flow network's model --
max-min fair rates re-solved whenever a flow starts or its last byte leaves,
delivery a path latency after the last byte, a step ends when the member's
send and the receive from its left neighbour are both delivered, then the
reduction time of a reduce-scatter step -- advances one instant at a time
with a few vector operations per instant, whatever the number of lanes.

``FluidRings.run()`` returns a ``fastpath.Plan`` (every member's end, link
energy, bytes and last byte per link) or the reason it cannot stand for the
flow network.  ``run(stop_s)`` stops at an instant and keeps the state the
engine needs to continue message by message (``simcore.engine``).  The
rates are the flow network's max-min rates, solved for all flows at once
rather than per connected component; the two give the same rates up to
rounding, so the times agree with the reference engine's to about 1e-12
relative, not bit for bit.
"""
from __future__ import annotations

import numpy as np

from simcore.fastpath import BUSY, IRREGULAR, Plan
from workloads.collectives import block_layout

# Shares within this relative distance of the smallest are one bottleneck level:
# the progressive filling fixes them together, as the flow network does one link after another.
_TIE = 1e-12
# Delivery times kept (lanes x steps); a larger set runs message by message.
MAX_HISTORY = 50_000_000


class FluidRings:
    """Ring collectives ``rings`` (``(members, op, slowdown)`` each) that all start at ``t0``.

    Lanes are numbered ring by ring, member by member: lane ``bases[c] + i``
    is member ``i`` of ring ``c``.
    """

    def __init__(self, sim, rings, t0: float, starts=None):
        self.sim = sim
        self.rings = rings
        self.t0 = t0
        # Each lane's start where they differ (inf: not started by the stop time); the links were held since t0.
        self.starts = None if starts is None else np.array(starts, dtype=float)
        bases, p_of, pos, size_base, sizes, rs_steps, ag_steps = [], [], [], [], [], [], []
        routes, slowdowns = [], []
        lane = 0
        for members, op, slowdown in rings:
            p = len(members)
            bases.append(lane)
            phases = {"allreduce": ("rs", "ag"), "reduce_scatter": ("rs",), "allgather": ("ag",)}[op.op]
            base = sum(len(s) for s in sizes)
            sizes.append([count for _, count in block_layout(op.nbytes, p)])
            for i in range(p):
                p_of.append(p)
                pos.append(i)
                size_base.append(base)
                rs_steps.append(p - 1 if "rs" in phases else 0)
                ag_steps.append(p - 1 if "ag" in phases else 0)
                routes.append(sim.messages.route(members[i], members[(i + 1) % p]))
                slowdowns.append(slowdown)
            lane += p
        self.bases = bases
        m = lane
        self.m = m
        self.p = np.array(p_of, dtype=np.int64)
        self.pos = np.array(pos, dtype=np.int64)
        base_of = np.repeat(np.array(bases, dtype=np.int64), [len(r[0]) for r in rings])
        self.left = base_of + (self.pos - 1) % self.p
        self.right = base_of + (self.pos + 1) % self.p
        self.size_base = np.array(size_base, dtype=np.int64)
        self.sizes = np.array([s for ring in sizes for s in ring], dtype=np.int64)
        self.rs_steps = np.array(rs_steps, dtype=np.int64)
        self.nsteps = self.rs_steps + np.array(ag_steps, dtype=np.int64)
        self.has_links = np.array([bool(r[0]) for r in routes])
        self.latency = np.array([r[2] for r in routes], dtype=float)
        self.energy_per_byte = np.array([r[3] for r in routes], dtype=float)
        self.slowdown = np.array(slowdowns, dtype=float)
        self.hist_base = np.concatenate(([0], np.cumsum(self.nsteps)[:-1])).astype(np.int64)
        self.history = int(self.nsteps.sum())
        # (lane, link) pairs, links numbered locally.
        lane_of, link_of = [], []
        for j, r in enumerate(routes):
            for link in r[0]:
                lane_of.append(j)
                link_of.append(link)
        self.links, local = np.unique(np.array(link_of, dtype=np.int64), return_inverse=True)
        self.entry_lane = np.array(lane_of, dtype=np.int64)
        self.entry_link = local.astype(np.int64)
        capacity = sim.net.capacity_bytes_per_s
        self.capacity = np.array([capacity[link] for link in self.links.tolist()], dtype=float)

    # -- the ring's steps, vectorised over lanes -------------------------------------------

    def _send_nbytes(self, lanes, s):
        p = self.p[lanes]
        pos = self.pos[lanes]
        rs = self.rs_steps[lanes]
        in_rs = s < rs
        block = np.where(in_rs, (pos - s - 1) % p, (pos - (s - rs)) % p)
        return self.sizes[self.size_base[lanes] + block]

    def reduced_nbytes(self, lanes, s):
        """Bytes lane ``lanes`` reduces after step ``s`` (its left neighbour's block, in a reduce-scatter step)."""
        p = self.p[lanes]
        in_rs = s < self.rs_steps[lanes]
        block = (self.pos[lanes] - s - 2) % p
        return np.where(in_rs, self.sizes[self.size_base[lanes] + block], 0)

    def send_nbytes(self, lanes, s):
        return self._send_nbytes(np.asarray(lanes), np.asarray(s))

    # -- the run -----------------------------------------------------------------------------

    def run(self, stop_s: float | None = None):
        """A ``Plan``; with ``stop_s``, None after keeping the state at ``stop_s`` in ``self.state``."""
        net = self.sim.net
        t0 = self.t0
        if stop_s is None:
            if self.history > MAX_HISTORY:
                return IRREGULAR
            for link in self.links.tolist() if self.starts is None else ():
                if not net.link_free(link, t0):
                    return BUSY
        lanes = _Lanes(self)
        inf = np.inf
        while True:
            active = lanes.active
            t_flow = lanes.t_end[active].min() if active.any() else inf
            t_start = lanes.pending.min()
            now = t_flow if t_flow < t_start else t_start
            if now == inf or (stop_s is not None and now > stop_s):
                break
            changed = False
            if t_flow <= now:
                self._end_flows(lanes, now)
                changed = True
            changed = self._start_steps(lanes, now) or changed
            if changed and lanes.active.any():
                self._solve(now, lanes.active, lanes.remaining, lanes.rate, lanes.t_last, lanes.t_end,
                            self.entry_lane, self.entry_link)
        if stop_s is not None:
            self.state = lanes.state_at(stop_s)
            return None
        if not lanes.done.all():
            return IRREGULAR
        return self._plan(lanes)

    def _recheck(self, lanes: "_Lanes", which) -> None:
        """A lane whose send and whose left neighbour's send of its step are both delivered ends that step."""
        which = np.unique(which)
        which = which[(lanes.pending[which] == np.inf) & ~lanes.done[which] & (lanes.step[which] >= 0)]
        if not len(which):
            return
        s = lanes.step[which]
        own = lanes.history[self.hist_base[which] + s]
        theirs = lanes.history[self.hist_base[self.left[which]] + s]
        ok = (own < np.inf) & (theirs < np.inf)
        if not ok.any():
            return
        which, s = which[ok], s[ok]
        finish = np.maximum(own[ok], theirs[ok])
        rspb = self.sim.reduce_s_per_byte
        if rspb:
            red = self.reduced_nbytes(which, s)
            finish = np.where(red > 0, finish + red * rspb, finish)
        lanes.pending[which] = finish

    def _end_flows(self, lanes: "_Lanes", now: float) -> None:
        """The flows whose last byte leaves now: delivered a latency later."""
        ending = np.flatnonzero(lanes.active & (lanes.t_end <= now))
        lanes.active[ending] = False
        lanes.last_byte[ending] = lanes.t_end[ending]
        lanes.history[self.hist_base[ending] + lanes.step[ending]] = lanes.t_end[ending] + self.latency[ending]
        self._recheck(lanes, np.concatenate((ending, self.right[ending])))

    def _start_steps(self, lanes: "_Lanes", now: float) -> bool:
        """Every lane whose next step starts now starts it (its send a flow, or a message with no bytes to
        move); a step that ends at once lets the next start too.  True if a flow started."""
        started_flow = False
        while True:
            starting = np.flatnonzero(lanes.pending <= now)
            if not len(starting):
                return started_flow
            at = lanes.pending[starting]
            lanes.pending[starting] = np.inf
            lanes.step[starting] += 1
            finished = lanes.step[starting] >= self.nsteps[starting]
            if finished.any():
                over = starting[finished]
                lanes.done[over] = True
                lanes.end_s[over] = at[finished]
                starting = starting[~finished]
                if not len(starting):
                    continue
            s = lanes.step[starting]
            nbytes = self._send_nbytes(starting, s)
            lanes.messages += len(starting)
            lanes.link_j[starting] += nbytes * self.energy_per_byte[starting]
            lanes.sent_bytes[starting] += np.where(self.has_links[starting], nbytes, 0)
            flowing = (nbytes > 0) & self.has_links[starting]
            f = starting[flowing]
            if len(f):
                lanes.remaining[f] = nbytes[flowing] * self.slowdown[f]
                lanes.rate[f] = 0.0
                lanes.t_last[f] = now
                lanes.t_end[f] = np.inf
                lanes.active[f] = True
                started_flow = True
            g = starting[~flowing]
            if len(g):
                lat = self.latency[g]
                lanes.history[self.hist_base[g] + s[~flowing]] = np.where(lat > 0, now + lat, now)
            self._recheck(lanes, np.concatenate((starting, self.right[starting])))

    def _plan(self, lanes: "_Lanes") -> Plan:
        per_link = np.bincount(self.entry_link, weights=lanes.sent_bytes[self.entry_lane].astype(float),
                               minlength=len(self.links))
        busy = np.full(len(self.links), -np.inf)
        np.maximum.at(busy, self.entry_link, lanes.last_byte[self.entry_lane])
        links = self.links.tolist()
        return Plan(lanes.end_s.tolist(), lanes.link_j.tolist(),
                    {link: int(b) for link, b in zip(links, per_link.tolist()) if b},
                    {link: t for link, t in zip(links, busy.tolist()) if t > -np.inf}, lanes.messages)

    def _solve(self, now, active, remaining, rate, t_last, t_end, entry_lane, entry_link):
        """Max-min fair rates of the active flows by progressive filling; a flow whose rate changes
        is charged for the bytes it moved at the old rate and gets a new last-byte time."""
        nlinks = len(self.links)
        live = active[entry_lane]
        lanes_e = entry_lane[live]
        links_e = entry_link[live]
        count = np.bincount(links_e, minlength=nlinks).astype(float)
        spare = self.capacity.copy()
        new_rate = np.zeros(len(active))
        unfixed = np.ones(len(lanes_e), dtype=bool)
        fixed = np.zeros(len(active), dtype=bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            while unfixed.any():
                share = np.where(count > 0, spare / count, np.inf)
                level = share.min()
                hit = unfixed & (share[links_e] <= level * (1.0 + _TIE))
                fixed[:] = False
                fixed[lanes_e[hit]] = True
                new_rate[fixed] = level
                entries = unfixed & fixed[lanes_e]
                used = np.bincount(links_e[entries], minlength=nlinks)
                spare = np.maximum(spare - level * used, 0.0)
                count -= used
                unfixed &= ~entries
        lanes = np.flatnonzero(active & (new_rate != rate))
        if not len(lanes):
            return
        old = rate[lanes]
        moved = np.where(old > 0, old * (now - t_last[lanes]), 0.0)
        remaining[lanes] = np.maximum(remaining[lanes] - moved, 0.0)
        t_last[lanes] = now
        rate[lanes] = new_rate[lanes]
        t_end[lanes] = now + remaining[lanes] / new_rate[lanes]


class _Lanes:
    """Every lane's state as a fluid model runs: numpy arrays, changed in place."""

    def __init__(self, fluid: FluidRings):
        m = fluid.m
        inf = np.inf
        self.step = np.full(m, -1, dtype=np.int64)
        # When the lane's next step starts (inf: not known yet).
        self.pending = np.full(m, float(fluid.t0)) if fluid.starts is None else fluid.starts.copy()
        self.done = np.zeros(m, dtype=bool)
        self.end_s = np.full(m, np.nan)
        self.active = np.zeros(m, dtype=bool)   # its current send is a flow with bytes left to leave
        self.remaining = np.zeros(m)
        self.rate = np.zeros(m)
        self.t_last = np.zeros(m)
        self.t_end = np.full(m, inf)
        self.last_byte = np.full(m, -inf)
        self.history = np.full(fluid.history, inf)  # each lane's send of each step: its delivery
        self.sent_bytes = np.zeros(m, dtype=np.int64)
        self.link_j = np.zeros(m)
        self.messages = 0

    def state_at(self, stop_s: float) -> dict:
        """What the engine needs to continue every lane message by message from ``stop_s``."""
        live = self.active
        self.remaining[live] = np.maximum(self.remaining[live] - self.rate[live] * (stop_s - self.t_last[live]), 0.0)
        return {"step": self.step, "pending": self.pending, "done": self.done, "active": self.active,
                "remaining": self.remaining, "history": self.history, "sent_bytes": self.sent_bytes,
                "link_j": self.link_j, "messages": self.messages}
