"""PNG plots of the studies (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

LINESTYLE = {"off": "-", "on": "--"}


def plot_scaling(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """step_time.png, efficiency.png, energy.png: panels per mode, a line per topology,
    solid without stragglers and dashed with them."""
    figures = (
        ("step_s", "step time (s)", True, "step_time.png"),
        ("efficiency", "parallel efficiency", False, "efficiency.png"),
        ("energy_per_step_j", "energy per step (J)", True, "energy.png"),
    )
    modes = [m for m in ("strong", "weak") if m in set(frame["mode"])]
    topologies = list(dict.fromkeys(frame["topology"]))
    colors = {t: f"C{i}" for i, t in enumerate(topologies)}
    written = []
    for column, ylabel, logy, filename in figures:
        fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            part = frame[frame["mode"] == mode]
            for (topo, case), series in part.groupby(["topology", "stragglers"], sort=False):
                series = series.sort_values("n")
                ax.plot(series["n"], series[column], LINESTYLE.get(case, ":"), marker="o", markersize=3,
                        color=colors[topo], label=f"{topo}" + (" (stragglers)" if case == "on" else ""))
            ax.set_xscale("log", base=2)
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel("ranks N")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{mode} scaling")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = Path(out_dir) / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_whatif(frame: pd.DataFrame, params: Sequence[str], out_dir: Path) -> list[Path]:
    """whatif.png: makespan and energy against the first varied parameter,
    one line per combination of the others."""
    x = params[0]
    others = list(params[1:])
    numeric = pd.api.types.is_numeric_dtype(frame[x])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = frame.groupby(others, sort=False) if others else [((), frame)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{p}={v}" for p, v in zip(others, key)) or None
        xs = part[x] if numeric else part[x].astype(str)
        for ax, column in zip(axes, ("makespan_s", "energy_j")):
            ax.plot(xs, part[column], marker="o", label=label)
    for ax, ylabel, column in zip(axes, ("makespan (s)", "energy (J)"), ("makespan_s", "energy_j")):
        if numeric and _wide(frame[x]):
            ax.set_xscale("log")
        if _wide(frame[column]):
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if others:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(out_dir) / "whatif.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _wide(values: pd.Series) -> bool:
    """Positive values spanning two decades or more: plot them on a log axis."""
    values = pd.to_numeric(values, errors="coerce")
    return bool(values.notna().all() and (values > 0).all() and values.max() >= 100 * values.min())


def plot_plan(frame: pd.DataFrame, out_dir: Path, capacity_bytes: float | None = None) -> list[Path]:
    """plan.png: simulated step time against memory per GPU of every simulated layout, coloured by tp,
    shaped by schedule, the best (rank 1) starred; a dashed line at the GPU's memory."""
    ok = frame[frame["status"] == "ok"]
    gib = 2.0**30
    fig, ax = plt.subplots(figsize=(7, 4.6))
    markers = {"1f1b": "o", "interleaved": "^", "gpipe": "s"}
    colors = {tp: f"C{i}" for i, tp in enumerate(sorted(set(ok["tp"])))}
    for (tp, schedule), part in ok.groupby(["tp", "schedule"], sort=True):
        ax.scatter(part["memory_bytes"] / gib, part["step_time_s"], s=24, color=colors[tp],
                   marker=markers.get(schedule, "x"), label=f"tp={tp} {schedule}")
    best = ok[ok["rank"] == 1]
    if len(best):
        row = best.iloc[0]
        ax.scatter([row["memory_bytes"] / gib], [row["step_time_s"]], s=240, marker="*", color="gold",
                   edgecolors="black", zorder=5,
                   label=f"best: tp={row['tp']} pp={row['pp']} dp={row['dp']} mb={row['micro_batch']} "
                         f"{row['schedule']}")
    if capacity_bytes and capacity_bytes != float("inf"):
        ax.axvline(capacity_bytes / gib, linestyle="--", color="grey", label="GPU memory")
    if len(ok) and _wide(ok["step_time_s"]):
        ax.set_yscale("log")
    ax.set_xlabel("memory per GPU, fullest pipeline stage (GiB)")
    ax.set_ylabel("simulated step time (s)")
    ax.set_title("layouts: step time against memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(out_dir) / "plan.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
