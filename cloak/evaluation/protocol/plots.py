"""The plots of an experiment's report (matplotlib, drawn off-screen).

- ``protection.png`` (:func:`plot_protection`): bars of cloak / no cloak / noise
  protection per transform (first setting), per tracker and metric.
- ``tradeoff.png`` (:func:`plot_tradeoff`, two or more settings): protection
  against mean SSIM, per metric.
- ``robustness.png`` (:func:`plot_robustness`, JPEG or downscale transforms):
  protection against JPEG quality and against the downscale factor, one line
  per setting, per tracker and metric.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cloak.evaluation.protocol.results import CONDITION_NAMES, CONDITIONS, METRIC_NAMES, ExperimentResults, QualityRow


def jpeg_axis(transform: str) -> float | None:
    """JPEG quality of ``jpegNN`` (100 for ``none``: no re-encode), else None."""
    if transform == "none":
        return 100.0
    m = re.fullmatch(r"jpeg(\d+)", transform)
    return float(m.group(1)) if m else None


def downscale_axis(transform: str) -> float | None:
    """Scale of ``downF`` (1 for ``none``), else None."""
    if transform == "none":
        return 1.0
    m = re.fullmatch(r"down(\d*\.?\d+)", transform)
    return float(m.group(1)) if m else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_protection(
    results: ExperimentResults, path: Path, setting: str | None = None, metrics: Sequence[str] | None = None
) -> Path:
    """Grouped bars: cloak / no cloak / noise protection per transform; a row per tracker, a column per metric."""
    plt = _pyplot()
    setting = setting or results.settings[0].label
    metrics = results.chosen_metrics(metrics)
    trackers, transforms = results.measured_trackers(), results.measured_transforms()
    fig, axes = plt.subplots(
        len(trackers),
        len(metrics),
        figsize=(max(6.0, 0.6 * len(transforms) + 2) * len(metrics), 2.8 * len(trackers)),
        squeeze=False,
    )
    width = 0.27
    colors = {"cloak": "tab:blue", "none": "tab:gray", "noise": "tab:orange"}
    for row, tracker in enumerate(trackers):
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            for k, condition in enumerate(CONDITIONS):
                ys = [results.value(setting, tracker, t, condition, metric) or 0.0 for t in transforms]
                ax.bar(
                    [i + (k - 1) * width for i in range(len(transforms))],
                    ys,
                    width,
                    label=CONDITION_NAMES[condition],
                    color=colors[condition],
                )
            ax.set_xticks(range(len(transforms)))
            ax.set_xticklabels(transforms, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("protection", fontsize=8)
            ax.set_title(f"{_tracker_label(results, tracker)}, {METRIC_NAMES.get(metric, metric)}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=3, loc="upper right")
    fig.suptitle(f"Protection of cloak {setting} (1 - tracker accuracy on clean photos)", fontsize=10, x=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _tracker_label(results: ExperimentResults, tracker: str) -> str:
    """``tracker (relation)``; the bare name where settings relate to it differently (a sweep over models)."""
    rel = results.relation_of(tracker)
    return f"{tracker} ({rel})" if rel else tracker


def _seen_ssim(q: QualityRow) -> float:
    """The faces' mean SSIM when measured, else the whole photos'."""
    return q.ssim if q.face_ssim is None else q.face_ssim


def plot_tradeoff(
    results: ExperimentResults,
    path: Path,
    metrics: Sequence[str] | None = None,
    transforms: Sequence[str] | None = None,
) -> Path:
    """Protection against the faces' mean SSIM, a panel per metric, a line per tracker x transform.

    The faces' SSIM (each face's box grown 10%) is what people see; results without it
    fall back to the whole photos' SSIM. Noise of each setting's size is drawn as
    crosses (dotted), no cloak as a dashed level.
    """
    plt = _pyplot()
    metrics = results.chosen_metrics(metrics)
    transforms = [
        t for t in (transforms or ["none"]) if t in results.measured_transforms()
    ] or results.measured_transforms()[:1]
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics), 4.6), squeeze=False)
    settings = sorted(
        results.settings,
        key=lambda s: -_seen_ssim(results.quality_of(s.label, "cloak") or QualityRow("", "", 1, 0, 0, 1, 0)),
    )
    for ax, metric in zip(axes[0], metrics):
        for tracker in results.measured_trackers():
            for transform in transforms:
                xs, ys, labels = [], [], []
                for s in settings:
                    q, v = (
                        results.quality_of(s.label, "cloak"),
                        results.value(s.label, tracker, transform, "cloak", metric),
                    )
                    if q is not None and v is not None:
                        xs.append(_seen_ssim(q)), ys.append(v), labels.append(s.label)
                (line,) = ax.plot(xs, ys, "o-", ms=4, label=f"cloak vs {tracker} [{transform}]")
                for x, y, lab in zip(xs, ys, labels):
                    ax.annotate(
                        lab, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points", color=line.get_color()
                    )
                noise = sorted(
                    {
                        (_seen_ssim(q), v)
                        for s in settings
                        if (q := results.quality_of(s.label, "noise")) is not None
                        and (v := results.value(s.label, tracker, transform, "noise", metric)) is not None
                    },
                    reverse=True,
                )
                if noise:
                    ax.plot(
                        *zip(*noise), "x:", color=line.get_color(), alpha=0.6, label=f"noise vs {tracker} [{transform}]"
                    )
                base = results.value(settings[0].label, tracker, transform, "none", metric) if settings else None
                if base is not None:
                    ax.axhline(base, color=line.get_color(), ls="--", lw=0.8, alpha=0.6)
        on_faces = all((q := results.quality_of(s.label, "cloak")) is None or q.face_ssim is not None for s in settings)
        ax.set_xlabel(
            "mean SSIM of the faces (box + 10%; 1 = unchanged)"
            if on_faces
            else "mean SSIM of the changed photos (1 = unchanged)"
        )
        ax.set_ylabel(f"protection ({METRIC_NAMES.get(metric, metric)})")
        ax.set_ylim(-0.02, 1.02)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.set_title(f"Quality-protection trade-off, {METRIC_NAMES.get(metric, metric)} (dashed: no cloak)", fontsize=9)
    axes[0, -1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_robustness(results: ExperimentResults, path: Path, metrics: Sequence[str] | None = None) -> Path | None:
    """Protection against JPEG quality and against downscale factor, a line per setting; None without such transforms.

    A row of panels per tracker; columns: (JPEG, downscale) x metric.
    """
    plt = _pyplot()
    metrics = results.chosen_metrics(metrics)
    transforms = results.measured_transforms()
    axes_defs = []
    for title, fn, xlabel in (
        ("JPEG", jpeg_axis, "JPEG quality (100 = no re-encode)"),
        ("downscale", downscale_axis, "downscale factor (upsampled back)"),
    ):
        pts = sorted(((fn(t), t) for t in transforms if fn(t) is not None), reverse=True)
        if len(pts) >= 2:
            axes_defs += [(title, pts, xlabel, m) for m in metrics]
    if not axes_defs:
        return None
    trackers = results.measured_trackers()
    fig, axes = plt.subplots(
        len(trackers), len(axes_defs), figsize=(4.6 * len(axes_defs), 3.6 * len(trackers)), squeeze=False
    )
    for row, tracker in enumerate(trackers):
        for col, (title, pts, xlabel, metric) in enumerate(axes_defs):
            ax = axes[row, col]
            xs = [x for x, _ in pts]
            for s in results.settings:
                ax.plot(
                    xs, [results.value(s.label, tracker, t, "cloak", metric) for _, t in pts], "o-", label=s.label, ms=3
                )
            first = results.settings[0].label if results.settings else ""
            ax.plot(
                xs, [results.value(first, tracker, t, "none", metric) for _, t in pts], "k--", label="no cloak", lw=1
            )
            seen: set[float] = set()
            for s in results.settings:
                if s.eps in seen:
                    continue
                seen.add(s.eps)
                ax.plot(
                    xs,
                    [results.value(s.label, tracker, t, "noise", metric) for _, t in pts],
                    ":",
                    color="gray",
                    label=f"{results.noise} noise eps {s.eps:g}",
                    lw=1,
                )
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(f"protection ({METRIC_NAMES.get(metric, metric)})", fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.invert_xaxis()
            ax.grid(alpha=0.3)
            ax.set_title(f"{_tracker_label(results, tracker)}: {title}, {METRIC_NAMES.get(metric, metric)}", fontsize=8)
    axes[0, -1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
