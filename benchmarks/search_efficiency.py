"""Search efficiency: random search against the previous and the new default search, several
seeds, at equal trials and at equal compute (run on purpose; figures in docs/BENCHMARKS.md).

    python benchmarks/search_efficiency.py --task digits --n 20 --seeds 0 1 2 3 4
    python benchmarks/search_efficiency.py --task signals --n 20 --seeds 0 1 2 3 4

Each task is a demo study (studies/digits_cnn.yaml, studies/signals_cnn.yaml) with warm
starts off (so every arm starts from its sampler alone) and an extra hard constraint on
params (60% of the baseline's), so that a weakly compressed policy breaks it before any
training. The arms (--arms picks some):

  random     random search, 2N trials
  previous   the previous default: TPE, early stopping `dominated` (its constant liar, new
             since, does not change a single worker's trials)
  halving    TPE, successive halving over epochs (eta 3) instead of `dominated`
  filtered   TPE, `dominated`, and 8 candidates previewed per trial (search.candidates)
  new        the new default: TPE, `dominated`, 4 candidates previewed per trial, N trials
  new-off    the new default without pre-screening and early stopping, N trials

Every arm but new-off runs with pre-screening on. Hypervolume is that of the feasible front
with a fixed reference: error / (baseline error + 0.05), latency / baseline latency, size /
baseline size, reference 1.1 on each axis, normalized by the reference box. It is reported
after every k trials, at equal fine-tune epochs and at equal wall time (the least any arm
spent; a trial's wall time includes the candidate previews that chose it), mean and spread
over seeds, with the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optuna._hypervolume import compute_hypervolume  # noqa: E402

from autocompress.search.context import build_inputs  # noqa: E402
from autocompress.search.record import TrialRecord, read_all, study_info  # noqa: E402
from autocompress.search.study import run_study  # noqa: E402
from autocompress.spec.config import spec_from_dict  # noqa: E402
from autocompress.spec.fields import Constraint  # noqa: E402

TASKS = {"digits": "digits_cnn.yaml", "signals": "signals_cnn.yaml"}
ARMS = {
    "random": dict(sampler="random", early_stopping="dominated", candidates=1),
    "previous": dict(sampler="tpe", early_stopping="dominated", candidates=1),
    "halving": dict(sampler="tpe", early_stopping={"rule": "halving", "eta": 3}),
    "filtered": dict(sampler="tpe", early_stopping="dominated", candidates=8),
    "new": dict(sampler="tpe", early_stopping="dominated", candidates=4),
    "new-off": dict(sampler="tpe", prescreen=False, early_stopping="none", candidates=4),
}


def hypervolume(points: list[TrialRecord], base: dict) -> float:
    err0 = 1 - base["accuracy"] + 0.05
    pts = [[(1 - t.metrics["accuracy"]) / err0, t.metrics["latency_ms"] / base["latency_ms"],
            t.metrics["size_mb"] / base["size_mb"]] for t in points]
    ref = np.full(3, 1.1)
    pts = [p for p in pts if all(x < r for x, r in zip(p, ref))]
    return float(compute_hypervolume(np.array(pts), ref)) / 1.1 ** 3 if pts else 0.0


def spend(t: TrialRecord) -> tuple[float, float]:
    """(fine-tune epochs, wall seconds incl. the candidate previews that chose it) of a trial."""
    return float(t.epochs_run or 0), float(t.wall_s or 0) + float((t.candidates or {}).get("seconds", 0))


def curve(trials: list[TrialRecord], base: dict) -> list[tuple[float, float, float]]:
    """(cumulative epochs, cumulative wall s, hypervolume) after each trial, in trial order."""
    out, epochs, wall, front = [], 0.0, 0.0, []
    for t in trials:
        e, w = spend(t)
        epochs, wall = epochs + e, wall + w
        if t.state.name == "COMPLETE" and t.feasible:
            front.append(t)
        out.append((epochs, wall, hypervolume(front, base)))
    return out


def at(points: list[tuple[float, float, float]], axis: int, budget: float) -> float:
    """Hypervolume reached within ``budget`` of the axis (0 epochs, 1 wall s)."""
    return max((p[2] for p in points if p[axis] <= budget + 1e-9), default=0.0)


def arm_spec(task: str, arm: str, n: int, seed: int, tiny: dict):
    path = REPO / "studies" / TASKS[task]
    raw = yaml.safe_load(path.read_text())
    raw.update(name=f"bench-{task}-{arm}-{seed}", seed=seed, warm_start={"recipes": False}, **ARMS[arm])
    raw["budget"] = {**raw["budget"], "timeout": None, "trials": 2 * n if arm == "random" else n, **tiny}
    if tiny:
        raw["baseline"] = {"epochs": 1}
    spec = spec_from_dict(raw, str(path))
    _, teacher = build_inputs(spec)   # untrained: its params are the baseline's
    bound = int(0.6 * sum(p.numel() for p in teacher.parameters()))
    return spec.model_copy(update={"constraints": [*spec.constraints, Constraint.parse(f"params <= {bound}")]})


def run_arm(task: str, arm: str, n: int, seed: int, out: Path, tiny: dict) -> dict:
    spec = arm_spec(task, arm, n, seed, tiny)
    start = time.time()
    run = run_study(spec, out=out / f"{task}-{arm}-seed{seed}", log=lambda m: None)
    return {**measured(run.study), "wall": time.time() - start}


def measured(study: optuna.Study) -> dict:
    """The curve of a finished study: its counted trials in order (a trial failed by a heartbeat,
    its worker killed, ran again and is left out)."""
    base = study_info(study).baseline_metrics
    trials = [t for t in read_all(study) if t.counted]
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    return dict(curve=curve(trials, base), states=states, trials=len(trials))


def reread(rows: dict[str, list[dict]], task: str, out: Path) -> dict[str, list[dict]]:
    """Every saved run's curve computed again from its study (--summarize)."""
    from autocompress.search.results import load_results
    return {arm: [{**r, **measured(load_results(str(out / f"{task}-{arm}-seed{r['seed']}")).study)} for r in runs]
            for arm, runs in rows.items()}


def summarize(rows: dict, n: int, k: int) -> dict:
    """Mean and spread over seeds per arm: HV after every k trials, at equal epochs and wall."""
    out = {}
    min_epochs = min(r["curve"][-1][0] for runs in rows.values() for r in runs)
    min_wall = min(r["curve"][-1][1] for runs in rows.values() for r in runs)
    for arm, runs in rows.items():
        def stats(values):
            return (statistics.mean(values), statistics.pstdev(values)) if values else (0.0, 0.0)
        steps = range(k, max(len(r["curve"]) for r in runs) + 1, k)
        out[arm] = {
            "hv_at": {i: stats([r["curve"][min(i, len(r["curve"])) - 1][2] for r in runs]) for i in steps},
            "equal_epochs": stats([at(r["curve"], 0, min_epochs) for r in runs]),
            "equal_wall": stats([at(r["curve"], 1, min_wall) for r in runs]),
            "epochs": stats([r["curve"][-1][0] for r in runs]),
            "wall": stats([r["curve"][-1][1] for r in runs]),
            "states": [r["states"] for r in runs],
        }
    out["_budget"] = {"epochs": min_epochs, "wall": min_wall}
    return out


def report(summary: dict, n: int) -> list[str]:
    lines = [f"equal compute: {summary['_budget']['epochs']:.0f} fine-tune epochs, "
             f"{summary['_budget']['wall']:.0f} s of trial wall time (the least any run spent)"]
    for arm, s in summary.items():
        if arm.startswith("_"):
            continue
        hv = ", ".join(f"{i}: {m:.3f}±{d:.3f}" for i, (m, d) in s["hv_at"].items())
        lines.append(f"{arm:9s} HV after k trials {hv} | equal epochs {s['equal_epochs'][0]:.3f}"
                     f"±{s['equal_epochs'][1]:.3f} | equal wall {s['equal_wall'][0]:.3f}±{s['equal_wall'][1]:.3f}"
                     f" | epochs {s['epochs'][0]:.0f} | wall {s['wall'][0]:.0f} s | {s['states']}")
    hv = lambda arm, i: summary[arm]["hv_at"].get(i, list(summary[arm]["hv_at"].values())[-1])[0]  # noqa: E731
    for arm in ("previous", "halving", "filtered", "new"):
        if arm in summary and "random" in summary:
            ok = hv(arm, n) >= hv("random", 2 * n)
            lines.append(f"target: {arm} HV at {n} = {hv(arm, n):.3f} vs random at {2 * n} = "
                         f"{hv('random', 2 * n):.3f} -> {'met' if ok else 'not met'}")
    if "new" in summary and "new-off" in summary:
        saved = 1 - summary["new"]["epochs"][0] / max(1.0, summary["new-off"]["epochs"][0])
        drop = 1 - hv("new", n) / max(1e-12, hv("new-off", n))
        lines.append(f"target: pre-screening + early stopping save {saved:.0%} of the fine-tune epochs "
                     f"(>= 40%) for a final HV {drop:+.1%} lower (<= 2%); at equal epochs "
                     f"{summary['new']['equal_epochs'][0]:.3f} vs {summary['new-off']['equal_epochs'][0]:.3f}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="digits")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["random", "previous", "new", "new-off"])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-efficiency")
    ap.add_argument("--summarize", action="store_true", help="only summarize the runs saved by earlier calls")
    ap.add_argument("--tiny", action="store_true", help="1-epoch trials on a tenth of the data (the suite's check)")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are recorded, not logged
    tiny = {"epochs": 1, "train_fraction": 0.1} if args.tiny else {}
    saved = args.out / f"rows-{args.task}-n{args.n}.json"   # each finished run: a benchmark resumes, and a
    old = json.loads(saved.read_text()) if saved.exists() else {}   # partial one still counts
    rows: dict[str, list[dict]] = {arm: [r for r in old.get(arm, []) if "seed" in r] for arm in args.arms}
    for seed in [] if args.summarize else args.seeds:
        for arm in args.arms:   # arms interleaved per seed: the machine's drift hits all alike
            if any(r["seed"] == seed for r in rows[arm]):
                continue
            r = {**run_arm(args.task, arm, args.n, seed, args.out, tiny), "seed": seed}
            rows[arm].append(r)
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({**old, **rows}))
            print(f"seed {seed} {arm}: {r['trials']} trials, HV {r['curve'][-1][2]:.3f}, "
                  f"{r['curve'][-1][0]:.0f} epochs, {r['wall']:.0f} s, {r['states']}", flush=True)
    rows = {arm: [r for r in runs if r["seed"] in args.seeds] for arm, runs in rows.items()}
    rows = {arm: runs for arm, runs in rows.items() if runs}
    if args.summarize:
        rows = reread(rows, args.task, args.out)
    summary = summarize(rows, args.n, args.k)
    for line in report(summary, args.n):
        print(line)
    return summary


if __name__ == "__main__":
    main()
