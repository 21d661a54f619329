"""RunResult: what every executor returns, simulated or measured."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

RECORD_COLUMNS = (
    "rank",
    "op_index",
    "kind",
    "algorithm",
    "peer",
    "nbytes",
    "flops",
    "start_s",
    "end_s",
    "energy_j",
)


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

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write records, per-rank, per-link, per-node tables (CSV) and the summary (JSON)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("records", "per_rank", "per_link", "per_node"):
            frame = getattr(self, name)
            if frame is not None and len(frame.columns):
                path = out / f"{name}.csv"
                frame.to_csv(path, index=False)
                written.append(path)
        path = out / "summary.json"
        path.write_text(dumps_json(self.summary, indent=2) + "\n")
        written.append(path)
        if len(self.records):
            path = out / "trace.json"
            path.write_text(dumps_json(self.chrome_trace()))
            written.append(path)
        return written

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


def dumps_json(data, **kwargs) -> str:
    """Standard JSON only: a NaN or infinity (a partial result, a real run's missing
    value) is written as null, never as the non-standard NaN/Infinity."""
    return json.dumps(_finite(data), allow_nan=False, default=_jsonable, **kwargs)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _finite(value.item())
    return value


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
