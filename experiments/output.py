"""Writing results: only experiments/ creates folders and files.

``write_result`` writes a RunResult's tables (CSV), its summary (JSON) and a
Chrome/Perfetto trace; ``write_profile`` a machine profile (YAML);
``write_json`` any summary (``write_json_atomic`` a sweep's point).  JSON is standard: a NaN or an infinity is
written as null, never as the ``NaN``/``Infinity`` that strict readers reject.
"""
from __future__ import annotations

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


def write_result(result: RunResult, out_dir: str | Path) -> list[Path]:
    """Write records, per-rank, per-link, per-node and per-group tables (CSV), the summary (JSON) and a trace."""
    out = make_out_dir(out_dir)
    written = []
    for name in ("records", "per_rank", "per_link", "per_node", "per_group"):
        frame = getattr(result, name)
        if frame is not None and len(frame.columns):
            path = out / f"{name}.csv"
            frame.to_csv(path, index=False)
            written.append(path)
    written.append(write_json(result.summary, out / "summary.json"))
    if len(result.records):
        written.append(write_json(result.chrome_trace(), out / "trace.json", indent=None))
    return written


def write_profile(profile: MachineProfile, path: str | Path) -> Path:
    path = Path(path)
    if path.parent != Path("."):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile.to_dict(), sort_keys=False))
    return path
