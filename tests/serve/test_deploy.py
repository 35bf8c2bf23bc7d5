"""The deployment example (deploy/): as far as a machine without a Docker daemon allows, the commands the image and
the Compose file run are run here, exactly as written, against the emulator.

What is not run here: building the image and nginx (neither a Docker daemon nor nginx is on the test machine).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import yaml

from autocontinue.serve.config import build_parser
from tests.support.common import TARGET, USER, add
from tests.support.emulator import Emulator
from tests.support.serve import REPO_ROOT, ServeProcess

DEPLOY = REPO_ROOT / "deploy"


def dockerfile() -> dict[str, list[str]]:
    """Each instruction of deploy/Dockerfile (continuation lines joined) -> its arguments, in order."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, rest = line.strip().partition(" ")
            instructions.setdefault(name.upper(), []).append(rest.strip())
    return instructions


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list)
    return [str(item) for item in parsed]


def test_the_image_installs_the_serve_extra_from_these_sources() -> None:
    steps = dockerfile()
    assert "\nserve = [" in (REPO_ROOT / "pyproject.toml").read_text()  # the extra exists
    assert any("pip install" in run and "'.[serve]'" in run for run in steps["RUN"])
    for copy in steps["COPY"]:
        *sources, _target = shlex.split(copy)
        assert all((REPO_ROOT / source).exists() for source in sources), copy
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "tests/serve/node/node_modules" in ignored


def test_the_images_command_and_healthcheck_run(emu: Emulator) -> None:
    steps = dockerfile()
    entrypoint, cmd = exec_form(steps["ENTRYPOINT"][0]), exec_form(steps["CMD"][0])
    assert entrypoint[:2] == ["autocontinue", "serve"]
    model = add(emu)
    env = {"AUTOCONTINUE_UPSTREAM": emu.base_url("deepseek-beta")}
    with ServeProcess(*entrypoint[2:], *cmd, "--host", "127.0.0.1", "--dialect", "prefix", env=env) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0)
        assert client.chat.completions.create(model=model, messages=[USER], max_tokens=9).choices[0].message.content \
            == TARGET  # fmt: skip
        healthcheck = exec_form(steps["HEALTHCHECK"][0].split(" CMD ", 1)[1])
        assert healthcheck[0] == "python"
        port = proxy.url.rsplit(":", 1)[1]
        command = [sys.executable, *[arg.replace(":8080/", f":{port}/") for arg in healthcheck[1:]]]
        assert subprocess.run(command, timeout=30, check=False).returncode == 0
        assert "--drain-timeout" in cmd


def compose_service() -> dict[str, Any]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service: dict[str, Any] = compose["services"]["autocontinue"]
    return service


def test_the_compose_files_command_runs_with_held_keys(emu: Emulator, tmp_path: Path) -> None:
    service = compose_service()
    command = [str(arg) for arg in service["command"]]
    entrypoint = exec_form(dockerfile()["ENTRYPOINT"][0])
    args = build_parser().parse_args([*entrypoint[2:], *command])
    # The container's stop timeout leaves the drain its time.
    assert int(str(service["stop_grace_period"]).rstrip("s")) > args.drain_timeout
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()
    # The Compose file's command, with the secret file where this machine has it.
    keys = tmp_path / "client-keys.txt"
    keys.write_text("a-client-key\n")
    command = [str(keys) if arg == "/run/secrets/client_keys" else arg for arg in command]
    model = add(emu)
    env = {"AUTOCONTINUE_UPSTREAM": emu.base_url("deepseek-beta"), "UPSTREAM_API_KEY": "sk-held"}
    with ServeProcess(*command, "--dialect", "prefix", env=env) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="a-client-key", max_retries=0)
        reply = client.chat.completions.create(model=model, messages=[USER], max_tokens=20)  # within 8 rounds
        assert reply.choices[0].message.content == TARGET
        assert {r["headers"]["authorization"] for r in emu.requests(model)} == {"Bearer sk-held"}
