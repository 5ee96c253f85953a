"""Per-layer against uniform policies: the same study, budget and seeds, with and without the
per-layer knobs (run on purpose; figures in docs/BENCHMARKS.md).

    python benchmarks/per_layer.py [--model resnet18] [--n 8] [--seeds 0 1 2] [--out runs/bench-per-layer] [--tiny]
    python benchmarks/per_layer.py --model mobilenet_v2 --size 64 --baseline-lr 3e-3 --baseline-epochs 10 \
        --n 20 --k 5 --train-fraction 0.5 --candidates 1 --out runs/bench-per-layer-mnv2
    python benchmarks/per_layer.py ...the same... --grid 0.2 0.3 0.4   # the allocation knob alone

The task has headroom: scikit-learn's digits upsampled to ``--size`` pixels square, RGB, shifted by
up to 3 pixels and buried in Gaussian noise (``noisy_digits``; a torchvision ResNet-18 trained 8
epochs stays well below 0.99 there: the figures say how far). The model is a torchvision
classifier whose layers differ in sensitivity: resnet18 (its stages) or mobilenet_v2 (its
inverted-residual blocks; at 32 pixels its last feature map is 1x1 and it does not train from
scratch here, so it runs at 64). Arms (``--arms``; uniform and per-layer unless told), the
baseline trained once per seed and shared:

  uniform    pruning {none, structured} at one ratio in 0.1..0.6, quantization {none, static_int8},
             lr in 1e-4..1e-3; 2 epochs on 60% (``--train-fraction``) of the training split distilled
             from the baseline (soft targets, alpha 0.5, T 4), BatchNorm statistics re-estimated after
  per-layer  the same, plus quantization.keep_float_top_k {0, 1, 2} and pruning.allocation
             {uniform, sensitivity, global}; its sensitivity pass counts in its wall time
  by-sensitivity  the uniform space with pruning.allocation fixed to sensitivity (no trials spent
             finding it); its sensitivity pass counts too

Objectives: accuracy (max) and size_mb (min). It prints, mean and spread over seeds: the
hypervolume (error / 0.6 and size / baseline size, reference 1.1 on each axis, normalised to 1)
after every k trials and at equal wall time (the uniform arm's), and the best accuracy at equal
size (at most 10% ... 75% of the baseline's size: ``SIZES``), into ``summary-<arms>.json``.
``--reuse`` reads back arms an earlier run finished in ``--out``. ``--tiny`` runs a 2-trial smoke version.

``--grid R...`` isolates ``pruning.allocation`` from the sampler: per seed, with that seed's baseline
(from an earlier run in ``--out``), the learning rate fixed (``--grid-lr``) and static int8, one
trial per ratio and allocation (uniform, sensitivity, global); it prints accuracy and size per cell.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optuna._hypervolume import compute_hypervolume  # noqa: E402

from autocompress.search.record import read_all, study_info  # noqa: E402
from autocompress.search.results import load_results  # noqa: E402
from autocompress.search.study import run_study  # noqa: E402
from autocompress.spec.config import spec_from_dict  # noqa: E402
from autocompress.trial.baseline import BASELINE_FILE, BASELINE_METRICS_FILE  # noqa: E402

SIZES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75)
ERROR_SCALE = 0.6
ALLOCATIONS = ("uniform", "sensitivity", "global")


def noisy_digits(size: int = 32, noise: float = 0.8, shift: int = 3, seed: int = 0):
    """A study's ``data.factory``: (train, val, test), 60/20/20, of digits made hard (see above)."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(size - 2 * shift, size - 2 * shift), mode="bilinear")
    canvas = torch.zeros(len(x), 1, size, size)
    offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=gen)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        canvas[i, :, dy:dy + size - 2 * shift, dx:dx + size - 2 * shift] = x[i]
    rgb = canvas.repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    rgb = (rgb + noise * torch.randn(rgb.shape, generator=gen) - 0.4) / 0.6
    y = torch.tensor(ds.target)
    order = torch.randperm(len(y), generator=gen)
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    parts = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    return tuple(TensorDataset(rgb[p], y[p]) for p in parts)


ARMS = ("uniform", "per-layer", "by-sensitivity")


def space(arm: str) -> dict:
    s = {"pruning": {"method": {"choices": ["none", "structured"]},
                     "ratio": {"low": 0.1, "high": 0.6, "step": 0.05, "when": {"method": ["structured"]}}},
         "quantization": {"mode": {"choices": ["none", "static_int8"]}, "calibration_batches": 4},
         "distillation": {"method": "soft", "alpha": 0.5, "temperature": 4.0},
         "training": {"optimizer": "adamw", "lr": {"low": 1e-4, "high": 1e-3, "log": True}, "batch_size": 64,
                      "bn_recalibration_batches": 8}}
    if arm == "by-sensitivity":   # the uniform space with the allocation fixed: no trials spent on it
        s["pruning"]["allocation"] = "sensitivity"
    if arm == "per-layer":
        s["pruning"]["allocation"] = {"choices": list(ALLOCATIONS), "when": {"method": ["structured"]}}
        s["quantization"]["keep_float_top_k"] = {"choices": [0, 1, 2], "when": {"mode": ["static_int8"]}}
    return s


def grid_policies(ratios) -> list[dict]:
    """Structured pruning at each ratio, spread each way, with static int8: the ``--grid`` trials."""
    return [{"pruning": {"method": "structured", "ratio": r, "allocation": a},
             "quantization": {"mode": "static_int8", "keep_float_top_k": 0}}
            for r in ratios for a in ALLOCATIONS]


def study(name: str, arm: str, seed: int, args) -> dict:
    return {"name": name, "model": {"torchvision": args.model},
            "data": {"factory": "per_layer:noisy_digits", "kwargs": {"noise": args.noise, "size": args.size}},
            "search_space": space(arm),
            "objectives": [{"metric": "accuracy", "direction": "maximize"},
                           {"metric": "size_mb", "direction": "minimize"}],
            "constraints": [], "budget": {"trials": args.n, "epochs": args.epochs, "timeout": None,
                                          "train_fraction": args.train_fraction},
            "baseline": {"epochs": args.baseline_epochs, "lr": args.baseline_lr}, "sampler": "tpe", "seed": seed,
            "target": {"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.2},
            "warm_start": {"recipes": False}, "prescreen": False, "early_stopping": "none",
            **({"candidates": args.candidates} if args.candidates else {})}


def points(trials: list, base: dict) -> list[tuple[float, float, float]]:
    """(finished at s since the arm started, error, relative size) of every complete trial."""
    return [((t.finished - trials[0].started).total_seconds(), 1 - t.metrics["accuracy"],
             t.metrics["size_mb"] / base["size_mb"]) for t in trials if t.state.name == "COMPLETE"]


def hv(pts: list[tuple[float, float]]) -> float:
    ref = np.array([1.1, 1.1])
    scaled = [(e / ERROR_SCALE, s) for e, s in pts if e / ERROR_SCALE < 1.1 and s < 1.1]
    return float(compute_hypervolume(np.array(scaled), ref)) / 1.21 if scaled else 0.0


def run_arm(args, seed: int, arm: str) -> dict:
    name = f"{arm}-seed{seed}"
    out = args.out / name
    if args.reuse and (out / "study.db").is_file():   # an earlier run's finished arm, read back
        run = load_results(str(out))
        done = [t for t in read_all(run.study) if not t.baseline]
        if len(done) < args.n:
            raise SystemExit(f"--reuse: {out} holds {len(done)} trials, not {args.n}")
        wall = (done[-1].finished - done[0].started).total_seconds()
        return collect(out, run, wall)
    spec = spec_from_dict(study(name, arm, seed, args), str(Path(__file__).resolve()))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shared = args.out / f"baseline-seed{seed}"
    if (shared / BASELINE_FILE).is_file():   # the same teacher for every arm of a seed
        for f in (BASELINE_FILE, BASELINE_METRICS_FILE):
            shutil.copy(shared / f, out / f)
    start = time.time()
    run = run_study(spec, out=out, log=lambda m: None)
    wall = time.time() - start
    if not (shared / BASELINE_FILE).is_file():
        shared.mkdir(parents=True, exist_ok=True)
        for f in (BASELINE_FILE, BASELINE_METRICS_FILE):
            shutil.copy(out / f, shared / f)
    return collect(out, run, wall)


def collect(out: Path, run, wall: float) -> dict:
    base = study_info(run.study).baseline_metrics
    trials = [t for t in read_all(run.study) if not t.baseline]
    sens = json.loads((out / "sensitivity.json").read_text()) if (out / "sensitivity.json").is_file() else None
    offset = sens["seconds"] if sens else 0.0   # the pass ran before the first trial: it counts
    pts = [(t + offset, e, s) for t, e, s in points(trials, base)]
    return {"wall": wall, "pts": pts, "trials": len(trials), "baseline": base,
            "failed": sum(t.state.name == "FAIL" for t in trials), "sensitivity_s": offset,
            "epochs": sum(int(t.epochs_run or 0) for t in trials)}


def summary(rows: dict, args) -> dict:
    out: dict = {}
    for arm in args.arms:
        runs = [rows[(arm, s)] for s in args.seeds]
        at_k = {k: [hv([(e, s) for _, e, s in r["pts"][:k]]) for r in runs] for k in range(args.k, args.n + 1, args.k)}
        budget = [rows[("uniform", s)]["pts"][-1][0] if rows[("uniform", s)]["pts"] else 0 for s in args.seeds]
        at_time = [hv([(e, s) for t, e, s in r["pts"] if t <= b]) for r, b in zip(runs, budget)]
        best = {f: [max((1 - e for _, e, s in r["pts"] if s <= f), default=float("nan")) for r in runs] for f in SIZES}
        out[arm] = {"hv_at_k": at_k, "hv_at_equal_time": at_time, "best_acc_at_size": best,
                    "wall_s": [r["wall"] for r in runs], "failed": [r["failed"] for r in runs],
                    "sensitivity_s": [r["sensitivity_s"] for r in runs], "epochs": [r["epochs"] for r in runs],
                    "baseline_acc": [r["baseline"]["accuracy"] for r in runs]}
    return out


def show(res: dict, args) -> None:
    ms = lambda v: f"{np.nanmean(v):.4f} ± {np.nanstd(v):.4f}"  # noqa: E731
    for arm, r in res.items():
        print(f"\n== {arm}: baseline acc {ms(r['baseline_acc'])}, wall {ms(r['wall_s'])} s, "
              f"sensitivity pass {ms(r['sensitivity_s'])} s, failed trials {r['failed']}")
        print("   HV after k trials: " + ", ".join(f"{k}: {ms(v)}" for k, v in r["hv_at_k"].items()))
        print(f"   HV at the uniform arm's wall time: {ms(r['hv_at_equal_time'])}")
        print("   best accuracy at size <= f x baseline: " + ", ".join(
            f"{f}: {ms(v)}" for f, v in r["best_acc_at_size"].items()))
    for arm in (a for a in res if a != "uniform"):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # a size no trial of an arm reached is nan
            gains = [np.nanmean(res[arm]["best_acc_at_size"][f]) - np.nanmean(res["uniform"]["best_acc_at_size"][f])
                     for f in SIZES]
        gain = max((g for g in gains if not np.isnan(g)), default=float("nan"))
        print(f"\n== target: {arm} best accuracy at equal size beats uniform by >= 0.5 points somewhere: "
              f"largest gain {100 * gain:+.2f} points -> {'met' if gain >= 0.005 else 'not met'}")


def run_grid(args, seed: int) -> list[dict]:
    """The per-layer space with the learning rate fixed, one trial per grid policy, the seed's baseline."""
    out, shared = args.out / f"grid-seed{seed}", args.out / f"baseline-seed{seed}"
    if not (shared / BASELINE_FILE).is_file():
        raise SystemExit(f"--grid: no {shared / BASELINE_FILE}; run the arms for seed {seed} with this --out first")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for f in (BASELINE_FILE, BASELINE_METRICS_FILE):
        shutil.copy(shared / f, out / f)
    policies = grid_policies(args.grid)
    raw = study(f"grid-seed{seed}", "per-layer", seed, args)
    raw["search_space"]["training"]["lr"] = args.grid_lr
    raw["warm_start"] = {"recipes": False, "policies": policies}
    raw["budget"]["trials"], raw["candidates"] = len(policies), 1
    run = run_study(spec_from_dict(raw, str(Path(__file__).resolve())), out=out, log=lambda m: None)
    base = study_info(run.study).baseline_metrics
    rows = []
    for t in (t for t in read_all(run.study) if not t.baseline and t.state.name == "COMPLETE"):
        p = t.policy.pruning
        rows.append({"seed": seed, "ratio": p.ratio, "allocation": p.allocation, "accuracy": t.metrics["accuracy"],
                     "size": t.metrics["size_mb"] / base["size_mb"], "baseline_acc": base["accuracy"]})
    return rows


def show_grid(rows: list[dict], args) -> None:
    print("\n== allocation at fixed ratios (static int8, lr fixed): accuracy mean ± std over seeds, size")
    for r in args.grid:
        for a in ALLOCATIONS:
            sel = [x for x in rows if abs(x["ratio"] - r) < 1e-9 and x["allocation"] == a]
            if sel:
                acc, size = [x["accuracy"] for x in sel], [x["size"] for x in sel]
                print(f"   ratio {r:.2f} {a:<11} acc {np.mean(acc):.4f} ± {np.std(acc):.4f} "
                      f"(seeds {', '.join(f'{v:.3f}' for v in acc)}), size {np.mean(size):.3f} x baseline")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", help="a torchvision classifier (resnet18, mobilenet_v2)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=None, help="per trial (default: the study default)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-fraction", type=float, default=0.6, help="of the training split, per trial")
    ap.add_argument("--baseline-epochs", type=int, default=8)
    ap.add_argument("--baseline-lr", type=float, default=1e-3)
    ap.add_argument("--size", type=int, default=32, help="of noisy_digits' images (mobilenet_v2 needs 64)")
    ap.add_argument("--noise", type=float, default=0.5, help="of noisy_digits")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-per-layer")
    ap.add_argument("--grid", type=float, nargs="*", default=None,
                    help="instead of the arms: these pruning ratios with each allocation (needs baseline-seedN)")
    ap.add_argument("--grid-lr", type=float, default=3e-4, help="the learning rate of the --grid trials")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=["uniform", "per-layer"],
                    help="uniform always runs first: its wall time is the equal-time budget")
    ap.add_argument("--reuse", action="store_true", help="read back arms already finished in --out instead of rerunning")
    ap.add_argument("--tiny", action="store_true", help="2 trials, one seed, little noise, short training: a smoke run")
    args = ap.parse_args()
    if args.tiny:
        args.n, args.k, args.epochs, args.baseline_epochs, args.seeds = 2, 1, 1, 3, args.seeds[:1]
        args.noise, args.train_fraction = 0.2, 0.3
    args.out = args.out.resolve()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(2)
    if args.grid:
        grid = [row for seed in args.seeds for row in run_grid(args, seed)]
        show_grid(grid, args)
        (args.out / "grid.json").write_text(json.dumps(grid, indent=1))
        return
    args.arms = ["uniform"] + [a for a in args.arms if a != "uniform"]
    rows = {}
    for seed in args.seeds:
        for arm in args.arms:
            rows[(arm, seed)] = run_arm(args, seed, arm)
            r = rows[(arm, seed)]
            print(f"{arm} seed {seed}: {r['trials']} trials in {r['wall']:.0f} s, {r['failed']} failed", flush=True)
    res = summary(rows, args)
    show(res, args)
    (args.out / f"summary-{'-'.join(args.arms)}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
