"""Set-up on a machine that cannot build the local engine: said at once, in one line, before anything is fetched.

Each test runs the real entry point as a subprocess with an empty engine cache and a PATH that holds no build tool
(only the interpreter), the way a fresh machine without cmake or a compiler looks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import autocontinue.local

LOCAL_PY = Path(autocontinue.local.__file__)


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX", "CMAKE_GENERATOR", "OPENAI_API_KEY")}
    env.update(PATH=str(tools), AUTOCONTINUE_CACHE=str(tmp_path / "cache"), OPENAI_BASE_URL="")
    return env


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


def assert_names_the_tools(stderr: str) -> None:
    for needed in ("cmake", "make", "a C compiler", "a C++ compiler", "apt-get install", "xcode-select"):
        assert needed in stderr, stderr
    assert "Traceback" not in stderr


def test_the_makefile_check_runs_without_the_package_installed(bare_env: dict[str, str]) -> None:
    """`make demo` / `make engine` run `python autocontinue/local.py check` before creating the venv."""
    result = run([sys.executable, str(LOCAL_PY), "check"], bare_env)
    assert result.returncode == 1
    assert_names_the_tools(result.stderr)


def test_build_stops_before_downloading_anything(bare_env: dict[str, str], tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "autocontinue.local", "build"], bare_env)
    assert result.returncode == 1
    assert_names_the_tools(result.stderr)
    assert "downloading" not in result.stderr
    assert not any((tmp_path / "cache").glob("*.log"))  # no build was begun


def test_the_cli_on_the_local_model_says_what_to_install(bare_env: dict[str, str]) -> None:
    result = run([sys.executable, "-m", "autocontinue", "--local", "-q", "hello"], bare_env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("autocontinue: error:")]
    assert len(errors) == 1, result.stderr
    assert_names_the_tools(errors[0])


def test_a_cached_engine_needs_no_build_tools(bare_env: dict[str, str]) -> None:
    # The real cache (the engine built for the other tests): with it, the check passes on the same bare PATH.
    autocontinue.local.ensure_llama_server()
    env = {**bare_env, "AUTOCONTINUE_CACHE": str(autocontinue.local.cache_dir())}
    result = run([sys.executable, str(LOCAL_PY), "check"], env)
    assert result.returncode == 0, result.stderr
