"""Cost-filtered candidate sampling (``candidates: N`` in the study file).

A policy's structure, number format and runtime are cheap to judge: the preview of its
compressed, untrained model (``trial.run.preview_policy``) measures its final costs, and its
val accuracy before any fine-tuning says how much the structure destroyed. Before each trial
the search draws N policies from the study's own sampler (a throwaway in-memory copy of the
study, so the draws follow what the trials taught it), previews each, drops those whose
preview already breaks a hard constraint, and keeps those no other candidate beats on every
previewed cost objective and on untrained accuracy (``non_dominated``). The first kept
candidate, in draw order, is enqueued and becomes the trial; fine-tuning is spent only on it.

Gradual pruning removes its channels only after fine-tuning, at the ratios one-shot structured
pruning removes at once, so its final costs are that structure's: a gradual candidate is judged
on the one-shot twin's preview (``judged_as``). Kept unjudged, it would survive every filter
and be picked far more often than the sampler proposes it. The previews are cached like a trial's, so the chosen candidate's trial does not
measure its costs again; the time they take counts in the search's wall time (the candidate
step runs inside the trial budget's lock, so the trial it enqueues is the next one asked).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import TrialState

from autocompress.errors import TrialFailed
from autocompress.metrics.registry import previewed_costs
from autocompress.search.early_stopping import fronts
from autocompress.search.prescreen import prescreen_func
from autocompress.search.record import candidate_attrs
from autocompress.search.sampler import CompatibleSampler, base_sampler
from autocompress.spec.config import StudySpec
from autocompress.spec.policy import Policy
from autocompress.spec.space import SearchSpace
from autocompress.trial.context import TrialContext
from autocompress.trial.plan import TrialPlan
from autocompress.trial.run import preview_policy
from autocompress.utils import error_line


@dataclass(frozen=True)
class Candidate:
    """One drawn policy and what its preview said: ``point`` (objectives to minimize: minus
    untrained accuracy, then the previewed costs) where its costs are final, ``out`` where the
    preview already ends it (a broken constraint, a technique that cannot apply)."""
    params: dict[str, Any]
    policy: Policy
    point: tuple[float, ...] | None = None
    out: str | None = None


def non_dominated(points: list[tuple[float, ...] | None]) -> list[int]:
    """Indices of the points no other point beats on every objective (all minimized); a point
    that cannot be judged (None) is kept."""
    judged = [i for i, p in enumerate(points) if p is not None]
    rank = fronts([points[i] for i in judged])
    first = {i for i, r in zip(judged, rank) if r == 0}
    return [i for i, p in enumerate(points) if p is None or i in first]


def draw(study: optuna.Study, spec: StudySpec, space: SearchSpace, count: int) -> list[tuple[dict, Policy]]:
    """``count`` policies from the study's sampler, fitted to the study's finished trials, in a
    copy held in memory (nothing is written to the study)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    seed = int(np.random.SeedSequence([spec.seed, len(study.get_trials(deepcopy=False))]).generate_state(1)[0])
    rules = study.sampler.rules if isinstance(study.sampler, CompatibleSampler) else list
    sampler = CompatibleSampler(base_sampler(spec, seed=seed), space, rules, seed=seed)
    copy = optuna.create_study(directions=spec.directions, sampler=sampler)
    copy.add_trials(done)
    out = []
    for _ in range(count):
        trial = copy.ask()
        try:
            policy = space.sample(trial)
        except Exception:   # a combination the space cannot build: the real trial would fail
            continue
        out.append((dict(trial.params), policy))
    return out


def judged_as(policy: Policy) -> Policy:
    """The policy whose preview stands for ``policy``'s: gradual pruning ends in the structure
    that one-shot structured pruning at the same ratios builds before training (same channels
    counted per layer, so the same params, FLOPs, size and latency), and its untrained accuracy
    is that structure's; any other policy stands for itself."""
    if policy.pruning.method != "gradual":
        return policy
    return dataclasses.replace(policy, pruning=dataclasses.replace(policy.pruning, method="structured"))


def judge(spec: StudySpec, ctx: TrialContext, params: dict, policy: Policy) -> Candidate:
    """Preview one candidate (``Candidate.out`` says why it cannot be the next trial); a gradual
    one on its one-shot twin (``judged_as``)."""
    plan = TrialPlan(judged_as(policy))
    try:
        preview, accuracy = preview_policy(plan.policy, ctx)
    except TrialFailed as exc:
        return Candidate(params, policy, out=exc.reason)
    except Exception as exc:   # a technique that cannot apply to this model
        return Candidate(params, policy, out=error_line(exc, 200))
    check = prescreen_func(spec, plan)
    if check is not None and (verdict := check(preview)).reason is not None:
        return Candidate(params, policy, out=verdict.reason)
    costs = [o for o in spec.objectives if o.metric in previewed_costs()]
    final = plan.final_after_compress()
    if any(o.metric not in final or o.metric not in preview.metrics for o in costs):
        return Candidate(params, policy)
    sign = lambda o: 1.0 if o.direction == "minimize" else -1.0  # noqa: E731
    return Candidate(params, policy, point=(-accuracy, *(sign(o) * preview.metrics[o.metric] for o in costs)))


def enqueue_filtered(study: optuna.Study, spec: StudySpec, space: SearchSpace, ctx: TrialContext,
                     log: Callable[[str], None] = lambda m: None) -> Candidate | None:
    """Draw ``spec.candidates`` policies, keep the non-dominated ones, enqueue the first kept
    (returned; its summary is the trial's ``candidate_filter`` attribute); None (the sampler
    proposes the trial as usual) when none is left or the draw fails (``log`` says why)."""
    if any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        return None   # a warm start or a retry goes first
    start = time.perf_counter()
    try:
        drawn = draw(study, spec, space, spec.candidates)
    except Exception as exc:   # the search goes on: this trial is sampled as usual
        log(f"warning: the candidate step could not draw ({error_line(exc, 200)}); the sampler proposes this trial")
        return None
    judged = [judge(spec, ctx, params, policy) for params, policy in drawn]
    usable = [c for c in judged if c.out is None]
    if not usable:
        return None
    kept = non_dominated([c.point for c in usable])
    chosen = usable[kept[0]]
    summary = {"drawn": len(judged), "screened_out": len(judged) - len(usable), "kept": len(kept),
               "seconds": round(time.perf_counter() - start, 3)}
    study.enqueue_trial(chosen.params, user_attrs=candidate_attrs(summary), skip_if_exists=False)
    return chosen
