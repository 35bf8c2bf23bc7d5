"""Why a continued call left the one-shot text: the round whose reply first differed, the prefix it was sent, whether
that prefix ends on one of the model's own token boundaries and re-tokenizes to the same tokens, the
log-probability gap of the one-shot's choice there, and whether replaying the round without the prompt cache gives
the one-shot text back."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from typing import Any

import openai

from .cases import CONTEXT, CaseResult, Exchange, OneShot, Recorder, common_prefix, sent_prefix

#: below this log-probability gap between the one-shot's token and the runner-up, the choice is a near-tie that
#: differences in floating-point evaluation order can flip
NEAR_TIE = 0.05


class Engine:
    """The llama-server endpoints a diagnosis needs beyond the OpenAI API (tokenization)."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        # Our own loopback server: a developer's http_proxy must not capture the request.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the server tokenizes message content."""
        body = json.dumps({"content": text}).encode()
        request = urllib.request.Request(
            f"{self.server_url}/tokenize", data=body, headers={"Content-Type": "application/json"}
        )
        with self._opener.open(request, timeout=30) as response:
            return [int(t) if isinstance(t, int) else int(t["id"]) for t in json.load(response)["tokens"]]


def diverging_round(exchanges: Sequence[Exchange], reference: OneShot) -> int | None:
    """Index of the first exchange whose joined text leaves the one-shot text."""
    expected = reference.text
    for index, exchange in enumerate(exchanges):
        sent = sent_prefix(exchange.request)
        joined = exchange.content if exchange.content.startswith(sent) else sent + exchange.content
        common = common_prefix(expected, joined)
        if common < min(len(expected), len(joined)):
            return index
    return None


def token_boundaries(reference: OneShot) -> list[int]:
    """Byte offsets (into the one-shot's UTF-8 text) where the model's own tokens end."""
    offsets, total = [0], 0
    for token in reference.tokens:
        total += token.nbytes
        offsets.append(total)
    return offsets


#: what a server puts in place of bytes that are not valid UTF-8
REPLACEMENT_CHAR = "\ufffd"


def diagnose(
    client: openai.OpenAI,
    recorder: Recorder,
    engine: Engine,
    reference: OneShot,
    exchanges: Sequence[Exchange],
    result: CaseResult,
    reference_ids: list[int] | None,
) -> dict[str, Any]:
    """Why a continued call left the one-shot text: the seam, the prefix sent, tokens, near-ties, the cache."""
    diagnosis: dict[str, Any] = {"round": None}
    index = diverging_round(exchanges, reference)
    if index is None:
        # Every reply agreed with the one-shot, so the model did its part: the call stopped early or joined wrongly.
        if result.stop_cause == "no_progress":
            diagnosis["cause"] = "no_progress: the answer looped (1,000 characters repeated) and the call stopped early"
        else:
            diagnosis["cause"] = (
                f"join: every reply agreed with the one-shot, the joined text did not ({result.stop_cause})"
            )
        return diagnosis
    exchange = exchanges[index]
    sent = sent_prefix(exchange.request)
    reply_new = exchange.content[len(sent) :] if exchange.content.startswith(sent) else exchange.content
    previous = exchanges[index - 1] if index > 0 else None
    previous_text = ""
    if previous is not None:
        previous_sent = sent_prefix(previous.request)
        content = previous.content
        previous_text = content if content.startswith(previous_sent) else previous_sent + content
    held = previous_text[len(sent) :] if previous_text.startswith(sent) else ""
    diagnosis.update(
        round=index + 1,
        sent_tail=sent[-CONTEXT:],
        held=held,
        reply_head=reply_new[:CONTEXT],
        expected_head=reference.text[len(sent) : len(sent) + CONTEXT],
    )
    if index == 0:
        diagnosis["cause"] = "first round differs from the one-shot: the engine is not deterministic"
        return diagnosis
    # Tokens: does the prefix end on one of the one-shot's own token boundaries, and re-tokenize identically?
    sent_bytes = len(sent.encode())
    boundaries = token_boundaries(reference)
    on_boundary = sent_bytes in boundaries
    same_tokens: bool | None = None
    if on_boundary and reference_ids is not None:
        count = boundaries.index(sent_bytes)
        same_tokens = engine.tokenize(sent) == reference_ids[:count]
    diagnosis["on_token_boundary"] = on_boundary
    diagnosis["same_tokens"] = same_tokens
    # The one-shot's first token past the prefix that the reply did not reproduce, and how close its choice was.
    differ_at = len(sent) + common_prefix(reference.text[len(sent) :], reply_new)
    differ_byte = len(reference.text[:differ_at].encode())
    position = next((i for i, end in enumerate(boundaries[1:]) if end > differ_byte), None)
    gap = reference.tokens[position].gap if position is not None else None
    diagnosis["differing_token"] = reference.tokens[position].text if position is not None else None
    diagnosis["gap"] = None if gap is None else round(gap, 4)
    # Replay the round with the prompt cache off: the whole prompt is then evaluated as one batch instead of
    # reusing the key/value entries computed token by token, which moves the logits slightly. (This rewrites the
    # slot's cache, so diagnoses run only after every case of the prompt.)
    diagnosis["replay_uncached_matches"] = _replay_matches(client, recorder, exchange, reference, sent, cache=False)
    if REPLACEMENT_CHAR in sent:
        cause = (
            "unreachable: the engine's text holds U+FFFD (it replaced invalid UTF-8 the model wrote), so the bytes "
            "the model wrote cannot be sent back"
        )
    elif not on_boundary:
        cause = "prefix cut inside one of the model's tokens"
    elif same_tokens is False:
        cause = "prefix re-tokenizes differently from the model's own tokens"
    elif same_tokens is None:
        cause = (
            "prefix tokens not compared: the one-shot's text does not re-tokenize into the model's own tokens "
            "(a seam where a tokenization can differ, or numerics)"
        )
    elif gap is not None and gap < NEAR_TIE:
        cause = f"numerics: near-tie (gap {gap:.4f}) flipped by different evaluation of the same tokens"
    else:
        cause = "numerics: same tokens, different logits"
    diagnosis["cause"] = cause
    return diagnosis


def _replay_matches(
    client: openai.OpenAI, recorder: Recorder, exchange: Exchange, reference: OneShot, sent: str, *, cache: bool
) -> bool:
    """Does sending the failing round's request again (prompt cache on or off) give the one-shot's text back?"""
    request = dict(exchange.request)
    # Replayed without streaming whatever the case did: the reply's text is what is compared.
    extra = {key: value for key, value in request.items() if key not in _SDK_FIELDS | {"stream", "stream_options"}}
    kwargs = {key: value for key, value in request.items() if key in _SDK_FIELDS}
    extra["cache_prompt"] = cache
    recorder.reset()
    reply = client.chat.completions.create(**kwargs, extra_body=extra)
    content = reply.choices[0].message.content or ""
    joined = content if content.startswith(sent) else sent + content
    common = common_prefix(reference.text, joined)
    return common >= min(len(reference.text), len(joined))


_SDK_FIELDS = frozenset({"model", "messages", "max_tokens", "temperature", "seed"})
