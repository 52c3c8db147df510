"""Inception-v3 trunk of the wsolevaluation / DA-WSOL family (SPG head, no pooling/fc).

``BasicConv2d`` = conv (no bias) + BN(eps=1e-3) + *functional* ReLU, as in torchvision: the BagCAMs
guided rule does not apply there, only at the ``nn.ReLU`` modules of ``SPG_A3_1b``/``SPG_A3_2b``.
The parameter-free pools are modules (``pool1``..``pool3``) so that the trunk is a flat sequence of
named stages; they hold no state, so checkpoint names are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.avg_pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def branches(self) -> list[list[nn.Module]]:
        return [
            [self.branch1x1],
            [self.branch5x5_1, self.branch5x5_2],
            [self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3],
            [self.avg_pool, self.branch_pool],
        ]

    def forward(self, x: Tensor) -> Tensor:
        return _run_branches(self.branches(), x)


class InceptionB(nn.Module):
    """WSOL variant: kernel/stride/padding are parameters (stride 1, padding 1 with the large map)."""

    def __init__(self, cin: int, kernel_size: int = 3, stride: int = 2, padding: int = 0):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size, stride=stride, padding=padding)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size, stride=stride, padding=padding)
        self.max_pool = nn.MaxPool2d(kernel_size, stride=stride, padding=padding)

    def branches(self) -> list[list[nn.Module]]:
        return [
            [self.branch3x3],
            [self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3],
            [self.max_pool],
        ]

    def forward(self, x: Tensor) -> Tensor:
        return _run_branches(self.branches(), x)


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.avg_pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def branches(self) -> list[list[nn.Module]]:
        return [
            [self.branch1x1],
            [self.branch7x7_1, self.branch7x7_2, self.branch7x7_3],
            [
                self.branch7x7dbl_1,
                self.branch7x7dbl_2,
                self.branch7x7dbl_3,
                self.branch7x7dbl_4,
                self.branch7x7dbl_5,
            ],
            [self.avg_pool, self.branch_pool],
        ]

    def forward(self, x: Tensor) -> Tensor:
        return _run_branches(self.branches(), x)


def _run_branches(branches: list[list[nn.Module]], x: Tensor) -> Tensor:
    outs = []
    for chain in branches:
        y = x
        for m in chain:
            y = m(y)
        outs.append(y)
    return torch.cat(outs, 1)


class InceptionTrunk(nn.Module):
    """The WSOL Inception-v3 extractor (K = 1024), a flat sequence of named stages."""

    def __init__(self, large_feature_map: bool = True):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, stride=1, padding=0)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, stride=1, padding=1)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, stride=1, padding=0)
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.pool3 = nn.Identity() if large_feature_map else nn.MaxPool2d(3, stride=2, ceil_mode=True)
        # stride 1 in both settings: without the large map the max-pool above does the one downsampling
        self.Mixed_6a = InceptionB(288, kernel_size=3, stride=1, padding=1)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.drop1 = nn.Dropout(0.5)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU())
        self.drop2 = nn.Dropout(0.5)
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU())
        self.out_channels = 1024
        self.stage_names: tuple[str, ...] = (
            "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "pool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
            "pool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "pool3", "Mixed_6a", "Mixed_6b", "Mixed_6c",
            "Mixed_6d", "Mixed_6e", "drop1", "SPG_A3_1b", "drop2", "SPG_A3_2b",
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


def init_inception_(trunk: nn.Module) -> None:
    """Truncated-normal-like init (std 0.1 scaled by fan-in) keeping activations in a sane range."""
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
