"""`harvest`: run the pipeline, or one stage of it, from a YAML config.

harvest run [CONFIG] [--set KEY=VALUE ...]    collect → compact → train → eval
harvest run --resume RUN_ID                   go on with an interrupted run
harvest collect [CONFIG]                      fill the replay, snapshot it to artifacts/<run-id>/replay/
harvest compact RUN_DIR                       snapshot → dataset/ (Parquet + manifest, NPZ)
harvest train RUN_DIR                         dataset/ → learner/ (checkpoints, history)
harvest eval RUN_DIR                          learner/ → eval.json (trained vs expert vs random)
harvest config [CONFIG]                       print the resolved config
harvest import robocode-json|driving-session|sequence-json|minari|offline-rl|parquet PATH... --out DIR
                                              recordings (or a Minari dataset id) → a dataset
harvest export DATASET --to offline-rl|teacher-student|minari --out PATH
                                              a dataset (folder or s3:// URI) in a consumer's format
harvest edit filter|delete|split|repartition|merge DATASET... --out PATH [options]
                                              a new dataset from existing ones (parents recorded)
harvest inspect DATASET [--html DIR] [--json FILE]
                                              statistics and quality checks; exits 1 on errors
harvest windows DATASET --history H [--stride S] [--pad none|repeat_first|zeros]
                                              how many sliding-window samples a dataset yields
harvest submit [CONFIG] --address http://HEAD:8265 [--wait]
                                              the run as a job on a Ray cluster (Job Submission API)
harvest jobs list|status|logs|stop [JOB_ID] --address http://HEAD:8265
                                              Harvest's jobs on that cluster
harvest status [--watch S]                    collectors, replay, learners, stalls, memory, live
harvest generals-gif --record FILE | --player expert|random|CKPT --out GIF
                                              a Generals.io game (recorded or live) as a GIF
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

import harvest

if TYPE_CHECKING:
    from harvest.cluster.config import RunConfig

# (the config, logging and run-folder modules are imported where used: `harvest --help` parses
# arguments without loading pydantic, pyarrow or Ray)


EXIT_CODES = """exit codes:
  0    done
  1    the data failed a check (integrity, quality checks, inputs skipped on import)
  2    a usage or config error, named in one line
  3    an internal error (a bug; --debug prints the traceback)
  4    the run failed in its parts: an env hung, an actor or node died past its restarts (named)
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM): `harvest run --resume RUN_ID` goes on"""


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    """The episode filter's flags (`harvest edit filter`, `harvest export`)."""
    group = p.add_argument_group("episode filter (whole episodes)")
    group.add_argument("--min-return", type=float, help="keep episodes whose return is at least this")
    group.add_argument("--max-return", type=float, help="keep episodes whose return is at most this")
    group.add_argument("--min-length", type=int, help="keep episodes of at least this many steps")
    group.add_argument("--max-length", type=int, help="keep episodes of at most this many steps")
    group.add_argument(
        "--ended",
        action="append",
        choices=["terminated", "truncated", "unfinished"],
        default=[],
        help="keep episodes that ended so (repeat for several)",
    )
    group.add_argument(
        "--source",
        dest="sources",
        action="append",
        default=[],
        help="keep rows of this source: expert, human, agent, correction, ... (repeat for several)",
    )
    group.add_argument(
        "--collector-id",
        dest="collector_ids",
        action="append",
        type=int,
        default=[],
        help="keep episodes of this collector (repeat for several)",
    )
    group.add_argument("--start", help="first step at or after this ISO time (UTC)")
    group.add_argument("--end", help="first step before this ISO time (UTC)")
    group.add_argument("--dedupe", action="store_true", help="drop repeated episodes")


def episode_filter(args: argparse.Namespace):
    """The `EpisodeFilter` the flags describe."""
    from harvest.rollout.episode_filter import EpisodeFilter

    return EpisodeFilter(
        min_return=args.min_return,
        max_return=args.max_return,
        min_length=args.min_length,
        max_length=args.max_length,
        ended=args.ended,
        sources=args.sources,
        collector_ids=args.collector_ids,
        start=args.start,
        end=args.end,
        dedupe=args.dedupe,
    )


COMMANDS: dict[str, tuple[str, list[str]]] = {
    "run": (
        "Collect with the config's collectors into the sharded replay, compact it into a dataset, train the "
        "learner on it and evaluate the trained policy beside the baselines; outputs in run.output_dir/<run id>.",
        [
            "harvest run",
            "harvest run examples/cartpole_bc.yaml --set rollout.steps=50000",
            "harvest run --resume 20261203-101500-ab12",
        ],
    ),
    "collect": (
        "Collect into the replay and snapshot it to <run>/replay/ (compact, train and eval it later).",
        ["harvest collect examples/generals_bc.yaml --run-id games"],
    ),
    "teleop": (
        "Play the env in a window (keyboard or gamepad) beside the simulated collectors; the session's rows "
        "and theirs go into one dataset, tagged by source.",
        [
            "harvest teleop examples/car_racing_teleop.yaml",
            "harvest teleop examples/car_racing_teleop.yaml --set human.shadow.updates_per_round=20",
        ],
    ),
    "dagger": (
        "Demonstrations, then behaviour cloning, then rounds of play in which the expert labels what the "
        "clone did and the clone is fine-tuned on the corrections.",
        ["harvest dagger examples/car_racing_dagger.yaml --set dagger.rounds=3"],
    ),
    "config": (
        "Print the resolved config: the embedded default or CONFIG, with --set applied.",
        ["harvest config", "harvest config examples/cartpole_bc.yaml --set env.num_envs=16"],
    ),
    "compact": (
        "Write the dataset of a `harvest collect` run from its replay snapshot.",
        ["harvest compact artifacts/games"],
    ),
    "train": (
        "Train the run's learner (each stage of learner.stages) on its dataset.",
        ["harvest train artifacts/games", "harvest train artifacts/games --set learner.bc.epochs=20"],
    ),
    "eval": (
        "Evaluate the run's trained policy beside the expert and random baselines.",
        ["harvest eval artifacts/games --set eval.episodes=100"],
    ),
    "import": (
        "Turn recordings (Robocode game states, driving sessions, JSON sequences, offline-RL files, Parquet) "
        "or a Minari dataset into a Harvest dataset; bad files and rows are named and left out.",
        [
            "harvest import driving-session recordings/session_* --out datasets/driving",
            "harvest import minari D4RL/door/human-v2 --out datasets/door",
        ],
    ),
    "export": (
        "Write a dataset in the form its consumer reads: the offline-RL dict (HDF5 or NPZ), teacher actions "
        "and logits (safetensors), or a Minari dataset.",
        [
            "harvest export artifacts/run/dataset --to offline-rl --out expert.hdf5 --min-return 400",
            "harvest export artifacts/run/dataset --to minari --out ~/.minari/datasets",
        ],
    ),
    "edit": (
        "Make a new dataset from existing ones (never in place): filter, delete episodes, split, "
        "re-partition or merge; the new manifest records its parents.",
        [
            "harvest edit filter artifacts/run/dataset --min-return 200 --out datasets/good",
            "harvest edit split datasets/good --fractions train=0.9,val=0.1 --out datasets/good-split",
            "harvest edit merge datasets/a datasets/b --out datasets/ab",
        ],
    ),
    "inspect": (
        "A dataset's statistics and quality checks (short, stuck, jerky episodes, time gaps, NaNs) as an "
        "HTML report with plots; exit 1 when a check fails or a file differs from the manifest.",
        ["harvest inspect artifacts/run/dataset", "harvest inspect s3://bucket/runs/r1 --json report.json"],
    ),
    "windows": (
        "Count the sliding-window samples (history H, stride S) a dataset yields, per episode and in all.",
        ["harvest windows artifacts/run/dataset --history 8 --stride 2 --pad repeat_first"],
    ),
    "dashboard": (
        "Write the Grafana dashboard of Harvest's metrics, for the Prometheus that scrapes Ray.",
        ["harvest dashboard --out harvest-dashboard.json"],
    ),
    "submit": (
        "Submit a run to a Ray cluster as a job (Ray Job Submission API): the config and the project go with it.",
        ["harvest submit examples/cartpole_bc.yaml --address http://head:8265 --wait"],
    ),
    "jobs": (
        "List Harvest's jobs on a Ray cluster, or show one's status or logs, or stop it.",
        ["harvest jobs list --address http://head:8265", "harvest jobs logs harvest-r1 --address http://head:8265"],
    ),
    "status": (
        "What a running run's collectors, replay shards and learners are doing, its stalls and memory, from "
        "its Prometheus endpoint.",
        ["harvest status", "harvest status --watch 5"],
    ),
    "example": (
        "Print an example config (installed with Harvest) to start your own from (`harvest example NAME > "
        "my.yaml`, then `harvest run my.yaml`); without a name, list them.",
        ["harvest example", "harvest example cartpole_bc"],
    ),
    "generals-gif": (
        "A Generals.io game, recorded (env.kwargs.record_dir) or played live, as a GIF.",
        [
            "harvest generals-gif --player expert --opponent random --out game.gif",
            "harvest generals-gif --record artifacts/run/games/game-12.json --out game12.gif",
        ],
    ),
}
"""Every command's description and examples (its `--help`)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harvest", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    parser.add_argument("--version", action="version", version=f"harvest {harvest.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set replay.num_shards=4 (value parsed as YAML)",
        )

    for name, help_text in (
        ("run", "collect, compact, train and evaluate"),
        ("collect", "collect into the replay and snapshot it"),
        (
            "teleop",
            "play the env in a window (keyboard, gamepad) into the replay beside the "
            "simulators, then write the dataset",
        ),
        ("dagger", "collect demonstrations, BC, then rounds of play -> critic labels -> retrain"),
        ("config", "print the resolved config"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", nargs="?", help="YAML run config (default: the embedded CartPole run)")
        p.add_argument("--run-id", help="run id (default: a timestamp)")
        if name in ("run", "collect"):
            p.add_argument(
                "--resume",
                metavar="RUN_ID",
                help="go on with an interrupted run: its config.yaml, its durable shards "
                "(replay.wal_dir), its finished dataset, its learner's last epoch",
            )
        if name in ("run", "collect", "teleop", "dagger"):
            p.add_argument(
                "--overwrite",
                action="store_true",
                help="clear the run folder of --run-id first if it exists (without it, an existing run id is refused)",
            )
        add_overrides(p)

    def add_no_verify(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--no-verify",
            action="store_true",
            help="read the dataset's files without checking their sizes and sha256 against the manifest "
            "(paths outside the dataset folder and files listed twice are refused all the same)",
        )

    for name, help_text in (
        ("compact", "write the dataset from a collect snapshot"),
        ("train", "train the learner on the dataset"),
        ("eval", "evaluate the trained policy against the baselines"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("run_dir", help="a run folder, e.g. artifacts/<run-id>")
        if name == "train":
            add_no_verify(p)
        add_overrides(p)
    p = sub.add_parser("import", help="turn existing recordings into a Harvest dataset")
    p.add_argument(
        "kind",
        choices=["robocode-json", "driving-session", "sequence-json", "minari", "offline-rl", "parquet"],
        help="robocode-json: expert_game_states_*.json files (the Robocode teams' layout); "
        "driving-session: session_*/ folders (screenshots/ + metadata/expert_data.csv); "
        "sequence-json: sequence_*.json recordings (states/actions per frame); "
        "minari: a Minari dataset id; offline-rl: D4RL-style .hdf5/.npz files; parquet: loose "
        "Parquet files written by Harvest",
    )
    p.add_argument("paths", nargs="+", help="files, or folders searched for them (minari: the dataset id)")
    p.add_argument("--out", required=True, help="the dataset folder (or URI) to write")
    p.add_argument("--image-size", type=int, help="driving-session: resize screenshots to this square size")
    p.add_argument("--minari-path", help="minari: the datasets folder (default: Minari's own)")
    p = sub.add_parser("export", help="write a dataset in the form offline-RL, distillation or Minari users read")
    p.add_argument("dataset", help="a dataset folder or URI (e.g. artifacts/<run-id>/dataset, s3://bucket/prefix/run)")
    p.add_argument(
        "--to",
        required=True,
        choices=["offline-rl", "teacher-student", "minari"],
        help="offline-rl: the D4RL dict (HDF5 or NPZ); teacher-student: observations, teacher actions "
        "and logits as safetensors; minari: a Minari dataset",
    )
    p.add_argument(
        "--out",
        required=True,
        help="the file to write (offline-rl: .hdf5 or .npz; teacher-student: .safetensors); minari: "
        "the datasets folder (Minari's MINARI_DATASETS_PATH)",
    )
    p.add_argument(
        "--minari-id", help="minari: the dataset id, e.g. harvest/cartpole-expert-v0 (default: harvest/<run id>-v0)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the file --out if it exists (without it, an existing file is refused)",
    )
    add_no_verify(p)
    add_filter_arguments(p)
    p = sub.add_parser("edit", help="filter, delete episodes, split, re-partition or merge datasets into a new one")
    p.add_argument(
        "operation",
        choices=["filter", "delete", "split", "repartition", "merge"],
        help="filter: the episodes that pass; delete: all but --episodes; split: by --fractions; "
        "repartition: by --by; merge: the datasets' episodes together",
    )
    p.add_argument("datasets", nargs="+", help="dataset folders or URIs (merge: two or more)")
    p.add_argument("--out", required=True, help="the new dataset (split: a folder that gets one per part)")
    add_filter_arguments(p)
    p.add_argument("--episodes", help="delete: comma-separated episode ids")
    p.add_argument("--fractions", default="train=0.8,validation=0.1,test=0.1", help="split: name=fraction,...")
    p.add_argument("--seed", type=int, default=0, help="split: shuffling seed")
    p.add_argument("--by", default="", help="repartition: comma-separated `time` and/or columns ('' for none)")
    p.add_argument(
        "--rows-per-file", type=int, help="rows per Parquet file of the new dataset (default: the aggregation default)"
    )
    add_no_verify(p)
    p = sub.add_parser("inspect", help="a dataset's statistics and quality checks (exit 1 on errors)")
    p.add_argument("dataset", help="a dataset folder or URI (e.g. artifacts/<run-id>/dataset)")
    p.add_argument(
        "--html",
        help="report folder (index.html + PNG plots); default: DATASET/_report for a local "
        "dataset, ./report-<run id> otherwise",
    )
    p.add_argument("--json", help="also write the report as JSON here")
    p.add_argument(
        "--min-episode-length",
        type=int,
        default=2,
        help="episodes shorter than this are flagged (default: %(default)s)",
    )
    p.add_argument(
        "--stuck-steps",
        type=int,
        default=200,
        help="this many steps with the same observation are flagged as stuck (default: %(default)s)",
    )
    p.add_argument(
        "--jerk-fraction",
        type=float,
        default=0.5,
        help="an episode whose actions change on more than this fraction of steps is flagged as "
        "jerky (default: %(default)s)",
    )
    p.add_argument(
        "--gap-factor",
        type=float,
        default=5.0,
        help="a time gap between rows this many times the median is flagged (default: %(default)s)",
    )
    add_no_verify(p)
    p = sub.add_parser("windows", help="count the sliding-window samples a dataset yields")
    p.add_argument("dataset", help="a dataset folder or URI")
    p.add_argument("--history", type=int, required=True, help="steps per window (a model's history length)")
    p.add_argument("--stride", type=int, help="default: a quarter of the history")
    p.add_argument(
        "--pad",
        choices=["none", "repeat_first", "zeros"],
        default="none",
        help="windows that start before an episode's first step: none (left out), repeat_first or "
        "zeros (default: %(default)s)",
    )
    add_no_verify(p)
    p = sub.add_parser("dashboard", help="write the Grafana dashboard of Harvest's metrics (JSON)")
    p.add_argument("--out", default="harvest-dashboard.json", help="the JSON file to write (default: %(default)s)")
    from harvest.cluster.jobs import add_arguments as add_job_arguments
    from harvest.cluster.watch import add_arguments

    add_job_arguments(sub)
    from harvest.cluster.status import add_arguments as add_status_arguments

    add_status_arguments(sub)
    add_arguments(sub.add_parser("generals-gif", help="write a Generals.io game (recorded or live) as a GIF"))
    p = sub.add_parser("example", help="print an example config (or list them)")
    p.add_argument("name", nargs="?", help="the example, e.g. cartpole_bc (see `harvest example`)")
    for name, subparser in sub.choices.items():  # each command's --help: what it does, and examples
        description, examples = COMMANDS[name]
        subparser.description = description
        subparser.epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples)
        subparser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _config_for(args: argparse.Namespace) -> RunConfig:
    from harvest.cluster.config import ConfigError, load_config

    if hasattr(args, "run_dir"):  # (a stage: checked here, before it starts, as the API will read it)
        from harvest.cluster.api import stage_config

        return stage_config(
            args.run_dir,
            [*args.overrides, *(["learner.verify_dataset=false"] if getattr(args, "no_verify", False) else [])],
        )
    if getattr(args, "resume", None):
        if args.config or args.run_id or getattr(args, "overwrite", False):
            raise ConfigError(
                "--resume RUN_ID takes the run's own config.yaml and id and goes on with it: give "
                "neither CONFIG, --run-id nor --overwrite"
            )
        output_dir = load_config(None, list(args.overrides)).run.output_dir
        config_path = Path(output_dir).expanduser() / args.resume / "config.yaml"
        if not config_path.is_file():
            raise ConfigError(
                f"{config_path}: no such file; --resume {args.resume} expects a run folder in "
                f"run.output_dir={output_dir}"
            )
        return load_config(config_path, [*args.overrides, f"run.id={args.resume}"])
    return load_config(args.config, _overrides(args))


def _overrides(args: argparse.Namespace) -> list[str]:
    """The `--set` items of a run started from a config file (and its `--run-id`)."""
    return list(args.overrides) + ([f"run.id={args.run_id}"] if args.run_id else [])


EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_INTERNAL, EXIT_FAILED = 0, 1, 2, 3, 4
"""Exit codes: 0 done; 1 the data failed a check (integrity, quality, rows skipped on import);
2 a usage or config error (nothing ran, or it stopped before writing); 3 an internal error
(a bug: the traceback is in the run's harvest.log, `--debug` prints it); 4 the run failed in
its parts (an env that hangs, an actor or node that died past its restarts); 130 / 143
interrupted by SIGINT (Ctrl-C) / SIGTERM."""
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class Terminated(BaseException):
    """SIGTERM arrived: unwinds the driver like Ctrl-C does (`KeyboardInterrupt`)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _unwind_on_sigterm() -> Any:
    """SIGTERM raises `Terminated` in the driver (main thread only); the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def _root_cause(err: BaseException) -> BaseException:
    """The user's error inside Ray's wrappers (a task's or an actor's creation error)."""
    import ray.exceptions

    seen = 0
    while isinstance(err, (ray.exceptions.RayTaskError, ray.exceptions.RayActorError)) and seen < 8:
        cause = getattr(err, "cause", None)
        if not isinstance(cause, BaseException):
            break
        err, seen = cause, seen + 1
    return err


def _exit_code(err: BaseException) -> int | None:
    """The exit code of a user-facing error; None for an unexpected one (a bug)."""
    from harvest.aggregation.dataset import DatasetError
    from harvest.aggregation.integrity import DatasetIntegrityError
    from harvest.aggregation.storage import StorageError
    from harvest.envs.registry import EnvNotFoundError

    if isinstance(err, DatasetIntegrityError):
        return EXIT_DATA
    if isinstance(err, TimeoutError) or _died(err):
        return EXIT_FAILED
    from harvest.cluster.config import ConfigError
    from harvest.cluster.run_folder import RunFolderError

    if isinstance(
        err,
        (
            ConfigError,
            RunFolderError,
            EnvNotFoundError,
            StorageError,
            DatasetError,
            FileNotFoundError,
            FileExistsError,
            IsADirectoryError,
            NotADirectoryError,
            PermissionError,
        ),
    ):
        return EXIT_USAGE
    from harvest.envs.extras import MissingExtraError

    if isinstance(err, MissingExtraError):
        return EXIT_USAGE
    user_errors = tuple(_user_error_classes())
    return EXIT_USAGE if user_errors and isinstance(err, user_errors) else None


def _died(err: BaseException) -> bool:
    """Whether a Ray actor, worker or node died (past its restarts) - a failed run, not a bug."""
    import ray.exceptions

    from harvest.rollout.fleet_members import CollectorFailedError

    return isinstance(
        err,
        (
            ray.exceptions.ActorDiedError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ActorUnavailableError,
            CollectorFailedError,
        ),
    )


def _dataset_error(err: Exception) -> int:
    """A dataset command's error in one line (one per damaged file); its exit code: 1 for files
    that differ from their manifest, 2 for everything else (a missing dataset, a bad option)."""
    from harvest.aggregation.integrity import DatasetIntegrityError

    logger.error("{}", _one_line(err))
    return EXIT_DATA if isinstance(err, DatasetIntegrityError) else EXIT_USAGE


def _user_error_classes() -> list[type[BaseException]]:
    """Errors of Harvest's libraries that describe a user's input (imported only if loaded)."""
    names = {
        "harvest.aggregation.importers": "ImportFormatError",
        "harvest.envs.robocode.team_files": "TeamFileError",
        "harvest.rollout.policies": "CheckpointError",
    }  # harvest.learners.checkpoint re-exports it
    return [
        getattr(sys.modules[module], name)
        for module, name in names.items()
        if module in sys.modules and hasattr(sys.modules[module], name)
    ]


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text


def main(argv: list[str] | None = None) -> int:
    """The `harvest` command; returns its exit code (see `EXIT_*`)."""
    args = _parser().parse_args(argv)
    # Like `python -m`: a user's env or policy given as "package.module:Class" imports from the
    # current folder (collectors get it through PYTHONPATH, see cluster.local.init_ray). Harvest's
    # packages live under `harvest.`, so a user's `envs/` or `rollout/` folder shadows none of them.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    from harvest.cluster.logging import setup_logging

    setup_logging("INFO")
    previous_sigterm = _unwind_on_sigterm()
    try:
        return _command(args)
    except (KeyboardInterrupt, Terminated) as err:
        code = EXIT_SIGINT if isinstance(err, KeyboardInterrupt) else EXIT_SIGTERM
        resume_hint = getattr(args, "_resume_hint", None)
        logger.warning(
            "interrupted by {}{}",
            "SIGINT" if code == EXIT_SIGINT else "SIGTERM",
            f"; go on with `{resume_hint}`" if resume_hint else "",
        )
        return code
    except Exception as err:  # noqa: BLE001 - the one place that turns errors into exit codes
        cause = _root_cause(err)
        known_code = _exit_code(cause)
        if args.debug:
            logger.opt(exception=err).error("{}: {}", type(cause).__name__, _one_line(cause))
        elif known_code is None:
            logger.opt(exception=err).debug("internal error")  # the run's harvest.log has the traceback
            logger.error(
                "internal error: {}: {} (a bug in Harvest; `--debug` prints the traceback)",
                type(cause).__name__,
                _one_line(cause).splitlines()[0],
            )
        else:
            logger.error("{}", _one_line(cause))
        return EXIT_INTERNAL if known_code is None else known_code
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _command(args: argparse.Namespace) -> int:
    if args.command == "example":
        return _example(args)
    if args.command == "generals-gif":
        from harvest.cluster.watch import write_game_gif

        write_game_gif(args)
        return 0
    if args.command == "import":
        return _import(args)
    if args.command == "dashboard":
        from harvest.cluster.dashboard import write_dashboard

        logger.info(
            "Grafana dashboard: {} (import it with the Prometheus data source that scrapes Ray)",
            write_dashboard(args.out),
        )
        return 0
    if args.command == "export":
        return _export(args)
    if args.command == "status":
        from harvest.cluster.status import status

        return status(args)
    if args.command in ("submit", "jobs"):
        from harvest.cluster import jobs

        try:
            return jobs.submit(args) if args.command == "submit" else jobs.jobs(args)
        except (ConnectionError, ValueError, RuntimeError) as err:
            logger.error("{}", err)
            return 1
    if args.command in ("edit", "windows", "inspect"):
        return {"edit": _edit, "windows": _windows, "inspect": _inspect}[args.command](args)
    from harvest.cluster.config import ConfigError, dump_config, load_config

    try:
        cfg = _config_for(args)
    except ConfigError as err:
        logger.error("invalid config:\n{}", err)
        return 2
    if args.command == "config":
        sys.stdout.write(dump_config(cfg))
        return 0

    from harvest.cluster import api, pipeline, run_folder

    if args.command in ("run", "collect"):
        resume = bool(getattr(args, "resume", None))
        run_id = cfg.run.id or run_folder.new_run_id()
        default_dir = Path(load_config(None).run.output_dir)
        args._resume_hint = f"harvest {args.command} --resume {run_id}" + (
            f" --set run.output_dir={cfg.run.output_dir}" if Path(cfg.run.output_dir) != default_dir else ""
        )
        live = None
        if args.config:  # edits of the file take effect while it collects
            from harvest.cluster.live import LiveConfig

            log = run_folder.RunPaths.of(cfg, run_id).log
            live = LiveConfig(args.config, _overrides(args), cfg, log)
        job = api.run if args.command == "run" else api.collect
        result = job(cfg, run_id=run_id, resume=resume, overwrite=getattr(args, "overwrite", False), live=live)
        pipeline.print_summary(result.summary)
    elif args.command == "teleop":
        with api.session(cfg, "overwrite" if args.overwrite else "new", "teleop") as (run_id, paths):
            pipeline.print_summary(pipeline.teleop(cfg, run_id, paths))
    elif args.command == "dagger":
        from harvest.cluster.dagger import dagger

        with api.session(cfg, "overwrite" if args.overwrite else "new", "dagger") as (run_id, paths):
            dagger(cfg, run_id, paths)
    elif args.command == "compact":
        api.compact(args.run_dir, args.overrides)
    elif args.command == "train":
        api.train(args.run_dir, args.overrides, verify=not args.no_verify)
    elif args.command == "eval":
        api.evaluate(args.run_dir, args.overrides)
    return 0


def _import(args: argparse.Namespace) -> int:
    from harvest.aggregation import importers
    from harvest.aggregation.robocode_import import import_robocode_json
    from harvest.envs.robocode.team_files import TeamFileError

    try:
        if args.kind == "robocode-json":
            report = import_robocode_json(args.paths, args.out)
        elif args.kind == "driving-session":
            report = importers.import_driving_sessions(args.paths, args.out, args.image_size)
        elif args.kind == "sequence-json":
            report = importers.import_json_sequences(args.paths, args.out)
        elif args.kind == "offline-rl":
            report = importers.import_offline_rl(args.paths, args.out)
        elif args.kind == "parquet":
            report = importers.import_parquet(args.paths, args.out)
        else:
            report = importers.import_minari(args.paths[0], args.out, args.minari_path)
    except (FileNotFoundError, TeamFileError, importers.ImportFormatError) as err:
        logger.error("{}", err)
        return 2
    logger.info(
        "dataset {}: {} rows from {} files; {} left out, {} flagged",
        args.out,
        report.manifest.rows,
        len(report.files),
        len(report.errors),
        len(report.warnings),
    )
    return 1 if report.errors else 0


def _export(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from harvest.aggregation.dataset import Dataset, DatasetError
    from harvest.aggregation.export import export_minari, export_offline_rl, export_teacher_student
    from harvest.aggregation.storage import StorageError

    scratch = None

    try:
        dataset = Dataset.open(args.dataset, verify=not args.no_verify)
        criteria = episode_filter(args)
        if not criteria.is_empty():  # export the episodes that pass (a filtered copy in a scratch folder)
            from harvest.aggregation.edit import filter_dataset

            scratch = tempfile.mkdtemp(prefix="harvest-export-")
            filter_dataset(dataset, Path(scratch) / "filtered", criteria)
            dataset = Dataset.open(Path(scratch) / "filtered")
        if args.to == "offline-rl":  # HDF5 or NPZ, as the file's extension says
            logger.info("wrote {}", export_offline_rl(dataset, args.out, overwrite=args.overwrite))
        elif args.to == "teacher-student":
            logger.info("wrote {}", export_teacher_student(dataset, args.out, overwrite=args.overwrite))
        else:
            dataset_id = args.minari_id or f"harvest/{dataset.manifest.run_id}-v0"
            minari_dataset = export_minari(dataset, dataset_id, args.out)
            logger.info(
                "Minari dataset {} in {}: {} episodes, {} steps",
                dataset_id,
                args.out,
                minari_dataset.total_episodes,
                minari_dataset.total_steps,
            )
    except (DatasetError, StorageError, ValueError, ValidationError, FileExistsError) as err:
        return _dataset_error(err)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _edit(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from harvest.aggregation import edit
    from harvest.aggregation.dataset import Dataset, DatasetError
    from harvest.aggregation.storage import StorageError

    try:
        datasets = [Dataset.open(where, verify=not args.no_verify) for where in args.datasets]
        if args.operation != "merge" and len(datasets) != 1:
            raise ValueError(f"edit {args.operation} takes one dataset, got {len(datasets)}")
        if args.operation == "filter":
            edit.filter_dataset(datasets[0], args.out, episode_filter(args))
        elif args.operation == "delete":
            if not args.episodes:
                raise ValueError("edit delete needs --episodes ID,ID,...")
            edit.delete_episodes(datasets[0], args.out, [int(i) for i in args.episodes.split(",")])
        elif args.operation == "split":
            fractions = {name: float(value) for name, value in (part.split("=") for part in args.fractions.split(","))}
            edit.split_dataset(datasets[0], args.out, fractions, args.seed)
        elif args.operation == "repartition":
            edit.repartition(datasets[0], args.out, [part for part in args.by.split(",") if part], args.rows_per_file)
        else:
            edit.merge_datasets(datasets, args.out)
    except (DatasetError, StorageError, ValueError, ValidationError, FileExistsError) as err:
        return _dataset_error(err)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from harvest.aggregation.dataset import Dataset, DatasetError
    from harvest.aggregation.inspect import Thresholds, inspect_dataset, print_report
    from harvest.aggregation.storage import StorageError

    try:  # damaged files are left out and reported as the `integrity` check, the good ones inspected
        dataset = Dataset.open(args.dataset, verify=not args.no_verify, skip_damaged=True)
    except (DatasetError, StorageError) as err:
        return _dataset_error(err)
    report = inspect_dataset(
        dataset, Thresholds(args.min_episode_length, args.stuck_steps, args.jerk_fraction, args.gap_factor)
    )
    print_report(report)
    logger.info("HTML report: {}", _write_report(report, args.html, dataset))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=2, default=str))
        except OSError as err:
            logger.error("--json {}: {}", args.json, err.strerror or err)
            return EXIT_USAGE
    if report.errors:
        logger.error("{}: {} check(s) failed", dataset.folder, report.errors)
        return EXIT_DATA
    return EXIT_OK


def _write_report(report: Any, asked: str | None, dataset: Any) -> Path:
    """`inspect`'s HTML report: in `--html`, else DATASET/_report for a local dataset (a name
    Parquet readers skip), else (an object store, or a folder we may not write in) ./report-<run id>."""
    from harvest.aggregation.inspect import write_html

    if asked:
        return write_html(report, Path(asked))
    fallback = Path(f"report-{dataset.manifest.run_id}")
    local = dataset.folder.local_path()
    if local is not None:
        try:
            return write_html(report, local / "_report")
        except OSError as err:
            logger.info(
                "{}: cannot write the report there ({}); writing it in {}",
                local / "_report",
                err.strerror or err,
                fallback.resolve(),
            )
    return write_html(report, fallback)


def _example(args: argparse.Namespace) -> int:
    from harvest.cluster.examples import UnknownExampleError, example_names, example_summary, example_text

    if args.name is None:
        names = example_names()
        width = max(len(name) for name in names)
        sys.stdout.write("".join(f"{name:<{width}}  {example_summary(name)}\n" for name in names))
        sys.stdout.write("\nharvest example NAME > my.yaml   writes one to start from\n")
        return EXIT_OK
    try:
        sys.stdout.write(example_text(args.name))
    except UnknownExampleError as err:
        logger.error("{}", err)
        return EXIT_USAGE
    return EXIT_OK


def _windows(args: argparse.Namespace) -> int:
    from harvest.aggregation.dataset import Dataset, DatasetError
    from harvest.aggregation.storage import StorageError
    from harvest.aggregation.windows import count_windows

    try:
        counts = count_windows(
            Dataset.open(args.dataset, verify=not args.no_verify), args.history, args.stride, args.pad
        )
    except (DatasetError, StorageError, ValueError) as err:
        return _dataset_error(err)
    sys.stdout.write(
        f"{counts['windows']:,} windows of {counts['history']} steps (stride {counts['stride']}, pad "
        f"{counts['pad']}) from {counts['episodes']:,} episodes, {counts['rows']:,} rows; "
        f"{counts['episodes_too_short']:,} episodes give none\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
