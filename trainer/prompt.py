"""The question half of the answer contract: prompt templates, chat messages, stop tokens.

The model is asked *which* instance IDs (the numbers drawn on the objects) and *when*
(seconds from the clip's first frame), and answers
``<think>...</think><answer>{"ids": [3], "start": 12.5, "end": 17.8}</answer>``; the
answer half (parser and its inverse) is :mod:`trainer.answer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")  # end a completion; both rollout engines stop on them


@dataclass(frozen=True)
class PromptTemplate:
    """One way of asking: the instruction and the answer form it requests.

    Attributes:
        name: key in :data:`TEMPLATES`.
        form: payload form requested inside ``<answer>``: ``"json"`` or ``"stvg_r1"``.
        think: whether a ``<think>`` block must come before the answer.
        system: optional system message (``None`` keeps the chat template's default).
        answer_instruction: the sentence describing the answer format, with an example.
    """

    name: str
    form: str
    think: bool
    answer_instruction: str
    system: str | None = None


_JSON_EXAMPLE = '<answer>{"ids": [3], "start": 12.5, "end": 17.8}</answer>'
_STVG_EXAMPLE = "<answer>Target ID: 3, Time range: 12.54 to 17.83</answer>"

TEMPLATES: dict[str, PromptTemplate] = {
    "json": PromptTemplate(
        name="json",
        form="json",
        think=True,
        answer_instruction=(
            "First reason step by step inside <think> </think>: when does it happen (times in "
            "seconds) and which numbered object is it. Then give only the final answer inside "
            "<answer> </answer> as JSON with the list of object IDs and the start and end time in "
            f"seconds from the first frame, for example: {_JSON_EXAMPLE}"
        ),
    ),
    "json_no_think": PromptTemplate(
        name="json_no_think",
        form="json",
        think=False,
        answer_instruction=(
            "Reply with the final answer only, inside <answer> </answer>, as JSON with the list of "
            "object IDs and the start and end time in seconds from the first frame, for example: "
            f"{_JSON_EXAMPLE}"
        ),
    ),
    "stvg_r1": PromptTemplate(
        name="stvg_r1",
        form="stvg_r1",
        think=True,
        answer_instruction=(
            "First reason inside <think> </think> about the timing (timestamps such as 12.54, or "
            "ranges such as 12.54 to 17.83) and about the object (its ID number). Then write the "
            'answer inside <answer> </answer> in the form "Target ID: <id>, Time range: <start> to '
            '<end>", times in seconds with two decimals, for example: '
            f"{_STVG_EXAMPLE}"
        ),
    ),
}


def get_template(name: str) -> PromptTemplate:
    """The template called ``name``; a clear error listing the valid names otherwise."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown prompt template {name!r}; choose one of {sorted(TEMPLATES)}"
        ) from None


def instruction_text(
    query_text: str, *, duration_s: float, template: str = "json", fps: float | None = None
) -> str:
    """The user instruction: what the numbers mean, the query, the clip timing, the answer form."""
    tpl = get_template(template)
    try:
        duration_s = float(duration_s)
    except (TypeError, ValueError):
        raise ValueError(f"duration_s must be a number of seconds, got {duration_s!r}") from None
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive number of seconds, got {duration_s!r}")
    timing = f"The video is {duration_s:.2f} seconds long"
    if fps is not None:
        fps = float(fps)
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be positive, got {fps!r}")
        timing += f" and is shown at {fps:g} frames per second"
    query = " ".join(str(query_text).split())
    return (
        f"{timing}. Every object in it carries a red number drawn at its centre: that number is "
        "the object's ID, and the same object keeps the same number throughout the video.\n"
        f'Find the event described by: "{query}".\n'
        "Work out during which time span it happens and which object ID (or IDs) it refers to.\n"
        f"{tpl.answer_instruction}"
    )


def build_messages(
    query_text: str, *, duration_s: float, template: str = "json", fps: float | None = None
) -> list[dict]:
    """Qwen chat messages: an optional system message and one user turn (video, then text)."""
    tpl = get_template(template)
    text = instruction_text(query_text, duration_s=duration_s, template=template, fps=fps)
    messages: list[dict] = []
    if tpl.system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": tpl.system}]})
    messages.append(
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}
    )
    return messages


def render_prompt(processor_or_tokenizer, messages: list[dict]) -> str:
    """The prompt string the policy continues (chat template + generation prompt)."""
    return processor_or_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
