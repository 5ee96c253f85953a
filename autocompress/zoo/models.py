"""Model registry (timm-style ``@register_model`` + ``create_model``), torchvision models by
name, user factories ``fn(num_classes, in_channels, **kwargs)``, and checkpoint loading.

torchvision is imported where a torchvision model is asked for (about 2.5 s to import here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from autocompress.errors import ConfigError
from autocompress.spec.fields import ModelSpec
from autocompress.zoo.imports import import_callable

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, *, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
                 **kwargs: Any) -> nn.Module:
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels,
                           input_shape=input_shape, **kwargs)


def _conv_bn(cin: int, cout: int, conv: type = nn.Conv2d, bn: type = nn.BatchNorm2d) -> list[nn.Module]:
    return [conv(cin, cout, 3, padding=1, bias=False), bn(cout), nn.ReLU(inplace=True)]


@register_model
def digits_cnn(*, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
               width: int = 32) -> nn.Module:
    """A small VGG-style CNN: about 99% on digits after a few seconds of training."""
    w = width
    return nn.Sequential(
        *_conv_bn(in_channels, w), *_conv_bn(w, w), nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
        *_conv_bn(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True),
        nn.Linear(4 * w, num_classes),
    )


@register_model
def conv1d_net(*, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
               width: int = 32) -> nn.Module:
    """A 1D-convolution classifier for signals shaped (channels, length)."""
    w = width
    return nn.Sequential(
        *_conv_bn(in_channels, w, nn.Conv1d, nn.BatchNorm1d), *_conv_bn(w, 2 * w, nn.Conv1d, nn.BatchNorm1d),
        nn.MaxPool1d(2),
        *_conv_bn(2 * w, 2 * w, nn.Conv1d, nn.BatchNorm1d),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        nn.Linear(2 * w, num_classes),
    )


@register_model
def mlp(*, num_classes: int, in_channels: int, input_shape: tuple[int, ...],
        hidden: int = 256, depth: int = 2) -> nn.Module:
    """A plain MLP over the flattened input."""
    features = 1
    for d in input_shape:
        features *= d
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
        features = hidden
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def torchvision_model(name: str, *, num_classes: int, in_channels: int, weights: str | None = None,
                      **kwargs: Any) -> nn.Module:
    """A torchvision classifier, random init (or local weights when ``weights`` is given and
    already in the torch hub cache; nothing is downloaded)."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision model '{name}'")
    if weights is not None:
        model = _local_weights_model(name, weights, **kwargs)
        _replace_classifier(model, num_classes)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _local_weights_model(name: str, weights: str, **kwargs: Any) -> nn.Module:
    import torchvision
    from torch.hub import get_dir

    w = torchvision.models.get_weight(f"{torchvision.models.get_model_weights(name).__name__}.{weights}")
    file = Path(get_dir()) / "checkpoints" / Path(w.url).name
    if not file.is_file():
        raise ValueError(f"pretrained weights {w} are not on this machine ({file}); "
                         "autocompress never downloads them")
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride,
                                child.padding, child.dilation, child.groups if child.groups == 1 else 1,
                                bias=child.bias is not None)
                setattr(parent, child_name, new)
                return


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    last_parent, last_name, last = None, None, None
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last_parent, last_name, last = parent, child_name, child
    if last is not None and last.out_features != num_classes:
        setattr(last_parent, last_name, nn.Linear(last.in_features, num_classes))


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load a state dict with ``weights_only=True``; pickled code is refused."""
    if not path.is_file():
        raise ValueError(f"checkpoint '{path}' not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text or "Unsupported class" in text:
            raise ValueError(f"checkpoint '{path}' holds pickled code or objects, not plain tensors; "
                             "refused (save model.state_dict() instead)") from None
        detail = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln or "Error" in ln), "")
        raise ValueError(f"checkpoint '{path}' cannot be read as a PyTorch state dict "
                         f"({type(exc).__name__}{': ' + detail[:120] if detail else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint '{path}' is not a state dict of tensors")
    own = model.state_dict()
    for prefix in ("module.", "_orig_mod."):  # saved from DataParallel/DDP, or from torch.compile
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix):]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise ValueError(f"checkpoint '{path}' does not match the model: {detail[:300]}") from None


def build_model(spec: ModelSpec, *, num_classes: int, input_shape: tuple[int, ...],
                source: str | None = None, text: Any = None) -> nn.Module:
    """The user's model from the study's ``model`` section (checkpoint loaded if given). ``text``:
    the data's ``zoo.text.TextInfo`` (or its recorded layout) where inputs are token ids."""
    base_dir = Path(source).parent if source else Path.cwd()
    in_channels = input_shape[0] if len(input_shape) > 1 else 1
    try:
        if spec.transformers is not None:
            from autocompress.zoo.transformers import transformers_model

            model = transformers_model(spec.transformers, num_classes=num_classes, text=text, base_dir=base_dir)
        elif spec.builtin:
            if spec.builtin not in _REGISTRY:
                raise ConfigError(source, "model.builtin",
                                  f"unknown model '{spec.builtin}' (choose from: {', '.join(list_models())})")
            model = create_model(spec.builtin, num_classes=num_classes, in_channels=in_channels,
                                 input_shape=input_shape, **spec.kwargs)
        elif spec.torchvision:
            model = torchvision_model(spec.torchvision, num_classes=num_classes, in_channels=in_channels,
                                      **spec.kwargs)
        else:
            fn = import_callable(spec.factory, base_dir=base_dir)
            try:
                model = fn(num_classes=num_classes, in_channels=in_channels, **spec.kwargs)
            except Exception as exc:
                raise ValueError(f"model factory '{spec.factory}' raised {type(exc).__name__}: {exc}") from None
            if not isinstance(model, nn.Module):
                raise ValueError(f"model factory '{spec.factory}' returned {type(model).__name__}, not nn.Module")
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(source, f"model.{spec.kind}", str(exc)) from None
    if spec.checkpoint:
        ckpt = Path(spec.checkpoint).expanduser()
        try:
            load_checkpoint(model, ckpt if ckpt.is_absolute() else base_dir / ckpt)
        except ValueError as exc:
            raise ConfigError(source, "model.checkpoint", str(exc)) from None
    return model
