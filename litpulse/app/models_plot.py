"""The plot of the model versions' metrics, one point per version (``/models/plot.png``).

:func:`metric_series` prepares what is drawn (one :class:`Series` per held-out set,
metric and model: the version itself, or the base model on that version's held-out
sets); :func:`render_plot` draws it with matplotlib (Agg) into PNG bytes, one panel per
metric, versions oldest first along the x axis, each point marked by what became of the
version (active, promoted then retired, rejected, rolled back).

Example:
    >>> png = render_plot(model_history(settings))  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from litpulse.core.states import ModelEvent, ModelStatus
from retrain.report import ModelVersionReport

__all__ = ["Series", "metric_series", "plot_size", "render_plot", "DPI"]

#: Pixels per inch of the PNG.
DPI = 100
#: Models drawn for each (set, metric): the version itself, and the base model.
ROLES = ("version", "base")


@dataclass(frozen=True)
class Series:
    """One line of the plot: a metric on one held-out set, one value per version.

    ``values[i]`` belongs to ``versions[i]``; NaN where that version has no such value.
    """

    metric: str
    heldout: str
    role: str
    versions: tuple[str, ...]
    values: tuple[float, ...]

    @property
    def label(self) -> str:
        return f"{self.heldout} ({'each version' if self.role == 'version' else 'base model'})"


def _names(history: Sequence[ModelVersionReport]) -> tuple[list[str], list[str]]:
    """Metrics and held-out sets in the order first recorded."""
    metrics: dict[str, None] = {}
    sets: dict[str, None] = {}
    for v in history:
        for s, row in v.metrics.items():
            sets.setdefault(s)
            for m in row:
                metrics.setdefault(m)
    return list(metrics), list(sets)


def metric_series(history: Sequence[ModelVersionReport]) -> list[Series]:
    """What the plot draws: for every metric and held-out set, the versions' own values
    and the base model's (on each version's held-out sets)."""
    metrics, sets = _names(history)
    ids = tuple(v.id for v in history)
    out: list[Series] = []
    for m in metrics:
        for s in sets:
            for role in ROLES:
                values = []
                for v in history:
                    if role == "version":
                        row = v.metrics.get(s, {})
                    else:
                        base = v.comparison("base")
                        row = base.theirs.get(s, {}) if base is not None else {}
                    values.append(float(row.get(m, math.nan)))
                if not all(math.isnan(x) for x in values):
                    out.append(Series(m, s, role, ids, tuple(values)))
    return out


def plot_size(versions: int, metrics: int) -> tuple[int, int]:
    """Width and height of the PNG in pixels: wider with more versions, a panel a metric."""
    width_in = max(7, min(24, 3 + versions))
    height_in = 1 + 3 * max(1, metrics)
    return width_in * DPI, height_in * DPI


def _marker(v: ModelVersionReport) -> tuple[str, str]:
    """Marker and what it means, by what became of the version."""
    if v.status is ModelStatus.ACTIVE:
        return "*", "active"
    if any(e.event == ModelEvent.ROLLED_BACK for e in v.events):
        return "v", "rolled back"
    if v.status is ModelStatus.REJECTED:
        return "x", "rejected"
    if v.status is ModelStatus.RETIRED:
        return "o", "promoted, since retired"
    return "s", "candidate"


def render_plot(history: Sequence[ModelVersionReport]) -> bytes:
    """The metrics of every version as a PNG (see :func:`plot_size` for its size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    series = metric_series(history)
    metrics = list(dict.fromkeys(s.metric for s in series))
    sets = list(dict.fromkeys(s.heldout for s in series))
    w, h = plot_size(len(history), len(metrics))
    fig, axes = plt.subplots(
        max(1, len(metrics)), 1, figsize=(w / DPI, h / DPI), dpi=DPI, squeeze=False, sharex=True
    )
    xs = list(range(len(history)))
    colours = {s: f"C{i % 10}" for i, s in enumerate(sets)}
    if not series:
        ax = axes[0][0]
        ax.text(
            0.5,
            0.5,
            "no evaluated model versions yet: run `litpulse retrain`",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
    for ax, metric in zip((row[0] for row in axes), metrics, strict=False):
        for s in (x for x in series if x.metric == metric):
            style = "-" if s.role == "version" else "--"
            ax.plot(
                xs,
                s.values,
                style,
                color=colours[s.heldout],
                label=s.label,
                alpha=1.0 if s.role == "version" else 0.6,
            )
            if s.role == "version":
                for x, y, v in zip(xs, s.values, history, strict=True):
                    marker, _ = _marker(v)
                    ax.plot([x], [y], marker, color=colours[s.heldout], markersize=8)
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    if series:
        ax0 = axes[0][0]
        kinds = {_marker(v) for v in history}
        handles, _ = ax0.get_legend_handles_labels()
        handles += [
            Line2D([], [], linestyle="", marker=m, color="0.3", label=what)
            for m, what in sorted(kinds, key=lambda k: k[1])
        ]
        ax0.legend(handles=handles, fontsize=7, loc="lower left", ncol=2)
        ax0.set_title("Held-out metrics by model version, oldest first")
        last = axes[-1][0]
        last.set_xticks(xs)
        last.set_xticklabels(
            [
                f"{v.id[-6:]}\n{'base' if v.parent_id is None else '← ' + v.parent_id[-6:]}"
                for v in history
            ],
            fontsize=7,
        )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()
