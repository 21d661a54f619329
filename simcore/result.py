"""RunResult: what every executor returns, simulated or measured."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from workloads.ops import is_nonblocking


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


TEXT_COLUMNS = frozenset(("group", "kind", "algorithm"))
# Times and energies are floats even where every value happens to be an
# integer (a simulation's clock starts at the integer 0).
_FLOAT_COLUMNS = ("start_s", "end_s", "energy_j")


def record_columns(records) -> dict[str, np.ndarray] | None:
    """``Record`` s (or plain tuples in their order) as one numpy array per column, typed as pandas
    would type them; None where there are none, or where a value is unusual (None, a huge
    integer) and pandas should infer the column itself."""
    if not records:
        return None
    # Column by column through numpy: pandas' row-wise inference costs seconds per million records.
    data = {}
    for name, values in zip(RECORD_COLUMNS, zip(*records)):
        if name in TEXT_COLUMNS:
            data[name] = np.array(values, dtype=object)
            continue
        column = np.array(values)
        if column.dtype.kind not in "iuf":
            return None
        data[name] = column.astype(np.float64) if name in _FLOAT_COLUMNS else column
    return data if len(data) == len(RECORD_COLUMNS) else None


def records_frame(records, repeats=None) -> pd.DataFrame:
    """``Record`` s as a DataFrame with ``RECORD_COLUMNS`` (and ``repeat`` when ``repeats`` is given)."""
    records = records if isinstance(records, list) else list(records)
    data = record_columns(records)
    if data is not None:
        frame = pd.DataFrame(data, copy=False)
    else:
        frame = pd.DataFrame.from_records(records, columns=list(RECORD_COLUMNS))
        for name in _FLOAT_COLUMNS:
            if frame[name].dtype.kind in "iu":
                frame[name] = frame[name].astype(np.float64)
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


def group_label(group: str) -> str:
    """How a group is shown to a reader: the world is ``world``."""
    return group or "world"


def group_comm_table(records: pd.DataFrame, programs, makespan_s: float) -> pd.DataFrame:
    """Each rank's exposed communication time per process group.

    Exposed: the time the rank's own time line spends in blocking
    collectives, sends and receives on the group, and in waits for the
    group's non-blocking operations (a wait's record carries their group,
    see ``workloads.ops.record_groups``); non-blocking operations running in
    the background are not counted twice.  Columns ``rank``, ``group``,
    ``comm_s`` (the median over repeats of a real run) and ``share`` (of
    ``makespan_s``).
    """
    columns = ["rank", "group", "comm_s", "share"]
    if not len(records):
        return pd.DataFrame(columns=columns)
    frame = records[records["kind"] != "compute"]
    # Looked up per communication record, not per operation of the programs
    # (a training step's are mostly computes).
    keep = [not is_nonblocking(programs[r][i])
            for r, i in zip(frame["rank"].tolist(), frame["op_index"].tolist())]
    frame = frame[keep]
    if not len(frame):
        return pd.DataFrame(columns=columns)
    parts = pd.DataFrame({
        "repeat": frame["repeat"] if "repeat" in frame.columns else 0,
        "rank": frame["rank"].astype("int64"),
        "group": frame["group"].fillna("").astype(str),
        "comm_s": frame["end_s"] - frame["start_s"],
    })
    per_repeat = parts.groupby(["repeat", "rank", "group"], sort=True)["comm_s"].sum().reset_index()
    table = per_repeat.groupby(["rank", "group"], sort=True)["comm_s"].median().reset_index()
    table["share"] = table["comm_s"] / makespan_s if makespan_s > 0 else 0.0
    return table[columns]


@dataclass
class RunResult:
    """One record per operation per rank, and a summary.

    ``records`` has ``RECORD_COLUMNS`` (``peer`` is -1 where there is none,
    ``algorithm`` empty for point-to-point and compute).  ``per_rank`` has
    ``compute_s``, ``comm_s`` and ``wait_s`` (time blocked on communication,
    and idle after the rank's last operation until the makespan; the three add
    up to the makespan) and ``energy_j``.  ``per_group`` splits each rank's
    exposed communication by process group (``group_comm_table``).
    """

    records: pd.DataFrame
    summary: dict[str, Any]
    per_rank: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_link: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_node: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_group: pd.DataFrame = field(default_factory=pd.DataFrame)
    # The ranks of each server (the topology's groups), for the trace's processes; None: one process.
    servers: tuple[tuple[int, ...], ...] | None = None
    # Set where ``records`` holds a folded run's representatives' rows only (simcore.symmetry): rank r's
    # records are rank rep_of[r]'s.  ``all_records()`` gives every rank's.
    rep_of: np.ndarray | None = None

    def all_records(self) -> pd.DataFrame:
        """Every rank's records (a folded run's representatives' given to their classes)."""
        return self.records if self.rep_of is None else images_of_records(self.records, self.rep_of)

    def record_count(self) -> int:
        """How many rows ``all_records()`` has, without building them."""
        if self.rep_of is None:
            return len(self.records)
        per_rank = np.bincount(self.records["rank"].to_numpy(), minlength=len(self.rep_of))
        return int(per_rank[self.rep_of].sum())

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

    def chrome_trace(self, merged: bool = False) -> dict[str, Any]:
        """The records as a Chrome/Perfetto trace (open in ui.perfetto.dev or chrome://tracing).

        Per rank, one track for compute (and waits) and one communication
        track per process group the rank uses (the world's is "comm world"),
        so that a TP all-reduce, a DP bucket running in the background and a
        pipeline send show side by side; the ranks of a server (``servers``)
        are threads of one process.  ``merged``: consecutive operations
        of one name on one track are one slice from the first's start to the
        last's end (``args.operations``: how many), a trace of a large run
        that a viewer still opens.
        """
        events: list[dict[str, Any]] = []
        records = self.records
        if "repeat" in records.columns:
            # A real run's repeats each start at 0 s: show the first.
            records = records[records["repeat"] == records["repeat"].min()]
        groups = records["group"].fillna("").astype(str) if "group" in records.columns else pd.Series(
            "", index=records.index)
        comm = records["kind"].isin(("compute", "wait")).map(lambda x: not x)
        names = sorted(set(groups[comm]), key=lambda g: (g != "", g))
        if "" not in names:
            names.insert(0, "")
        width = len(names) + 1
        track = {g: i + 1 for i, g in enumerate(names)}
        server = {rank: i for i, ranks in enumerate(self.servers or ()) for rank in ranks}
        pid_of = records["rank"].astype(int).map(server).fillna(0).astype(int) if server else None
        for i in sorted(set(server.values())):
            events.append({"name": "process_name", "ph": "M", "pid": i, "args": {"name": f"server {i}"}})
        for rank in sorted(int(r) for r in records["rank"].unique()):
            pid = server.get(rank, 0)
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": width * rank,
                           "args": {"name": f"rank {rank} compute"}})
            for g in names:
                events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": width * rank + track[g],
                               "args": {"name": f"rank {rank} comm {group_label(g)}"}})
        if merged:
            events.extend(_merged_slices(records, groups, comm, width, track, server))
            return {"traceEvents": events, "displayTimeUnit": "ms"}
        pids = pid_of if pid_of is not None else [0] * len(records)
        for row, group, is_comm, pid in zip(records.itertuples(index=False), groups, comm, pids):
            tid = width * int(row.rank) + (track[group] if is_comm else 0)
            name = row.kind if not row.algorithm else f"{row.kind} ({row.algorithm})"
            if group:
                name = f"{name} [{group}]"
            args = {"op_index": int(row.op_index), "nbytes": int(row.nbytes), "flops": float(row.flops),
                    "energy_j": float(row.energy_j)}
            if group:
                args["group"] = group
            if row.peer >= 0:
                args["peer"] = int(row.peer)
            events.append({"name": name, "ph": "X", "pid": int(pid), "tid": tid,
                           "ts": row.start_s * 1e6, "dur": (row.end_s - row.start_s) * 1e6, "args": args})
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def group_shares(self) -> dict[str, float]:
        """{group: mean over ranks of its exposed communication time / makespan}, largest first."""
        table = self.per_group
        if table is None or not len(table) or "share" not in table.columns:
            return {}
        nranks = int(self.summary.get("nranks") or table["rank"].nunique())
        means = table.groupby("group")["share"].sum() / max(nranks, 1)
        return {str(g): float(v) for g, v in means.sort_values(ascending=False, kind="stable").items()}

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
        shares = self.group_shares()
        if shares and set(shares) != {""}:
            lines.append("communication by group (exposed, mean share of makespan) " + ", ".join(
                f"{group_label(g)} {100 * v:.1f}%" for g, v in shares.items()))
        for key in ("operations", "messages", "events", "wall_s"):
            if key in s:
                lines.append(f"{key:<15} {s[key]}")
        if s.get("symmetry"):
            lines.append(f"{'symmetry':<15} {s['symmetry']}")
        return "\n".join(lines)


def _names(records: pd.DataFrame, groups: pd.Series) -> pd.Series:
    """Each record's slice name: its kind, its algorithm in parentheses, its group in brackets."""
    algorithm = records["algorithm"].fillna("").astype(str)
    name = records["kind"].astype(str).where(algorithm == "", records["kind"].astype(str) + " (" + algorithm + ")")
    return name.where(groups == "", name + " [" + groups + "]")


def _merged_slices(records: pd.DataFrame, groups: pd.Series, comm: pd.Series, width: int,
                   track: dict, server: dict) -> list[dict[str, Any]]:
    """The trace's slices with consecutive operations of one name on one track merged."""
    tid = records["rank"].astype(int) * width + comm.astype(bool) * groups.map(track).fillna(0).astype(int)
    frame = pd.DataFrame({"tid": tid.to_numpy(), "name": _names(records, groups).to_numpy(),
                          "start_s": records["start_s"].to_numpy(), "end_s": records["end_s"].to_numpy()})
    frame = frame.sort_values(["tid", "start_s"], kind="stable")
    new_run = (frame["tid"] != frame["tid"].shift()) | (frame["name"] != frame["name"].shift())
    runs = frame.groupby(new_run.cumsum().to_numpy(), sort=False).agg(
        tid=("tid", "first"), name=("name", "first"), start_s=("start_s", "min"), end_s=("end_s", "max"),
        operations=("tid", "size"))
    return [{"name": name, "ph": "X", "pid": server.get(int(tid) // width, 0), "tid": int(tid), "ts": start * 1e6,
             "dur": (end - start) * 1e6, "args": {"operations": int(count)}}
            for tid, name, start, end, count in zip(runs["tid"], runs["name"], runs["start_s"], runs["end_s"],
                                                    runs["operations"])]


def images_of_records(records: pd.DataFrame, rep_of: np.ndarray) -> pd.DataFrame:
    """The representatives' rows (of records or another per-rank table, sorted by rank) given to every rank
    of their class."""
    if not len(records):
        return records
    n = len(rep_of)
    rank = records["rank"].to_numpy()
    count = np.bincount(rank, minlength=n)
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    take_count = count[rep_of]
    take_start = start[rep_of]
    offsets = np.concatenate(([0], np.cumsum(take_count)[:-1]))
    rows = np.arange(int(take_count.sum())) - np.repeat(offsets - take_start, take_count)
    columns = {}
    for name in records.columns:
        values = records[name].to_numpy()
        if values.dtype == object:
            # Strings taken as small codes: a take of millions of Python objects costs a cache miss each.
            codes, uniques = pd.factorize(values, use_na_sentinel=False)
            table = np.empty(len(uniques), dtype=object)
            table[:] = list(uniques)
            columns[name] = table[codes[rows]]
        else:
            columns[name] = values[rows]
    columns["rank"] = np.repeat(np.arange(n, dtype=rank.dtype), take_count)
    return pd.DataFrame(columns, copy=False)
