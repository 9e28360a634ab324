"""A collector's names: the uid that salts its episode ids (with its incarnation in their high
bits, so a restarted collector never repeats them) and the source its pushes carry."""

from __future__ import annotations

import hashlib

INCARNATION_SHIFT = 24
"""A collector's episode counter starts at `incarnation << 24`: 16 M episodes per incarnation."""


def collector_source(collector_id: int, incarnation: int = 0) -> str:
    """The source name a collector's pushes carry: `collector 3`, then `collector 3 #1` after a restart."""
    return f"collector {collector_id}" + (f" #{incarnation}" if incarnation else "")


def collector_uid(run_id: str, collector_id: int) -> int:
    """31 bits naming a collector: the low 16 bits its index (unique in a run), the high 15 a hash of the run."""
    if not 0 <= collector_id < 2**16:
        raise ValueError(f"collector_id={collector_id}: expected 0 <= id < 65536")
    run_salt = int.from_bytes(hashlib.blake2b(run_id.encode(), digest_size=2).digest(), "big") & 0x7FFF
    return (run_salt << 16) | collector_id
