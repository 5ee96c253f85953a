"""A policy's plan: its techniques (``compress.Pipeline``) and its runtime, and what follows
from their declarations: the cache keys, whether the deployed form can be previewed before
training, which metrics are final then, the knob values a runtime failure is known by, and a
one-line summary. Callers ask the plan, never the policy's strings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from autocompress.compress import Pipeline, pipeline
from autocompress.compress.quantization.torchao_modes import why_missing
from autocompress.deploy.runtimes import RUNTIMES, RuntimeInfo
from autocompress.errors import FailureKey
from autocompress.metrics.registry import METRICS
from autocompress.spec.policy import Policy


@dataclass(frozen=True)
class TrialPlan:
    policy: Policy

    @cached_property
    def pipeline(self) -> Pipeline:
        return pipeline(self.policy)

    @property
    def runtime(self) -> RuntimeInfo:
        return RUNTIMES[self.policy.runtime.backend]

    @property
    def structure_key(self) -> str:
        """What decides the compressed structure (and so FLOPs, params, float latency and size)."""
        sections = self.policy.to_dict()
        return json.dumps({s: sections[s] for s in self.pipeline.structural_sections}, sort_keys=True)

    @property
    def runtime_key(self) -> str:
        """What decides whether the deployed model converts to its runtime: the runtime and the
        number format (pruning changes widths, not the operators; training changes weights)."""
        return f"{self.runtime.name}:{self.pipeline.number_format.key}"

    @property
    def failure_key(self) -> FailureKey:
        """``runtime_key`` with the knob values that select it (the search avoids them)."""
        fmt = self.pipeline.number_format
        knobs: tuple[tuple[str, object], ...] = (("runtime.backend", self.runtime.name), ("quantization.mode", fmt.name))
        if fmt.per_channel is not None:
            knobs += (("quantization.per_channel", fmt.per_channel),)
        if fmt.name == "static_int8":   # the one mode two backends make
            knobs += (("quantization.backend", self.policy.quantization.backend),)
        return FailureKey(self.runtime_key, knobs)

    @property
    def previews_deployment(self) -> bool:
        """Whether the preview times and sizes the deployed form (number format + runtime) of the
        compressed, untrained model, which is then the trial's final latency and size: not when
        the structure still changes while training, nor for a runtime too costly to convert twice."""
        return self.pipeline.structure_final_after_compress and self.runtime.previewable

    @property
    def cost_key(self) -> str:
        """What decides the preview: the structure, and when the deployed form is previewed, its
        number format and runtime."""
        if not self.previews_deployment:
            return self.structure_key
        q = self.policy.quantization
        per_layer = (f" float{q.keep_float_top_k}:{q.top_k_format}:{','.join(q.keep_float)}"
                     if q.mode != "none" and (q.keep_float_top_k or q.keep_float) else "")
        return f"{self.structure_key} {self.runtime_key}{per_layer}"

    def final_after_compress(self) -> set[str]:
        """Metrics whose value the compressed, untrained model already has for this policy."""
        if not self.pipeline.structure_final_after_compress:
            return set()
        stages = {"structure", "deployment"} if self.previews_deployment else {"structure"}
        return {m.name for m in METRICS.values() if m.final_at in stages and m.previewed}

    def refusal(self, device: str) -> str | None:
        """Why this policy cannot run on ``device`` at all, from the declarations (None: it may):
        techniques that conflict, a format this machine's torchao lacks or without kernels there,
        a runtime that cannot carry it."""
        fmt = self.pipeline.number_format
        missing = why_missing(fmt.name) if fmt.backend == "torchao" else None
        return (self.pipeline.conflict() or missing or fmt.unsupported_on(device)
                or fmt.unsupported_in(self.runtime.name))

    def describe(self) -> str:
        """One short human line: what this policy does."""
        bits = self.pipeline.summary() + ([self.runtime.label] if self.runtime.label else [])
        return " + ".join(bits) or "no compression"


def describe(policy: Policy) -> str:
    return TrialPlan(policy).describe()
