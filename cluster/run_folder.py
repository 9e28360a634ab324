"""A run's folder is claimed once: a new run never writes into another run's folder.

`harvest run --run-id X` refuses a folder `X` that holds anything, unless `--resume X` (go on
with it) or `--overwrite` (clear it first, and only if it is a Harvest run folder: one with
`config.yaml`). Stage commands (`harvest compact|train|eval RUN_DIR`) work in an existing run
folder and leave its `config.yaml` as it is; what they were told with `--set` is recorded in
`stages.json` beside it.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

RunMode = Literal["new", "overwrite", "resume", "stage"]
STAGES_NAME = "stages.json"


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (taken, missing, not a run, not writable)."""


def claim_run_folder(root: Path, run_id: str, mode: RunMode, command: str = "run") -> None:
    """Make `root` ready for a run in `mode`, or raise `RunFolderError` saying why not."""
    if mode in ("resume", "stage"):
        if not (root / "config.yaml").is_file():
            raise RunFolderError(f"{root}: no config.yaml; expected the folder of a run made by `harvest run` or "
                                 "`harvest collect`")
        return
    entries = sorted(path.name for path in root.iterdir()) if root.is_dir() else []
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"{root}: is a file; run.output_dir/run.id must name a folder")
    if entries and mode == "new":
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise RunFolderError(f"{root}: run {run_id!r} exists ({shown}); `harvest {command} --resume {run_id}` goes "
                             f"on with it, `--overwrite` clears it first, or choose another --run-id")
    if entries and mode == "overwrite":
        if not (root / "config.yaml").is_file():
            raise RunFolderError(f"{root}: holds {len(entries)} entries but no config.yaml, so it is not a Harvest "
                                 "run folder; --overwrite clears run folders only")
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
    stages.append({"stage": stage, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "overrides": overrides})
    path.write_text(json.dumps(stages, indent=2))
