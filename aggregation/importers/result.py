"""What an import gives back, and the steps every importer shares: bad input named and left out
(`ImportLog.errors`), NaN and ±inf flagged (`ImportLog.warnings`), each file read once, and
the dataset written only when something importable remains (`ImportFormatError` otherwise)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger

from harvest.aggregation.compact import write_dataset
from harvest.aggregation.config import AggregationConfig
from harvest.aggregation.manifest import Manifest
from harvest.rollout.batch import BatchSchema, TransitionBatch


class ImportFormatError(ValueError):
    """A recording that cannot be imported at all (nothing importable found)."""


@dataclass
class ImportLog:
    """What an import has read, left out and flagged so far; `finish_import` hands it back in the
    `ImportResult` beside the manifest of the dataset it writes."""

    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """One line per file, row or frame left out: path (and line or frame, column) and what was expected."""
    warnings: list[str] = field(default_factory=list)
    """One line per file and column holding NaN or ±inf: how many (the rows are kept)."""


@dataclass
class ImportResult(ImportLog):
    """A finished import: what its `ImportLog` holds, and the manifest of the dataset it wrote."""

    manifest: Manifest = field(kw_only=True)


def flag_nonfinite(
    where: str, columns: Mapping[str, np.ndarray], result: ImportLog, lines: np.ndarray | None = None
) -> None:
    """Add a warning to `result` for each float column of `columns` (one entry per row) that holds
    NaN or ±inf: `where`, the column, the counts and (with `lines`, the rows' line numbers) where."""
    for name, values in columns.items():
        values = np.asarray(values)
        if values.dtype.kind != "f" or values.size == 0:
            continue
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        if not nan and not inf:
            continue
        rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        counts = " and ".join(f"{count} {label}" for count, label in ((nan, "NaN"), (inf, "inf")) if count)
        at = ""
        if lines is not None:
            shown = [str(line) for line in np.asarray(lines)[rows][:5]]
            at = f" (line{'s' if len(shown) > 1 else ''} {', '.join(shown)}{', ...' if rows.sum() > 5 else ''})"
        result.warnings.append(
            f"{where}: column {name!r} holds {counts} values in {int(rows.sum())} of {len(values)} rows{at}; kept"
        )


def unique_files(files: list[Path], result: ImportLog) -> list[Path]:
    """`files` in order, each once: a file named again (or found again inside a named folder) is
    named in `result.errors` and left out, not imported twice."""
    first: dict[Path, Path] = {}
    unique = []
    for file in files:
        key = file.resolve()
        if key in first:
            result.errors.append(f"{file}: named twice (also as {first[key]}); imported once")
            continue
        first[key] = file
        unique.append(file)
    return unique


def finish_import(
    batches: list[TransitionBatch],
    schema: BatchSchema,
    out: str | Path,
    env_id: str,
    result: ImportLog,
    what: str,
    cfg: AggregationConfig | None,
    parents: list[str],
) -> ImportResult:
    """Write `batches` as the dataset at `out`, log what `result` left out and flagged, and
    return both.

    Raises:
        ImportFormatError: there are no batches (every problem named, one line).
    """
    if not batches:
        raise ImportFormatError(
            f"nothing importable in {result.files or parents}: " + "; ".join(result.errors or [f"no {what}"])
        )
    manifest = write_dataset(
        batches,
        schema,
        out,
        cfg or AggregationConfig(formats=["parquet"]),
        run_id=f"import-{what}",
        env_id=env_id,
        parents=parents,
    )
    for error in result.errors:
        logger.warning("left out: {}", error)
    for warning in result.warnings:
        logger.warning("flagged: {}", warning)
    logger.info(
        "imported {} {} ({} rows, {} episodes) into {}; {} problems, {} flagged",
        len(result.files),
        what,
        manifest.rows,
        manifest.episodes,
        out,
        len(result.errors),
        len(result.warnings),
    )
    return ImportResult(result.files, result.errors, result.warnings, manifest=manifest)
