"""The accuracy table as markdown and as a bar chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TABLE_METRICS = (
    ("recall@10", "Recall@10"),
    ("recall@20", "Recall@20"),
    ("ndcg@10", "NDCG@10"),
    ("ndcg@20", "NDCG@20"),
    ("precision@10", "P@10"),
    ("precision@20", "P@20"),
    ("seed_recall@10", "seed_recall@10"),
    ("seed_recall@20", "seed_recall@20"),
)
CHART_METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")
# What the lists look like beyond hitting the test set (movierec.trainer.evaluate's module docstring defines each).
BEYOND_METRICS = (
    ("coverage@20", "Coverage@20", "{:.4f}"),
    ("novelty@20", "Novelty@20 (bits)", "{:.2f}"),
    ("gini_index@20", "Gini@20", "{:.4f}"),
    ("average_popularity@20", "Avg popularity@20", "{:.0f}"),
    ("tail_percentage@20", "Tail %@20", "{:.4f}"),
    ("intra_list_diversity@20", "Genre ILD@20", "{:.4f}"),
)


def _params_text(params: Any) -> str:
    if not params:
        return ""
    return ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in params.items()
    )


def _seconds(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "—"


def markdown_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per row; rows that could not be measured say why instead of showing numbers."""
    header = [
        "Model",
        *(label for _, label in TABLE_METRICS),
        "Train wall (s)",
        "Tuning wall (s)",
        "Load at start",
        "Settings",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            cells = [f"**{row['name']}**", *(["not run"] * len(TABLE_METRICS)), "—", "—", "—", row["error"]]
        else:
            metrics = row["metrics"]
            cells = [
                f"**{row['name']}**",
                *(f"{metrics[key]:.4f}" if key in metrics else "—" for key, _ in TABLE_METRICS),
                _seconds(row.get("train_seconds")),
                _seconds(row.get("tuning_seconds")),
                _seconds(row.get("load_average_1min_at_start")),
                _params_text(row.get("params")),
            ]
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |")
    return lines


def beyond_accuracy_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The same rows' beyond-accuracy metrics beside NDCG@20; a row measured before they existed says so."""
    header = ["Model", "NDCG@20", *(label for _, label, _ in BEYOND_METRICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        metrics = row.get("metrics", {})
        if "error" in row:
            cells = [f"**{row['name']}**", *(["not run"] * (len(header) - 1))]
        elif not any(key in metrics for key, _, _ in BEYOND_METRICS):
            reason = row.get("beyond_accuracy_missing", "measured before these metrics existed")
            cells = [f"**{row['name']}**", f"{metrics['ndcg@20']:.4f}", f"not measured: {reason}"]
            cells += [""] * (len(header) - len(cells))
        else:
            cells = [
                f"**{row['name']}**",
                f"{metrics['ndcg@20']:.4f}",
                *(form.format(metrics[key]) if key in metrics else "—" for key, _, form in BEYOND_METRICS),
            ]
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |")
    return lines


def tuning_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every grid point tried on the validation slice, with its validation Recall@20 / NDCG@20."""
    lines: list[str] = []
    for row in rows:
        trials = row.get("trials") or []
        if len(trials) < 2:
            continue
        lines.append(f"**{row['name']}** (selected by validation {row.get('selection_metric', 'recall@20')}):")
        lines.append("")
        lines.append("| Settings | valid Recall@20 | valid NDCG@20 | fit wall (s) |")
        lines.append("|---|---|---|---|")
        for trial in trials:
            marker = " ✔" if trial["params"] == row.get("params") else ""
            valid = trial["valid_metrics"]
            lines.append(
                f"| {_params_text(trial['params'])}{marker} | {valid['recall@20']:.4f} | "
                f"{valid['ndcg@20']:.4f} | {trial['fit_seconds']:.1f} |"
            )
        lines.append("")
    return lines


def _run_lines(run: dict[str, Any]) -> list[str]:
    machine = run["machine"]
    return [
        f"- `{run['command']}` (finished {run['finished_at']}, {run['total_seconds']:.0f} s)",
        f"  - CPU: {machine['cpu']}, {machine['usable_cpus']} usable of {machine['logical_cpus']} logical CPUs, "
        f"{machine['memory_gib']} GiB RAM; load average at start {machine['load_average_1_5_15']}",
        f"  - {machine['os']}; Python {machine['python']}; {machine['java']}",
        "  - " + ", ".join(f"{name} {version}" for name, version in machine["libraries"].items() if version),
    ]


def write_markdown(
    path: Path, result: dict[str, Any], preamble: Sequence[str], beyond_preamble: Sequence[str] = ()
) -> None:
    """``accuracy.md``: the tables, the runs that produced them (with their machine), then the tuning grids."""
    lines = [
        *preamble,
        "",
        *markdown_table(result["rows"]),
        "",
        "## Beyond accuracy",
        "",
        *beyond_preamble,
        "",
        *beyond_accuracy_table(result["rows"]),
        "",
        *(
            ["## Notes on these numbers", "", *(f"- {note}" for note in result["notes"]), ""]
            if result.get("notes")
            else []
        ),
        "## Runs and machine",
        "",
        "The machine is shared with other work: wall times compare within one run only, and each row "
        "records the 1-minute load average when it started (column *Load at start*).",
        "",
        *(line for run in result["runs"] for line in _run_lines(run)),
        "",
        "## Tuning on the validation slice",
        "",
        *tuning_lines(result["rows"]),
    ]
    path.write_text("\n".join(lines).rstrip() + "\n")


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def write_chart(path: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """Grouped horizontal bars, one group per model, for Recall/NDCG at 10 and 20."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    measured = [row for row in rows if "metrics" in row]
    names = [row["name"] for row in measured]
    positions = np.arange(len(measured))
    height = 0.8 / len(CHART_METRICS)
    figure, axes = plt.subplots(figsize=(10, 0.7 * len(measured) + 1.8))
    for offset, metric in enumerate(CHART_METRICS):
        values = [row["metrics"].get(metric, 0.0) for row in measured]
        bars = axes.barh(positions + offset * height, values, height, label=metric)
        axes.bar_label(bars, fmt="%.3f", fontsize=6, padding=2)
    axes.set_yticks(positions + height * (len(CHART_METRICS) - 1) / 2, names)
    axes.invert_yaxis()
    axes.set_xlabel("metric value (test split, full ranking, train items masked)")
    axes.set_title(title)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_coverage_chart(path: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """NDCG@20 against Coverage@20, one labelled point per model that has both: accuracy vs catalogue reach."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in rows if "ndcg@20" in row.get("metrics", {}) and "coverage@20" in row["metrics"]]
    figure, axes = plt.subplots(figsize=(9, 6))
    placed: list[tuple[float, float]] = []
    for row in measured:
        x, y = row["metrics"]["coverage@20"], row["metrics"]["ndcg@20"]
        axes.scatter([x], [y], s=36)
        # Models with nearly the same point (training seeds, close peers) get their labels stacked, not overprinted.
        crowd = sum(abs(x - px) < 0.04 and abs(y - py) < 0.01 for px, py in placed)
        placed.append((x, y))
        axes.annotate(row["name"], (x, y), textcoords="offset points", xytext=(5, 4 - 10 * crowd), fontsize=7)
    axes.set_xlabel("Coverage@20 (share of the catalogue in anyone's top 20)")
    axes.set_ylabel("NDCG@20 (test split, full ranking, train items masked)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
