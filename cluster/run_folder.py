"""A run's folder: where each output lives (`RunPaths`), claimed once per run.


`harvest run --run-id X` refuses a folder `X` that holds anything, unless `--resume X` (go on
with it) or `--overwrite` (clear it first, and only if it is a Harvest run folder: one with
`config.yaml`). Stage commands (`harvest compact|train|eval RUN_DIR`) work in an existing run
folder and leave its `config.yaml` as it is; what they were told with `--set` is recorded in
`stages.json` beside it.
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from harvest.aggregation.storage import Location, location
from harvest.cluster.config import RunConfig, dump_config

RunMode = Literal["new", "overwrite", "resume", "stage"]
STAGES_NAME = "stages.json"


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (taken, missing, not a run, not writable)."""


def claim_run_folder(root: Path, run_id: str, mode: RunMode, command: str = "run") -> None:
    """Make `root` ready for a run in `mode`, or raise `RunFolderError` saying why not."""
    if mode in ("resume", "stage"):
        if not (root / "config.yaml").is_file():
            raise RunFolderError(
                f"{root}: no config.yaml; expected the folder of a run made by `harvest run` or `harvest collect`"
            )
        return
    entries = sorted(path.name for path in root.iterdir()) if root.is_dir() else []
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"{root}: is a file; run.output_dir/run.id must name a folder")
    if entries and mode == "new":
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise RunFolderError(
            f"{root}: run {run_id!r} exists ({shown}); `harvest {command} --resume {run_id}` goes "
            f"on with it, `--overwrite` clears it first, or choose another --run-id"
        )
    if entries and mode == "overwrite":
        if not (root / "config.yaml").is_file():
            raise RunFolderError(
                f"{root}: holds {len(entries)} entries but no config.yaml, so it is not a Harvest "
                "run folder; --overwrite clears run folders only"
            )
        shutil.rmtree(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"{root}: cannot create the run folder: {err.strerror or err}") from err
    probe = root / ".harvest-write-probe"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunFolderError(f"{root}: cannot write in the run folder: {err.strerror or err}") from err


def record_stage(root: Path, stage: str, overrides: list[str]) -> None:
    """Append one stage command (when, which, its `--set` items) to `<run>/stages.json`; the
    run's `config.yaml` stays as the run was made, so one stage's `--set` is a one-off."""
    path = root / STAGES_NAME
    stages = json.loads(path.read_text()) if path.is_file() else []
    stages.append(
        {"stage": stage, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "overrides": overrides}
    )
    path.write_text(json.dumps(stages, indent=2))


CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
EVAL_NAME = "eval.json"


@dataclass
class RunPaths:
    root: Path
    dataset_output: str | None = None
    """`aggregation.output`: the dataset goes to `<dataset_output>/<run id>` instead of `<root>/dataset`."""

    @classmethod
    def of(cls, cfg: RunConfig, run_id: str) -> "RunPaths":
        """The folders of run `run_id` of `cfg`: `<run.output_dir>/<run id>`, made absolute once
        here (every path handed to an actor or a subprocess comes from it)."""
        return cls(Path(cfg.run.output_dir).expanduser().absolute() / run_id, cfg.aggregation.output)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def replay_snapshot(self) -> Path:
        return self.root / "replay"

    @property
    def dataset(self) -> Location:
        """Where the run's dataset is: a local folder or an object-store prefix."""
        if self.dataset_output:
            return location(self.dataset_output).join(self.root.name)
        return location(self.root / "dataset")

    @property
    def learner(self) -> Path:
        return self.root / "learner"

    @property
    def eval(self) -> Path:
        return self.root / EVAL_NAME

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_NAME

    @property
    def log(self) -> Path:
        return self.root / "harvest.log"


def new_run_id() -> str:
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def prepare_run(cfg: RunConfig, mode: RunMode = "new", command: str = "run") -> tuple[str, RunPaths]:
    """The run id and its (absolute) folder, claimed for `mode` (see `claim_run_folder`: a new
    run refuses an existing folder); the resolved config is written there, except by a stage
    command (`mode="stage"`), which leaves the run's config as it was."""
    run_id = cfg.run.id or new_run_id()
    paths = RunPaths.of(cfg, run_id)
    claim_run_folder(paths.root, run_id, mode, command)
    if mode in ("new", "overwrite") and paths.dataset_output and paths.dataset.exists():
        if mode == "new":
            raise RunFolderError(
                f"{paths.dataset}: run {run_id!r} already has a dataset in aggregation.output; "
                "`--overwrite` replaces it, or choose another --run-id"
            )
        paths.dataset.fs.delete_dir(paths.dataset.path)
    if mode != "stage":
        paths.config.write_text(dump_config(cfg))
    return run_id, paths
