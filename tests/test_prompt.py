"""The answer contract: templates, the parser (incl. adversarial completions), format_answer."""

import time

import pytest

from trainer.answer import Answer, format_answer, parse_answer
from trainer.prompt import TEMPLATES, build_messages, render_prompt

GOOD_JSON = '<think>the man walks in at 12 s</think><answer>{"ids": [3], "start": 12.5, "end": 17.8}</answer>'
GOOD_STVG = "<think>x</think>\n<answer>Target ID: 3, Time range: 12.54 to 17.83</answer>"


# ---------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_messages_hold_video_then_instruction(name):
    msgs = build_messages("the red circle that stops", duration_s=12, template=name, fps=2.0)
    user = msgs[-1]
    assert user["role"] == "user"
    assert [c["type"] for c in user["content"]] == ["video", "text"]
    text = user["content"][1]["text"]
    assert '"the red circle that stops"' in text
    assert "12.00 seconds" in text and "2 frames per second" in text
    assert "ID" in text and "<answer>" in text
    assert ("<think>" in text) == TEMPLATES[name].think
    # the example in the instruction is itself a well-formed answer of that template
    example = text[text.rindex("<answer>") :]
    head = "<think>t</think>" if TEMPLATES[name].think else ""
    assert parse_answer(head + example, template=name).format_ok


def test_messages_without_fps_and_bad_inputs():
    text = build_messages("q", duration_s=3.5)[-1]["content"][1]["text"]
    assert "3.50 seconds" in text and "frames per second" not in text
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        build_messages("q", duration_s=3, template="nope")
    with pytest.raises(ValueError, match="duration_s"):
        build_messages("q", duration_s=0)
    with pytest.raises(ValueError, match="duration_s"):
        build_messages("q", duration_s=float("nan"))


def test_render_prompt_asks_for_generation_prompt():
    class Recorder:  # stand-in for a processor: only the call convention is under test here
        def apply_chat_template(self, messages, **kw):
            self.seen = (messages, kw)
            return "PROMPT"

    rec = Recorder()
    msgs = build_messages("q", duration_s=2)
    assert render_prompt(rec, msgs) == "PROMPT"
    assert rec.seen == (msgs, {"tokenize": False, "add_generation_prompt": True})


def test_render_prompt_with_the_tiny_processor(tiny_dir):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_dir)
    prompt = render_prompt(proc, build_messages("the blue square", duration_s=4, fps=2))
    assert "<|video_pad|>" in prompt and "the blue square" in prompt
    assert prompt.rstrip().endswith("assistant")


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "ids, start, end, template",
    [
        ([3], 12.5, 17.8, "json"),
        ([2, 5], 0.0, 4.25, "json"),
        ([3], 12.54, 17.83, "stvg_r1"),
        ([2, 5], 1.0, 2.0, "stvg_r1"),
        ([7], 0.5, 0.5, "json_no_think"),
    ],
)
def test_format_answer_round_trips(ids, start, end, template):
    text = format_answer(ids, start, end, template=template, think="because")
    a = parse_answer(text, template=template)
    assert a == Answer(
        ids=tuple(ids), start_s=start, end_s=end, format_ok=True, form=TEMPLATES[template].form
    )


def A(ids=(), start=None, end=None, ok=False, form=None):
    return Answer(ids=tuple(ids), start_s=start, end_s=end, format_ok=ok, form=form)


CASES = {
    # canonical forms
    "json": (GOOD_JSON, A([3], 12.5, 17.8, True, "json")),
    "stvg_r1": (GOOD_STVG, A([3], 12.54, 17.83, True, "stvg_r1")),
    "stvg multi ids": (
        "<think>x</think><answer>Target IDs: 2, 5, Time range: 1 to 2</answer>",
        A([2, 5], 1.0, 2.0, True, "stvg_r1"),
    ),
    # lenient reading, but not the exact template -> format_ok False
    "no think": (
        '<answer>{"ids": [3], "start": 1, "end": 2}</answer>',
        A([3], 1.0, 2.0, False, "json"),
    ),
    "single int id": (
        '<think></think><answer>{"ids": 3, "start": 1, "end": 2}</answer>',
        A([3], 1.0, 2.0, False, "json"),
    ),
    "numeric strings": (
        '<think></think><answer>{"ids": ["3"], "start": "1.5", "end": " 2 "}</answer>',
        A([3], 1.5, 2.0, False, "json"),
    ),
    "key case + spaces": (
        '  <THINK> a </Think>\n\n< answer >\n { "IDS": [3] , "Start": 1, "END": 2 }\n</ANSWER>  ',
        A([3], 1.0, 2.0, False, "json"),
    ),
    "code fence": (
        '<think></think><answer>```json\n{"ids": [3], "start": 1, "end": 2}\n```</answer>',
        A([3], 1.0, 2.0, False, "json"),
    ),
    "integral float id": (
        '<think></think><answer>{"ids": [3.0], "start": 1, "end": 2}</answer>',
        A([3], 1.0, 2.0, False, "json"),
    ),
    "trailing special token": (GOOD_JSON + "<|im_end|>", A([3], 12.5, 17.8, True, "json")),
    "duplicate ids collapse": (
        '<think></think><answer>{"ids": [3, 3], "start": 1, "end": 2}</answer>',
        A([3], 1.0, 2.0, True, "json"),
    ),
    "stvg lower case, seconds, dash": (
        "<answer>target id: 4, time range: 1.5s - 3s</answer>",
        A([4], 1.5, 3.0, False, "stvg_r1"),
    ),
    # several answer blocks: the last complete one counts, and the format is broken
    "two blocks": (
        '<think></think><answer>{"ids": [1], "start": 0, "end": 1}</answer><answer>{"ids": [2], "start": 3, "end": 4}</answer>',
        A([2], 3.0, 4.0, False, "json"),
    ),
    "nested tags -> inner block": (
        '<think></think><answer><answer>{"ids": [4], "start": 1, "end": 2}</answer></answer>',
        A([4], 1.0, 2.0, False, "json"),
    ),
    "text after the answer": (GOOD_JSON + " and more", A([3], 12.5, 17.8, False, "json")),
    "text before think": ("hello " + GOOD_JSON, A([3], 12.5, 17.8, False, "json")),
    "unclosed answer (truncated)": (
        '<think></think><answer>{"ids": [3], "start": 1, "end": 2}',
        A([3], 1.0, 2.0, False, "json"),
    ),
    "extra key": (
        '<think></think><answer>{"ids": [3], "start": 1, "end": 2, "why": "x"}</answer>',
        A([3], 1.0, 2.0, False, "json"),
    ),
    # invalid spans: reversed, negative, huge, non-finite -> no span (ids kept)
    "reversed span": (
        '<think></think><answer>{"ids": [3], "start": 5, "end": 2}</answer>',
        A([3], None, None, False, "json"),
    ),
    "negative start": (
        '<think></think><answer>{"ids": [3], "start": -1, "end": 2}</answer>',
        A([3], None, None, False, "json"),
    ),
    "1e308": (
        '<think></think><answer>{"ids": [3], "start": 0, "end": 1e308}</answer>',
        A([3], None, None, False, "json"),
    ),
    "1e400 (inf)": (
        '<think></think><answer>{"ids": [3], "start": 0, "end": 1e400}</answer>',
        A([3], None, None, False, "json"),
    ),
    "NaN": (
        '<think></think><answer>{"ids": [3], "start": NaN, "end": 2}</answer>',
        A([3], None, None, False, "json"),
    ),
    "Infinity": (
        '<think></think><answer>{"ids": [3], "start": 0, "end": Infinity}</answer>',
        A([3], None, None, False, "json"),
    ),
    "string nan": (
        '<think></think><answer>{"ids": [3], "start": "nan", "end": 2}</answer>',
        A([3], None, None, False, "json"),
    ),
    "missing end": (
        '<think></think><answer>{"ids": [3], "start": 1}</answer>',
        A([3], None, None, False, "json"),
    ),
    "stvg reversed": (
        "<think></think><answer>Target ID: 3, Time range: 9 to 2</answer>",
        A([3], None, None, False, "stvg_r1"),
    ),
    # invalid ids: one bad ID voids the list (no silent partial read)
    "id 3.5": (
        '<think></think><answer>{"ids": [3.5], "start": 1, "end": 2}</answer>',
        A([], 1.0, 2.0, False, "json"),
    ),
    "id three": (
        '<think></think><answer>{"ids": ["three"], "start": 1, "end": 2}</answer>',
        A([], 1.0, 2.0, False, "json"),
    ),
    "bool id": (
        '<think></think><answer>{"ids": [true], "start": 1, "end": 2}</answer>',
        A([], 1.0, 2.0, False, "json"),
    ),
    "mixed ids": (
        '<think></think><answer>{"ids": [2, "x"], "start": 1, "end": 2}</answer>',
        A([], 1.0, 2.0, False, "json"),
    ),
    "negative id": (
        '<think></think><answer>{"ids": [-1], "start": 1, "end": 2}</answer>',
        A([], 1.0, 2.0, False, "json"),
    ),
    "empty ids": (
        '<think></think><answer>{"ids": [], "start": 1, "end": 2}</answer>',
        A([], 1.0, 2.0, False, "json"),
    ),
    "huge id": (
        '<think></think><answer>{"ids": [99999999999999999999], "start": 1, "end": 2}</answer>',
        A([], 1.0, 2.0, False, "json"),
    ),
    "stvg id 3.5": (
        "<think></think><answer>Target ID: 3.5, Time range: 1 to 2</answer>",
        A([], 1.0, 2.0, False, "stvg_r1"),
    ),
    "stvg id only": (
        "<think></think><answer>Target ID: 6</answer>",
        A([6], None, None, False, "stvg_r1"),
    ),
    # nothing to read
    "empty": ("", A()),
    "no answer tag": ('{"ids": [3], "start": 1, "end": 2}', A()),
    "answer of prose": ("<think></think><answer>the third person</answer>", A()),
    "json without known keys": ('<think></think><answer>{"object": 3}</answer>', A()),
    "json list payload": ("<think></think><answer>[3, 1, 2]</answer>", A()),
    "broken json": ('<think></think><answer>{"ids": [3, "start": 1</answer>', A()),
    "non-ASCII digits": ("<think></think><answer>Target ID: ٣, Time range: ١ to ٢</answer>", A()),
    "unicode": ("<think>人が歩く 🚶</think><answer>ＩＤ３、１２秒から</answer>", A()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parse_cases(case):
    text, expected = CASES[case]
    assert parse_answer(text) == expected


def test_non_strings_never_raise():
    for bad in (None, 3, b"<answer>", ["<answer>"], {"ids": [1]}):
        assert parse_answer(bad) == Answer()


def test_template_sets_what_format_ok_demands():
    no_think = '<answer>{"ids": [3], "start": 1, "end": 2}</answer>'
    assert parse_answer(no_think, template="json_no_think").format_ok
    assert not parse_answer(no_think, template="json").format_ok
    assert not parse_answer(
        GOOD_JSON, template="json_no_think"
    ).format_ok  # a think block is not asked for
    # the stvg_r1 template wants its own payload form, and vice versa
    assert not parse_answer(GOOD_JSON, template="stvg_r1").format_ok
    assert not parse_answer(GOOD_STVG, template="json").format_ok
    assert parse_answer(GOOD_STVG, template="stvg_r1").format_ok


@pytest.mark.parametrize(
    "name, text",
    [
        ("open tags", "<answer>" * 120_000),
        ("close tags then opens", "</answer>" * 60_000 + "<answer>" * 60_000),
        ("spaces after <", "<" + " " * 1_000_000),
        ("digits in a time range", "<answer>Time range: " + "1" * 1_000_000 + "x</answer>"),
        ("spaces in a time range", "<answer>time range:" + " " * 1_000_000 + "1 to</answer>"),
        (
            "long id list",
            "<answer>Target ID: 1" + ", 1" * 330_000 + ", time range: 1 to 2 x</answer>",
        ),
        ("deep json nesting", "<answer>{" + "[" * 1_000_000 + "}</answer>"),
        ("many digits as an id", '<answer>{"ids": [' + "9" * 1_000_000 + "]}</answer>"),
        (
            "many think blocks",
            "<think></think>" * 70_000 + "<answer>Target ID: 1, Time range: 1 to 2</answer>",
        ),
    ],
)
def test_megabyte_inputs_parse_in_linear_time(name, text):
    # ~1 MB each; a quadratic pattern would take minutes here, linear ones take well under a second.
    t0 = time.perf_counter()
    a = parse_answer(text)
    assert time.perf_counter() - t0 < 3.0, name
    assert isinstance(a, Answer) and not a.format_ok


def test_an_unreadable_time_keeps_the_ids():
    """A 400-digit integer overflows float(): no span, but the IDs stay (as with 1e400)."""
    huge = "1" + "0" * 400
    a = parse_answer(f'<think>x</think><answer>{{"ids": [1], "start": {huge}, "end": 2}}</answer>')
    assert a.ids == (1,) and a.span_s is None and not a.format_ok
    b = parse_answer('<think>x</think><answer>{"ids": [2, 4], "start": -1, "end": 2}</answer>')
    assert b.ids == (2, 4) and b.span_s is None  # out of range: no span
