"""ResNet trunks of the wsolevaluation / DA-WSOL family (no avgpool, no fc).

State-dict names follow torchvision (``layer3.0.downsample.1.running_mean`` ...), so DA-WSOL
checkpoints load strictly. Every block owns ONE ``nn.ReLU`` module that it calls several times: the
BagCAMs guided rule applies at ``nn.ReLU`` modules, so this detail is part of the method.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, ResNet v1.5) -> 1x1 x4, plus identity or downsample."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(inplanes, planes, 1)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride, 1)
        self.conv3, self.bn3 = conv_bn(planes, planes * 4, 1)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    """3x3 (stride) -> 3x3, plus identity or downsample (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(inplanes, planes, 3, stride, 1)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, 1, 1)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetTrunk(nn.Module):
    """conv1/bn1/relu/maxpool then layer1..layer4; layer3 keeps stride 1 with ``large_feature_map``."""

    def __init__(self, block: type[Bottleneck] | type[BasicBlock], layers: list[int], large_feature_map: bool = True):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stride_l3 = 1 if large_feature_map else 2
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride_l3)
        self.layer4 = self._make_layer(block, 512, layers[3], 1)
        self.out_channels = 512 * block.expansion
        self.stage_names: tuple[str, ...] = (
            "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
        )  # fmt: skip

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(*conv_bn(self.inplanes, planes * block.expansion, 1, stride))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


def resnet50_trunk(large_feature_map: bool = True) -> ResNetTrunk:
    return ResNetTrunk(Bottleneck, [3, 4, 6, 3], large_feature_map)


def resnet18_trunk(large_feature_map: bool = True) -> ResNetTrunk:
    return ResNetTrunk(BasicBlock, [2, 2, 2, 2], large_feature_map)


def init_resnet_(trunk: nn.Module) -> None:
    """Kaiming init as torchvision does; BN to identity (used for fresh and random models)."""
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
