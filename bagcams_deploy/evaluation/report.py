"""Rendering metrics as a Markdown table and saving them as a JSON report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation.box_metrics import BoxMetrics, box_metric_name
from bagcams_deploy.evaluation.mask_metrics import MaskMetrics

Metrics = BoxMetrics | MaskMetrics


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def metrics_rows(metrics: Metrics) -> list[tuple[str, str, str]]:
    """(metric, value in %, best CAM threshold) rows, shared by the Markdown table and the CLI."""
    if isinstance(metrics, BoxMetrics):
        rows = [
            (f"GT-known Loc @ IoU {d}", _fmt(metrics.gt_known_loc[d]), _fmt(metrics.best_threshold[d], 3))
            for d in metrics.iou_deltas
        ]
        rows.append((box_metric_name(metrics.multi_contour), _fmt(metrics.max_box_acc_v2), "-"))
        rows.append(("Top-1 Loc @ IoU 50", _fmt(metrics.top1_loc), _fmt(metrics.top1_best_threshold, 3)))
        return rows
    if isinstance(metrics, MaskMetrics):
        return [
            ("PxAP", _fmt(metrics.pxap), "-"),
            ("pIoU", _fmt(metrics.piou), _fmt(metrics.piou_threshold, 3)),
        ]
    raise BagcamsError(f"cannot report metrics of type {type(metrics).__name__}")


def markdown_table(metrics: Metrics, title: str | None = None) -> str:
    """The metrics as a GitHub-flavoured Markdown table (with an optional ``### title`` heading)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value (%) | best threshold |", "|---|---:|---:|"]
    lines += [f"| {m} | {v} | {t} |" for m, v, t in metrics_rows(metrics)]
    lines.append("")
    lines.append(f"{metrics.count} images")
    return "\n".join(lines) + "\n"


def save_json_report(path: str | Path, metrics: Metrics, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"metrics": metrics.to_dict(), **extra}`` as indented JSON; parent folders are created."""
    out = Path(path)
    payload: dict[str, Any] = {"metrics": metrics.to_dict()}
    if extra:
        payload.update(extra)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise BagcamsError(f"{out}: cannot write the JSON report ({exc})") from exc
    return out
