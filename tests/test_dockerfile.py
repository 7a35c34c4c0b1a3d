"""The Dockerfile: parsed with dockerfile-parse (no Docker engine here), and its entrypoint run for real.

The image cannot be built in the test suite, so its promises are checked on the parsed file: a multi-stage
build on a slim Python base, the CPU build of the pinned torch, a non-root user, no secrets, `sentinel` as the
entrypoint. Then the exact ENTRYPOINT + CMD, with the virtualenv's `sentinel` in place of the image's and a
temporary config file in place of /etc/sentinel/config.yaml, runs the daemon against the embedded broker and
SQLite: /healthz answers and SIGTERM ends it with exit code 0.
"""

from __future__ import annotations

import importlib
import json
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon_process import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_CONFIG = "/etc/sentinel/config.yaml"
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|KEY|CREDENTIAL", re.IGNORECASE)


@pytest.fixture(scope="module")
def dockerfile() -> Any:
    try:
        parser_module = importlib.import_module("dockerfile_parse")
    except ImportError as exc:
        pytest.fail(
            f"dockerfile-parse is needed to test the Dockerfile but cannot be imported ({exc}); "
            "install the dev tooling: .venv/bin/pip install dockerfile-parse==2.0.1",
            pytrace=False,
        )
    return parser_module.DockerfileParser(str(DOCKERFILE))


def instructions(dockerfile: Any, name: str, *, final_stage: bool = False) -> list[str]:
    """The values of every instruction called ``name`` (of the final stage only, if asked)."""
    structure = dockerfile.structure
    if final_stage:
        last_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
        structure = structure[last_from:]
    return [str(item["value"]) for item in structure if item["instruction"] == name]


def exec_form(dockerfile: Any, name: str) -> list[str]:
    """The last ``name`` instruction (ENTRYPOINT or CMD), which must use the exec (JSON) form."""
    [*_, value] = instructions(dockerfile, name, final_stage=True)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"{name} must use the exec form so SIGTERM reaches sentinel (got {value!r})")
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed)
    return parsed


def test_the_build_has_a_build_stage_and_a_slim_python_311_runtime(dockerfile: Any) -> None:
    froms = instructions(dockerfile, "FROM")
    assert len(froms) >= 2 and dockerfile.is_multistage
    assert all(re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image) for image in dockerfile.parent_images)
    # The wheel is built in the first stage and only the wheel reaches the runtime stage.
    assert any(
        re.search(r"pip wheel\b.*--no-deps|python -m build", run) for run in instructions(dockerfile, "RUN")
    )
    assert any(value.startswith("--from=") for value in instructions(dockerfile, "COPY", final_stage=True))


def test_torch_is_the_pinned_cpu_build_and_everything_else_is_constrained(dockerfile: Any) -> None:
    runs = instructions(dockerfile, "RUN", final_stage=True)
    [torch] = [run for run in runs if "torch==" in run]
    assert re.search(r"torch==2\.13\.0(\+cpu)?\b", torch)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch
    pinned = {line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()}
    assert "torch==2.13.0" in pinned
    [wheel] = [run for run in runs if ".whl" in run]
    assert "-c " in wheel and "constraints.txt" in wheel


def test_the_final_user_is_not_root(dockerfile: Any) -> None:
    [*_, user] = instructions(dockerfile, "USER", final_stage=True)
    name, _, group = user.partition(":")
    assert name not in ("root", "0") and group not in ("root", "0")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert name.isdigit() and int(name) >= 1000


def test_the_entrypoint_is_sentinel_run_with_the_mounted_config(dockerfile: Any) -> None:
    assert exec_form(dockerfile, "ENTRYPOINT") == ["sentinel"]
    assert exec_form(dockerfile, "CMD") == ["run", "--config", IMAGE_CONFIG]
    [expose] = instructions(dockerfile, "EXPOSE", final_stage=True)
    assert "8080" in expose.split()


def test_no_secret_is_baked_into_the_image(dockerfile: Any) -> None:
    baked = {**dockerfile.envs, **dockerfile.args}
    for instruction in ("ENV", "ARG"):
        for value in instructions(dockerfile, instruction):
            for match in re.finditer(r"(\w+)=(\S*)", value):
                baked[match.group(1)] = match.group(2)
    leaked = {name: value for name, value in baked.items() if SECRET_NAME.search(name) and value}
    assert not leaked, f"secret-looking ENV/ARG with values in the Dockerfile: {sorted(leaked)}"


def test_the_build_context_leaves_out_local_state(dockerfile: Any) -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".pytest_cache", ".mypy_cache", "*.db"} <= ignored
    # Everything the build copies must stay in the context.
    copied = {part for value in instructions(dockerfile, "COPY") for part in value.split()[:-1]}
    assert not {path for path in copied if not path.startswith("--") and path in ignored}


class EntrypointProcess(DaemonProcess):
    """The daemon started with a given command line instead of DaemonProcess' own."""

    def __init__(
        self, command: list[str], config: dict[str, object], workdir: Path, env: dict[str, str], cwd: Path
    ) -> None:
        super().__init__(config, workdir, env=env)
        self.command = [str(self.config_path) if part == IMAGE_CONFIG else part for part in command]
        self.cwd = cwd

    def start(self) -> EntrypointProcess:
        self.process = subprocess.Popen(
            self.command,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self


@pytest.mark.slow
@pytest.mark.kafka
def test_the_image_entrypoint_runs_the_daemon_until_sigterm(
    dockerfile: Any, broker: Any, tmp_path: Path
) -> None:
    from monitor.broker import create_topic, free_port

    command = exec_form(dockerfile, "ENTRYPOINT") + exec_form(dockerfile, "CMD")
    assert IMAGE_CONFIG in command, "CMD no longer names the config file the chart mounts"
    # The image's `sentinel` is the console script of the installed wheel, as in this virtualenv.
    command[0] = str(Path(sys.executable).with_name(command[0]))
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap_servers, topic, 2)
    port = free_port()
    config: dict[str, object] = {
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": topic, "group_id": topic},
        "api": {"host": "127.0.0.1", "port": port},
        "log": {"json_lines": True},
    }
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    # The image's environment (cache directories under /tmp), and SQLite as the image defaults to it: the
    # relative sqlite:///sentinel.db in the working directory.
    daemon = EntrypointProcess(command, config, tmp_path, env=dict(dockerfile.envs), cwd=workdir).start()
    try:
        daemon.wait_for("assigned partitions", timeout=120)
        response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert response.status_code == 200 and response.json()["status"] == "ok"
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=60) == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()
    assert (workdir / "sentinel.db").is_file()
    assert "Traceback" not in daemon.log
    # JSON lines, as the image's default configuration asks for; the last one says the daemon stopped cleanly.
    records = [json.loads(line) for line in daemon.lines if line.startswith("{")]
    assert records and records[-1]["message"] == "stopped"
