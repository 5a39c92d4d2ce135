"""The red-team report: Markdown, PNG plots (matplotlib, Agg) and the JSON it is built from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mlmoat.redteam import robustness  # noqa: E402
from mlmoat.redteam.run import targets  # noqa: E402


def plot_extraction(results: dict[str, Any], out: Path) -> Path:
    """Fidelity (label surrogate, uniform queries) against queries, one line per defence."""
    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        ext = results["models"][name]["extraction"]
        for key, value in ext["results"].items():
            config, kind = key.split("/")
            if kind != "uniform":
                continue
            ax.plot(ext["counts"], value["curve"]["probabilities"], marker="o", label=config)
        ax.axhline(0.95, color="grey", linestyle=":")
        ax.set_xscale("log")
        ax.set_title(f"{name}: uniform extraction")
        ax.set_xlabel("queries (rows)")
        ax.set_ylabel("surrogate agreement on held-out rows")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "extraction_fidelity.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_detection(results: dict[str, Any], out: Path) -> Path:
    """Rows until the monitor flags each attack run, per model and attack."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels, data = [], []
    for name, model in results["models"].items():
        for kind, rows in model["detection"].items():
            labels.append(f"{name}\n{kind.replace('_', ' ')}")
            data.append([r if r is not None else 0 for r in rows])
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=6, rotation=30, ha="right")
    ax.axhline(100, color="grey", linestyle=":", label="uniform target (100 rows)")
    ax.axhline(300, color="grey", linestyle="--", label="boundary target (300 rows)")
    ax.legend(fontsize=7)
    ax.set_ylabel("rows until flagged")
    runs = results["plan"]["detection_seeds"]
    ax.set_title(
        f"rows until the monitor flags (seeded runs: {runs} per attack, seed {results['seed']})"
    )
    fig.tight_layout()
    path = out / "detection.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_mia(results: dict[str, Any], out: Path) -> Path:
    """Membership-inference ROC per model and defence."""
    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        for config, value in results["models"][name]["membership"].items():
            ax.plot(
                value["roc"]["fpr"], value["roc"]["tpr"], label=f"{config} ({value['auc']:.2f})"
            )
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set_title(f"{name}: membership inference")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "mia_roc.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def headline(results: dict[str, Any]) -> str:
    """The targets table in Markdown."""
    lines = ["| model | target | measured | met |", "|---|---|---|---|"]
    for row in targets(results):
        met = {True: "yes", False: "**missed**", None: "n/a"}[row["met"]]
        lines.append(f"| {row['model']} | {row['target']} | {row['measured']} | {met} |")
    return "\n".join(lines)


def robustness_tables(results: dict[str, Any]) -> str:
    """Every model's robustness table (issue 16), in Markdown, with the run's seed."""
    parts = [f"## Robustness to HopSkipJump (seed {results['seed']})"]
    for name, model in results["models"].items():
        if "robustness" in model:
            parts += ["", f"### {name}", "", *robustness.markdown(model["robustness"])]
    return "\n".join(parts)


def markdown(results: dict[str, Any]) -> str:
    """The full report."""
    parts = [
        "# mlmoat red-team report",
        "",
        f"Seed {results['seed']}; plan {results['plan']}; {results['elapsed_seconds']} s.",
        "",
        "## Targets",
        "",
        headline(results),
        "",
        "![extraction](extraction_fidelity.png)",
        "![detection](detection.png)",
        "![membership inference](mia_roc.png)",
        "",
        robustness_tables(results),
    ]
    for name, model in results["models"].items():
        parts += ["", f"## {name} (`{model['version']}`)", ""]
        parts += ["### Queries for 95% agreement (label / probability surrogate)", ""]
        parts += ["| defence | uniform | boundary |", "|---|---|---|"]
        ext = model["extraction"]["results"]
        configs = list(dict.fromkeys(key.split("/")[0] for key in ext))
        for config in configs:
            cells = []
            for kind in ("uniform", "boundary"):
                if f"{config}/{kind}" not in ext:
                    cells.append("not run")
                    continue
                q = ext[f"{config}/{kind}"]["queries_for_95"]
                cells.append(" / ".join(_q(q[k]) for k in ("label", "probabilities")))
            parts.append(f"| {config} | {cells[0]} | {cells[1]} |")
        adaptive = model.get("adaptive")
        if adaptive:
            parts += ["", "### Adaptive extraction (queries from the data's own distribution)", ""]
            parts += [
                f"A per-class Gaussian fitted to the held-out rows, `{adaptive['policy']}` output; "
                f"worst of {adaptive['seeds']} seeds. The monitor flagged it at rows "
                + ", ".join("-" if r is None else str(r) for r in adaptive["flagged_at"])
                + f" (of {adaptive['detection_rows']}; - = never): against this attacker only "
                "the budget protects (`mlmoat models recommend-budget`).",
                "",
                "| rows | " + " | ".join(str(c) for c in adaptive["counts"]) + " |",
                "|---|" + "---|" * len(adaptive["counts"]),
                "| clone agreement | "
                + " | ".join(f"{f:.3f}" for f in adaptive["worst_fidelity"])
                + " |",
            ]
        parts += ["", "### Membership inference and accuracy cost", ""]
        parts += ["| defence | MIA AUC (ART black-box) | label-only gap AUC | held-out accuracy |"]
        parts += ["|---|---|---|---|"]
        for config, value in model["membership"].items():
            acc = model["accuracy"][config]
            parts.append(
                f"| {config} | {value['auc']:.3f} | {value['label_only_auc']:.3f} | {acc:.3f} |"
            )
        hsj = model["hopskipjump"]
        parts += [
            "",
            f"### HopSkipJump (L-inf, {hsj['levels']} levels, threshold {hsj['threshold']:.3f})",
            "",
        ]
        parts += [
            "| squeeze policy | success within 5% | fooled at any distance | median L-inf | "
            "queries |",
            "|---|---|---|---|---|",
        ]
        for policy in ("off", "flag", "refuse"):
            v = hsj[policy]
            parts.append(
                f"| {policy} | {v['success_rate']:.2f} | {v['fooled_any_distance']:.2f} |"
                f" {v['median_linf']:.3f} | {v['queries']} |"
            )
        fd = hsj["false_detections"]
        parts.append(
            f"\nFalse detections: {fd['held_out']:.3f} of clean held-out rows, "
            f"{fd['held_out_noisy']:.3f} of noisy held-out rows."
        )
        parts += ["", "### Model inversion (MIFace on an extracted surrogate)", ""]
        if not model["inversion"]:
            parts.append("Not run in this mode (`--quick`).")
            continue
        parts += [
            "| defence | class | RMS distance to true class mean | centre baseline |",
            "|---|---|---|---|",
        ]
        for config, value in model["inversion"].items():
            if "note" in value:
                parts.append(f"| {config} | - | {value['note']} | |")
            for cls, v in value["classes"].items():
                parts.append(
                    f"| {config} | {cls} | {v['inverted_distance']:.3f} | "
                    f"{v['centre_distance']:.3f} |"
                )
    return "\n".join(parts) + "\n"


def _q(value: int | None) -> str:
    return ">max" if value is None else str(value)


# The plot docs/redteam/ carries beside the headline table (the one the README links).
DOCS_PLOT = "detection.png"


def write_docs(results: dict[str, Any], report_dir: Path, docs_dir: Path) -> Path:
    """Write docs/redteam/: the headline table of a finished run and its detection plot."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / DOCS_PLOT).write_bytes((report_dir / DOCS_PLOT).read_bytes())
    plan = results["plan"]
    text = "\n".join(
        [
            "# mlmoat red team: headline",
            "",
            f"Seed {results['seed']}: {plan['detection_seeds']} seeded detection runs per attack, "
            f"{plan['benign_keys']} benign keys x {plan['benign_rows']} rows, "
            f"HopSkipJump on {plan['hsj_rows']} rows per model and policy; "
            f"{results['elapsed_seconds']} s. "
            "Every figure and how it is measured: docs/ml-defences.md.",
            "",
            headline(results),
            "",
            f"![rows until the monitor flags each attack run]({DOCS_PLOT})",
            "",
        ]
    )
    path = docs_dir / "headline.md"
    path.write_text(text)
    return path


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Write report.md and its plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot_extraction(results, out)
    plot_detection(results, out)
    plot_mia(results, out)
    path = out / "report.md"
    path.write_text(markdown(results))
    return path
