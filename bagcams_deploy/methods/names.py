"""Method names and labels, torch-free so that the CLI and graph-only processes never import torch."""

from __future__ import annotations

METHODS: tuple[str, ...] = ("bagcams", "gradcam", "gradcampp", "pcs", "cam")
GRADIENT_METHODS: tuple[str, ...] = ("bagcams", "gradcam", "gradcampp", "pcs")
METHOD_LABELS: dict[str, str] = {
    "cam": "CAM",
    "gradcam": "GradCAM",
    "gradcampp": "GradCAM++",
    "pcs": "PCS",
    "bagcams": "BagCAMs",
}
