"""Nine small networks written the way users write them (custom blocks, not torchvision), and a
data factory of learnable random data for each, shared by ``tests/test_user_networks.py`` and
``benchmarks/structured_families.py``.

Plain torch only: the benchmark imports this module against older versions of autocompress too.
Each model is a factory ``fn(num_classes, in_channels)`` as a study's ``model.factory`` calls it;
``ZOO`` maps a family name to its factory and input shape, ``build(family=...)`` and
``data(family=...)`` are the factories a study file names.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.data import TensorDataset


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dims: int = 2) -> nn.Sequential:
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
    return nn.Sequential(conv(cin, cout, k, stride, k // 2, groups=groups, bias=False), bn(cout))


def head(channels: int, num_classes: int, dims: int = 2) -> nn.Sequential:
    pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool1d(1)
    return nn.Sequential(pool, nn.Flatten(), nn.Linear(channels, num_classes))


# -- 1. residual 2D CNN: act(x + f(x)) inside the user's block -----------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(conv_bn(c, c), nn.ReLU(), conv_bn(c, c))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.f(x))


class ResNet2d(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_channels, width), nn.ReLU())
        self.stage1 = nn.Sequential(BasicBlock(width), BasicBlock(width))
        self.down = nn.Sequential(conv_bn(width, 2 * width, stride=2), nn.ReLU())
        self.stage2 = BasicBlock(2 * width)
        self.head = head(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.stage2(self.down(self.stage1(self.stem(x)))))


# -- 2. residual 1D CNN: GELU after the add, inside the block -------------------------------------------
class ResBlock1d(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(c, c, 5, dims=1), conv_bn(c, c, 5, dims=1)

    def forward(self, x):
        y = self.conv2(nn.functional.gelu(self.conv1(x)))
        return nn.functional.gelu(x + y)


class ResNet1d(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 24) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, width, 7, dims=1)
        self.blocks = nn.Sequential(ResBlock1d(width), nn.MaxPool1d(2), ResBlock1d(width), ResBlock1d(width))
        self.head = head(width, num_classes, dims=1)

    def forward(self, x):
        return self.head(self.blocks(nn.functional.gelu(self.stem(x))))


# -- 3. concatenation: Inception branches, then a dense (DenseNet) layer -------------------------------
class Inception(nn.Module):
    def __init__(self, cin: int, branch: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(conv_bn(cin, branch, 1), nn.ReLU())
        self.b3 = nn.Sequential(conv_bn(cin, branch, 1), nn.ReLU(), conv_bn(branch, branch), nn.ReLU())
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, branch, 1), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.pool(x)], dim=1)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


class ConcatNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_channels, width), nn.ReLU())
        self.inception = Inception(width, width)
        self.dense = nn.Sequential(DenseLayer(3 * width, width), DenseLayer(4 * width, width))
        self.head = head(5 * width, num_classes)

    def forward(self, x):
        return self.head(self.dense(self.inception(self.stem(x))))


# -- 4. depthwise-separable convolutions (MobileNet v1 style) ------------------------------------------
class SeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(conv_bn(cin, cin, stride=stride, groups=cin), nn.ReLU())
        self.pointwise = nn.Sequential(conv_bn(cin, cout, 1), nn.ReLU())

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


def separable_net(num_classes: int, in_channels: int, width: int = 16) -> nn.Module:
    w = width
    return nn.Sequential(conv_bn(in_channels, w), nn.ReLU(), SeparableConv(w, 2 * w), SeparableConv(2 * w, 2 * w, 2),
                         SeparableConv(2 * w, 4 * w), head(4 * w, num_classes))


# -- 5. squeeze-excitation ------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c // reduction), nn.Linear(c // reduction, c)

    def forward(self, x):
        s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class SENet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(conv_bn(in_channels, w), nn.ReLU(), conv_bn(w, 2 * w), nn.ReLU(),
                                      SqueezeExcite(2 * w), conv_bn(2 * w, 2 * w, stride=2), nn.ReLU(),
                                      SqueezeExcite(2 * w))
        self.head = head(2 * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


# -- 6. channel shuffle: ShuffleNet v2 units (split, branch, concatenate, shuffle) and a v1 unit -------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def branch(cin: int, c: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, c, 1), nn.ReLU(), conv_bn(c, c, stride=stride, groups=c), conv_bn(c, c, 1),
                         nn.ReLU())


class ShuffleV2Unit(nn.Module):
    """Stride 1: half the channels pass, the other half goes through the branch; stride 2: both halves
    are computed from the whole input (and the width doubles)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride, half = stride, cout // 2
        self.left = nn.Sequential(conv_bn(cin, cin, stride=2, groups=cin), conv_bn(cin, half, 1), nn.ReLU()) \
            if stride == 2 else nn.Identity()
        self.right = branch(cin if stride == 2 else half, half, stride)

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            return channel_shuffle(torch.cat([a, self.right(b)], 1), 2)
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_channels, width), nn.ReLU())
        self.units = nn.Sequential(ShuffleV2Unit(width, width), ShuffleV2Unit(width, 2 * width, stride=2),
                                   ShuffleV2Unit(2 * width, 2 * width))
        self.head = head(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.units(self.stem(x)))


class ShuffleV1Unit(nn.Module):
    """ShuffleNet v1: grouped 1x1 convolutions with the shuffle between them, residual add."""

    def __init__(self, c: int, groups: int = 4) -> None:
        super().__init__()
        self.groups = groups
        self.compress = nn.Sequential(conv_bn(c, c, 1, groups=groups), nn.ReLU())
        self.depthwise = conv_bn(c, c, groups=c)
        self.expand = conv_bn(c, c, 1, groups=groups)

    def forward(self, x):
        y = channel_shuffle(self.compress(x), self.groups)
        return torch.relu(x + self.expand(self.depthwise(y)))


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_channels, width), nn.ReLU())
        self.units = nn.Sequential(ShuffleV1Unit(width), ShuffleV1Unit(width))
        self.head = head(width, num_classes)

    def forward(self, x):
        return self.head(self.units(self.stem(x)))


# -- 7. ConvNeXt block: depthwise 7x7, LayerNorm over permuted channels, Linear MLP, residual ------------
class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.1))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(nn.functional.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 2, stride=2)
        self.blocks = nn.Sequential(ConvNeXtBlock(width), ConvNeXtBlock(width))
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.norm(self.blocks(self.stem(x)).mean((2, 3))))


# -- 8. a tiny transformer encoder over 4x4 patches -------------------------------------------------------
class TinyViT(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, dim: int = 32, depth: int = 2, patch: int = 4,
                 tokens: int = 16) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(in_channels * patch * patch, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        n, c, p = x.shape[0], x.shape[1], self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(n, -1, c * p * p)
        z = self.encoder(self.embed(patches) + self.pos)
        return self.fc(self.norm(z.mean(1)))


# -- the zoo ---------------------------------------------------------------------------------------------
ZOO: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "resnet2d": (ResNet2d, (1, 16, 16)),
    "resnet1d_gelu": (ResNet1d, (2, 64)),
    "concat": (ConcatNet, (1, 16, 16)),
    "separable": (separable_net, (1, 16, 16)),
    "squeeze_excite": (SENet, (1, 16, 16)),
    "channel_shuffle": (ShuffleNetV2, (1, 16, 16)),
    "shuffle_grouped": (ShuffleNetV1, (1, 16, 16)),
    "convnext_block": (ConvNeXtNet, (1, 16, 16)),
    "transformer": (TinyViT, (1, 16, 16)),
}


def build(num_classes: int, in_channels: int, family: str) -> nn.Module:
    """A study's ``model.factory``: ``user_networks:build`` with ``kwargs: {family: ...}``."""
    return ZOO[family][0](num_classes=num_classes, in_channels=in_channels)


def learnable(shape: tuple[int, ...], n: int, classes: int, seed: int) -> TensorDataset:
    """Random inputs whose label shifts the mean of the first channel (by 1.5 per class step, against
    noise of standard deviation 1): 3 epochs at lr 0.01 take every model of the zoo to 0.97-1.0."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, *shape, generator=g)
    x[:, 0] += 1.5 * (y.float() - (classes - 1) / 2).view(-1, *([1] * (len(shape) - 1)))
    return TensorDataset(x, y)


def data(family: str | None = None, shape: list[int] | None = None, n_train: int = 256, n_val: int = 64,
         classes: int = 3):
    """A study's ``data.factory``: (train, val, test) of ``learnable`` data shaped for ``family`` (or
    ``shape``, for a model outside the zoo)."""
    shape = tuple(shape) if shape is not None else ZOO[family][1]
    return (learnable(shape, n_train, classes, 0), learnable(shape, n_val, classes, 1),
            learnable(shape, n_val, classes, 2))
