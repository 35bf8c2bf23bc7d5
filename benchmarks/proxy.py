"""10. ``autocontinue serve`` against the upstream called directly, with the floor of any proxy hop and LiteLLM's
proxy beside it.

Every route is measured in the same run, on the same emulator (in its own process), each server in its own process:
``direct`` (the client talks to the emulator), ``relay`` (a zero-work relay on the proxy's server stack,
``benchmarks/_relay.py``: what any Python proxy hop costs here), ``nginx`` (nginx as a zero-work reverse proxy, when
``nginx`` is on the PATH: what a proxy hop written in C costs here), ``autocontinue`` (the client talks to
``autocontinue serve`` in front of it), ``litellm`` (LiteLLM's proxy in front of it, when ``litellm[proxy]`` is
installed in the virtualenv named by ``$LITELLM_VENV``, default ``/tmp/litellm-venv``; it is not a dependency of
this project), and any other checkout named in ``$PROXY_BENCH_TREES`` (``name=path,...``: an earlier commit's
``autocontinue serve``, to measure a change in the same run). Every reply is untruncated (one round), so what is
measured is the proxy's own cost, not continuation.

Two upstreams, because a proxy's cost is a fixed amount per request and per chunk, and what it means depends on
what it is added to:

- ``bare``: the emulator answers at once (about a millisecond): the ratio is the proxy's whole cost against a
  local server's, the worst case;
- ``paced``: the emulator answers like a fast hosted model: 100 ms before the first token, then a token every
  5 ms (200 tokens a second).

Measured per route and upstream: non-streamed latency p50 and p99 (calls alternate between routes); streamed time
per chunk (a 400-token reply drained by every route in turn, 21 runs; the ratio is the median of each run's ratio to
the direct route); and the throughput of 500 concurrent streams, ``AsyncOpenAI`` with a pool of 600 connections,
with the CPU each process spent per call (this client, the emulator, the proxy) and its share of a core:

- sustained (the goal): 1,500 calls with 500 in flight all the time, calls per second over the middle half of the
  answers, the median of 4 runs. The middle half leaves out the ramp, when 500 calls start at once, and the tail,
  when fewer than 500 are left: what remains is the rate of 500 streams in flight;
- a burst (information): 500 calls started at once, calls per second to the last answer, the median of 8 batches
  (with 4, one run's direct batches ranged from 62 to 89 calls/s, and nginx, which does nothing, came out at 0.86
  of the direct route). Most of its time is the ramp and the tail: a proxy takes in 500 requests and sends them
  on before the first answers flow back, and the last streams end one by one.

With 500 streams the client's own parsing of every chunk keeps a core busy on the direct route, so both are the
machine's CPU shared out rather than the proxy's effect on one stream. On the paced upstream,
``GENTLE_CONCURRENCY`` streams at a time are measured too, where the direct route's client is not CPU-bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai

from tests.support.emulator.server import stop_process
from tests.support.serve import free_port, nginx_binary, nginx_command, wait_ready

from ._common import Row, cli, median, percentile, synthetic_text
from ._emulator import server_cpu_seconds, server_pid, start_emulator

GOAL_LATENCY = 1.10
GOAL_CHUNK = 1.10
GOAL_THROUGHPUT = 0.90
#: streams at a time on the paced upstream where the client of the direct route is not CPU-bound (the 500-stream
#: measure is: there the client's own parsing of every chunk saturates a core, for every route alike)
GENTLE_CONCURRENCY = 10
PERSONA = "vllm"
MESSAGES = [{"role": "user", "content": "Tell me a story."}]
#: the paced upstream: seconds before the first token, and between tokens
PACED = {"first_token_delay": 0.100, "token_delay": 0.005}
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", "/tmp/litellm-venv"))
#: every route's client sends it: LiteLLM's proxy will not start without a master key, the others pass it on unread
KEY = "sk-bench-0123456789abcdef"
#: the routes every run measures: other trees' names must differ from them
ROUTE_NAMES = frozenset({"direct", "nginx", "relay", "autocontinue", "litellm"})
#: the routes of other servers than ours, measured beside it: one that fails under load is reported, not fatal
REFERENCES = frozenset({"nginx", "litellm"})


@contextlib.contextmanager
def _process(
    command: list[str], ready_url: str, timeout: float, env: dict[str, str] | None = None, cwd: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in the finally below, after the process)
    proc = subprocess.Popen(
        command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, cwd=cwd
    )
    try:
        wait_ready(ready_url, proc, timeout)
        yield proc
    except RuntimeError:
        log.seek(0)
        sys.stderr.write(log.read()[-3000:].decode(errors="replace"))
        raise
    finally:
        stop_process(proc, timeout=30)
        log.close()


@contextlib.contextmanager
def _autocontinue(upstream: str, tree: str | None = None) -> Iterator[tuple[str, int]]:
    """``autocontinue serve`` in front of ``upstream``: this checkout's, or the one in the source ``tree`` given."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "autocontinue",
        "serve",
        "--upstream",
        upstream,
        "--port",
        str(port),
        "--dialect",
        "continue_final_message",
        "--log-level",
        "warning",
        "--max-concurrency",
        "2048",
    ]
    env = {"PYTHONPATH": tree} if tree else None
    with _process(command, f"http://127.0.0.1:{port}/health", 60, env=env, cwd=tree) as proc:
        yield f"http://127.0.0.1:{port}/v1", proc.pid


def _other_trees() -> list[tuple[str, str]]:
    """``$PROXY_BENCH_TREES``, ``name=path,...``: other checkouts of autocontinue (a git worktree of an earlier
    commit, say) whose ``autocontinue serve`` is measured beside this one's, to see a change's effect in one run."""
    spec = os.environ.get("PROXY_BENCH_TREES", "")
    trees = [(name, str(Path(path).resolve())) for name, _, path in (p.partition("=") for p in spec.split(",") if p)]
    taken = [name for name, _ in trees if name in ROUTE_NAMES]
    if taken or len({name for name, _ in trees}) < len(trees):
        raise SystemExit(f"PROXY_BENCH_TREES: each name must be new and not one of {sorted(ROUTE_NAMES)}")
    return trees


@contextlib.contextmanager
def _relay(upstream: str) -> Iterator[tuple[str, int]]:
    """The zero-work relay (benchmarks/_relay.py) on the same server stack: the floor of a Python proxy hop."""
    port = free_port()
    command = [sys.executable, "-m", "benchmarks._relay", "--upstream", upstream, "--port", str(port)]
    with _process(command, f"http://127.0.0.1:{port}/health", 60) as proc:
        yield f"http://127.0.0.1:{port}/v1", proc.pid


def nginx_available() -> bool:
    return nginx_binary() is not None


@contextlib.contextmanager
def _nginx(upstream: str) -> Iterator[tuple[str, int]]:
    """nginx as a zero-work reverse proxy, as it is set up in front of model servers (one process, the upstream's
    connections kept alive, nothing buffered): the floor of a proxy hop written in C, where the relay is Python's."""
    port = free_port()
    base = urlsplit(upstream)
    with tempfile.TemporaryDirectory() as prefix:
        command = nginx_command(
            Path(prefix),
            f"  upstream emulator {{ server {base.hostname}:{base.port}; keepalive 1024; }}\n"
            f"  server {{ listen 127.0.0.1:{port};\n"
            "    location = /health { return 200 ok; }\n"
            f"    location /v1/ {{ proxy_pass http://emulator{base.path.rstrip('/')}/;\n"
            '      proxy_http_version 1.1; proxy_set_header Connection "";\n'
            "      proxy_buffering off; proxy_request_buffering off; } }\n",
        )
        with _process(command, f"http://127.0.0.1:{port}/health", 30) as proc:
            yield f"http://127.0.0.1:{port}/v1", proc.pid


def _nginx_version() -> str | None:
    if not nginx_available():
        return None
    shown = subprocess.run([str(nginx_binary()), "-v"], capture_output=True, text=True, check=False).stderr
    return shown.strip().rpartition("/")[2] or None


def litellm_available() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


@contextlib.contextmanager
def _litellm(upstream: str, models: list[str]) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)  # noqa: SIM115  (removed below)
    entries = "".join(
        f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n      api_base: {upstream}\n"
        f"      api_key: x\n"
        for m in models
    )
    config.write(f"model_list:\n{entries}litellm_settings:\n  drop_params: true\n")
    config.close()
    command = [
        str(LITELLM_VENV / "bin" / "litellm"),
        "--config",
        config.name,
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    try:
        with _process(
            command,
            f"http://127.0.0.1:{port}/health/liveliness",
            180,
            env={"LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": KEY},
        ) as proc:
            yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        os.unlink(config.name)


# ------------------------------------------------------------------------------------------------- measures


def _agent_request() -> dict[str, Any]:
    """A coding agent's request, about 88 KB: 40 turns of asking, a tool call and its result, and 20 tools."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent. " * 40}]
    for turn in range(40):
        call = {"id": f"call_{turn}", "type": "function",
                "function": {"name": "read_file", "arguments": f'{{"path": "src/module_{turn}.py"}}'}}  # fmt: skip
        messages += [
            {"role": "user", "content": f"Fix the failing test in module {turn}. " * 12},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": f"def f_{turn}(x):\n    return x + 1\n" * 40},
        ]
    tools = [
        {"type": "function", "function": {"name": f"tool_{i}", "description": "Does one thing well. " * 10,
         "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "line": {"type": "integer"}},
                        "required": ["path"]}}}
        for i in range(20)
    ]  # fmt: skip
    return {"messages": messages, "tools": tools}


def _latency(
    routes: dict[str, str], model: str, calls: int, request: dict[str, Any] | None = None
) -> dict[str, dict[str, float]]:
    """Non-streamed latency per route; ``request`` (messages and more) is a one-message request by default."""
    request = request or {"messages": MESSAGES}
    clients = {
        name: openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60) for name, url in routes.items()
    }
    times: dict[str, list[float]] = {name: [] for name in routes}
    order = list(routes)
    for name in order:  # warm-up: connections, imports, caches
        for _ in range(3):
            clients[name].chat.completions.create(model=model, max_tokens=1000, **request)
    for i in range(calls):
        for name in order if i % 2 == 0 else reversed(order):  # alternate, so drift hits every route alike
            started = time.perf_counter()
            clients[name].chat.completions.create(model=model, max_tokens=1000, **request)
            times[name].append(time.perf_counter() - started)
    for client in clients.values():
        client.close()
    return {name: {"p50": median(t), "p99": percentile(t, 0.99), "n": len(t)} for name, t in times.items()}


def _per_chunk(routes: dict[str, str], model: str, runs: int) -> dict[str, dict[str, float]]:
    """Time to drain a streamed reply, per chunk the upstream sent (the direct route's count: a continued stream
    may join a whitespace chunk to the next, so its own count is smaller for the same text).

    Each run drains every route once, one after another; ``ratio`` is the median over the runs of each route's
    time against the direct route's in the same run, so that a slow stretch of a shared machine weighs on both
    sides of each ratio alike."""
    clients = {
        name: openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120) for name, url in routes.items()
    }
    per_chunk: dict[str, list[float]] = {name: [] for name in routes}
    chunks: dict[str, int] = {}
    for i in range(runs + 1):
        for name in list(routes) if i % 2 == 0 else list(reversed(routes)):
            started = time.perf_counter()
            count = 0
            for _chunk in clients[name].chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=1000, stream=True
            ):
                count += 1
            if i > 0:  # the first run warms up
                per_chunk[name].append((time.perf_counter() - started) / count)
            chunks[name] = count
    for client in clients.values():
        client.close()
    upstream_chunks = chunks["direct"]
    drained = {name: [t * chunks[name] for t in times] for name, times in per_chunk.items()}  # whole streams
    return {
        name: {
            "per_chunk_s": median(t) / upstream_chunks,
            "chunks": chunks[name],
            "ratio": median([mine / direct for mine, direct in zip(t, drained["direct"], strict=True)]),
        }
        for name, t in drained.items()
    }


def _processes(pid: int) -> Iterator[int]:
    """A process and its live descendants (a server may run its work in a child), as their ids."""
    yield pid
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that has ended meanwhile
                for child in (task / "children").read_text().split():
                    yield from _processes(int(child))


def _tree_cpu(pid: int | None) -> float | None:
    """CPU seconds of a process and its live descendants."""
    if pid is None:
        return None
    seconds = [server_cpu_seconds(each) for each in _processes(pid)]
    return None if seconds[0] is None else sum(s or 0.0 for s in seconds)


async def _throughput_once(
    url: str, model: str, calls: int, concurrency: int, pids: list[int | None], *, steady: bool = False
) -> dict[str, Any]:
    """``calls`` streamed calls, at most ``concurrency`` at once: calls per second, and the CPU seconds per call
    spent by this client and by each process in ``pids`` (the emulator, the proxy).

    Calls per second are the whole run's (``calls`` over the time to the last answer) or, with ``steady``, those of
    its middle half: the answers between the first and the last quarter of them over the time between. That leaves
    out the ramp (every call starting at once) and the tail (fewer than ``concurrency`` calls left), so that the rate
    is that of ``concurrency`` streams in flight all the time."""
    limits = httpx2.Limits(max_connections=concurrency + 100, max_keepalive_connections=concurrency + 100)
    http = httpx2.AsyncClient(limits=limits, timeout=300)
    client = openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, http_client=http)
    gate = asyncio.Semaphore(concurrency)
    answered: list[float] = []  # when each measured call's stream ended

    async def one() -> int:
        async with gate:
            stream = await client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1000, stream=True)
            count = len([c async for c in stream])
            answered.append(time.perf_counter())
            return count

    try:
        await asyncio.gather(*(one() for _ in range(20)))  # warm-up: the SDK's lazy imports, first connections
        answered.clear()
        cpu_before = [time.process_time(), *(_tree_cpu(pid) for pid in pids)]
        started = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(calls)))
        elapsed = time.perf_counter() - started
        cpu_after = [time.process_time(), *(_tree_cpu(pid) for pid in pids)]
    finally:
        await client.close()
    assert min(counts) > 3, "a stream came back empty"
    cpu = [None if a is None or b is None else (b - a) for a, b in zip(cpu_before, cpu_after, strict=True)]
    rate = calls / elapsed
    if steady:
        quarter = calls // 4
        answered.sort()
        rate = (calls - 2 * quarter) / (answered[-quarter - 1] - answered[quarter])
    return {"calls_per_s": rate, "elapsed_s": elapsed, "cpu_s": cpu}


def _throughput(
    routes: dict[str, str],
    pids: dict[str, int | None],
    upstream_pid: int | None,
    model: str,
    calls: int,
    concurrency: int,
    runs: int,
    *,
    steady: bool = False,
) -> dict[str, dict[str, Any]]:
    """Throughput per route (median of ``runs``; ``steady``: see :func:`_throughput_once`), with the CPU it took per
    call: ``client`` (this process, which drives every route alike), ``upstream`` (the emulator) and ``proxy`` (the
    route's own server, if any), and each as a share of one core over the run (a share near 1 is a process that is
    CPU-bound)."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in routes}
    failed: dict[str, str] = {}
    for i in range(runs):
        for name in list(routes) if i % 2 == 0 else list(reversed(routes)):
            if name in failed:
                continue
            pid_list = [upstream_pid, pids.get(name)]
            try:
                once = asyncio.run(_throughput_once(routes[name], model, calls, concurrency, pid_list, steady=steady))
            except Exception as error:
                if name not in REFERENCES:
                    error.add_note(f"[proxy] on the {name} route, {concurrency} streams at a time")
                    raise
                # A reference that fails under load is reported, and the routes measured all the same.
                failed[name] = f"{type(error).__name__}: {error}"
                print(f"[proxy] {name} failed, {concurrency} streams at a time: {failed[name]}", flush=True)
                continue
            results[name].append(once)
    summary: dict[str, dict[str, Any]] = {name: {"failed": reason} for name, reason in failed.items()}
    for name, runs_of in results.items():
        if name in failed:
            continue
        middle = sorted(runs_of, key=lambda r: r["calls_per_s"])[len(runs_of) // 2]
        cpu = dict(zip(("client", "upstream", "proxy"), middle["cpu_s"], strict=True))
        summary[name] = {
            "calls_per_s": median([r["calls_per_s"] for r in runs_of]),
            "runs": [r["calls_per_s"] for r in runs_of],
            "cpu_us_per_call": {k: round(1e6 * v / calls) for k, v in cpu.items() if v is not None},
            "cpu_share_of_a_core": {k: round(v / middle["elapsed_s"], 2) for k, v in cpu.items() if v is not None},
        }
    return summary


# ------------------------------------------------------------------------------------------------- the run


def _row(label: str, ours: float, base: float, unit: str, goal: str, proxy: str, ratio: float | None = None) -> Row:
    """One comparison with the direct route (``ours / base`` unless the measure gives its ``ratio``): the goal holds
    for autocontinue; the relay's (the floor) and LiteLLM's are reported beside it."""
    ratio = ours / base if ratio is None else ratio
    scale, fmt = {"ms": (1e3, "{:.1f} ms"), "µs": (1e6, "{:.0f} µs"), "/s": (1.0, "{:.0f}/s")}[unit]
    ok = (
        (ratio >= float(goal[3:]) if goal.startswith(">=") else ratio <= float(goal[3:]))
        if proxy == "autocontinue" and goal != "info"
        else None
    )
    return Row(
        "proxy",
        label,
        fmt.format(ours * scale),
        fmt.format(base * scale),
        ratio,
        goal if proxy == "autocontinue" else "info",
        ok,
    )


def _rows(
    upstream: str, latency: Any, chunk: Any, throughput: Any, streams: int, burst: Any, gentle: Any, agent: Any
) -> list[Row]:
    measures = [  # (what, results, key, unit, goal)
        ("non-streamed latency p50 (one round)", latency, "p50", "ms", f"<= {GOAL_LATENCY}"),
        ("non-streamed latency p99 (one round)", latency, "p99", "ms", f"<= {GOAL_LATENCY}"),
        (f"streamed time per upstream chunk ({chunk['direct']['chunks']} chunks)", chunk, "per_chunk_s", "µs",
         f"<= {GOAL_CHUNK}"),
        (f"{streams} concurrent streams, sustained ({throughput['calls']} calls), calls per second",
         throughput["routes"], "calls_per_s", "/s", f">= {GOAL_THROUGHPUT}"),
        (f"{streams} streams started at once, calls per second to the last answer", burst, "calls_per_s", "/s",
         "info"),
    ]  # fmt: skip
    if agent is not None:
        measures.append((f"non-streamed latency p50, a coding agent's {agent['kb']} KB request", agent["routes"], "p50",
                         "ms", "info"))  # fmt: skip
    if gentle is not None:
        measures.append((f"{gentle['calls']} streams, {gentle['concurrency']} at a time, calls per second",
                         gentle["routes"], "calls_per_s", "/s", f">= {GOAL_THROUGHPUT}"))  # fmt: skip
    return [
        _row(
            f"{upstream}: {proxy} vs direct, {what}",
            results[proxy][key],
            results["direct"][key],
            unit,
            goal,
            proxy,
            results[proxy].get("ratio"),
        )
        for proxy in [name for name in latency if name != "direct"]
        for what, results, key, unit, goal in measures
        if key in results[proxy]  # not a reference that failed this measure
    ]


def run(quick: bool) -> dict[str, Any]:
    from tests.support.emulator import Script

    calls = 40 if quick else 300
    paced_calls = 10 if quick else 60
    agent_calls = 10 if quick else 60
    chunk_runs = 2 if quick else 21
    streams = 100 if quick else 500
    stream_runs = 1 if quick else 8
    sustained_calls = 3 * streams
    sustained_runs = 1 if quick else 4
    gentle_calls = 100 if quick else 200
    short = synthetic_text(120, seed=3)  # about 30 tokens
    long = synthetic_text(1600, seed=4)  # about 400 tokens
    results: dict[str, Any] = {"litellm": litellm_available()}
    rows: list[Row] = []
    with start_emulator() as emu:
        upstream = emu.base_url(PERSONA)
        for pace, delays in (("bare", {}), ("paced", PACED)):
            short_model = emu.add_script(Script(target=short, **delays))
            long_model = emu.add_script(Script(target=long, **delays))
            with contextlib.ExitStack() as stack:
                pids: dict[str, int | None] = {}  # each proxy's process
                routes = {"direct": upstream}
                for name, start in (("relay", _relay), ("autocontinue", _autocontinue)):
                    routes[name], pids[name] = stack.enter_context(start(upstream))
                if nginx_available():
                    try:
                        routes["nginx"], pids["nginx"] = stack.enter_context(_nginx(upstream))
                    except RuntimeError as error:  # reported, as LiteLLM's
                        results.setdefault("nginx_errors", []).append(str(error))
                        print(f"[proxy] nginx did not start: {error}", flush=True)
                for name, tree in _other_trees():
                    routes[name], pids[name] = stack.enter_context(_autocontinue(upstream, tree))
                if litellm_available():
                    try:
                        routes["litellm"], pids["litellm"] = stack.enter_context(
                            _litellm(upstream, [short_model, long_model])
                        )
                    except RuntimeError as error:  # reported, and the other routes measured all the same
                        results.setdefault("litellm_errors", []).append(str(error))
                        print(f"[proxy] LiteLLM did not start: {error}", flush=True)
                print(f"[proxy] {pace}: routes {', '.join(routes)}", flush=True)
                latency = _latency(routes, short_model, calls if pace == "bare" else paced_calls)
                print(f"[proxy] {pace}: latency {latency}", flush=True)
                agent = None
                if pace == "bare":  # a proxy's cost that grows with the request: the body's reading and sending
                    request = _agent_request()
                    kb = round(len(json.dumps(request)) / 1000)
                    agent = {"kb": kb, "routes": _latency(routes, short_model, agent_calls, request)}
                    print(f"[proxy] {pace}: latency, a {kb} KB request {agent}", flush=True)
                chunk = _per_chunk(routes, long_model, chunk_runs)
                print(f"[proxy] {pace}: per chunk {chunk}", flush=True)
                throughput = {
                    "calls": sustained_calls,
                    "routes": _throughput(
                        routes,
                        pids,
                        server_pid(emu),
                        short_model,
                        sustained_calls,
                        streams,
                        sustained_runs,
                        steady=True,
                    ),
                }
                print(f"[proxy] {pace}: sustained throughput {throughput}", flush=True)
                burst = _throughput(routes, pids, server_pid(emu), short_model, streams, streams, stream_runs)
                print(f"[proxy] {pace}: a burst's throughput {burst}", flush=True)
                gentle = None
                if pace == "paced":  # the rate at which the direct route's client is not CPU-bound
                    gentle = {
                        "calls": gentle_calls,
                        "concurrency": GENTLE_CONCURRENCY,
                        "routes": _throughput(
                            routes,
                            pids,
                            server_pid(emu),
                            short_model,
                            gentle_calls,
                            GENTLE_CONCURRENCY,
                            stream_runs + 1,
                        ),
                    }
                    print(f"[proxy] {pace}: gentle throughput {gentle}", flush=True)
            results[pace] = {
                "latency": latency,
                "per_chunk": chunk,
                "throughput": throughput,
                "burst": burst,
                "gentle": gentle,
                "agent_latency": agent,
            }
            rows += _rows(pace, latency, chunk, throughput, streams, burst, gentle, agent)
    if not litellm_available():
        print(f"[proxy] LiteLLM: not measured ({LITELLM_VENV}/bin/litellm is not there)", flush=True)
    results["settings"] = {
        "calls": calls,
        "paced_calls": paced_calls,
        "agent_calls": agent_calls,
        "chunk_runs": chunk_runs,
        "streams": streams,
        "stream_runs": stream_runs,
        "sustained_calls": sustained_calls,
        "sustained_runs": sustained_runs,
        "gentle_calls": gentle_calls,
        "gentle_concurrency": GENTLE_CONCURRENCY,
        "paced": PACED,
        "persona": PERSONA,
        "litellm_version": _litellm_version(),
        "nginx_version": _nginx_version(),
        "other_trees": dict(_other_trees()),
    }
    results["rows"] = [row.as_dict() for row in rows]
    return results


def _litellm_version() -> str | None:
    pip = LITELLM_VENV / "bin" / "pip"
    if not pip.exists() or shutil.which(str(pip)) is None:
        return None
    shown = subprocess.run([str(pip), "show", "litellm"], capture_output=True, text=True, check=False).stdout
    return next((line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("Version:")), None)


def main() -> int:
    return cli("proxy", run)


if __name__ == "__main__":
    raise SystemExit(main())
