"""The CNNs: built-in ones with the seed's layer kinds, and torchvision architectures by name.

The built-in ``pipenet`` is the seed's model made trainable on a CPU: blocks of
convolution -> batch norm -> ReLU -> max pooling, then global pooling and a fully connected
layer (softmax is applied by the prediction trace, the loss takes logits). ``cifarnet`` is
an airbench-style net for 32 x 32 inputs (Keller Jordan's cifar10-airbench recipe). Any
torchvision classification model is built by name, and with timm installed (the optional
``timm`` extra) any timm model as ``timm/<name>``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn

PIPENET_WIDTHS = {  # name -> channels of each conv block; the first block has stride 2
    "pipenet-tiny": (8, 16, 32, 64),
    "pipenet-s": (32, 64, 128, 256),
    "pipenet-m": (64, 128, 256, 512),
}
CIFARNET_WIDTHS = {"cifarnet": (64, 256, 256), "cifarnet-s": (32, 128, 128)}
TIMM_PREFIX = "timm/"  # "timm/resnet18.a1_in1k": a timm model (its name on the Hugging Face hub)
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small",
                      "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build; saved in the checkpoint so ``predict`` rebuilds the same one."""

    name: str = "pipenet-s"  # a built-in name (see `builtin_names()`), a torchvision model or timm/<name>
    num_classes: int = 4  # outputs of the last fully connected layer

    def to_dict(self) -> dict:
        return asdict(self)


def builtin_names() -> tuple[str, ...]:
    return (*PIPENET_WIDTHS, *CIFARNET_WIDTHS)


def conv_block(cin: int, cout: int, stride: int = 1, kernel: int = 3, pool: bool = True
               ) -> nn.Sequential:
    """Convolution -> batch norm -> ReLU (-> 2 x 2 max pooling): H and W / stride (/ 2)."""
    layers = OrderedDict(
        conv=nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - stride + 1) // 2,
                       bias=False),
        bn=nn.BatchNorm2d(cout),
        relu=nn.ReLU(inplace=True),
    )
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class PipeNet(nn.Module):
    """The seed's CNN: (N, 3, H, W) -> conv blocks -> global max pool -> FC -> (N, classes).

    At 224 x 224: stem 16 x 16 / 8 -> 28, pool 14, pool 7, pool 3, last block 3 x 3 -> 1.
    """

    def __init__(self, widths: tuple[int, ...], num_classes: int, stem_stride: int = 8,
                 stem_kernel: int = 8):
        super().__init__()
        blocks, cin = OrderedDict(), 3
        for i, w in enumerate(widths):
            # The first block sees the full 224 x 224 image: a 4 x 4 convolution with
            # stride 4 ("patchify", as in ConvNeXt) keeps it cheap on a CPU (224 -> 56 -> 28).
            blocks[f"block{i + 1}"] = conv_block(cin, w, stride=stem_stride if i == 0 else 1,
                                                 kernel=stem_kernel if i == 0 else 3,
                                                 pool=i < len(widths) - 1)
            cin = w
        self.features = nn.Sequential(blocks)
        # Global *max* pooling asks "is this feature anywhere?", which is what telling shapes
        # apart needs; with average pooling the demo learned far slower (docs/architecture.md).
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

        # Smallest input that keeps a map of at least 1 x 1 after the last pooling.
        self.min_input_size = stem_stride * 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def _bn(c: int) -> nn.BatchNorm2d:
    """airbench's BatchNorm: scale fixed at 1 (the conv before it sets the scale), bias learnt."""
    bn = nn.BatchNorm2d(c, momentum=0.4, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn


def _cifar_block(cin: int, cout: int) -> nn.Sequential:
    """airbench's block: conv -> pool -> BN -> GELU -> conv -> BN -> GELU (H, W halved)."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        pool=nn.MaxPool2d(2),
        bn1=_bn(cout),
        act1=nn.GELU(),
        conv2=nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        bn2=_bn(cout),
        act2=nn.GELU(),
    ))


class CifarNet(nn.Module):
    """An airbench-style CNN for 32 x 32 inputs: whitening stem, three blocks, max pool, FC.

    (N, 3, 32, 32) -> stem 2 x 2 (N, 24, 31, 31) -> blocks (N, 64, 15, 15), (N, 256, 7, 7),
    (N, 256, 3, 3) -> global max pool -> FC -> logits / 9 (Keller Jordan, cifar10-airbench).
    """

    def __init__(self, widths: tuple[int, ...], num_classes: int, head_scale: float = 1 / 9):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)  # (N, 24, 31, 31)
        self.stem.weight.requires_grad_(False)  # set by init_from_data, never trained
        self.stem_act = nn.GELU()
        blocks, cin = OrderedDict(), 24
        for i, w in enumerate(widths):
            blocks[f"block{i + 1}"] = _cifar_block(cin, w)
            cin = w
        self.features = nn.Sequential(blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes, bias=False)
        self.head_scale = head_scale  # airbench scales the logits down; steadier early training
        for m in self.features.modules():  # airbench: identity init for the first filters
            if isinstance(m, nn.Conv2d):
                nn.init.dirac_(m.weight.data[: m.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem_act(self.stem(x)))
        return self.fc(self.flatten(self.pool(x))) * self.head_scale

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening stem: its 24 filters are the 12 eigenvectors of the 2 x 2 patch
        covariance of training images (x: (N, 3, H, W), normalized), scaled by
        1 / sqrt(eigenvalue), with both signs; then frozen. The bias keeps learning."""
        patches = x.float().unfold(2, 2, 1).unfold(3, 2, 1)  # (N, 3, H-1, W-1, 2, 2)
        patches = patches.transpose(1, 3).reshape(-1, 3 * 2 * 2)  # (P, 12)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        vals, vecs = torch.linalg.eigh(cov)
        vals, vecs = vals.flip(0), vecs.T.flip(0)  # largest first
        w = (vecs / torch.sqrt(vals + eps)[:, None]).view(12, 3, 2, 2)  # (c, dy, dx) order
        self.stem.weight.copy_(torch.cat([w, -w]).to(self.stem.weight.dtype))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """airbench's optimizer groups: BatchNorm biases learn 64x faster; every parameter
        decays by the same ``lr * weight_decay`` per step."""
        norm_biases = [m.bias for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        ids = {id(p) for p in norm_biases}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        scale = 64.0
        return [{"params": norm_biases, "lr": lr * scale, "weight_decay": weight_decay / scale},
                {"params": others, "lr": lr, "weight_decay": weight_decay}]


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the network named by ``cfg`` with random weights."""
    if cfg.name in PIPENET_WIDTHS:
        return PipeNet(PIPENET_WIDTHS[cfg.name], cfg.num_classes)
    if cfg.name in CIFARNET_WIDTHS:
        return CifarNet(CIFARNET_WIDTHS[cfg.name], cfg.num_classes)
    if cfg.name.startswith(TIMM_PREFIX):
        return build_timm_model(cfg.name.removeprefix(TIMM_PREFIX), cfg.num_classes)
    import torchvision

    try:
        return torchvision.models.get_model(cfg.name, weights=None, num_classes=cfg.num_classes)
    except ValueError:
        raise ValueError(
            f"unknown model {cfg.name!r}: use one of {', '.join(builtin_names())} or a "
            f"torchvision architecture such as {', '.join(TORCHVISION_MODELS[:4])}") from None


def import_timm():
    """timm, or one line saying how to get it (it is the optional ``timm`` extra)."""
    try:
        import timm
    except ImportError:
        raise ValueError("timm models need timm: pip install 'pipetrace[timm]'") from None
    return timm


def build_timm_model(name: str, num_classes: int | None = None, *,
                     pretrained: bool = False) -> nn.Module:
    """A timm model (None classes: its own head, as pretrained)."""
    timm = import_timm()
    extra = {} if num_classes is None else {"num_classes": num_classes}
    try:
        return timm.create_model(name, pretrained=pretrained, **extra)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        if "nknown model" not in str(exc):
            raise
        raise ValueError(f"unknown timm model {name!r}: see timm.list_models()") from None


def head_keys(cfg: ModelConfig) -> tuple[str, ...]:
    """The state-dict entries whose shape depends on the class count: the classifier head.

    Found by building the same network for one class more and comparing shapes, so it holds
    for any architecture; on the meta device (no memory, no initialisation work) where the
    constructor allows it (regnet's computes its widths from tensors, so it needs the CPU).
    """
    def both() -> tuple[dict, dict]:
        return (build_model(cfg).state_dict(),
                build_model(ModelConfig(cfg.name, cfg.num_classes + 1)).state_dict())

    try:
        with torch.device("meta"):
            mine, other = both()
    except (NotImplementedError, RuntimeError):
        mine, other = both()
    return tuple(k for k, v in mine.items() if k not in other or other[k].shape != v.shape)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
