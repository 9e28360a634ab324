"""`harvest submit` and `harvest jobs`: runs on a Ray cluster through Ray's Job Submission API.

    harvest submit CONFIG --address http://HEAD:8265 [--set KEY=VALUE ...] [--wait]
    harvest jobs list|status|logs|stop [JOB_ID] --address http://HEAD:8265

`submit` checks the config here first (a bad key fails before anything is uploaded), then
sends a job that carries Harvest itself (the installed `harvest` package as `py_modules`, from
a wheel or a checkout alike), a working dir with the resolved config as `harvest-job.yaml` and,
with `--project DIR`, the user's own project (the modules a config names, e.g. `env.id:
mypkg.envs:MyEnv`; without .venv, .git, artifacts), and, with `--pip`, Harvest's dependencies
as installed here (`runtime_env.pip`), for nodes whose Python lacks them. (Without it the
nodes' Python must have them, as a venv made by `make setup` does: Ray's pip environments
clone the node's Python, and one running from a virtualenv cannot import Ray in the clone.) The job runs
`python -m harvest run harvest-job.yaml` on the head node, joined to the cluster
(`ray.address: auto`). Its outputs go to `--output-dir` on the head node (default
`~/harvest/artifacts`; the job's own working directory is temporary), or, for the dataset,
wherever `aggregation.output` says (e.g. s3://).

The job id is `harvest-<run id>`. With Ray's token authentication (`RAY_AUTH_MODE=token`),
the client sends the token from `RAY_AUTH_TOKEN` (or Ray's token file); without it the
cluster refuses the request, and this says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from loguru import logger

import harvest

JOB_CONFIG = "harvest-job.yaml"
DEFAULT_OUTPUT_DIR = "~/harvest/artifacts"
EXCLUDES = (".venv", ".git", "artifacts", "__pycache__", "*.egg-info", ".pytest_cache", "*.pyc", "build", "dist")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a run to a Ray cluster as a job (Ray Job Submission API)")
    p.add_argument("config", nargs="?", help="YAML run config (default: the embedded CartPole run)")
    p.add_argument(
        "--address",
        default=None,
        help="the cluster's dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS, else http://127.0.0.1:8265)",
    )
    p.add_argument("--run-id", help="run id (default: a timestamp); the job id is harvest-<run id>")
    p.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        help=f"run.output_dir on the head node (default {DEFAULT_OUTPUT_DIR})",
    )
    p.add_argument(
        "--project",
        metavar="DIR",
        help="your project folder, sent as the job's working dir: the modules your config names "
        "(env.id: mypkg.envs:MyEnv, policy entry points) import from it (default: none; Harvest "
        "itself always goes with the job)",
    )
    p.add_argument(
        "--pip",
        action="store_true",
        help="send Harvest's dependencies as runtime_env.pip, for nodes whose Python lacks them "
        "(a stock rayproject/ray image); not for nodes running Ray from a virtualenv, where Ray's "
        "pip environments cannot import Ray",
    )
    p.add_argument(
        "--wait", action="store_true", help="follow the job's logs until it ends; exit 1 unless it succeeded"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (as for `harvest run`)",
    )
    p = sub.add_parser("jobs", help="list Harvest's jobs on a cluster, or show one's status or logs, or stop it")
    p.add_argument(
        "action",
        choices=["list", "status", "logs", "stop"],
        help="list the jobs, or the status, the logs (followed) of JOB_ID, or stop it",
    )
    p.add_argument("job_id", nargs="?", help="status|logs|stop: the job id harvest submit printed")
    p.add_argument(
        "--address", default=None, help="the cluster's dashboard (default: $RAY_ADDRESS, else http://127.0.0.1:8265)"
    )
    p.add_argument("--follow", action="store_true", help="logs: keep printing until the job ends")


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    if not address.startswith("http"):
        raise ValueError(
            f"--address {address}: expected the dashboard's http(s)://HOST:PORT (Ray's Job "
            "Submission API), e.g. http://127.0.0.1:8265"
        )
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # Ray raises ConnectionError, or RuntimeError for a refused token
        raise ConnectionError(f"{address}: cannot reach Ray's job server: {err}") from err


def requirements() -> list[str]:
    """Harvest's core dependencies as installed (the distribution's metadata, not a checkout's
    pyproject.toml), for the job's `runtime_env.pip`."""
    from importlib import metadata

    try:
        required = metadata.requires(harvest.DISTRIBUTION) or []
    except metadata.PackageNotFoundError as err:
        raise RuntimeError(
            f"--pip: {harvest.DISTRIBUTION} is not installed here (pip install -e . in a "
            "checkout), so its requirements are unknown"
        ) from err
    return [item for item in required if "extra ==" not in item]


def harvest_package() -> Path:
    """The installed `harvest` package's folder (site-packages/harvest, or a checkout's harvest/)."""
    return Path(harvest.__file__).parent


def runtime_env(working_dir: Path, pip: bool) -> dict:
    """The job's runtime_env: Harvest as a `py_modules` package (what is installed here, never
    site-packages as a whole), the working dir (the job's config and the user's project files)."""
    env: dict = {
        "working_dir": str(working_dir),
        "py_modules": [str(harvest_package())],
        "excludes": list(EXCLUDES),
        "env_vars": {"PYTHONUNBUFFERED": "1"},
    }
    if pip:
        env["pip"] = requirements()
    return env


def submit(args: argparse.Namespace) -> int:
    from harvest.cluster.config import ConfigError, dump_config, load_config

    overrides = [*args.overrides, f"run.output_dir={args.output_dir}", "ray.address=auto"]
    run_id = args.run_id or _new_run_id()
    try:
        cfg = load_config(args.config, [*overrides, f"run.id={run_id}"], absolute_paths=False)  # paths of the head
    except ConfigError as err:
        logger.error("invalid config:\n{}", err)
        return 2
    client = _client(args.address)
    job_id = f"harvest-{run_id}"
    with tempfile.TemporaryDirectory(prefix="harvest-job-") as staging:
        working_dir = Path(staging) / "job"
        if args.project:
            project = Path(args.project)
            if not project.is_dir():
                logger.error("--project {}: no such folder", project)
                return 2
            shutil.copytree(project, working_dir, ignore=shutil.ignore_patterns(*EXCLUDES))
        else:
            working_dir.mkdir()
        (working_dir / JOB_CONFIG).write_text(dump_config(cfg))
        client.submit_job(
            entrypoint=f"python -m harvest run {JOB_CONFIG}",
            submission_id=job_id,
            runtime_env=runtime_env(working_dir, pip=args.pip),
            metadata={"harvest_run_id": run_id, "harvest_output_dir": cfg.run.output_dir, "harvest_env": cfg.env.id},
        )
    logger.info("submitted job {} (run {}) to {}", job_id, run_id, client.get_address())
    logger.info("outputs on the head node: {}/{}/", cfg.run.output_dir, run_id)
    logger.info("follow it: harvest jobs logs {} --follow --address {}", job_id, client.get_address())
    if not args.wait:
        return 0
    status = follow_logs(client, job_id)
    return 0 if status == "SUCCEEDED" else 1


def follow_logs(client, job_id: str, timeout_s: float = 24 * 3600) -> str:
    """Print the job's logs as they come until it ends; its final status."""
    printed = 0
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        sys.stdout.write(logs[printed:])
        sys.stdout.flush()
        printed = len(logs)
        if status in TERMINAL:
            info = client.get_job_info(job_id)
            (logger.info if status == "SUCCEEDED" else logger.error)(
                "job {}: {}{}", job_id, status, f" ({info.message})" if info.message else ""
            )
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: still {status} after {timeout_s:.0f}s")
        time.sleep(1.0)


def jobs(args: argparse.Namespace) -> int:
    client = _client(args.address)
    if args.action == "list":
        for job in client.list_jobs():
            if (job.submission_id or "").startswith("harvest-"):
                run = (job.metadata or {}).get("harvest_run_id", "?")
                sys.stdout.write(f"{job.submission_id}\t{job.status.value}\trun {run}\t{job.entrypoint}\n")
        return 0
    if not args.job_id:
        logger.error("harvest jobs {}: give the job id (harvest jobs list shows them)", args.action)
        return 2
    if args.action == "status":
        info = client.get_job_info(args.job_id)
        metadata = info.metadata or {}
        sys.stdout.write(f"{args.job_id}: {info.status.value}{f' ({info.message})' if info.message else ''}\n")
        if "harvest_run_id" in metadata:
            sys.stdout.write(
                f"outputs: {metadata['harvest_output_dir']}/{metadata['harvest_run_id']}/ on the head node\n"
            )
        return 0
    if args.action == "logs":
        if args.follow:
            return 0 if follow_logs(client, args.job_id) == "SUCCEEDED" else 1
        sys.stdout.write(client.get_job_logs(args.job_id))
        return 0
    stopped = client.stop_job(args.job_id)
    logger.info("job {}: {}", args.job_id, "stop requested" if stopped else "had already ended")
    return 0


def _new_run_id() -> str:
    from harvest.cluster.run_folder import new_run_id

    return new_run_id()
