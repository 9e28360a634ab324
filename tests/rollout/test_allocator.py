"""`keep_batch_buffers_on_heap` does what it says: in a fresh process, a large block allocated
and freed again and again is served from the heap instead of fresh page-faulting mmaps."""

import platform
import subprocess
import sys

import pytest

from harvest.rollout.allocator import keep_batch_buffers_on_heap
from tests.conftest import REPO_ROOT

# 48 MiB blocks: above glibc's dynamic mmap threshold (at most 32 MiB on 64-bit), below ours.
ALLOCATE_AND_FREE = """
import resource, sys
import numpy as np
if sys.argv[1] == "on":
    from harvest.rollout.allocator import keep_batch_buffers_on_heap
    assert keep_batch_buffers_on_heap() is True
    assert keep_batch_buffers_on_heap() is True  # applied once per process
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    block = np.ones(6 * 2**20)
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATE_AND_FREE, mode], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_batch_sized_blocks_are_reused_from_the_heap_instead_of_mapped_afresh():
    default, on_heap = page_faults("off"), page_faults("on")
    # Fresh mmaps fault every block in again; the heap faults the first block in once.
    assert on_heap * 3 < default, f"page faults: {on_heap} with the thresholds, {default} without"


def test_the_thresholds_are_applied_where_the_c_library_is_glibc():
    assert keep_batch_buffers_on_heap() is (platform.libc_ver()[0] == "glibc")
