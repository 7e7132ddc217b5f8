"""The `kubetrain` command: run a TrainingJob here, be one of its workers, serve a model, or
show a job's curves."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .api.entrypoints import (
    BIND_ALL_FLAG,
    PULL,
    SERVE,
    SERVER_PORT,
    TENSORBOARD,
    TENSORBOARD_PORT,
    WORKER,
)
from .api.layout import TRIALS_DIR, Layout
from .api.spec import SpecError, TrainingJob, load_job
from .server import add_pull_arguments, add_serve_arguments
from .storage import join


def _run(args: argparse.Namespace) -> int:
    from .runner import JobFailed, local_workdir, run_local, run_trials, storage_locations

    try:
        job = load_job(args.file, args.set, args.set_string)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    workdir = local_workdir(job, args.workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(
            f"error: --workdir {workdir}: cannot be made a directory ({err.strerror})",
            file=sys.stderr,
        )
        return 2
    best_trial, refitted = "", False
    try:
        if job.spec.trials is None:
            result = run_local(job, workdir)
        else:
            from .trials import TrialState, leaderboard

            result, study = run_trials(job, workdir)
            print(leaderboard(study), file=sys.stderr)
            best_trial = f"best trial {study.best}, "
            refitted = study.refit is not None and study.refit.state == TrialState.SUCCEEDED
    except SpecError as err:  # a trial whose parameters make an invalid spec: none trained
        print(f"error: {args.file}: {err}", file=sys.stderr)
        return 2
    except JobFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: workers stopped; run again to resume from the last epoch", file=sys.stderr
        )
        return 130
    model = result.model
    where = _shown(Path(model.path or ""))
    validation = f"{result.metric} {result.validation.get(result.metric, float('nan')):.4f}"
    trained = (
        f"{validation}; refitted on training + validation for {result.best_epoch} epochs"
        if refitted
        else f"best epoch {result.best_epoch}: {validation}"
    )
    print(
        f"{best_trial}{trained}, test accuracy {result.test_accuracy:.4f}; exported "
        f"{model.name} version {model.version} to {where}",
        file=sys.stderr,
    )
    if not args.serve:
        state, models = storage_locations(job, workdir)
        curves = Layout(workdir=state, model_root=models).tensorboard
        if job.spec.trials is not None:  # every trial's curves, side by side
            curves = join(state, TRIALS_DIR)
        print(next_steps(args.file, job, where.parent, curves), file=sys.stderr)
    print(json.dumps(result.document()))
    if args.serve:
        from .server import serve

        serve_args = serve_parser().parse_args(["--model-dir", str(Path(model.path or "").parent)])
        return serve(serve_args)
    return 0


def _shown(path: Path) -> Path:
    """A path as the user would type it: relative when it is below the working directory."""
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def next_steps(job_file: str, job: TrainingJob, model_dir: Path, curves: str) -> str:
    """What a user can do with the model just exported: serve it here, look at its training
    curves, or go to a cluster."""
    url = f"localhost:{SERVER_PORT}/v1/models/{job.spec.model_name}:predict"
    mnist = job.spec.dataset.name == "mnist"
    sample = "@examples/digit-7.json" if mnist else "'{\"instances\": [...]}'"
    return "\n".join(
        [
            "what next:",
            f"  serve it here:  kubetrain serve --model-dir {model_dir}",
            f"  then ask it:    curl -d {sample} {url}",
            f"  its curves:     kubetrain tensorboard {curves}",
            f"  on a cluster:   kubectl apply -f {job_file}  (after helm install kubetrain"
            " charts/kubetrain; see the README's 'On Kubernetes')",
        ]
    )


def _worker(args: argparse.Namespace) -> int:
    from .worker import run_worker

    return run_worker(args.job, args.workdir, args.model_root)


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    return serve(args)


def _pull(args: argparse.Namespace) -> int:
    from .server import pull

    return pull(args)


def _tensorboard(args: argparse.Namespace) -> int:
    from .curves import log_dir, tensorboard
    from .storage import StorageError, StoreUnreachable

    try:
        logdir = log_dir(args.target, args.workdir)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    try:
        return tensorboard(logdir, args.port, args.bind_all)
    except (StorageError, StoreUnreachable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetrain serve")
    add_serve_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetrain", description="Train TensorFlow models and serve the best checkpoint."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a TrainingJob file on this machine")
    run.add_argument("file", help="TrainingJob YAML (the same file `kubectl apply` takes)")
    run.add_argument(
        "--workdir", help="checkpoints, logs, models and result.json (default: runs/<job name>)"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field, e.g. --set spec.training.epochs=1",
    )
    run.add_argument(
        "--set-string",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field with VALUE as a string: --set-string spec.model.name=no",
    )
    run.add_argument("--serve", action="store_true", help="serve the exported model afterwards")
    run.set_defaults(func=_run)

    worker = commands.add_parser(WORKER, help="one training worker (TF_CONFIG from the env)")
    worker.add_argument("--job", help="TrainingJob file (default: $KUBETRAIN_JOB as JSON)")
    worker.add_argument(
        "--workdir", required=True, help="the job's checkpoints and result: a path or s3:// URI"
    )
    worker.add_argument("--model-root", help="where models are exported (default: workdir/models)")
    worker.set_defaults(func=_worker)

    serve = commands.add_parser(SERVE, help="serve an exported model over REST")
    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)

    board = commands.add_parser(
        TENSORBOARD, help="show a job's loss, metrics and learning rate in TensorBoard"
    )
    board.add_argument(
        "target",
        metavar="JOB_OR_DIR",
        help="the TrainingJob file `kubetrain run` took, or a directory or s3:// URI of curves",
    )
    board.add_argument("--workdir", help="the --workdir `kubetrain run` was given, if any")
    board.add_argument(
        "--port", type=int, default=TENSORBOARD_PORT, help=f"on 127.0.0.1 ({TENSORBOARD_PORT})"
    )
    board.add_argument(
        BIND_ALL_FLAG,
        action="store_true",
        help="listen on every address, not only 127.0.0.1 (in a pod behind a Service)",
    )
    board.set_defaults(func=_tensorboard)

    pull = commands.add_parser(PULL, help="copy one model version out of a store (s3://...)")
    add_pull_arguments(pull)
    pull.set_defaults(func=_pull)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
