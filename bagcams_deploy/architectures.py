"""Facts about the architectures that graph-only processes need too (torch-free, so a deployment that
runs an exported graph never imports torch): the smallest input each one takes."""

from __future__ import annotations

# Below this the trunk's strided stages reduce the map to nothing (Inception's valid convolutions and
# pools need 75 px). The models use these numbers, and backends check dynamic-size inputs against them.
MIN_INPUT_SIZE: dict[str, int] = {"resnet50": 32, "resnet18": 32, "inception_v3": 75}
