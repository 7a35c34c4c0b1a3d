"""Start-up time of the command line: ``sentinel --help`` and ``sentinel alerts`` on an empty database.

    .venv/bin/python -m bench.cli_startup              # median of 5 runs each
    .venv/bin/python -m bench.cli_startup --repeats 9

Each run is a new Python process (``python -m monitor.cli`` from this checkout, so that an older checkout
can be measured with the same interpreter), timed from start to exit on the wall clock. ``alerts`` reads a
SQLite file that ``sentinel migrate`` created beforehand and that holds no alert, so the time is start-up:
imports, configuration and one query. No ``SENTINEL_`` variable is passed on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import benchmark_parser, machine, median_seconds

CHECKOUT = Path(__file__).resolve().parents[1]


def sentinel(args: Sequence[str]) -> None:
    """Run ``sentinel ARGS`` from this checkout; fail on a non-zero exit."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args],
        cwd=CHECKOUT,
        env=environ,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command; the median is shown")
    args = parser.parse_args()
    print(machine())
    print(f"checkout {CHECKOUT}")
    with tempfile.TemporaryDirectory() as workdir:
        url = f"sqlite:///{Path(workdir) / 'empty.db'}"
        sentinel(["migrate", "--db", url])
        for label, command in (("sentinel --help", ["--help"]), ("sentinel alerts", ["alerts", "--db", url])):
            seconds = median_seconds(lambda command=command: sentinel(command), args.repeats)
            print(f"{label:<16} median of {args.repeats}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
