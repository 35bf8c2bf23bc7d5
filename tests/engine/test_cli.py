"""The ``autocontinue`` command, run as a subprocess the way a person runs it.

The main tests use the embedded local model (a real llama-server, started by the command itself), so they check
what matters to a user end to end: several rounds really happen, the streamed answer is the same text as the
non-streamed one, and the trace on stderr tells the rounds. Error paths that the real model cannot be made to
produce on demand (a round failing after others succeeded, an API error) run against the provider emulator.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autocontinue.local import ensure_llama_server, ensure_model
from tests.support.emulator import Emulator, Fault, Script

# Three local runs in one test can exceed the project's 300 s on a heavily loaded machine (and the first run on a
# fresh one builds the engine in the fixture); each subprocess is bounded by CLI_TIMEOUT anyway.
pytestmark = pytest.mark.timeout(1200)

# Short rounds on a reply that needs far more: every run takes several rounds. Greedy decoding and a fixed seed
# make the three runs (streamed, not streamed, JSON) comparable character for character.
PROMPT = "Explain in three short paragraphs why the sea is salty."
LOCAL_ARGS = ["--max-tokens", "12", "--max-rounds", "6", "--temperature", "0", "--seed", "42"]
#: generous: a run takes a few seconds, but a loaded 2-core machine can be many times slower
CLI_TIMEOUT = 240
ROUNDS_LINE = re.compile(r"^(\d+) rounds?, ~?(\d+) output tokens .* stop: (\w+)", re.MULTILINE)


@pytest.fixture(scope="module", autouse=True)
def _engine_built() -> None:
    # Building or fetching the engine takes minutes the first time on a machine; doing it here, once, keeps
    # that out of the subprocess timeouts below (and never skips: a missing engine is a failure).
    ensure_llama_server()
    ensure_model()


def _env() -> dict[str, str]:
    # A developer's OpenAI settings must not turn the local runs into paid remote ones.
    return {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}


def _command() -> list[str]:
    """The console script of this interpreter's environment when installed, else ``python -m autocontinue``."""
    script = Path(sys.executable).with_name("autocontinue")
    return [str(script)] if script.exists() else [sys.executable, "-m", "autocontinue"]


def run_cli(*args: str, stdin: str | None = None, module: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the command to the end; on a timeout its whole process group is killed, the llama-server included."""
    command = [*([sys.executable, "-m", "autocontinue"] if module else _command()), *args]
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # its own process group, shared with the server it starts
    ) as proc:
        try:
            stdout, stderr = proc.communicate(stdin if stdin is not None else "", timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("autocontinue: error:")]


# ------------------------------------------------------------------------------------------- the local model


def test_streamed_equals_unstreamed_and_json_on_the_local_model() -> None:
    streamed = run_cli(*LOCAL_ARGS, PROMPT)
    unstreamed = run_cli(*LOCAL_ARGS, "--no-stream", PROMPT, module=True)
    as_json = run_cli(*LOCAL_ARGS, "--json", PROMPT)
    for result in (streamed, unstreamed, as_json):
        _no_traceback(result)
        assert result.returncode in (0, 3), result.stderr  # 3: cut short by --max-rounds (checked below)

    # Several rounds happened, and the trace says so: one line per round, then the totals.
    match = ROUNDS_LINE.search(streamed.stderr)
    assert match is not None, streamed.stderr
    rounds, tokens, stop = int(match.group(1)), int(match.group(2)), match.group(3)
    assert rounds >= 3
    assert tokens <= 12 * rounds
    assert stop in ("natural", "max_rounds")
    assert {streamed.returncode, unstreamed.returncode, as_json.returncode} == {0 if stop == "natural" else 3}
    round_lines = [line for line in streamed.stderr.splitlines() if re.match(r"^\s+\d+\s+\d+\s+(length|stop)\s", line)]
    assert len(round_lines) == rounds
    assert "echo_stripped" in streamed.stderr  # llama.cpp echoes the prefix; the seam removed it

    # The same answer whether it was streamed live or printed at the end.
    assert streamed.stdout.strip()
    assert streamed.stdout == unstreamed.stdout
    assert ROUNDS_LINE.search(unstreamed.stderr) is not None

    # --json: only JSON on stdout, the same text, and the trace inside.
    document: dict[str, Any] = json.loads(as_json.stdout)
    content = document["choices"][0]["message"]["content"]
    assert content == streamed.stdout.removesuffix("\n") or content == streamed.stdout
    trace = document["continuation"]
    assert len(trace["rounds"]) == rounds
    assert trace["stop_cause"] == stop
    assert all(r["usage"]["completion_tokens"] <= 12 for r in trace["rounds"])
    assert document["usage"]["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in trace["rounds"])
    assert trace["continued"] is True


def test_prompt_from_stdin_and_quiet() -> None:
    result = run_cli("--max-tokens", "6", "--max-rounds", "2", "--temperature", "0", "-q", stdin="Name a colour.")
    _no_traceback(result)
    assert result.stdout.strip()
    if result.returncode == 0:
        assert result.stderr == ""  # --quiet: neither progress nor trace
    else:  # cut short by --max-rounds: the one-line notice, and nothing else
        assert result.returncode == 3, result.stderr
        assert len(result.stderr.splitlines()) == 1 and NOTICE.match(result.stderr), result.stderr


def test_no_heal_and_explicit_dialect_run() -> None:
    args = [*LOCAL_ARGS[:2], "--max-rounds", "3", "--no-heal", "--dialect", "continue_final_message"]
    result = run_cli(*args, PROMPT)
    assert result.returncode in (0, 3), result.stderr
    assert "healed" not in result.stderr  # nothing was held back for the model to rewrite
    assert ROUNDS_LINE.search(result.stderr) is not None


def test_no_repeat_stop_lets_a_looping_answer_go_on(emu: Emulator) -> None:
    """A server that appends the same text every round ("and so on and so on ..."): by default the call stops once
    the repetition passes the loop floor (1,000 characters); with --no-repeat-stop it goes on to --max-rounds. (This
    ran on the local model with a Japanese prompt it loops on, stopped after a few rounds of 12 tokens: repetition
    that short is now text, under the floor, and a loop long enough to pass it takes minutes of the local model.)"""
    model = emu.add_script(Script(target="", runaway="identical"))
    args = ["--base-url", emu.base_url("dashscope"), "--api-key", "k", "--model", model, "--dialect", "partial"]
    args += ["--max-tokens", "8", "--max-rounds", "150", "Tell me a story."]
    stopped_run = run_cli(*args)
    stopped = ROUNDS_LINE.search(stopped_run.stderr)
    going = ROUNDS_LINE.search(run_cli(*args, "--no-repeat-stop").stderr)
    assert stopped is not None and going is not None, stopped_run.stderr
    assert stopped.group(3) == "no_progress" and int(stopped.group(1)) < 150
    assert len(stopped_run.stdout) > 1_000  # the floor was passed before the stop
    assert going.group(3) == "max_rounds" and int(going.group(1)) == 150


# ---------------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        ([], "   \n", "the prompt is empty"),
        (["--base-url", "http://127.0.0.1:9/v1", "hello"], None, "--model is required"),
        (["--max-tokens", "0", "hello"], None, "must be a positive integer"),
        (["--dialect", "carrier-pigeon", "hello"], None, "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args: list[str], stdin: str | None, message: str) -> None:
    result = run_cli(*args, stdin=stdin)
    _no_traceback(result)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_cost_budget_with_unknown_price_is_a_configuration_error(emu: Emulator) -> None:
    model = emu.add_script(Script(target="Some text."))
    result = run_cli("--base-url", emu.base_url("llamacpp"), "--model", model, "--max-cost", "0.01", "hi")
    _no_traceback(result)
    assert result.returncode == 2
    assert len(_error_lines(result.stderr)) == 1
    assert "price" in result.stderr


# ------------------------------------------------------------------------------------------- failures (emulator)


def test_api_error_is_one_line_exit_1(emu: Emulator) -> None:
    result = run_cli("--base-url", emu.base_url("llamacpp"), "--model", "no-such-model", "hello")
    _no_traceback(result)
    assert result.returncode == 1
    lines = _error_lines(result.stderr)
    assert len(lines) == 1
    assert "NotFoundError" in lines[0]


@pytest.mark.parametrize("stream", [True, False])
def test_failed_round_prints_the_partial_text(emu: Emulator, stream: bool) -> None:
    target = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."
    # Round 2 fails with a non-transient error: round 1's text is kept and must reach stdout.
    model = emu.add_script(Script(target=target, faults={2: Fault("status", 400, message="bad prefix")}))
    args = ["--base-url", emu.base_url("llamacpp"), "--api-key", "k", "--model", model]
    args += ["--dialect", "continue_final_message", "--max-tokens", "4"]
    result = run_cli(*args, *([] if stream else ["--no-stream"]), "Tell me.")
    _no_traceback(result)
    assert result.returncode == 1
    partial = result.stdout.removesuffix("\n")
    assert partial and target.startswith(partial)
    lines = _error_lines(result.stderr)
    assert len(lines) == 1
    assert f"kept {len(partial)} characters" in lines[0]
    assert ROUNDS_LINE.search(result.stderr) is not None  # the trace of the rounds that did happen


def test_sigterm_stops_the_local_server_too() -> None:
    # `kill` or `timeout` signal the command alone; the llama-server it started must not outlive it.
    command = [*_command(), "--max-tokens", "64", "--max-rounds", "50", PROMPT]
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.read(1)  # the answer has begun: the server is up and generating
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=CLI_TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert "interrupted" in stderr
    _no_traceback(subprocess.CompletedProcess(command, proc.returncode, "", stderr))
    # Nothing is left in the command's process group: the server was stopped, not orphaned.
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


# ------------------------------------------------------------------------------------- telling the truth (emulator)

STORY = "The quick brown fox jumps over the lazy dog, and then it runs far away into the deep green forest."
NOTICE = re.compile(r"^autocontinue: incomplete answer: stopped by (\w+) after (\d+) rounds?; (.+)$", re.MULTILINE)


def _emulated(emu: Emulator, *args: str, script: Script | None = None) -> list[str]:
    model = emu.add_script(script or Script(target=STORY))
    return ["--base-url", emu.base_url("vllm"), "--model", model, "--dialect", "continue_final_message", *args]


@pytest.mark.parametrize("mode", [[], ["--no-stream"], ["--json"], ["-q"]])
def test_an_incomplete_answer_exits_3_with_a_one_line_notice(emu: Emulator, mode: list[str]) -> None:
    result = run_cli(*_emulated(emu, "--max-tokens", "3", "--max-rounds", "2", *mode), "Tell me.")
    _no_traceback(result)
    assert result.returncode == 3, result.stderr
    notice = NOTICE.search(result.stderr)
    assert notice is not None, result.stderr
    assert notice.groups() == ("max_rounds", "2", "raise --max-rounds")
    text = json.loads(result.stdout)["choices"][0]["message"]["content"] if mode == ["--json"] else result.stdout
    assert text.strip() and STORY.startswith(text.removesuffix("\n"))  # the text so far is all printed
    if mode == ["-q"]:
        assert result.stderr.splitlines() == [notice.group(0)]  # quiet, but not silent about it


def test_a_complete_answer_exits_0_without_a_notice(emu: Emulator) -> None:
    result = run_cli(*_emulated(emu, "--max-tokens", "8", "--max-rounds", "30"), "Tell me.")
    assert result.returncode == 0, result.stderr
    assert result.stdout == STORY + "\n"
    assert NOTICE.search(result.stderr) is None
    assert "stop: natural" in result.stderr


def test_a_price_on_the_command_line_makes_max_cost_work(emu: Emulator) -> None:
    # $1 per output token: a $5 budget is reached after a few rounds, and the trace prices each one.
    args = ["--max-tokens", "4", "--max-rounds", "30", "--price-in", "0", "--price-out", "1000000", "--max-cost", "5"]
    result = run_cli(*_emulated(emu, *args), "Tell me.")
    _no_traceback(result)
    assert result.returncode == 3, result.stderr
    notice = NOTICE.search(result.stderr)
    assert notice is not None and notice.group(1) == "cost_budget" and notice.group(3) == "raise --max-cost"
    assert re.search(r"output tokens .*, \$\d+\.\d+, stop: cost_budget", result.stderr), result.stderr


def test_max_seconds_ends_the_answer_in_time(emu: Emulator) -> None:
    # Each round takes at least 0.3 s upstream: with 0.8 s, at most three start; the story needs many more.
    script = Script(target=STORY, first_token_delay=0.3)
    result = run_cli(*_emulated(emu, "--max-tokens", "4", "--max-seconds", "0.8", script=script), "Tell me.")
    _no_traceback(result)
    assert result.returncode == 3, result.stderr
    notice = NOTICE.search(result.stderr)
    assert notice is not None and notice.group(1) == "time_budget" and notice.group(3) == "raise --max-seconds"
    assert 1 <= int(notice.group(2)) <= 3


# Each must fail at once, before the engine is even looked for: the cache is empty and PATH holds no compiler, so
# anything that got as far as the engine would fail differently (exit 1, "could not be started").
EARLY = [
    (["--max-cost", "-1"], "argument --max-cost: must be a positive number, got '-1'"),
    (["--max-cost", "0.01"], "--max-cost needs the price of model 'SmolLM2-135M-Instruct', which is not built in"),
    (["--price-in", "0.1"], "--price-in and --price-out go together"),
    (["--price-out", "-2", "--price-in", "1"], "argument --price-out: must be a price in USD per 1M tokens"),
    (["--max-tokens", "zero"], "argument --max-tokens: must be a positive integer, got 'zero'"),
    (["--max-rounds", "0"], "argument --max-rounds: must be a positive integer, got '0'"),
    (["--max-total-tokens", "-5"], "argument --max-total-tokens: must be a positive integer, got '-5'"),
    (["--max-round-tokens", "1.5"], "argument --max-round-tokens: must be a positive integer, got '1.5'"),
    (["--max-seconds", "0"], "argument --max-seconds: must be a positive number, got '0'"),
    (["--temperature", "warm"], "argument --temperature: must be a number, got 'warm'"),
    (["--temperature", "nan"], "argument --temperature: must be a number, got 'nan'"),
    (["--seed", "x"], "argument --seed: must be an integer, got 'x'"),
]


@pytest.mark.parametrize(("args", "message"), EARLY, ids=[" ".join(a) for a, _ in EARLY])
def test_every_option_is_checked_before_anything_starts(tmp_path: Path, args: list[str], message: str) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**_env(), "PATH": str(bare), "AUTOCONTINUE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "autocontinue", "--local", *args, "hello"],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    _no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "starting the local model" not in result.stderr
    assert "invalid" not in result.stderr and "_positive" not in result.stderr  # argparse's internal wording
    assert not (tmp_path / "cache").exists()


def test_a_connection_error_names_the_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on (bound, then released)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    result = run_cli("--base-url", url, "--model", "m", "hello")
    _no_traceback(result)
    assert result.returncode == 1
    lines = _error_lines(result.stderr)
    assert len(lines) == 1
    assert "APIConnectionError" in lines[0] and f"127.0.0.1:{port}" in lines[0], lines[0]


def _sigint_as_at_a_terminal() -> None:
    # A test run started in the background (`cmd &` in a script) inherits SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: the child gets Ctrl-C's default disposition, as in an interactive shell.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("stream", [True, False])
def test_ctrl_c_prints_the_trace_of_the_rounds_done(emu: Emulator, stream: bool) -> None:
    # Slow tokens: the call is interrupted after a few rounds, long before its end.
    long = " ".join(f"word{i}" for i in range(300)) + "."
    script = Script(target=long, token_delay=0.05)
    mode = [] if stream else ["--no-stream"]
    args = _emulated(emu, "--max-tokens", "2", "--max-rounds", "200", *mode, script=script)
    model = args[3]
    command = [*_command(), *args, "Tell me."]
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=_sigint_as_at_a_terminal,
    ) as proc:
        try:
            deadline = time.monotonic() + CLI_TIMEOUT
            while len(emu.requests(model)) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(emu.requests(model)) >= 4
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
    _no_traceback(subprocess.CompletedProcess(command, proc.returncode, stdout, stderr))
    assert proc.returncode == 130
    assert _error_lines(stderr) == ["autocontinue: error: interrupted"]
    totals = ROUNDS_LINE.search(stderr)
    assert totals is not None, stderr
    assert int(totals.group(1)) >= 3 and totals.group(3) == "interrupted"
    round_lines = [line for line in stderr.splitlines() if re.match(r"^\s+\d+\s+\d+\s+length\s", line)]
    assert len(round_lines) == int(totals.group(1))
    if stream:
        assert stdout.strip() and long.startswith(stdout.removesuffix("\n"))


# ------------------------------------------------------------------------------------------ the second model


def test_model_chooses_the_local_model() -> None:
    """``--model gemma3`` serves Gemma 3 270M instead of SmolLM2 (fetched like the engine, on first use)."""
    ensure_model("gemma3")
    args = ["--model", "gemma3", "--max-tokens", "8", "--max-rounds", "3", "--temperature", "0", "--json"]
    result = run_cli(*args, "Name three rivers of Europe.")
    _no_traceback(result)
    assert result.returncode in (0, 3), result.stderr  # 3: an answer cut by --max-rounds
    assert "gemma-3-270m" in result.stderr  # the start-up line names the model
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["model"] == "gemma-3-270m"
    assert document["choices"][0]["message"]["content"].strip()
    assert len(document["continuation"]["rounds"]) >= 2

    unknown = run_cli("--local", "--model", "no-such-model", "hello")
    _no_traceback(unknown)
    assert unknown.returncode == 2
    assert "unknown local model 'no-such-model'" in unknown.stderr
