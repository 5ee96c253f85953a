"""What ``study.prepare`` checks before it writes anything: the devices it will use are here,
the model runs on the data, the augmentation choices fit the data, and an existing study under
the same name is one this study file can resume (same objectives, model and data kind; knobs
Optuna can still take). Each problem is a ``ConfigError`` naming the study file and field."""

from __future__ import annotations

from typing import Callable

import optuna
import torch
from torch import nn

from autocompress.compress.depth import misfit as depth_misfit
from autocompress.compress.quantization import number_format
from autocompress.compress.quantization.torchao_modes import why_missing
from autocompress.devices import why_absent
from autocompress.errors import ConfigError
from autocompress.search.per_layer import values
from autocompress.search.record import read_study_info
from autocompress.spec.config import StudySpec
from autocompress.spec.fields import device_name
from autocompress.spec.space import SearchSpace
from autocompress.training.augment import misfit
from autocompress.trial.context import fit_length
from autocompress.utils import error_line
from autocompress.zoo.data import DataBundle


def check_devices(spec: StudySpec, training: str | None = None, *, local_workers: bool = True) -> None:
    """The devices this process will use are on this machine: the training device (``training``,
    a worker's ``--device``, else the study's ``device``) and ``target.device``; with
    ``local_workers`` (``search``) also the study's ``devices``. A worker resuming a study made
    elsewhere is not held to the devices listed for that machine."""
    used = [(spec.source, "target.device", spec.target.device)]
    if training is None:
        used.append((spec.source, "device", spec.device))
    else:
        try:
            used.append((None, "--device", device_name(training, auto=True)))
        except ValueError as exc:
            raise ConfigError(None, "--device", str(exc)) from None
    if local_workers:
        used += [(spec.source, f"devices[{i}]", d) for i, d in enumerate(spec.devices or [])]
    for source, field, device in used:
        if reason := why_absent(device):
            raise ConfigError(source, field, f"{device} is not here: {reason}")


def check_forward(model: nn.Module, data: DataBundle, spec: StudySpec) -> None:
    """One forward pass of two training inputs: it runs and gives (batch, classes) logits."""
    x, _ = data.train[0]
    try:
        with torch.inference_mode():
            out = model.eval()(torch.as_tensor(x).unsqueeze(0).repeat(2, *([1] * torch.as_tensor(x).dim())))
    except Exception as exc:
        raise ConfigError(spec.source, "model", f"the model does not run on the data's inputs of shape "
                                                f"{tuple(data.input_shape)}: {error_line(exc, 200)}") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(spec.source, "model", f"the model returns a {type(out).__name__}; expected one "
                                                f"tensor of (batch, {data.num_classes}) logits")
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise ConfigError(spec.source, "model", f"the model outputs shape {tuple(out.shape)}; expected "
                                                f"(batch, {data.num_classes}) logits")
    length = spec.target.seq_len
    if length is not None:
        if data.text is None:
            raise ConfigError(spec.source, "target.seq_len", "applies to text data (token ids) only")
        ids = fit_length(torch.as_tensor(x).unsqueeze(0).repeat(2, 1), length, data.text.pad_id)
        try:
            with torch.inference_mode():
                model.eval()(ids)
        except Exception as exc:
            raise ConfigError(spec.source, "target.seq_len", f"the model does not run on {length} tokens: "
                                                             f"{error_line(exc, 200)}") from None


def check_depth(spec: StudySpec, space: SearchSpace, teacher: nn.Module, log: Callable[[str], None]) -> None:
    """``depth.layers`` choices the teacher cannot take (as many layers as it has, or no layer
    stack): an error when no choice fits, else one warning per misfit."""
    knob = next((k for k in space.knobs if k.name == "depth.layers"), None)
    if knob is None:
        return
    dist = knob.distribution
    if dist is None:
        values = [knob.value]
    elif isinstance(dist, optuna.distributions.CategoricalDistribution):
        values = list(dist.choices)
    else:   # an integer range
        values = list(range(int(dist.low), int(dist.high) + 1, int(getattr(dist, "step", 1) or 1)))
    bad = {v: reason for v in values if (reason := depth_misfit(teacher, int(v)))}
    field = "search_space.depth.layers"
    if bad and len(bad) == len(values):
        raise ConfigError(spec.source, field, next(iter(bad.values())))
    for value, reason in bad.items():
        log(f"warning: {field}: {value} does not fit the model ({reason}); trials that pick it will fail")


def check_augmentation(spec: StudySpec, space: SearchSpace, data: DataBundle, log: Callable[[str], None]) -> None:
    """Augmentation choices that cannot apply to this data (image ones on feature vectors,
    color on grayscale, ...): an error when no choice fits, else one warning per misfit."""
    for knob in space.knobs:
        section, _, name = knob.name.partition(".")
        if section != "augmentation" or name not in ("policy", "mix"):
            continue
        values = list(knob.distribution.choices) if knob.distribution is not None else [knob.value]
        bad = {v: reason for v in values if (reason := misfit(name, v, data))}
        field = f"search_space.{knob.name}"
        if bad and len(bad) == len(values):
            raise ConfigError(spec.source, field, f"no choice fits the data: {next(iter(bad.values()))}")
        for value, reason in bad.items():
            log(f"warning: {field}: '{value}' does not fit the data ({reason}); trials that pick it will fail")


def check_formats(spec: StudySpec, space: SearchSpace, log: Callable[[str], None]) -> None:
    """Number formats the space offers that this machine or the target cannot run: a missing
    torchao (or a torchao without the mode) and a format without kernels on the target device
    are an error when no choice is left, else one warning per choice (the search does not
    propose them, ``search.sampler``)."""
    modes, backends = values(space, "quantization.mode"), values(space, "quantization.backend")
    field = "search_space.quantization.mode"
    bad: dict[str, str] = {}
    for mode in modes:
        for backend in backends:
            fmt = number_format(mode, True, backend)
            reason = (why_missing(mode) if fmt.backend == "torchao" else None) or fmt.unsupported_on(spec.target.device)
            if reason:
                bad.setdefault(mode if len(backends) == 1 else f"{mode} ({backend})", reason)
    if bad and len(bad) == len(modes) * len(backends):
        raise ConfigError(spec.source, field, f"no choice can run: {next(iter(bad.values()))}")
    for choice, reason in bad.items():
        log(f"warning: {field}: '{choice}' cannot run here ({reason}); trials do not get it")


def check_existing(storage: optuna.storages.BaseStorage, spec: StudySpec, space: SearchSpace) -> None:
    """An existing study named ``spec.name`` in ``storage`` must be resumable by ``spec``."""
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        return
    existing = [d.name.lower() for d in storage.get_study_directions(study_id)]
    names = storage.get_study_system_attrs(study_id).get("study:metric_names")
    if existing != spec.directions or (names and list(names) != spec.metric_names):
        theirs = ", ".join(f"{d} {n}" for d, n in zip(existing, names or ["?"] * len(existing)))
        raise ConfigError(spec.source, "objectives",
                          f"study '{spec.name}' already exists with different objectives ({theirs}); "
                          "rename the study or use another --out")
    info = read_study_info(storage.get_study_user_attrs(study_id))
    for key, ref in (("model", spec.model.reference), ("data", spec.data.reference)):
        if getattr(info, key) and getattr(info, key) != ref:
            raise ConfigError(spec.source, key, f"study '{spec.name}' was created with {key} {getattr(info, key)}; its "
                                                "baseline and trials belong to it: rename the study or use another --out")
    # Optuna refuses a knob whose choices or kind changed in an existing study, in every trial
    new, checked = space.distributions(), set()
    for t in storage.get_all_trials(study_id, deepcopy=False):
        for name in set(t.distributions) & set(new) - checked:
            checked.add(name)
            old = t.distributions[name]
            try:
                optuna.distributions.check_distribution_compatibility(old, new[name])
            except ValueError:
                was = (f"choices {list(old.choices)}" if hasattr(old, "choices")
                       else f"{type(old).__name__} {old.low}..{old.high}")
                raise ConfigError(spec.source, f"search_space.{name}",
                                  f"study '{spec.name}' already searched it with {was}; Optuna cannot change "
                                  "a knob's choices or type in an existing study: rename the study or use "
                                  "another --out") from None
