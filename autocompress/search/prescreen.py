"""Pre-screening: a hard constraint on a metric that no later stage can change for this
policy (FLOPs and params after a one-shot prune; latency and size measured on the deployed
form, ``trial.measure.preview_costs``) is checked on the compressed, untrained model; a trial
that already breaks it ends before any training. Which metrics are final then is the plan's
to say (``TrialPlan.final_after_compress``, from the metric registry and the techniques'
declarations)."""

from __future__ import annotations

from typing import Callable

from autocompress.metrics.registry import METRICS
from autocompress.spec.config import StudySpec
from autocompress.trial.plan import TrialPlan
from autocompress.trial.result import Preview, Screen


def prescreen_func(spec: StudySpec, plan: TrialPlan) -> Callable[[Preview], Screen] | None:
    """A check of the preview against the constraints it can already judge, or None.

    A value beyond its bound by more than the metric's noise (the registry's ``noise_rtol``)
    ends the trial; one beyond it by less is measured again, longer, before it may end the
    trial (``Screen.borderline``), and then ends it if still beyond the bound."""
    if not spec.prescreen:
        return None
    final = plan.final_after_compress()
    cons = [c for c in spec.constraints if c.metric in final]
    if not cons:
        return None

    def check(preview: Preview) -> Screen:
        borderline = None
        for c in cons:
            value = preview.metrics.get(c.metric)
            if value is None or c.violation(value) <= 0:
                continue
            reason = f"{c.metric} = {value:.4g} already breaks '{c}' before training"
            noise = METRICS[c.metric].noise_rtol * abs(c.bound)
            if c.violation(value) > noise or preview.remeasured:
                return Screen(reason + (" (measured again)" if preview.remeasured and noise else ""))
            borderline = borderline or Screen(reason, borderline=True)
        return borderline or Screen()

    return check
