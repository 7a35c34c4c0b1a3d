"""What the benchmarks share: their command line, the machine line they print, timing, reference files.

Each benchmark prints :func:`machine` first (the machine is shared, so its load is part of the record) and
times with :func:`median_seconds`; the ones that run a daemon give each model its own copy of the digits
reference (:func:`reference_files`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from monitor.demo.data import reference_events


def benchmark_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser whose ``--help`` shows ``description`` (the benchmark's module docstring) as written."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def machine() -> str:
    """CPU model, cores, library versions and load: the first line of every benchmark's output."""
    from importlib.metadata import version

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"alibi-detect {version('alibi-detect')}; Python {platform.python_version()}; {load_average()}"
    )


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, for the record: the benchmark machine is shared."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def reference_files(workdir: Path, models: Sequence[str]) -> dict[str, Path]:
    """The digits reference written once per model, as ``workdir/reference-<model>.jsonl``, its events
    naming that model."""
    lines = "\n".join(json.dumps(e) for e in reference_events("template"))
    paths = {}
    for model in models:
        path = workdir / f"reference-{model}.jsonl"
        path.write_text(lines.replace('"template', f'"{model}') + "\n", encoding="utf-8")
        paths[model] = path
    return paths
