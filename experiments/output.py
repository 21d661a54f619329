"""Writing results: only experiments/ creates folders and files.

``write_result`` writes a RunResult's tables (CSV, the records as Parquet
by choice), its summary (JSON) and a Chrome/Perfetto trace (whole, merged
or none: ``output_choices`` says what "auto" writes for a run's size); ``write_profile`` a machine profile (YAML);
``write_json`` any summary (``write_json_atomic`` a sweep's point).  JSON is standard: a NaN or an infinity is
written as null, never as the ``NaN``/``Infinity`` that strict readers reject.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import yaml

from simcore.result import RunResult
from topologies.profile import MachineProfile


def make_out_dir(path: str | Path) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) as None, numpy scalars as Python ones."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def json_text(data: Any, indent: int | None = 2) -> str:
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def write_json(data: Any, path: str | Path, indent: int | None = 2) -> Path:
    path = Path(path)
    path.write_text(json_text(data, indent) + "\n")
    return path


def write_json_atomic(data: Any, path: str | Path) -> Path:
    """``write_json``, but a reader (or a sweep stopped halfway) sees the whole file or none:
    written beside ``path`` first, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write_json(data, tmp)
    tmp.replace(path)
    return path


# What ``write_result`` writes by default ("auto"): every record as CSV and the full trace up to these
# sizes; above them the records are left out and the trace merged (a 1 GB records.csv and a 2.25 GB
# trace.json came from one 280-GPU training step), and the run says how to get them.
AUTO_RECORDS_ROWS = 1_000_000
AUTO_TRACE_ROWS = 200_000
RECORDS_CHOICES = ("auto", "none", "csv", "parquet")
TRACE_CHOICES = ("auto", "none", "summary", "full")


def output_choices(nrecords: int, records: str = "auto", trace: str = "auto") -> tuple[str, str, list[str]]:
    """(records, trace, notes): "auto" resolved for ``nrecords`` records, and a line for each output left
    out or reduced by "auto", saying how to get it whole."""
    notes = []
    if records == "auto":
        records = "csv" if nrecords <= AUTO_RECORDS_ROWS else "none"
        if records == "none":
            notes.append(f"records left out: {nrecords:,} operations (over {AUTO_RECORDS_ROWS:,}); "
                         f"--records csv or --records parquet writes them")
    if trace == "auto":
        trace = "full" if nrecords <= AUTO_TRACE_ROWS else "summary"
        if trace == "summary":
            notes.append(f"trace.json merges each rank's consecutive operations of one kind ({nrecords:,} "
                         f"operations, over {AUTO_TRACE_ROWS:,}); --trace full writes every one")
    return records, trace, notes


def parquet_problem() -> str | None:
    """Why records cannot be written as Parquet here, or None."""
    if importlib.util.find_spec("pyarrow") is None:
        return "--records parquet needs pyarrow: pip install -e '.[parquet]'"
    return None


def write_result(result: RunResult, out_dir: str | Path, records: str = "csv", trace: str = "full",
                 say=None) -> list[Path]:
    """Write the records (``records``: csv, parquet or none), the per-rank, per-link, per-node and per-group
    tables (CSV), the summary (JSON) and a trace (``trace``: full, summary -- each rank's consecutive
    operations of one kind merged -- or none).  ``say(line)``: told before each file is written."""
    out = make_out_dir(out_dir)
    written = []
    tables = [("per_rank", "csv"), ("per_link", "csv"), ("per_node", "csv"), ("per_group", "csv")]
    if records != "none":
        tables.insert(0, ("records", records))
    for name, form in tables:
        frame = getattr(result, name)
        if frame is not None and len(frame.columns):
            path = out / f"{name}.{form}"
            if say is not None:
                say(f"writing {path.name} ({len(frame):,} rows)")
            if form == "parquet":
                frame.to_parquet(path, index=False)
            else:
                frame.to_csv(path, index=False)
            written.append(path)
    written.append(write_json(result.summary, out / "summary.json"))
    if len(result.records) and trace != "none":
        if say is not None:
            say(f"writing trace.json ({trace}, {len(result.records):,} operations)")
        written.append(write_json(result.chrome_trace(merged=trace == "summary"), out / "trace.json", indent=None))
    return written


def write_profile(profile: MachineProfile, path: str | Path) -> Path:
    path = Path(path)
    if path.parent != Path("."):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile.to_dict(), sort_keys=False))
    return path
