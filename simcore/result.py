"""RunResult: what every executor returns, simulated or measured."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd


class Record(NamedTuple):
    """One operation of one rank, as every executor reports it.

    ``group`` is the process group the operation ran on ('' for the world,
    compute, and waits on several groups; see ``workloads.ops.record_groups``);
    ``peer`` is -1 where there is none (a collective's is its root, see
    ``workloads.collectives.root_peer``), and a rank of ``group``;
    ``algorithm`` is empty for point-to-point and compute; ``energy_j`` is NaN
    where nothing measures it.
    """

    rank: int
    op_index: int
    group: str
    kind: str
    algorithm: str
    peer: int
    nbytes: int
    flops: float
    start_s: float
    end_s: float
    energy_j: float


RECORD_COLUMNS = Record._fields
# What identifies an operation of the program across ranks and repeats.
OP_KEYS = ["group", "kind", "algorithm", "nbytes", "flops"]


def records_frame(records, repeats=None) -> pd.DataFrame:
    """``Record`` s as a DataFrame with ``RECORD_COLUMNS`` (and ``repeat`` when ``repeats`` is given)."""
    frame = pd.DataFrame.from_records(list(records), columns=list(RECORD_COLUMNS))
    if repeats is not None:
        frame["repeat"] = list(repeats)
    return frame


def op_times_per_repeat(records: pd.DataFrame) -> pd.DataFrame:
    """Each operation's time in each repeat: the slowest rank's (max over ranks of end_s - start_s).

    Columns ``repeat``, ``op_index``, ``OP_KEYS`` and ``time_s``; a simulated
    run is one repeat (0).  The records of one op_index share their
    ``OP_KEYS`` on every rank; a CSV round trip's NaN algorithm reads as ''.
    """
    frame = records.copy()
    if "repeat" not in frame.columns:
        frame["repeat"] = 0
    frame["algorithm"] = frame["algorithm"].fillna("").astype(str)
    frame["group"] = frame["group"].fillna("").astype(str) if "group" in frame.columns else ""
    frame["nbytes"] = frame["nbytes"].astype("int64")
    frame["flops"] = frame["flops"].astype(float)
    frame["time_s"] = frame["end_s"] - frame["start_s"]
    columns = ["repeat", "op_index"] + OP_KEYS + ["time_s"]
    if not len(frame):
        return pd.DataFrame(columns=columns)
    per_op = frame.groupby(["repeat", "op_index"] + OP_KEYS, sort=True)["time_s"].max()
    return per_op.reset_index()[columns]


def op_times(records: pd.DataFrame) -> pd.DataFrame:
    """Each operation's time: the slowest rank's in each repeat, then the median over repeats.

    One row per ``op_index`` with ``OP_KEYS``, ``time_s`` (the median),
    ``min_s`` and ``max_s`` (over repeats) and ``repeats``.
    """
    per_repeat = op_times_per_repeat(records)
    columns = ["op_index"] + OP_KEYS + ["time_s", "min_s", "max_s", "repeats"]
    if not len(per_repeat):
        return pd.DataFrame(columns=columns)
    out = per_repeat.groupby(["op_index"] + OP_KEYS, sort=True)["time_s"].agg(
        time_s="median", min_s="min", max_s="max", repeats="size").reset_index()
    return out[columns]


@dataclass
class RunResult:
    """One record per operation per rank, and a summary.

    ``records`` has ``RECORD_COLUMNS`` (``peer`` is -1 where there is none,
    ``algorithm`` empty for point-to-point and compute).  ``per_rank`` has
    ``compute_s``, ``comm_s`` and ``wait_s`` (time blocked on communication,
    and idle after the rank's last operation until the makespan; the three add
    up to the makespan) and ``energy_j``.
    """

    records: pd.DataFrame
    summary: dict[str, Any]
    per_rank: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_link: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_node: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def makespan_s(self) -> float:
        return float(self.summary["makespan_s"])

    def op_times(self) -> pd.DataFrame:
        """Per operation: its slowest rank's time, median over repeats (see ``op_times``)."""
        return op_times(self.records)

    def op_time_s(self) -> dict[int, float]:
        """``op_times`` as {op_index: time_s}."""
        table = self.op_times()
        return dict(zip(table["op_index"].astype(int), table["time_s"].astype(float)))

    def chrome_trace(self) -> dict[str, Any]:
        """The records as a Chrome/Perfetto trace (open in ui.perfetto.dev or chrome://tracing).

        Two tracks per rank: compute (and waits), and communication, so that
        non-blocking collectives overlapping compute show side by side.
        """
        events: list[dict[str, Any]] = []
        records = self.records
        if "repeat" in records.columns:
            # A real run's repeats each start at 0 s: show the first.
            records = records[records["repeat"] == records["repeat"].min()]
        for rank in sorted(int(r) for r in records["rank"].unique()):
            for stream, label in ((0, "compute"), (1, "communication")):
                events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": 2 * rank + stream,
                               "args": {"name": f"rank {rank} {label}"}})
        for row in records.itertuples(index=False):
            stream = 0 if row.kind in ("compute", "wait") else 1
            name = row.kind if not row.algorithm else f"{row.kind} ({row.algorithm})"
            args = {"op_index": int(row.op_index), "nbytes": int(row.nbytes), "flops": float(row.flops),
                    "energy_j": float(row.energy_j)}
            if row.peer >= 0:
                args["peer"] = int(row.peer)
            events.append({"name": name, "ph": "X", "pid": 0, "tid": 2 * int(row.rank) + stream,
                           "ts": row.start_s * 1e6, "dur": (row.end_s - row.start_s) * 1e6, "args": args})
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def format_summary(self) -> str:
        s = self.summary
        lines = [
            f"scenario        {s.get('scenario', '')}",
            f"backend         {s.get('backend', '')}" + (f" ({s['transport']}, {s.get('mode', '')} collectives, "
                                                      f"{s.get('timing', '')} timing, {s.get('repeats')} repeats)"
                                                      if "transport" in s else ""),
            f"ranks           {s.get('nranks')}",
            f"makespan        {s['makespan_s']:.6g} s",
        ]
        if "total_energy_j" in s:
            lines.append(
                f"energy          {s['total_energy_j']:.6g} J "
                f"(compute nodes {s.get('node_energy_j', 0):.4g} J, other nodes {s.get('other_node_energy_j', 0):.4g} J, "
                f"links {s.get('link_energy_j', 0):.4g} J)"
            )
        if len(self.per_rank.columns):
            pr = self.per_rank
            lines.append(
                "per rank (mean) compute {:.4g} s, communication {:.4g} s, waiting {:.4g} s".format(
                    pr["compute_s"].mean(), pr["comm_s"].mean(), pr["wait_s"].mean()
                )
            )
        for key in ("operations", "messages", "events", "wall_s"):
            if key in s:
                lines.append(f"{key:<15} {s[key]}")
        return "\n".join(lines)
