"""Writing an experiment's results: CSV, JSON, Markdown tables and matplotlib plots.

Files written by :func:`write_report` into a run's folder:

- ``results.json``: everything (config, data split, settings, every protection
  number with its per-user breakdown, quality).
- ``protection.csv``: one row per setting x tracker x transform x condition x metric.
- ``quality.csv``: one row per setting x condition (cloak, noise).
- ``report.md``: the settings and quality table, the headline table of each
  setting (rows tracker x transform; protection of the cloak, no cloak and
  noise per metric; mean SSIM, DSSIM, PSNR) and, per tracker, the
  setting x transform matrix of the cloak's protection.
- ``protection.png``, ``tradeoff.png`` (two or more settings) and
  ``robustness.png`` (JPEG or downscale transforms): see :mod:`cloak.evaluation.protocol.plots`.

Protection values are fractions in ``[0, 1]`` in CSV and JSON, percentages in Markdown.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloak.evaluation.protocol.plots import plot_protection, plot_robustness, plot_tradeoff
from cloak.evaluation.protocol.results import (
    CONDITION_NAMES,
    CONDITIONS,
    METRIC_NAMES,
    ExperimentResults,
    ProtectionRow,
    QualityRow,
    Setting,
)

PROTECTION_FIELDS = (
    "setting",
    "tracker",
    "relation",
    "transform",
    "tracker_side",
    "condition",
    "metric",
    "protection",
    "n_probes",
    "n_probes_no_face",
    "n_shared_no_face",
)
QUALITY_FIELDS = (
    "setting",
    "condition",
    "face_ssim",
    "face_ssim_p5",
    "face_psnr",
    "face_haarpsi",
    "face_color_shift",
    "face_shading",
    "face_shading_max",
    "face_shading_peak_max",
    "face_ssim_min",
    "face_ssim_p5_min",
    "n_faces",
    "ssim",
    "dssim",
    "psnr",
    "ssim_min",
    "n_photos",
)


def pct(x: float | None) -> str:
    """``0.834`` -> ``"83%"``; None -> ``"-"``."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def num(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; None -> ``"-"``, infinity -> ``"inf"``."""
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |"]
    lines.append("|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def headline_rows(results: ExperimentResults, setting: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one setting's headline table: tracker x transform rows."""
    metrics = results.metrics
    header = ["tracker", "transform"]
    for condition in CONDITIONS:
        header += [f"{CONDITION_NAMES[condition]} {METRIC_NAMES.get(m, m)}" for m in metrics]
    header += ["face SSIM", "face p5 SSIM", "photo SSIM"]
    q = results.quality_of(setting, "cloak")
    rows = []
    for tracker in results.measured_trackers():
        rel = results.relation_of(tracker, setting)
        for transform in results.measured_transforms():
            name = f"{transform} (tracker-side)" if transform in results.tracker_side_transforms else transform
            row = [f"{tracker} ({rel})" if rel else tracker, name]
            for condition in CONDITIONS:
                row += [pct(results.value(setting, tracker, transform, condition, m)) for m in metrics]
            row += [num(q.face_ssim if q else None), num(q.face_ssim_p5 if q else None), num(q.ssim if q else None)]
            rows.append(row)
    return header, rows


def face_quality_words(q: QualityRow) -> str:
    """``q``'s quality in a few words: on the faces (mean SSIM, 5th-percentile local SSIM), then whole photos."""
    faces = (
        f"faces SSIM {q.face_ssim:.3f}, 5th-percentile local SSIM {q.face_ssim_p5:.3f}; "
        if q.face_ssim is not None and q.face_ssim_p5 is not None
        else ""
    )
    return f"{faces}whole photos SSIM {q.ssim:.3f}, PSNR {q.psnr:.1f} dB"


def headline_markdown(results: ExperimentResults, setting: str) -> str:
    """One setting's headline table in Markdown."""
    return markdown_table(*headline_rows(results, setting))


def settings_markdown(results: ExperimentResults) -> str:
    """The settings with their cloak's and noise's image quality (on the faces, then whole photos) and time."""
    header = [
        "setting",
        "attack",
        "eps",
        "steps (mean taken)",
        "max DSSIM",
        "robust",
        "face SSIM (min)",
        "face p5 SSIM (min)",
        "face PSNR (dB)",
        "face HaarPSI",
        "face colour shift",
        "face shading (worst; worst peak)",
        "photo SSIM",
        "photo PSNR (dB)",
        "noise face SSIM",
        "s / photo",
    ]
    rows = []
    for s in results.settings:
        q, n = results.quality_of(s.label, "cloak"), results.quality_of(s.label, "noise")
        rows.append(
            [
                s.label,
                s.attack,
                f"{s.eps:g}",
                f"{s.steps} ({s.mean_steps:.1f})" if s.mean_steps else str(s.steps),
                "-" if s.max_dssim is None else f"{s.max_dssim:g}",
                "yes" if s.robust else "no",
                f"{num(q.face_ssim if q else None)} ({num(q.face_ssim_min if q else None)})",
                f"{num(q.face_ssim_p5 if q else None)} ({num(q.face_ssim_p5_min if q else None)})",
                num(q.face_psnr if q else None, 1),
                num(q.face_haarpsi if q else None),
                num(q.face_color_shift if q else None, 2),
                f"{num(q.face_shading if q else None, 2)} ({num(q.face_shading_max if q else None, 2)}; "
                f"{num(q.face_shading_peak_max if q else None, 2)})",
                num(q.ssim if q else None),
                num(q.psnr if q else None, 1),
                num(n.face_ssim if n else None),
                num(s.seconds / max(1, s.n_cloaked), 1),
            ]
        )
    return markdown_table(header, rows)


def matrix_rows(results: ExperimentResults, tracker: str, metric: str) -> tuple[list[str], list[list[str]]]:
    """Setting x transform protection of the cloak against one tracker, with the baselines as extra rows."""
    transforms = results.measured_transforms()
    header = ["setting", *transforms]
    rows = [
        [s.label, *(pct(results.value(s.label, tracker, t, "cloak", metric)) for t in transforms)]
        for s in results.settings
    ]
    if results.settings:
        first = results.settings[0].label
        rows.append(["no cloak", *(pct(results.value(first, tracker, t, "none", metric)) for t in transforms)])
    seen_eps: set[float] = set()
    for s in results.settings:
        if s.eps not in seen_eps:
            seen_eps.add(s.eps)
            rows.append(
                [
                    f"{results.noise} noise eps {s.eps:g}",
                    *(pct(results.value(s.label, tracker, t, "noise", metric)) for t in transforms),
                ]
            )
    return header, rows


def report_markdown(results: ExperimentResults, metrics: Sequence[str] | None = None) -> str:
    """The whole ``report.md``; ``metrics`` (default: all) get setting x transform matrices."""
    d = results.data
    out = [f"# Experiment `{results.experiment}`\n"]
    out.append(
        f"Data: `{d.get('root')}`: {len(d.get('users', []))} users ({', '.join(d.get('users', []))}), "
        f"{d.get('n_shared')} shared (cloaked) and {d.get('n_probes')} clean probe photos; "
        f"{d.get('n_distractor_identities')} distractor identities with {d.get('n_distractor_photos')} photos; "
        f"seed {d.get('seed')}"
        + (f"; every photo enlarged {d['upscale']:g}x (Lanczos).\n" if d.get("upscale", 1) != 1 else ".\n")
    )
    out.append(
        f"Cloak optimised against: {', '.join(results.cloak_models) or '-'}. Trackers: {', '.join(results.trackers)}."
    )
    for name, why in results.skipped_trackers.items():
        out.append(f"Skipped tracker `{name}`: {why}.")
    out.append(
        f"\nProtection = 1 - accuracy on the users' clean photos (higher is better for the users); "
        f"noise = {results.noise} noise of the cloak's L-inf size in the cloak's region. "
        f"Tracker-side transforms ({', '.join(results.tracker_side_transforms) or 'none'}) apply to every photo the tracker sees. "
        f"Run time {results.seconds / 60:.1f} min.\n"
    )
    out.append("## Settings and image quality\n")
    out.append(settings_markdown(results))
    for s in results.settings:
        out.append(f"\n## Protection: {s.label}\n")
        out.append(headline_markdown(results, s.label))
    for metric in results.chosen_metrics(metrics):
        for tracker in results.measured_trackers():
            out.append(f"\n## Protection against {tracker} ({METRIC_NAMES.get(metric, metric)}), setting x transform\n")
            out.append(markdown_table(*matrix_rows(results, tracker, metric)))
    return "\n".join(out)


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(results: ExperimentResults, path: Path) -> None:
    """``results`` as JSON (non-finite numbers as null)."""
    path.write_text(json.dumps(json_safe(results.to_dict()), indent=1, allow_nan=False) + "\n")


def load_results(path: Path) -> ExperimentResults:
    """Reads a ``results.json`` written by :func:`write_json` back (null PSNRs become infinity)."""
    data = json.loads(Path(path).read_text())
    quality = []
    for q in data.pop("quality"):
        for key in ("psnr", "face_psnr"):
            if key in q and q[key] is None and (key == "psnr" or q.get("n_faces")):
                q[key] = float("inf")
        quality.append(QualityRow(**q))
    settings = [Setting(**s) for s in data.pop("settings")]
    protection = [ProtectionRow(**r) for r in data.pop("protection")]
    return ExperimentResults(**data, settings=settings, protection=protection, quality=quality)


def write_csv(results: ExperimentResults, out_dir: Path) -> tuple[Path, Path]:
    """``protection.csv`` and ``quality.csv``."""
    prot, qual = out_dir / "protection.csv", out_dir / "quality.csv"
    with open(prot, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(PROTECTION_FIELDS)
        for r in results.protection:
            w.writerow([f"{getattr(r, f):.6f}" if f == "protection" else getattr(r, f) for f in PROTECTION_FIELDS])
    with open(qual, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(QUALITY_FIELDS)
        for q in results.quality:
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in (getattr(q, f) for f in QUALITY_FIELDS)])
    return prot, qual


def write_report(
    results: ExperimentResults,
    out_dir: Path,
    plots: bool = True,
    tradeoff_transforms: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Writes every file of a run (see the module docstring) into ``out_dir``; returns name -> path.

    ``metrics`` (default: all of the run's) are those of the matrix tables and the plots.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["json"] = out_dir / "results.json"
    write_json(results, files["json"])
    files["protection_csv"], files["quality_csv"] = write_csv(results, out_dir)
    files["markdown"] = out_dir / "report.md"
    files["markdown"].write_text(report_markdown(results, metrics))
    if plots and results.settings and results.protection:
        files["protection_png"] = plot_protection(results, out_dir / "protection.png", metrics=metrics)
        if len(results.settings) >= 2:
            files["tradeoff_png"] = plot_tradeoff(results, out_dir / "tradeoff.png", metrics, tradeoff_transforms)
        robust = plot_robustness(results, out_dir / "robustness.png", metrics)
        if robust is not None:
            files["robustness_png"] = robust
    return files


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cloak.evaluation.protocol.report RESULTS.json [OUT_DIR]``: rewrites a run's tables and plots."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("out_dir", type=Path, nargs="?", help="default: the results file's folder")
    parser.add_argument("--metrics", nargs="*", default=["knn1", "logreg"])
    parser.add_argument("--tradeoff-transforms", nargs="*", default=["none", "social"])
    args = parser.parse_args(argv)
    results = load_results(args.results)
    write_report(
        results, args.out_dir or args.results.parent, metrics=args.metrics, tradeoff_transforms=args.tradeoff_transforms
    )


if __name__ == "__main__":
    main()
