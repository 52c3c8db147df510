"""A WSOL model = extractor (CNN trunk) + CAM classifier, and its structured description.

``logits = classifier(GAP(extractor(image))).flatten(1)`` with a 1x1-conv classifier, as in
wsolevaluation / DA-WSOL. The extractor is a flat sequence of named stages, which is what lets the
reference capture any target layer without hooks and the exporter split the network there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from ..architectures import MIN_INPUT_SIZE
from ..errors import BagcamsError
from .inception import InceptionTrunk, init_inception_
from .resnet import init_resnet_, resnet18_trunk, resnet50_trunk


@dataclass(frozen=True)
class ArchSpec:
    """What the rest of the project needs to know about one architecture."""

    name: str
    build_trunk: Callable[[bool], nn.Module]
    init: Callable[[nn.Module], None]
    target_layers: tuple[str, ...]
    default_target_layer: str
    min_input_size: int


ARCHITECTURES: dict[str, ArchSpec] = {
    "resnet50": ArchSpec(
        "resnet50",
        resnet50_trunk,
        init_resnet_,
        ("layer1", "layer2", "layer3", "layer4"),
        "layer3",
        MIN_INPUT_SIZE["resnet50"],
    ),
    "resnet18": ArchSpec(
        "resnet18",
        resnet18_trunk,
        init_resnet_,
        ("layer1", "layer2", "layer3", "layer4"),
        "layer3",
        MIN_INPUT_SIZE["resnet18"],
    ),
    "inception_v3": ArchSpec(
        "inception_v3",
        InceptionTrunk,
        init_inception_,
        (
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
            "SPG_A3_1b",
            "SPG_A3_2b",
        ),
        # The stage before the last, at full 28x28 resolution: to Inception what layer3 is to ResNet-50.
        "SPG_A3_1b",
        MIN_INPUT_SIZE["inception_v3"],
    ),
}


def arch_spec(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise BagcamsError(f"unknown architecture {name!r}; valid: {', '.join(ARCHITECTURES)}") from None


class CAMClassifier(nn.Module):
    """GAP then a 1x1 conv (K -> C, bias): checkpoint names ``fc.weight`` [C,K,1,1], ``fc.bias``."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=True)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features.mean(dim=(2, 3), keepdim=True)).flatten(1)


@dataclass(frozen=True)
class ModelDescription:
    """Structured facts about a loaded model, for the CLI (`info`) and the exporter."""

    architecture: str
    num_classes: int
    large_feature_map: bool
    feature_channels: int
    target_layers: tuple[str, ...]
    default_target_layer: str
    last_layer: str
    layer_channels: dict[str, int] = field(default_factory=dict)
    parameter_count: int = 0
    class_names: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class WSOLModel(nn.Module):
    """Extractor + CAM classifier in eval mode; forward returns logits."""

    def __init__(
        self,
        architecture: str,
        num_classes: int,
        large_feature_map: bool = True,
        class_names: tuple[str, ...] | None = None,
    ):
        super().__init__()
        spec = arch_spec(architecture)
        if num_classes < 1:
            raise BagcamsError(f"num_classes must be >= 1, got {num_classes}")
        self.spec = spec
        self.architecture = architecture
        self.large_feature_map = large_feature_map
        self.num_classes = num_classes
        self.class_names = class_names
        self.extractor = spec.build_trunk(large_feature_map)
        self.classifier = CAMClassifier(self.extractor.out_channels, num_classes)
        self.eval()

    def snapshot(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> WSOLModel:
        """An eval-mode twin built from this model's tensors alone: it shares them where dtype and device
        already match (no copy) but none of the modules, so the caller's training flags, hooks (and
        whatever they hold), guided-ReLU hooks of a concurrent reference pass and later ``.train()``
        calls never reach it. A deep copy would copy the hooks, and fails on those that hold tensors
        of an autograd graph."""
        with torch.device("meta"):
            twin = WSOLModel(self.architecture, self.num_classes, self.large_feature_map, self.class_names)
        state = {
            k: v.to(
                device=device if device is not None else v.device, dtype=dtype if v.is_floating_point() else v.dtype
            )
            for k, v in self.state_dict().items()
        }
        try:
            twin.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            detail = (str(exc).strip().splitlines() or ["state dict mismatch"])[-1].strip()
            raise BagcamsError(
                f"the model's tensors are not those of a {self.architecture} WSOLModel ({detail[:160]}): "
                "were modules replaced after loading?"
            ) from None
        return twin.eval()

    @property
    def stage_names(self) -> tuple[str, ...]:
        return self.extractor.stage_names

    def stage(self, name: str) -> nn.Module:
        return getattr(self.extractor, name)

    def check_target_layer(self, name: str) -> str:
        if name not in self.spec.target_layers:
            raise BagcamsError(
                f"unknown target layer {name!r} for {self.architecture}; valid: {', '.join(self.spec.target_layers)}"
            )
        return name

    def check_layer_for(self, method: str, target_layer: str | None) -> None:
        """A user's explicit ``--target-layer`` for ``method``: CAM can only use the classifier's input,
        so naming another layer for it is an error, not something to ignore silently."""
        if target_layer is None:
            return
        self.check_target_layer(target_layer)
        last = self.spec.target_layers[-1]
        if method == "cam" and target_layer != last:
            raise BagcamsError(
                f"method cam maps the classifier's input ({last}); target layer {target_layer} applies to the "
                "gradient methods only"
            )

    def features_and_logits(self, image: Tensor, target_layer: str) -> tuple[Tensor, Tensor]:
        """Run the network once, returning the target layer's output and the logits."""
        self.check_target_layer(target_layer)
        x = image
        features = None
        for name in self.stage_names:
            x = self.stage(name)(x)
            if name == target_layer:
                features = x
        assert features is not None
        return features, self.classifier(x)

    def forward(self, image: Tensor) -> Tensor:
        return self.classifier(self.extractor(image))

    def describe(self) -> ModelDescription:
        channels = {}
        probe = torch.zeros(1, 3, 96, 96)
        with torch.no_grad():
            x = probe
            for name in self.stage_names:
                x = self.stage(name)(x)
                if name in self.spec.target_layers:
                    channels[name] = int(x.shape[1])
        return ModelDescription(
            architecture=self.architecture,
            num_classes=self.num_classes,
            large_feature_map=self.large_feature_map,
            feature_channels=self.extractor.out_channels,
            target_layers=self.spec.target_layers,
            default_target_layer=self.spec.default_target_layer,
            last_layer=self.spec.target_layers[-1],
            layer_channels=channels,
            parameter_count=sum(p.numel() for p in self.parameters()),
            class_names=self.class_names,
        )


def require_wsol_model(model: object) -> WSOLModel:
    """``model`` itself, or a clear error: our rules, layer names and metadata exist for WSOLModel only
    (a plain torchvision network would fail deep inside with an AttributeError)."""
    if not isinstance(model, WSOLModel):
        raise BagcamsError(
            f"model must be a WSOLModel (see bagcams_deploy.models.load_model), got {type(model).__name__}"
        )
    return model


def build_model(
    architecture: str,
    num_classes: int,
    large_feature_map: bool = True,
    seed: int | None = 0,
    randomize_batchnorm: bool = False,
) -> WSOLModel:
    """A model with deterministic random weights (a stand-in where no checkpoint is at hand).

    ``randomize_batchnorm`` also draws BN running statistics and affine parameters, so that tests
    exercise BatchNorm folding instead of identity BNs.
    """
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = WSOLModel(architecture, num_classes, large_feature_map)
        model.spec.init(model.extractor)
        nn.init.normal_(model.classifier.fc.weight, std=0.01)
        nn.init.normal_(model.classifier.fc.bias, std=0.01)
        if randomize_batchnorm:
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.weight.uniform_(0.6, 1.4)
                        m.bias.normal_(0.0, 0.2)
                        m.running_mean.normal_(0.0, 0.2)
                        m.running_var.uniform_(0.5, 2.0)
    finally:
        if seed is not None:
            torch.random.set_rng_state(gen_state)
    return model.eval()
