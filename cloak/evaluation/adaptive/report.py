"""Writing the adaptive-tracker experiment's results: ``adaptive.json``, ``adaptive.csv``, ``adaptive.md``, ``adaptive.png``.

``python -m cloak.evaluation.adaptive.report adaptive.json [OUT_DIR]`` redraws
the tables and the plot from a saved ``adaptive.json`` (no torch needed).
Protection values are fractions in JSON and CSV, percentages in Markdown.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from cloak.evaluation.adaptive.results import CORRECTION, FINETUNE, AdaptiveResults
from cloak.evaluation.protocol.report import PROTECTION_FIELDS, face_quality_words, json_safe, markdown_table, num, pct
from cloak.evaluation.protocol.results import METRIC_NAMES

#: The files :func:`write_adaptive_report` writes, by key.
FILES = {"json": "adaptive.json", "csv": "adaptive.csv", "markdown": "adaptive.md", "png": "adaptive.png"}


def tracker_variants(results: AdaptiveResults) -> list[tuple[str, str, str]]:
    """``(tracker, transform, description)`` of every measured tracker variant, in the tables' order."""
    p = results.protection
    measured = list(dict.fromkeys((r.tracker, r.transform) for r in p.protection))
    out = []
    for tracker, transform in measured:
        base, _, adaptation = tracker.partition("+")
        if adaptation == CORRECTION:
            fit = results.correction.get(base)
            what = "adaptive: embedding correction" + (f" ({fit.n_pairs} training pairs)" if fit else "")
        elif adaptation == FINETUNE:
            fit = results.finetune
            what = "adaptive: fine-tuned" + (f" (last {fit.blocks} blocks + fc, {fit.epochs} epochs)" if fit else "")
        elif transform != "none":
            what = f"purification: {transform}"
        else:
            what = "oblivious"
        out.append((tracker, transform, what))
    return out


def protection_rows(results: AdaptiveResults) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the protection table: one row per tracker variant, cloak and no cloak per metric."""
    p = results.protection
    label = p.settings[0].label if p.settings else ""
    names = [METRIC_NAMES.get(m, m) for m in p.metrics]
    header = ["tracker", "what the tracker does", *names, "no cloak (" + " / ".join(names) + ")"]
    rows = []
    for tracker, transform, what in tracker_variants(results):
        cloak = [pct(p.value(label, tracker, transform, "cloak", m)) for m in p.metrics]
        none = " / ".join(pct(p.value(label, tracker, transform, "none", m)) for m in p.metrics)
        rows.append([tracker, what, *cloak, none])
    return header, rows


def calibration_rows(results: AdaptiveResults) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the purification calibration: clean accuracy per level, and the level used."""
    header = ["purifier", "clean accuracy per level (gentlest first)", "level used", "its clean accuracy"]
    rows = []
    for cal in results.purification:
        levels = ", ".join(f"{name} {acc:.1%}" for name, acc in zip(cal.levels, cal.accuracy))
        chosen = cal.chosen_label + ("" if cal.within_tolerance else " (none within tolerance)")
        rows.append([cal.purifier, levels, chosen, f"{cal.accuracy[cal.chosen]:.1%}"])
    return header, rows


def detection_rows(results: AdaptiveResults) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the detectability table."""
    header = ["detector", "transform", "ROC AUC", "precision", "recall", "accuracy", "trained on", "tested on"]
    rows = [
        [
            d.detector,
            d.transform,
            num(d.auc),
            pct(d.precision),
            pct(d.recall),
            pct(d.accuracy),
            f"{d.n_train} photos",
            f"{d.n_cloaked} cloaked + {d.n_clean} clean",
        ]
        for d in results.detection
    ]
    return header, rows


def adaptive_markdown(results: AdaptiveResults) -> str:
    """The whole ``adaptive.md``."""
    p, a = results.protection, results.adaptation
    d = p.data
    out = ["# Against trackers that fight back: adaptive trackers, purification, detection\n"]
    if results.command:
        out.append(f"Regenerate: `{results.command}`\n")
    out.append(
        f"Data: `{d.get('root')}`: {len(d.get('users', []))} users ({', '.join(d.get('users', []))}), "
        f"{d.get('n_shared')} shared (cloaked) and {d.get('n_probes')} clean probe photos; "
        f"{d.get('n_distractor_identities')} distractor identities with {d.get('n_distractor_photos')} photos; "
        f"seed {d.get('seed')}. Run time {results.seconds / 60:.1f} min.\n"
    )
    for s in p.settings:
        q = p.quality_of(s.label, "cloak")
        out.append(
            f"Cloak: `{s.label}` ({s.attack}, eps {s.eps:g}/255, {s.steps} steps, max DSSIM "
            f"{'-' if s.max_dssim is None else f'{s.max_dssim:g}'}) against {', '.join(p.cloak_models)}"
            + (f"; {face_quality_words(q)}." if q else ".")
        )
    out.append(
        f"\nThe tracker's adaptation set: {a.get('n_identities')} public identities that are neither users nor "
        f"distractors, {a.get('n_photos')} photos, which the tracker cloaked itself with the same tool and "
        "settings, then trained against (embedding correction, fine-tuning) and used to train the detectors.\n"
    )
    out.append("## Protection per tracker\n")
    out.append(
        "Protection = 1 - accuracy on the users' clean photos (higher is better for the users), scored by the "
        "protocol's own `tracker_protection`. Purifications apply to every photo the tracker sees.\n"
    )
    out.append(markdown_table(*protection_rows(results)))
    if results.purification:
        cal = results.purification[0]
        out.append("\n## Purification settings\n")
        out.append(
            f"Each purifier at the strongest level of its ladder whose clean accuracy (leave-one-out 1-NN, "
            f"{p.trackers[0] if p.trackers else 'first tracker'}, on {a.get('calibration_photos', '?')} clean photos "
            f"of the distractors and the adaptation set, never the users') stays within "
            f"{100 * cal.tolerance:g} points of the unfiltered {cal.baseline:.1%}.\n"
        )
        out.append(markdown_table(*calibration_rows(results)))
    if results.detection:
        out.append("\n## Detecting cloaked photos\n")
        out.append(
            "Detectors trained on the adaptation set's photos (clean and cloaked), tested on the users' shared "
            "photos (clean originals and cloaked copies), after the transform. Precision and recall at the "
            "threshold of best accuracy on the test photos (an upper bound for a fixed threshold).\n"
        )
        out.append(markdown_table(*detection_rows(results)))
    out.append("\n## How the tracker adapted\n")
    for t, fit in results.correction.items():
        out.append(
            f"- Embedding correction for `{t}`: trained on {fit.n_pairs} (cloaked, clean) pairs, {fit.epochs} steps; "
            f"mean 1 - cos(cloaked, clean twin) {fit.loss_before:.4f} -> {fit.loss_after:.4f} on them; on the users' "
            f"photos (never trained on) mean cos(cloaked, clean) {num(fit.users_cos_before)} -> "
            f"{num(fit.users_cos_after)}."
        )
    f = results.finetune
    if f is not None:
        losses = ", ".join(f"{x:.3f}" for x in f.losses)
        out.append(
            f"- Fine-tuned `{f.tracker}`: last {f.blocks} residual blocks + fc, Adam lr {f.lr:g}, {f.epochs} epochs "
            f"of batch {f.batch_size} on {f.n_faces} faces of {f.n_identities} identities (losses {losses}); "
            f"identity accuracy on them clean {pct(f.train_accuracy_clean)}, cloaked "
            f"{pct(f.train_accuracy_cloaked)}; on the users' photos mean cos(cloaked, clean) "
            f"{num(f.users_cos_before)} -> {num(f.users_cos_after)}."
        )
    return "\n".join(out) + "\n"


def plot_adaptive(results: AdaptiveResults, path: Path) -> Path:
    """Protection of the cloak per tracker variant and metric (no cloak as ticks), and the detectors' ROC curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = results.protection
    label = p.settings[0].label if p.settings else ""
    variants = tracker_variants(results)
    fig, (ax, roc) = plt.subplots(
        1, 2, figsize=(13, max(3.5, 0.45 * len(variants) + 1.5)), gridspec_kw={"width_ratios": [1.6, 1]}
    )
    height = 0.8 / max(1, len(p.metrics))
    for k, metric in enumerate(p.metrics):
        ys = [i + (k - (len(p.metrics) - 1) / 2) * height for i in range(len(variants))]
        cloak = [100 * (p.value(label, t, tr, "cloak", metric) or 0) for t, tr, _ in variants]
        none = [100 * (p.value(label, t, tr, "none", metric) or 0) for t, tr, _ in variants]
        ax.barh(ys, cloak, height=height, label=f"cloak, {METRIC_NAMES.get(metric, metric)}")
        ax.scatter(none, ys, marker="|", s=150, color="black", linewidths=1.5)
    ax.set_yticks(range(len(variants)))
    ax.set_yticklabels([f"{t}\n{what}" if what != "oblivious" else f"{t}\n(oblivious)" for t, _, what in variants])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("protection (%) of the users' clean photos; | = without a cloak")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Protection per tracker ({label})")
    ax.tick_params(axis="y", labelsize=7)
    for d in results.detection:
        roc.plot(d.fpr, d.tpr, label=f"{d.detector} [{d.transform}] AUC {d.auc:.2f}")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.set_xlabel("false positive rate (clean photos flagged)")
    roc.set_ylabel("true positive rate (cloaked photos flagged)")
    roc.set_title("Detecting cloaked photos (users' photos)")
    if results.detection:
        roc.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_adaptive_report(results: AdaptiveResults, out_dir: Path, plots: bool = True) -> dict[str, Path]:
    """Writes :data:`FILES` into ``out_dir`` (the plot only with ``plots``); returns key -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {key: out_dir / name for key, name in FILES.items()}
    files["json"].write_text(json.dumps(json_safe(results.to_dict()), indent=1, allow_nan=False) + "\n")
    with open(files["csv"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(PROTECTION_FIELDS)
        for r in results.protection.protection:
            w.writerow([f"{getattr(r, f):.6f}" if f == "protection" else getattr(r, f) for f in PROTECTION_FIELDS])
    files["markdown"].write_text(adaptive_markdown(results))
    if plots and results.protection.protection:
        plot_adaptive(results, files["png"])
    else:
        del files["png"]
    return files


def load_adaptive_results(path: Path) -> AdaptiveResults:
    """Reads an ``adaptive.json`` written by :func:`write_adaptive_report`."""
    return AdaptiveResults.from_dict(json.loads(Path(path).read_text()))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cloak.evaluation.adaptive.report ADAPTIVE.json [OUT_DIR]``: rewrites the tables and the plot."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("out_dir", type=Path, nargs="?", help="default: the results file's folder")
    args = parser.parse_args(argv)
    write_adaptive_report(load_adaptive_results(args.results), args.out_dir or args.results.parent)


if __name__ == "__main__":
    main()
