"""A compressed model on disk, and the model rebuilt from it.

Two files hold a model: ``model.pt`` (a plain state dict, loaded with ``weights_only=True``) and
``structure.json`` (what rebuilds the module tree: the model reference, the in/out widths of
every layer after pruning, a transformers config's hidden size, the quantization mode). The search
writes them for every feasible trial under ``runs/<name>/trials/<number>/`` (``save_trial_model``);
an export bundle (``autocompress.bundle.export``) holds them next to its other files.

``load_exported(path)`` rebuilds the structure from the recorded widths (independent of how a
pruner or quantizer works inside): build the study's model, replace every layer whose widths
changed, let normalization layers take the width of their input, apply the recorded
quantization mode to this skeleton (``quantized_skeleton``), then load the state dict.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.nn.intrinsic.modules.fused import _FusedModule

from autocompress.compress.depth import fit_depth
from autocompress.compress.groups import Layout
from autocompress.compress.quantization import CastInputs, load_into, quantized_skeleton
from autocompress.compress.quantization.torchao_modes import Exported
from autocompress.deploy.runtimes import Deployment
from autocompress.errors import AutocompressError
from autocompress.spec.config import ModelSpec, StudySpec
from autocompress.spec.policy import Policy
from autocompress.utils import atomic_torch_save, atomic_write_bytes, atomic_write_text, error_line
from autocompress.zoo import build_model
from autocompress.zoo.data import DataBundle
from autocompress.zoo.text import TextInfo, TextModel
from autocompress.zoo.transformers import TokenLayout

log = logging.getLogger("autocompress")

MODEL_FILE = "model.pt"
STRUCTURE_FILE = "structure.json"
TORCHSCRIPT_FILE = "model.torchscript.pt"   # written by export; load_exported's error points to it
PROGRAM_FILE = "model.pt2"                  # an exported program (torchao PT2E): loaded as it is
FORMAT = 1                                  # of structure.json and of a bundle's policy.yaml

# Constructor arguments that pruning changes; every layer that has one is recorded.
WIDTH_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
               "num_groups", "num_channels", "normalized_shape", "num_embeddings", "embedding_dim")
# counts that modules without weights of their own hold (attention heads after head pruning):
# recorded, and set back as they are on rebuild
COUNT_ATTRS = ("num_attention_heads", "all_head_size", "n_heads")
# widths a model's config holds (a Hugging Face config after hidden-size pruning): recorded, set again on rebuild
CONFIG_ATTRS = ("hidden_size",)


# -- structure ---------------------------------------------------------------------------------

def _float_core(model: nn.Module) -> nn.Module:
    """The float model inside an fp16/bf16 input-casting wrapper; the model itself otherwise."""
    return model.model if isinstance(model, CastInputs) else model


def model_structure(model: nn.Module, *, model_spec: dict[str, Any], source: str | None, data: DataBundle,
                    quantization: dict[str, Any]) -> dict[str, Any]:
    """What ``rebuild`` needs: the model reference and every layer's widths.

    Quantized layers keep their float names and widths; a BatchNorm fused into its conv by
    int8 conversion is not listed and takes the width of its input when rebuilt.
    """
    layers: dict[str, dict[str, Any]] = {}
    core = _float_core(model)
    fused = {n for n, m in core.named_modules() if isinstance(m, _FusedModule)}   # a float layer fused with its
    for name, m in core.named_modules():   # activation (a group kept float in an int8 model): the layer's name
        owner, _, child = name.rpartition(".")
        if name in fused or (owner in fused and child != "0"):
            continue
        name = owner if owner in fused else name
        widths = {}
        for a in WIDTH_ATTRS + COUNT_ATTRS:
            v = getattr(m, a, None)
            if isinstance(v, bool) or not isinstance(v, (int, tuple, list)):
                continue
            widths[a] = list(v) if isinstance(v, (tuple, list)) else v
        if widths and name:
            layers[name] = {"type": type(m).__name__, **widths}
    out = {"format": FORMAT, "model": model_spec, "source": source, "num_classes": data.num_classes,
           "input_shape": list(data.input_shape), "quantization": quantization, "layers": layers,
           "torch": torch.__version__}
    if configs := _config_widths(core):
        out["configs"] = configs
    if data.text is not None:   # token ids in: the tokenizer and the ids' layout, so it reads raw text
        out["text"] = data.text.to_dict()
    return out


def _config_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """{module: {attr: width}} of ``CONFIG_ATTRS`` in the config each module holds (the first module
    holding each config object)."""
    seen, out = set(), {}
    for name, m in model.named_modules():
        config = getattr(m, "config", None)
        widths = {a: v for a in CONFIG_ATTRS if isinstance(v := getattr(config, a, None), int)
                  and not isinstance(v, bool)}
        if widths and id(config) not in seen:
            seen.add(id(config))
            out[name] = widths
    return out


def example_inputs(structure: dict[str, Any], n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random inputs of the recorded shape: token ids of full length between [CLS]-like
    and pad where the model takes text, standard normal values otherwise."""
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(structure["input_shape"])
    text = structure.get("text")
    if text is None:
        return torch.randn(n, *shape, generator=gen)
    layout = TokenLayout.of(text)
    low = min(5, layout.vocab_size - 1)   # past the special tokens of a WordPiece vocabulary
    ids = torch.randint(low, layout.vocab_size, (n, *shape), generator=gen)
    lengths = torch.randint(2, shape[-1] + 1, (n,), generator=gen)
    ids[torch.arange(shape[-1])[None, :] >= lengths[:, None]] = layout.pad_id   # padded like real batches
    return ids


def _resized(m: nn.Module, rec: dict[str, Any]) -> nn.Module | None:
    """A fresh copy of layer ``m`` with the recorded widths, or None when they already match."""
    keys = [k for k in rec if k in WIDTH_ATTRS and hasattr(m, k)]
    same = all((list(getattr(m, k)) if isinstance(getattr(m, k), tuple) else getattr(m, k)) == rec[k]
               for k in keys)
    if same:
        return None
    w = {k: rec.get(k, getattr(m, k)) for k in keys}
    if isinstance(m, nn.modules.conv._ConvNd):
        kwargs = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=w["groups"],
                      bias=m.bias is not None, padding_mode=m.padding_mode)
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            kwargs["output_padding"] = m.output_padding
        return type(m)(w["in_channels"], w["out_channels"], m.kernel_size, **kwargs)
    if isinstance(m, nn.Linear):
        return type(m)(w["in_features"], w["out_features"], bias=m.bias is not None)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return type(m)(w["num_features"], m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, nn.GroupNorm):
        return nn.GroupNorm(w["num_groups"], w["num_channels"], m.eps, m.affine)
    if isinstance(m, nn.LayerNorm):
        return nn.LayerNorm(w["normalized_shape"], m.eps, m.elementwise_affine, bias=m.bias is not None)
    if isinstance(m, nn.Embedding):
        return nn.Embedding(w["num_embeddings"], w["embedding_dim"], padding_idx=m.padding_idx)
    raise AutocompressError(f"cannot rebuild layer of type {type(m).__name__} with widths {w}")


def _fit_batchnorms(model: nn.Module, example: torch.Tensor) -> None:
    """Give every BatchNorm the width of its input (one forward pass of ``example``)."""
    def fit(m: nn.modules.batchnorm._BatchNorm, args: tuple) -> None:
        c = args[0].shape[1]
        if c == m.num_features:
            return
        m.num_features = c
        if m.affine:
            m.weight, m.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        if m.track_running_stats:
            m.running_mean, m.running_var = torch.zeros(c), torch.ones(c)

    handles = [m.register_forward_pre_hook(fit) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()


def rebuild(structure: dict[str, Any]) -> nn.Module:
    """The untrained module tree ``structure`` describes (quantization applied, weights not loaded)."""
    if structure.get("format") != FORMAT:
        raise AutocompressError(f"structure format {structure.get('format')!r} is not supported (expected {FORMAT})")
    spec = ModelSpec(**{**structure["model"], "checkpoint": None})
    input_shape = tuple(structure["input_shape"])
    model = build_model(spec, num_classes=structure["num_classes"], input_shape=input_shape,
                        source=structure.get("source"), text=structure.get("text"))
    changed = fit_depth(model, structure["layers"]) is not None   # a shallower student: drop the layers it lacks
    for name, rec in structure["layers"].items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise AutocompressError(f"the exported model has a layer '{name}' ({rec.get('type')}) that "
                                    f"{spec.reference} does not have: cannot rebuild it") from None
        for a in COUNT_ATTRS:
            if a in rec and isinstance(getattr(layer, a, None), int):
                setattr(layer, a, rec[a])
        fresh = _resized(layer, rec)
        if fresh is not None:
            model.set_submodule(name, fresh)
            changed = True
    for name, widths in (structure.get("configs") or {}).items():
        config = getattr(model.get_submodule(name), "config", None)
        for a, v in widths.items():
            if config is not None and a in CONFIG_ATTRS:
                setattr(config, a, v)
    example = example_inputs(structure, 2)
    if changed:
        _fit_batchnorms(model, example)
    q = structure.get("quantization") or {}
    return quantized_skeleton(model.eval(), q.get("mode", "none"), example, per_channel=q.get("per_channel", True),
                              backend=q.get("backend", "torch_ao"), layout=Layout.from_dict(q.get("layout")))


# -- save and load -----------------------------------------------------------------------------

def save_model(model: nn.Module, folder: Path, structure: dict[str, Any], shipped: Deployment | None = None) -> None:
    """``model.pt`` (state dict) and ``structure.json``, and the deployed artifact as it was
    measured (``shipped``: the very bytes, e.g. ``model.onnx``; for eager and torch.compile the
    artifact is ``model.pt`` itself), each written atomically."""
    folder = Path(folder)
    if shipped is not None and shipped.file_name == MODEL_FILE:
        atomic_write_bytes(folder / MODEL_FILE, shipped.artifact)
    else:   # as is: the state dict's _metadata carries layer versions that quantized layers need to load
        atomic_torch_save(model.state_dict(), folder / MODEL_FILE)
        if shipped is not None:
            atomic_write_bytes(folder / shipped.file_name, shipped.artifact)
    atomic_write_text(folder / STRUCTURE_FILE, json.dumps(structure, indent=1))


def load_exported(path: str | Path, *, reads_text: bool = True) -> nn.Module:
    """A ready-to-run model (eval mode, CPU) from an export folder, or a trial folder of a search.
    A model trained on text comes with its tokenizer (``zoo.text.TextModel``: call it on strings
    or token ids); ``reads_text=False`` gives the bare model, which takes token ids.

    Example:
        >>> model = load_exported("runs/digits-cnn/export")  # doctest: +SKIP
        >>> logits = model(torch.zeros(1, 1, 8, 8))          # doctest: +SKIP
    """
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    files = folder / STRUCTURE_FILE, folder / MODEL_FILE
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise AutocompressError(f"not an exported model: {', '.join(missing)} missing")
    program = folder / PROGRAM_FILE
    if program.is_file():   # an exported program ships whole (torchao PT2E): nothing to rebuild
        try:
            return Exported.from_bytes(program.read_bytes()).eval()
        except Exception as exc:
            raise AutocompressError(f"{program}: cannot load the exported program ({error_line(exc)})") from None
    try:
        structure = json.loads(files[0].read_text(encoding="utf-8"))
        model = rebuild(structure)
    except Exception as exc:  # a truncated or hand-edited file
        raise AutocompressError(f"{files[0]}: cannot rebuild the model from it ({error_line(exc)})") from None
    try:
        with warnings.catch_warnings():  # int8 tensors are rebuilt through a deprecated storage path
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            state = torch.load(files[1], map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AutocompressError(f"{files[1]}: cannot read ({error_line(exc)})") from None
    q = structure.get("quantization") or {}
    try:
        load_into(model, state, mode=q.get("mode", "none"), backend=q.get("backend", "torch_ao"))
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise AutocompressError(f"{files[1]} does not fit the rebuilt structure ({detail}); "
                                f"{TORCHSCRIPT_FILE} may still load with torch.jit.load") from None
    if reads_text and "tokenizer" in (structure.get("text") or {}):   # takes strings too
        return TextModel(model.eval(), TextInfo.from_dict(structure["text"])).eval()
    return model.eval()


def save_trial_model(result: Any, folder: Path, *, spec: StudySpec, data: DataBundle) -> Path | None:
    """During a search: save a trial's final model and its measured artifact (``result``: a
    ``trial.TrialResult``, its model, policy, deployment and proof). Never fails the trial
    (export can re-run it)."""
    if result.model is None:
        return None
    try:
        structure = structure_for(result.model, spec, data, result.policy, result.proof)
        save_model(result.model, folder, structure, result.deployment)
    except Exception as exc:
        log.warning("trial model not saved to %s: %s", folder, error_line(exc))
        return None
    return Path(folder)


def structure_for(model: nn.Module, spec: StudySpec, data: DataBundle, policy: Policy,
                  proof: dict | None = None) -> dict[str, Any]:
    """The structure file of a trial's model; ``proof``: the trial's, whose per-layer precision
    (``quantization.layout``: groups kept in float or in another format) the rebuild repeats."""
    q = policy.quantization
    quantization = {"mode": q.mode, "per_channel": q.per_channel, "backend": q.backend}
    if layout := ((proof or {}).get("quantization") or {}).get("layout"):
        quantization["layout"] = layout
    return model_structure(model, model_spec=spec.model.model_dump(mode="json"),
                           source=str(Path(spec.source).resolve()) if spec.source else None, data=data,
                           quantization=quantization)
