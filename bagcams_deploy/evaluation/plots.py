"""Plots of the metrics: box accuracy against the CAM threshold, pixel precision-recall curve."""

from __future__ import annotations

from pathlib import Path

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation.box_metrics import BoxMetrics
from bagcams_deploy.evaluation.mask_metrics import MaskMetrics


def _pyplot():
    """matplotlib with the file-only Agg backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except (OSError, ValueError) as exc:
        raise BagcamsError(f"{out}: cannot write the plot ({exc})") from exc
    return out


def plot_box_accuracy(metrics: BoxMetrics, path: str | Path, title: str | None = None) -> Path:
    """PNG of the GT-known box accuracy (and Top-1 Loc at IoU 50) against the CAM threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for d in metrics.iou_deltas:
            ax.plot(metrics.thresholds, metrics.accuracy_curves[d], label=f"GT-known, IoU {d}")
        if metrics.top1_curves is not None and 50 in metrics.top1_curves:
            ax.plot(metrics.thresholds, metrics.top1_curves[50], "--", label="Top-1, IoU 50")
        ax.set_xlabel("CAM threshold")
        ax.set_ylabel("box accuracy (%)")
        ax.set_xlim(0, 1)
        ax.set_ylim(-2, 102)  # curves at 0% or 100% stay visible inside the frame
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small", framealpha=0.8)
        ax.set_title(f"{title or 'Box accuracy'} ({metrics.count} images)")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_precision_recall(metrics: MaskMetrics, path: str | Path, title: str | None = None) -> Path:
    """PNG of the pixel precision-recall curve whose area is PxAP."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    try:
        ax.plot(metrics.recall, metrics.precision, label=f"PxAP {metrics.pxap:.2f}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"{title or 'Pixel precision-recall'} ({metrics.count} images)")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_metrics(metrics: BoxMetrics | MaskMetrics, path: str | Path, title: str | None = None) -> Path:
    """The plot that fits the metrics' kind."""
    if isinstance(metrics, BoxMetrics):
        return plot_box_accuracy(metrics, path, title)
    if isinstance(metrics, MaskMetrics):
        return plot_precision_recall(metrics, path, title)
    raise BagcamsError(f"cannot plot metrics of type {type(metrics).__name__}")
