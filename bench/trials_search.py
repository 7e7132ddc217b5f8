"""A 6-trial random search on MNIST and on PlanesNet, as `kubetrain run` trains it locally.

Each case is a trials example run whole (examples/mnist-trials.yaml, examples/planesnet-trials.yaml
pointed at ../shared/data): its candidates train `parallelism` at a time, the median rule
stops those that fall behind, the best is tested and exported. Printed per case: the winner's
test accuracy (PlanesNet: on scenes held out of training), its parameters, the wall time of the
whole search, and how many trials early stopping cut; with `spec.trials.refit`, the winning
trial's own model's test accuracy too, beside that of its refit (the job's model), so the
refit's gain is measured in the same run. Goal: the PlanesNet job's model >= 99.3%.

    python bench/trials_search.py                    # both (about 30 minutes on 2 cores)
    python bench/trials_search.py --only mnist
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from kubetrain.trainer.api.spec import SplitBy, load_job
from kubetrain.trainer.runner import run_trials
from kubetrain.trainer.trials import TrialState
from trainer_accuracy import errors_by_scene

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
CASES = {
    "mnist": (ROOT / "examples" / "mnist-trials.yaml", SHARED / "mnist", None),
    "planesnet": (ROOT / "examples" / "planesnet-trials.yaml", SHARED / "planesnet", 0.993),
}


def search(name: str, workdir: Path) -> dict:
    path, data, target = CASES[name]
    job = load_job(path, [f"spec.dataset.source={data}"])
    started = time.monotonic()
    result, study = run_trials(job, workdir / name)
    seconds = time.monotonic() - started
    best = next(t for t in study.trials if t.index == study.best)
    states = [t.state for t in study.trials]
    row = {
        "case": name,
        "trials": len(study.trials),
        "best_trial": best.index,
        "best_parameters": best.parameters,
        "best_validation": best.best_metric,
        "test_accuracy": result.test_accuracy,
        "winner_test_accuracy": best.test_accuracy,
        "refit": study.refit.state if study.refit else None,
        "target": target,
        "met": None if target is None else result.test_accuracy >= target,
        "early_stopped": states.count(TrialState.EARLY_STOPPED),
        "failed": states.count(TrialState.FAILED),
        "epochs_trained": sum(t.epochs for t in study.trials),
        "epochs_planned": len(study.trials) * job.spec.training.epochs,
        "wall_seconds": round(seconds, 1),
    }
    if job.spec.dataset.split_by == SplitBy.SCENE:
        row["test_errors"] = errors_by_scene(job, result)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(CASES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubetrain-trials-") as tmp:
        rows = [search(name, Path(tmp)) for name in args.only or CASES]
    for row in rows:
        goal = (
            f" (goal {row['target']:.1%}: {'met' if row['met'] else 'not met'})"
            if row["target"] is not None
            else ""
        )
        refit = (
            f" (refit {row['refit']}; the trial's own model {row['winner_test_accuracy']:.2%})"
            if row["refit"]
            else ""
        )
        print(
            f"{row['case']:10s} best trial {row['best_trial']} {row['best_parameters']}: "
            f"test {row['test_accuracy']:.2%}{goal}{refit}; "
            f"{row['early_stopped']} of {row['trials']} stopped early, "
            f"{row['epochs_trained']}/{row['epochs_planned']} epochs trained, "
            f"{row['wall_seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
