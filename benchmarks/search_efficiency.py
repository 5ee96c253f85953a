"""Search efficiency on the digits study, side by side, fixed seeds (run on purpose).

    python benchmarks/search_efficiency.py [--n 20] [--k 5] [--out runs/bench-efficiency]

Runs three searches of the demo study (studies/digits_cnn.yaml, warm starts off so the
samplers start equal) with an extra hard constraint `params <= 100000` (the baseline has
157k, so an unpruned or lightly pruned policy breaks it before any training):

  random     random search, 2N trials, no pre-screening, no early stopping
  SAMPLER      the default sampler (--sampler, default tpe), N trials, no pre-screening,
               no early stopping
  SAMPLER+eff  the same with pre-screening and early stopping on

It prints the hypervolume of the feasible front after every k trials (fixed reference point:
objectives normalized by the baseline: error / 0.1, latency / baseline latency, size /
baseline size, reference 1.1 on each axis, so 1.0 is the unreachable ideal box), the total
fine-tune epochs and wall time each spent, and the best feasible policy per objective.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optuna._hypervolume import compute_hypervolume  # noqa: E402

from autocompress.search.record import read_all, study_info  # noqa: E402
from autocompress.search.study import run_study  # noqa: E402
from autocompress.spec.config import spec_from_dict  # noqa: E402


def hypervolume(study: optuna.Study, upto: int, baseline: dict) -> float:
    pts = []
    for t in read_all(study):
        if t.baseline or t.state.name != "COMPLETE" or t.number > upto or not t.feasible:
            continue
        m = t.metrics
        pts.append([(1 - m["accuracy"]) / 0.1, m["latency_ms"] / baseline["latency_ms"],
                    m["size_mb"] / baseline["size_mb"]])
    ref = np.full(3, 1.1)
    pts = [p for p in pts if all(x < r for x, r in zip(p, ref))]
    return float(compute_hypervolume(np.array(pts), ref)) / 1.1 ** 3 if pts else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-efficiency")
    ap.add_argument("--sampler", default="tpe", help="the default sampler to compare with random search")
    ap.add_argument("--seed", type=int, default=0, help="seed of the samplers and trials")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are recorded, not logged
    raw = yaml.safe_load((REPO / "studies" / "digits_cnn.yaml").read_text())
    raw["constraints"] = list(raw.get("constraints", [])) + ["params <= 100000"]
    raw["budget"] = {**raw["budget"], "timeout": None}
    raw["warm_start"] = {"recipes": False}
    raw["seed"] = args.seed
    variants = {
        "random": dict(sampler="random", prescreen=False, early_stopping="none", trials=2 * args.n),
        args.sampler: dict(sampler=args.sampler, prescreen=False, early_stopping="none", trials=args.n),
        f"{args.sampler}+eff": dict(sampler=args.sampler, prescreen=True,
                                     early_stopping=raw.get("early_stopping", "dominated"), trials=args.n),
    }
    rows = {}
    for name, v in variants.items():
        spec_raw = {**raw, "name": f"bench-{name.replace('+', '-')}", "sampler": v["sampler"],
                    "prescreen": v["prescreen"], "early_stopping": v["early_stopping"],
                    "budget": {**raw["budget"], "trials": v["trials"]}}
        spec = spec_from_dict(spec_raw, str(REPO / "studies" / "digits_cnn.yaml"))
        out = args.out / f"{name.replace('+', '-')}-seed{args.seed}"
        start = time.time()
        run = run_study(spec, out=out, log=lambda m: None)
        wall = time.time() - start
        study = run.study
        base = study_info(study).baseline_metrics
        trials = [t for t in read_all(study) if not t.baseline]
        epochs = sum(int(t.epochs_run or 0) for t in trials)
        hv = [(i, hypervolume(study, trials[min(i, len(trials)) - 1].number, base))
              for i in range(args.k, len(trials) + 1, args.k)]
        states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
        rows[name] = dict(hv=hv, epochs=epochs, wall=wall, states=states, study=study)
        print(f"\n== {name}: {len(trials)} trials, {epochs} fine-tune epochs, {wall:.0f} s, {states}")
        print("   hypervolume after k trials: " + ", ".join(f"{i}: {h:.4f}" for i, h in hv))
        feasible = [t for t in trials if t.state.name == "COMPLETE" and t.feasible]
        for metric, better in (("accuracy", max), ("latency_ms", min), ("size_mb", min)):
            if feasible:
                t = better(feasible, key=lambda t: t.metrics[metric])
                m = t.metrics
                print(f"   best {metric:10s}: trial {t.number:3d} acc {m['accuracy']:.4f} "
                      f"lat {m['latency_ms']:.3f} ms size {m['size_mb']:.4f} MB  {t.policy_summary}")

    n = args.n
    hv_at = lambda name, i: next((h for j, h in rows[name]["hv"] if j == i), rows[name]["hv"][-1][1])  # noqa: E731
    print("\n== targets")
    d, e = args.sampler, f"{args.sampler}+eff"
    print(f"   {d} HV at {n} = {hv_at(d, n):.4f} vs random HV at {2 * n} = {hv_at('random', 2 * n):.4f}"
          f" -> {'met' if hv_at(d, n) >= hv_at('random', 2 * n) else 'not met'}")
    saved = 1 - rows[e]["epochs"] / max(1, rows[d]["epochs"])
    drop = 1 - hv_at(e, n) / max(1e-12, hv_at(d, n))
    print(f"   pre-screening + early stopping: {saved:.0%} fewer fine-tune epochs (target >= 40%), "
          f"final HV {drop:+.1%} lower (target <= 2%)")


if __name__ == "__main__":
    main()
