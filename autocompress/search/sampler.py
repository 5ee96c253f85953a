"""The sampler: Optuna's, wrapped so that it does not propose a combination of knob values that
cannot run.

Which combinations cannot run comes from what the engine knows, never from a list here:

- the techniques' declarations (``TrialPlan``): techniques that conflict (a structure that
  changes after fine-tuning with a graph rewritten before it), a number format the target
  device has no kernels for. They are found by planning every pair of categorical knob values
  of the space once, when the study starts (``static_rules``);
- what trials found (``TrialContext.failures``): a runtime that cannot run a number format on
  this model fails every policy with those knob values, so after the first such trial the
  search stops proposing them.

``CompatibleSampler`` asks its base sampler as usual; a value that completes a forbidden
combination with the knobs sampled before it is replaced by one of the knob's other choices
(drawn with the sampler's own seeded generator), so such combinations stop taking budget
slots. Where every choice is forbidden the value is kept and the trial fails with its reason.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from autocompress.spec.config import StudySpec
from autocompress.spec.policy import Policy
from autocompress.spec.space import SearchSpace
from autocompress.trial.plan import TrialPlan
from autocompress.utils import optuna_experimental


@dataclass(frozen=True)
class Rule:
    """These knob values together cannot run, for ``reason``."""
    knobs: tuple[tuple[str, Any], ...]
    reason: str

    def forbids(self, name: str, value: Any, known: dict[str, Any]) -> bool:
        """Whether setting ``name`` to ``value`` completes this combination, given ``known``."""
        wanted = dict(self.knobs)
        if name not in wanted or wanted[name] != value:
            return False
        return all(k in known and known[k] == v for k, v in wanted.items() if k != name)


def _choices(space: SearchSpace) -> dict[str, list[Any]]:
    """Every categorical knob (searched or fixed) and the values it can take."""
    out: dict[str, list[Any]] = {}
    for knob in space.knobs:
        if isinstance(knob.distribution, CategoricalDistribution):
            out[knob.name] = list(knob.distribution.choices)
        elif knob.distribution is None and not isinstance(knob.value, (list, tuple)):
            out[knob.name] = [knob.value]
    return out


def _why_not(values: dict[str, Any], device: str) -> str | None:
    return TrialPlan(Policy.from_flat(values)).refusal(device)


def static_rules(space: SearchSpace, device: str) -> list[Rule]:
    """Single knob values and pairs of them that cannot run on ``device`` (the other knobs at
    their defaults), from the techniques' declarations."""
    choices = _choices(space)
    rules = [Rule(((name, v),), reason) for name, values in choices.items() for v in values
             if (reason := _why_not({name: v}, device))]
    single = {r.knobs[0] for r in rules}
    for a, b in itertools.combinations(choices, 2):
        for va, vb in itertools.product(choices[a], choices[b]):
            if (a, va) in single or (b, vb) in single:
                continue
            if reason := _why_not({a: va, b: vb}, device):
                rules.append(Rule(((a, va), (b, vb)), reason))
    return rules


class CompatibleSampler(BaseSampler):
    """``base``, except that it does not propose a combination ``rules()`` forbids."""

    def __init__(self, base: BaseSampler, space: SearchSpace, rules: Callable[[], Sequence[Rule]], *,
                 seed: int) -> None:
        self.base, self.space, self.rules = base, space, rules
        self._rng = np.random.default_rng(seed)
        self._defaults = Policy().to_flat()
        self._in_space = {k.name for k in space.knobs}

    def _known(self, params: dict[str, Any], until: str | None) -> dict[str, Any]:
        """Knob values decided before knob ``until`` (in space order), as ``space.sample`` sees them."""
        known = {k: v for k, v in self._defaults.items() if k not in self._in_space}
        # fixed knobs that no condition switches off are known wherever they stand in the file
        known.update({k.name: k.value for k in self.space.knobs if k.distribution is None and not k.when})
        for knob in self.space.knobs:
            if knob.name == until:
                break
            if not knob.active(known):
                known[knob.name] = self._defaults[knob.name]
            elif knob.distribution is None:
                known[knob.name] = knob.value
            elif knob.name in params:
                known[knob.name] = params[knob.name]
        return known

    def _forbidden(self, name: str, value: Any, known: dict[str, Any]) -> bool:
        return any(rule.forbids(name, value, known) for rule in self.rules())

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        params = self.base.sample_relative(study, trial, search_space)
        ruled = {name for rule in self.rules() for name, _ in rule.knobs}
        kept: dict[str, Any] = {}
        for knob in self.space.knobs:
            # A knob some rule names that is forbidden here, or that will be sampled on its own
            # (so its value is not known yet): it and every later knob are sampled independently,
            # in order, each filtered against the knobs before it.
            known = self._known(kept, knob.name)
            if knob.name not in params:
                if knob.name in ruled and knob.distribution is not None and knob.active(known):
                    break
                continue
            if self._forbidden(knob.name, params[knob.name], known):
                break
            kept[knob.name] = params[knob.name]
        return kept

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        if not isinstance(param_distribution, CategoricalDistribution):
            return value
        known = self._known(dict(trial.params), param_name)
        if not self._forbidden(param_name, value, known):
            return value
        allowed = [c for c in param_distribution.choices if not self._forbidden(param_name, c, known)]
        return allowed[int(self._rng.integers(len(allowed)))] if allowed else value

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng = np.random.default_rng()


def base_sampler(spec: StudySpec, *, seed: int) -> BaseSampler:
    """Optuna's sampler for ``spec.sampler``; every one reads the constraint values trials set."""
    if spec.sampler == "nsga2":
        pop = max(4, min(20, (spec.budget.trials or 40) // 4))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    if spec.sampler == "tpe":
        # group=True: conditional knobs are modelled jointly per subspace; constant_liar: parallel
        # workers (and the candidate step's draws) treat running trials as bad, so they spread out
        with optuna_experimental():
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=min(10, max(3, (spec.budget.trials or 30) // 3)))
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_sampler(spec: StudySpec, space: SearchSpace, learned: Callable[[], Sequence[Rule]], *,
                 worker_offset: int = 0) -> CompatibleSampler:
    """The study's sampler: ``spec.sampler`` (seeded; ``worker_offset`` makes workers differ),
    kept off the combinations that the declarations (``static_rules``) and ``learned`` forbid."""
    seed = spec.seed + worker_offset
    fixed = static_rules(space, spec.target.device)
    return CompatibleSampler(base_sampler(spec, seed=seed), space, lambda: [*fixed, *learned()], seed=seed)
