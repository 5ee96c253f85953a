"""Structured pruning per model family: the share of trials that shrank, fell back or failed (run on purpose).

    python benchmarks/structured_families.py [--trials 6] [--before /tmp/before] [--families a,b] [--out DIR]

For each family (the user-style networks of benchmarks/user_networks.py, and torchvision's resnet18,
mobilenet_v2, shufflenet_v2_x0_5, convnext_tiny and googlenet at 3x32x32) it runs the same small study
through the CLI in a subprocess: structured pruning, criterion l1, ratio 0.3 / 0.5 / 0.7, random
sampler, seed 0, 1 fine-tune epoch, a 3-epoch baseline on learnable random data (3 classes, 256
training and 64 validation samples). ``--before DIR`` runs every study a second time with the
autocompress package of DIR (e.g. a git worktree of an older commit: ``git worktree add /tmp/before
f7717ba``), so the two columns come from one run of the same study each. Only the CLI and the raw
trial attributes (``proof``, ``fail_reason``) are used, which both versions share.

A trial counts as
  shrank     channels removed by the first engine, every group it planned removed (groups tied to a
             protected layer are not planned: first conv, classifier)
  fell back  channels removed, but NNI took over from Torch-Pruning (``engine_fallback``), or some
             groups were left whole for another reason (``left_whole``: verification failed, ...)
  failed     the trial failed (its reason is tallied below the table)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

from user_networks import ZOO  # noqa: E402

IMAGE = [3, 32, 32]
# family -> (model section, data factory kwargs)
TORCHVISION = {
    "resnet18": ({"torchvision": "resnet18"}, {"shape": IMAGE}),
    "mobilenet_v2": ({"torchvision": "mobilenet_v2"}, {"shape": IMAGE}),
    "shufflenet_v2_x0_5": ({"torchvision": "shufflenet_v2_x0_5"}, {"shape": IMAGE}),
    "convnext_tiny": ({"torchvision": "convnext_tiny"}, {"shape": IMAGE}),
    "googlenet": ({"torchvision": "googlenet"}, {"shape": IMAGE}),   # aux_logits on: torchvision's default
    "googlenet (aux_logits off)": ({"torchvision": "googlenet", "kwargs": {"aux_logits": False}}, {"shape": IMAGE}),
}
TIED = "tied to the protected layer"   # a left-whole reason that is protection, not a fallback


def families() -> dict[str, tuple[dict, dict]]:
    zoo = {f: ({"factory": "user_networks:build", "kwargs": {"family": f}}, {"family": f}) for f in ZOO}
    return {**zoo, **TORCHVISION}


def study_file(name: str, model: dict, data: dict, trials: int, folder: Path) -> Path:
    study = {
        "name": "families", "model": model, "data": {"factory": "user_networks:data", "kwargs": data},
        "search_space": {"pruning": {"method": "structured", "criterion": "l1",
                                     "ratio": {"choices": [0.3, 0.5, 0.7]}}},
        "objectives": [{"metric": "accuracy", "direction": "maximize"},
                       {"metric": "params", "direction": "minimize"}],
        "budget": {"trials": trials, "epochs": 1}, "baseline": {"epochs": 3, "lr": 0.01},
        "target": {"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.01},
        "device": "cpu", "sampler": "random", "seed": 0, "warm_start": {"recipes": False},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run(code: Path, study: Path, out: Path, threads: int) -> tuple[str, float]:
    """``autocompress search`` of the package in ``code``; (the CLI's last line on failure, wall s)."""
    # one thread: on a shared 2-core machine two threads per tiny model mostly wait for each other
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{BENCH}", "OMP_NUM_THREADS": str(threads)}
    where = subprocess.run([sys.executable, "-c", "import autocompress; print(autocompress.__file__)"],
                           cwd=code, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(code.resolve()), f"{where} is not from {code}"
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "autocompress", "search", str(study), "--out", str(out)],
                          cwd=code, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.startswith("error")]
    return ("" if done.returncode == 0 else (lines[-1] if lines else f"exit {done.returncode}")), time.time() - start


def pruning_facts(trial: optuna.trial.FrozenTrial) -> dict:
    proof = trial.user_attrs.get("proof") or {}
    return (json.loads(proof) if isinstance(proof, str) else proof).get("pruning", {})


def outcome(trial: optuna.trial.FrozenTrial) -> tuple[str, str]:
    """('shrank' | 'fell back' | 'failed' | 'other', why) from the trial's raw attributes."""
    if trial.state.name == "FAIL":
        return "failed", str(trial.user_attrs.get("fail_reason", "failed without a message"))
    facts = pruning_facts(trial)
    if not facts.get("channels_kept"):
        return "other", f"{trial.state.name}, no channel removed"
    whole = {k: v for k, v in (facts.get("left_whole") or {}).items() if TIED not in v}
    if facts.get("engine_fallback"):
        return "fell back", "NNI: " + facts["engine_fallback"]
    if whole:
        return "fell back", f"{len(whole)} group(s) left whole, e.g. " + "; ".join(
            f"{k}: {v}" for k, v in list(whole.items())[:2])
    return "shrank", ""


def summarize(run_dir: Path, error: str, wall: float) -> dict:
    if error:
        return {"error": error, "wall": wall}
    study = optuna.load_study(study_name="families", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = [t for t in study.trials if not t.user_attrs.get("baseline")]
    kinds: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    kept = []
    for t in trials:
        kind, why = outcome(t)
        kinds[kind] += 1
        if why:
            reasons[f"{kind}: {short(why)}"] += 1
        facts = pruning_facts(t) if kind in ("shrank", "fell back") else {}
        if facts.get("params_before"):
            kept.append(facts["params_after"] / facts["params_before"])
    return {"n": len(trials), "kinds": kinds, "reasons": reasons, "wall": wall,
            "params_kept": statistics.median(kept) if kept else None}


def short(reason: str, width: int = 150) -> str:
    return reason if len(reason) <= width else reason[:width - 3] + "..."


def cells(s: dict | None) -> list[str]:
    if s is None:
        return ["", "", "", "", ""]
    if "error" in s:
        return ["study stopped", "", "", "", f"{s['wall']:.0f} s"]
    n, k = s["n"], s["kinds"]
    kept = f"{s['params_kept']:.0%}" if s["params_kept"] is not None else "-"
    return [f"{k['shrank']}/{n}", f"{k['fell back']}/{n}", f"{k['failed']}/{n}", kept, f"{s['wall']:.0f} s"]


def table(rows: dict[str, dict[str, dict]], before: bool) -> str:
    codes = (["before", "after"] if before else ["after"])
    head = ["family"] + [f"{c}: {col}" for c in codes for col in ("shrank", "fell back", "failed", "params kept",
                                                                   "wall")]
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for fam, by in rows.items():
        out.append("| " + " | ".join([fam] + [c for code in codes for c in cells(by.get(code))]) + " |")
    notes = []
    for fam, by in rows.items():
        for code in codes:
            s = by.get(code)
            if s and "error" in s:
                notes.append(f"- {fam}, {code}: the study stopped before any trial: {short(s['error'], 300)}")
            for why, count in (s or {}).get("reasons", {}).items():
                notes.append(f"- {fam}, {code}: {count} x {why}")
    return "\n".join(out + [""] + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Prints a markdown table (params kept: median params after / before "
                                        "of the trials that removed channels).")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--before", type=Path, help="a checkout of the older code (its autocompress/ is run)")
    ap.add_argument("--families", help=f"comma-separated subset of: {', '.join(families())}")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-families")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each study (OMP_NUM_THREADS)")
    args = ap.parse_args()
    chosen = families() if not args.families else {f: families()[f] for f in args.families.split(",")}
    codes = {"after": REPO, **({"before": args.before.resolve()} if args.before else {})}
    args.out = args.out.resolve()   # each study runs with its code checkout as working directory
    rows: dict[str, dict[str, dict]] = {}
    for fam, (model, data) in chosen.items():
        for code, root in codes.items():
            folder = args.out / code / fam.replace(" ", "_").replace("(", "").replace(")", "")
            study = study_file(fam, model, data, args.trials, folder)
            error, wall = run(root, study, folder / "run", args.threads)
            rows.setdefault(fam, {})[code] = summarize(folder / "run", error, wall)
            print(f"{fam} ({code}): {cells(rows[fam][code])}", file=sys.stderr, flush=True)
    print(table(rows, args.before is not None))


if __name__ == "__main__":
    main()
