"""Layer groups: the units per-layer policies speak of, found from the model's structure.

A group is a submodule that holds compute layers (Conv, Linear): a residual stage of a ResNet
(``layer1`` ... ``layer4``), a block of a MobileNet (``features.3``), a transformer block
(``bert.encoder.layer.2``), or a lone layer (the stem conv, the classifier). They come from the
module tree: starting at the model, a child that holds more than half of the compute layers
and is a container is opened (its children become the candidates); otherwise every child that
holds compute layers is a group. So a ResNet gives its stages, a MobileNet its blocks, a
Hugging Face encoder its layers, and a plain ``nn.Sequential`` of layers each layer.

Channels tied by residual adds stay inside one stage; those tied across stages (a ResNet's
stage outputs) are resolved by the pruning engine, which cuts each coupled set at the ratio of
its root layer (``pruning.coupling``).

``stages`` splits the groups that hold prunable layers into at most four contiguous runs of
about equal size: what ``pruning.ratio_stage1`` ... ``ratio_stage4`` address.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

COMPUTE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LSTM, nn.GRU)
STAGES = 4


@dataclass(frozen=True)
class LayerGroup:
    name: str                    # module name ("" never: the whole model is not a group)
    layers: tuple[str, ...]      # the compute layers inside it (full module names), module order

    def holds(self, module_name: str) -> bool:
        return module_name == self.name or module_name.startswith(self.name + ".")


def _compute_layers(module: nn.Module, prefix: str) -> tuple[str, ...]:
    out = []
    for n, m in module.named_modules(prefix=prefix):
        if isinstance(m, COMPUTE):
            out.append(n)
    # an LSTM's own parameters are its layer; nothing computes inside a compute layer
    return tuple(n for n in out if not any(n.startswith(o + ".") for o in out if o != n))


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """The model's layer groups in module order (see the module docstring)."""
    groups: list[LayerGroup] = []
    module, prefix = model, ""
    while True:
        total = len(_compute_layers(module, prefix))
        kids = []
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            layers = _compute_layers(child, full)
            if layers:
                kids.append((full, child, layers))
        big = next((k for k in kids if len(k[2]) * 2 > total and not isinstance(k[1], COMPUTE)
                    and len(list(k[1].children())) > 0), None)
        if big is None or len(kids) == 0:
            groups += [LayerGroup(full, layers) for full, _, layers in kids]
            break
        groups += [LayerGroup(full, layers) for full, _, layers in kids if full != big[0]]
        module, prefix = big[1], big[0]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(groups, key=lambda g: order[g.name])


def group_of(groups: list[LayerGroup], module_name: str) -> LayerGroup | None:
    return next((g for g in groups if g.holds(module_name)), None)


def stages(groups: list[LayerGroup], candidates: set[str]) -> dict[str, int]:
    """Stage (1-based, at most ``STAGES``) of every layer in ``candidates``: the groups that hold
    any of them, split into contiguous runs of about equal size."""
    holding = [g for g in groups if any(n in candidates for n in g.layers)]
    out: dict[str, int] = {}
    count = len(holding)
    for i, g in enumerate(holding):
        stage = min(STAGES, i * min(STAGES, count) // max(count, 1) + 1)
        for n in g.layers:
            if n in candidates:
                out[n] = stage
    return out


def resolve_names(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """The names in ``names`` that name no module of ``model`` (for one error line)."""
    modules = dict(model.named_modules())
    return [n for n in names if n not in modules]


@dataclass(frozen=True)
class Layout:
    """Per-layer precision (``compress.quantization.per_layer``): modules left in float, modules
    in another format (``alt_format``: ``per_channel`` int8 weight scales where the rest has
    per-tensor ones, or another torchao mode), or (``only``) the one module quantized while the
    rest stays float (the sensitivity pass). Names are module prefixes."""
    float_modules: tuple[str, ...] = ()
    alt_modules: tuple[str, ...] = ()
    alt_format: str = "float"
    only: str | None = None

    def to_dict(self) -> dict:
        return {"float_modules": list(self.float_modules), "alt_modules": list(self.alt_modules),
                "alt_format": self.alt_format}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Layout":
        d = d or {}
        return cls(tuple(d.get("float_modules", ())), tuple(d.get("alt_modules", ())), d.get("alt_format", "float"))

    def quantizes(self, name: str) -> bool:
        inside = lambda prefixes: any(name == p or name.startswith(p + ".") for p in prefixes)  # noqa: E731
        if self.only is not None:
            return inside((self.only,))
        return not inside(self.float_modules)

    def per_channel(self, name: str, default: bool) -> bool:
        return default or (self.alt_format == "per_channel"
                           and any(name == p or name.startswith(p + ".") for p in self.alt_modules))


UNIFORM = Layout()
