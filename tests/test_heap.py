"""monitor.heap: freed heap pages go back to the operating system after a window close or a fit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monitor.heap import release_free_memory


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux only)")
def test_freed_heap_pages_are_returned_to_the_system() -> None:
    # 200 MiB in 2 kB blocks (above pymalloc's 512-byte limit, so they come from malloc), every 16th kept:
    # the kept blocks pin the heap, so glibc cannot give the freed pages between them back on its own, as
    # happens to the daemon's heap after a window's evaluation buffers are freed.
    blocks = [bytearray(2048) for _ in range(100_000)]
    kept = blocks[::16]
    del blocks
    before = _rss_mib()
    assert release_free_memory()
    after = _rss_mib()
    assert before - after > 100, f"RSS {before:.0f} MiB -> {after:.0f} MiB"
    assert len(kept) == 6250


def test_the_daemon_and_every_detector_run_without_importing_alibi_detect() -> None:
    # alibi-detect pulls in scikit-learn, pandas and numba: about 220 MiB of resident memory per daemon.
    # latent_drift computes alibi's kernel itself, so nothing the daemon runs may import it.
    code = (
        "import sys, monitor.cli, monitor.daemon, monitor.pipeline\n"
        "from detectors.registry import DETECTORS, create_detector\n"
        "for detector_id in DETECTORS: create_detector(detector_id, {})\n"
        "print(sorted(m for m in ('alibi_detect', 'pandas', 'numba') if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr
