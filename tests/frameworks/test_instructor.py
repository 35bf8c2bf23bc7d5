"""instructor, run for real: ``from_openai`` on a sync and an async client, structured output and partial streaming.

instructor tells an async client from a sync one with ``inspect.iscoroutinefunction(create)``, and keeps the bound
``create`` it was given: the wrapped async ``create`` is an ``async def``, and the decorator's hook sits below any
bound method. JSON mode: the answer is text (a tool call cut mid-arguments is an error by design, see the README).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import instructor
import pytest
from instructor.v2.core.errors import (
    IncompleteOutputException,
    InstructorRetryException,
)

import autocontinue
from tests.frameworks.support import (
    CONTINUED,
    LIMIT,
    OPTIONS,
    PERSONA,
    STORY,
    Run,
    Story,
)
from tests.support.common import add
from tests.support.emulator import Emulator

session_loop = pytest.mark.asyncio(loop_scope="session")
MESSAGES = [{"role": "user", "content": "Tell me the story as JSON."}]
EXPECTED = Story.model_validate_json(STORY).model_dump()


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
def test_create(run: Run) -> None:
    model = run.add(STORY)
    client = instructor.from_openai(run.sync_client(), mode=instructor.Mode.JSON)
    with run.scope():
        story = client.chat.completions.create(model=model, response_model=Story, messages=MESSAGES, max_tokens=LIMIT)
    run.check(story.model_dump(), target=EXPECTED)


def test_plain_is_cut(emu: Emulator) -> None:
    model = add(emu, STORY)
    client = instructor.from_openai(Run("plain", emu, [], model).sync_client(), mode=instructor.Mode.JSON)
    with pytest.raises(IncompleteOutputException):
        client.chat.completions.create(
            model=model, response_model=Story, messages=MESSAGES, max_tokens=LIMIT, max_retries=0
        )
    assert len(emu.requests(model)) == 1


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
@session_loop
async def test_async_create(run: Run) -> None:
    model = run.add(STORY)
    client = instructor.from_openai(run.async_client(), mode=instructor.Mode.JSON)
    with run.scope():
        story = await client.chat.completions.create(
            model=model, response_model=Story, messages=MESSAGES, max_tokens=LIMIT
        )
    run.check(story.model_dump(), target=EXPECTED)


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
def test_create_partial_streams(run: Run) -> None:
    model = run.add(STORY)
    client = instructor.from_openai(run.sync_client(), mode=instructor.Mode.JSON)
    with run.scope():
        partials = list(
            client.chat.completions.create_partial(
                model=model, response_model=Story, messages=MESSAGES, max_tokens=LIMIT
            )
        )
    assert len(partials) > 1
    run.check(partials[-1].model_dump(), target=EXPECTED)


@pytest.mark.parametrize("run", CONTINUED, indirect=True)
@session_loop
async def test_async_create_partial_streams(run: Run) -> None:
    model = run.add(STORY)
    client = instructor.from_openai(run.async_client(), mode=instructor.Mode.JSON)
    with run.scope():
        stream = client.chat.completions.create_partial(
            model=model, response_model=Story, messages=MESSAGES, max_tokens=LIMIT
        )
        partials = [partial async for partial in stream]
    run.check(partials[-1].model_dump(), target=EXPECTED)


def test_client_built_before_the_first_scope(emu: Emulator) -> None:
    """As a new user writes it: a fresh interpreter, the instructor client built at import time, the decorator on
    the function that uses it (the first scope ever made comes after the client captured ``create``)."""
    model = add(emu, STORY)
    script = textwrap.dedent(
        f"""
        import json, instructor, openai, pydantic
        import autocontinue

        class Story(pydantic.BaseModel):
            title: str
            words: list[str]

        client = instructor.from_openai(
            openai.OpenAI(base_url={emu.base_url(PERSONA)!r}, api_key="k"), mode=instructor.Mode.JSON
        )

        @autocontinue.autocontinue(**{OPTIONS!r})
        def tell():
            return client.chat.completions.create(
                model={model!r}, response_model=Story, messages={MESSAGES!r}, max_tokens={LIMIT}
            )

        print(tell().model_dump_json())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == EXPECTED
    assert len(emu.requests(model)) > 1


def test_tools_mode_cut_mid_arguments_is_an_error(emu: Emulator) -> None:
    """instructor's default mode asks for a tool call; one cut mid-arguments is never continued as text: the call
    fails with TruncatedToolCallError after one retry with a doubled limit (instructor reports it as the cause of its
    own error)."""
    model = add(emu, "", tool_call={"name": "Story", "arguments": STORY})
    client = instructor.from_openai(Run("wrap", emu, [], model).sync_client())
    with pytest.raises(InstructorRetryException) as caught:
        client.chat.completions.create(
            model=model, response_model=Story, messages=MESSAGES, max_tokens=LIMIT, max_retries=0
        )
    cause = caught.value.__cause__
    assert isinstance(cause, autocontinue.TruncatedToolCallError)
    assert STORY.startswith(cause.tool_calls[0].function.arguments)  # the partial call, kept
    assert len(emu.requests(model)) == 2  # the round, and its one retry with a doubled limit
