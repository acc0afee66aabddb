"""Human-readable reports: a person would rather look at a chart than read a JSON dump."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from export.dataset import BuildResult


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on a lot-camera box or in CI
    import matplotlib.pyplot as plt

    return plt


def write_dataset_report(result: BuildResult) -> None:
    """report.json (machine), report.md (person) and box_sizes.png (picture) in the dataset folder."""
    out = result.out_dir
    stats = dict(result.stats, data_hash=result.data_hash)
    stats["problems"] = [{"path": p.path, "reason": p.reason} for p in result.problems]
    (out / "report.json").write_text(json.dumps(stats, indent=2))
    _plot_box_sizes(result, out / "box_sizes.png")
    (out / "report.md").write_text(_dataset_markdown(stats))


def _dataset_markdown(stats: dict) -> str:
    lines = [
        "# Dataset build report",
        "",
        f"- inputs: {', '.join(stats['inputs'])}",
        f"- samples read (decodable): {stats['samples_read']}, kept: {stats['kept']}, removed as copies: {stats['removed']}",
        f"- duplicate groups: {stats['duplicate_groups']} ({stats['exact_groups']} byte-identical, "
        f"{stats['near_groups']} near copies at perceptual-hash distance <= {stats['near_distance']}); "
        f"{stats['conflicting_groups']} of them had copies with different boxes",
        "- rule: within a copy group keep the copy with the most boxes, then the larger image, then the first name",
        "- split: by photo group (copies, near copies and Roboflow augmentations of one photo share a split)",
        f"- tiling: {'%dx%d grid on train' % (stats['tile'], stats['tile']) if stats['tile'] else 'off'}",
        f"- data hash: `{stats['data_hash']}`",
        "",
        "| split | photos | images written | boxes | small (<1% of image) | medium | large (>10%) | by source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, photos in stats["photos_per_split"].items():
        sizes = stats["box_sizes"][split]
        by_source = ", ".join(f"{k}: {v}" for k, v in stats["per_dataset_split"][split].items())
        lines.append(
            f"| {split} | {photos} | {stats['images_per_split'][split]} | {stats['boxes_per_split'][split]} "
            f"| {sizes['small']} | {sizes['medium']} | {sizes['large']} | {by_source} |"
        )
    lines += ["", "![box sizes](box_sizes.png)", "", f"## Skipped samples ({len(stats['problems'])})", ""]
    lines += [f"- `{p['path']}`: {p['reason']}" for p in stats["problems"]] or ["none"]
    return "\n".join(lines) + "\n"


def _plot_box_sizes(result: BuildResult, path: Path) -> None:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.logspace(-4, 0, 41)
    for split, members in result.splits.items():
        areas = [float(w * h) for s in members for _, _, w, h in s.boxes]
        if areas:
            ax.hist(areas, bins=bins, histtype="step", label=f"{split} ({len(areas)} boxes)")
    ax.set_xscale("log")
    ax.set_xlabel("box area / image area")
    ax.set_ylabel("boxes")
    ax.set_title("Box sizes per split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
