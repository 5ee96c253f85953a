"""NNI 3.0 under the pruning techniques: imported once and quietly, ``shrink`` (``ModelSpeedup``
given a ``torch.fx`` trace of the model in eval mode, since NNI's own tracer fails on this
torch; the shrunk model must still run and give the same output shape, else the trial ends
with ``TrialFailed`` and the reason), and measures of the result.

NNI is imported lazily (``load_nni``): ``import nni.compression`` costs about 2 s on this
machine, which every process that never prunes would pay.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from typing import Iterator

import torch
from torch import nn

from autocompress.errors import TrialFailed
from autocompress.utils import error_line

# ModelSpeedup's own messages (one per module, "cannot replace MaxPool1d", ...): silent unless a
# user raises this logger's level while debugging (named after the technique, not this module).
SPEEDUP_LOG = logging.getLogger("autocompress.compress.pruning.speedup")
SPEEDUP_LOG.setLevel(logging.CRITICAL)

Masks = dict[str, dict[str, torch.Tensor]]   # {module name: {"weight" | "bias": 0/1 tensor}}


def shrink(model: nn.Module, masks: Masks, example: torch.Tensor) -> nn.Module:
    """Remove the masked channels for real with NNI ModelSpeedup; the model keeps its mode."""
    load_nni()
    from nni.compression.speedup import ModelSpeedup

    if not masks:
        return model
    was_training = model.training
    model.to("cpu").eval()
    example = example.to("cpu")
    with torch.no_grad():
        reference = model(example)
    graph = trace(model)
    masks = {m: {t: v.float().cpu() for t, v in targets.items()} for m, targets in masks.items()}
    try:
        with nni_quiet():
            ModelSpeedup(model, example, masks, graph_module=graph, logger=SPEEDUP_LOG).speedup_model()
    except Exception as exc:  # NNI raises anything from assertions to shape errors
        raise TrialFailed(f"NNI ModelSpeedup cannot shrink this model ("
                          f"{error_line(exc)})") from None
    model.eval()  # modules NNI replaced come back in train mode
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:
        raise TrialFailed(f"the model no longer runs after NNI ModelSpeedup removed channels "
                          f"({error_line(exc)}); NNI cannot shrink this "
                          "architecture") from None
    if out.shape != reference.shape:
        raise TrialFailed(f"NNI ModelSpeedup changed the output shape from {tuple(reference.shape)} to "
                          f"{tuple(out.shape)}")
    try:   # fine-tuning runs it in train mode, where some models take other paths (auxiliary heads)
        copy.deepcopy(model).train()(example)
    except Exception as exc:
        raise TrialFailed(f"after NNI ModelSpeedup the model runs in eval mode but not in train mode "
                          f"({error_line(exc)}); layers used only in training "
                          "were not shrunk") from None
    model.train(was_training)
    return model


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:
        raise TrialFailed(f"structured pruning needs a torch.fx trace of the model, which failed "
                          f"({error_line(exc)})") from None



# -- NNI plumbing -------------------------------------------------------------------------------
_NNI_READY = False


def load_nni() -> None:
    """Import NNI once, quietly, and keep its per-module logging down."""
    global _NNI_READY
    if _NNI_READY:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nni.compression.pruning  # noqa: F401
        import nni.compression.speedup  # noqa: F401
    logging.getLogger("nni").setLevel(logging.ERROR)
    _NNI_READY = True


@contextlib.contextmanager
def nni_quiet() -> Iterator[None]:
    """NNI prints (``print(prune_axis, prune_type)``) and warns while it works."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


