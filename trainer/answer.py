"""The answer half of the answer contract: the parser and its inverse.

:func:`parse_answer` reads ``<think>...</think><answer>{"ids": [3], "start": 12.5,
"end": 17.8}</answer>`` and also the STVG-R1 text form ``Target ID: 3, Time range: 12.54
to 17.83``, so that released STVG-R1 checkpoints can be scored here. The parser never
raises and keeps every pattern linear in the input length (tags are found with one
unambiguous regex, the structure is checked on the tag sequence, payload regexes have no
nested or adjacent ambiguous repeats). The templates it checks against are
:mod:`trainer.prompt`'s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from trainer.prompt import STOP_TOKENS, TEMPLATES, get_template

MAX_TIME_S = 1e6  # answers beyond ~11 days are not times of a clip: treated as invalid
MAX_ID = 2**31 - 1  # shard IDs are int32
_TRAILING_SPECIAL = STOP_TOKENS  # stripped from a completion's end before parsing


@dataclass(frozen=True)
class Answer:
    """What a completion says.

    Attributes:
        ids: predicted instance IDs (unique, in order of appearance); empty if none parsed.
        start_s, end_s: predicted span in seconds, both ``None`` unless finite, within
            [0, MAX_TIME_S] and ``start_s <= end_s``.
        format_ok: the completion follows the template exactly (think block if the template
            has one, then one answer block, nothing after) and its payload is complete and valid.
        form: payload form recognised: ``"json"``, ``"stvg_r1"`` or ``None``.
    """

    ids: tuple[int, ...] = ()
    start_s: float | None = None
    end_s: float | None = None
    format_ok: bool = False
    form: str | None = None

    @property
    def span_s(self) -> tuple[float, float] | None:
        return None if self.start_s is None or self.end_s is None else (self.start_s, self.end_s)

    @property
    def complete(self) -> bool:
        """Both an ID set and a valid span were read."""
        return bool(self.ids) and self.span_s is not None


_TAG = re.compile(r"<(/?)\s*(think|answer)\s*>", re.IGNORECASE)
# ASCII digits only: int()/float() would also read other scripts' digits ("٣" -> 3).
_NUM = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUM_FULL = re.compile(rf"\s*{_NUM}\s*")
_ID_FULL = re.compile(r"\s*\+?[0-9]{1,10}\s*")
_TARGET = re.compile(r"target\s*ids?\b\s*(?:[:：=]\s*)?", re.IGNORECASE)
_TIME_LABEL = re.compile(r"time\s*range", re.IGNORECASE)
_STVG_FULL = re.compile(
    rf"\s*target\s*ids?\s*:\s*[0-9]+(?:\s*,\s*[0-9]+)*\s*,\s*time\s*range\s*:\s*{_NUM}\s*to\s*{_NUM}\s*\.?\s*",
    re.IGNORECASE,
)
_TIME = re.compile(
    rf"time\s*range\s*(?:[:：=]\s*)?(?:\[\s*)?({_NUM})\s*(?:(?:s|sec|secs|seconds)\b\s*)?"
    rf"(?:to|and|-|–|~|,)\s*({_NUM})",
    re.IGNORECASE,
)
_ID_KEYS = ("ids", "id", "target_ids", "target_id")
_START_KEYS = ("start", "start_s", "start_time")
_END_KEYS = ("end", "end_s", "end_time")


def _as_id(x) -> int | None:
    """An instance ID from a JSON value: ints, integral floats and digit strings; else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        v = x
    elif isinstance(x, float):
        if not (math.isfinite(x) and x.is_integer()):
            return None
        v = int(x)
    elif isinstance(x, str) and _ID_FULL.fullmatch(x):
        v = int(x)
    else:
        return None
    return v if 0 <= v <= MAX_ID else None


def _as_time(x) -> float | None:
    """A time in seconds, or None when it is not a number in ``[0, MAX_TIME_S]`` (a huge
    integer that ``float`` cannot hold is out of range, not a reason to drop the IDs)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int | float) or (
        isinstance(x, str) and len(x) <= 64 and _NUM_FULL.fullmatch(x)
    ):
        try:
            v = float(x)
        except OverflowError:  # an int beyond ~1.8e308
            return None
    else:
        return None
    return v if math.isfinite(v) and 0.0 <= v <= MAX_TIME_S else None


def _ids_from(values) -> tuple[int, ...]:
    """All-or-nothing: one bad ID invalidates the list (never a silent partial read)."""
    if not isinstance(values, list | tuple):
        values = [values]
    ids = [_as_id(v) for v in values]
    if not ids or any(i is None for i in ids):
        return ()
    return tuple(dict.fromkeys(ids))


def _span(start, end) -> tuple[float | None, float | None]:
    if start is None or end is None or start > end:
        return None, None
    return start, end


def _pick(d: dict, keys: Sequence[str]):
    for k in keys:
        if k in d:
            return d[k]
    return None


def _canonical_json(obj: dict) -> bool:
    """Exactly ``{"ids": [int, ...], "start": number, "end": number}``."""
    ids = obj.get("ids")
    return (
        set(obj) == {"ids", "start", "end"}
        and isinstance(ids, list)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        and all(
            isinstance(obj[k], int | float) and not isinstance(obj[k], bool)
            for k in ("start", "end")
        )
    )


def _parse_json(payload: str) -> tuple[tuple[int, ...], float | None, float | None, bool] | None:
    """(ids, start, end, canonical) from a JSON object payload, or None if it is not one.

    Lenient: keys in any case (and a few synonyms), a single ID instead of a list, numeric
    strings, text around the object (code fences). ``canonical`` is the strict form.
    """
    text = payload.strip()
    obj = None
    whole = True
    try:
        obj = json.loads(text)
    except Exception:  # ValueError, RecursionError on deep nesting, int digit limits
        whole = False
        lo, hi = text.find("{"), text.rfind("}")
        if 0 <= lo < hi:
            try:
                obj = json.loads(text[lo : hi + 1])
            except Exception:
                return None
    if not isinstance(obj, dict):
        return None
    d = {str(k).strip().lower(): v for k, v in obj.items()}
    raw_ids = _pick(d, _ID_KEYS)
    ids = _ids_from(raw_ids) if raw_ids is not None else ()
    start, end = _span(_as_time(_pick(d, _START_KEYS)), _as_time(_pick(d, _END_KEYS)))
    return ids, start, end, whole and _canonical_json(obj)


def _parse_text(payload: str) -> tuple[tuple[int, ...], float | None, float | None] | None:
    """(ids, start, end) from ``Target ID(s): 3[, 5], Time range: a to b``, or None."""
    m_id = _TARGET.search(payload)
    m_time = _TIME.search(payload)
    if m_id is None and m_time is None:
        return None
    ids: tuple[int, ...] = ()
    if m_id is not None:
        rest = payload[m_id.end() :]
        label = _TIME_LABEL.search(rest)
        chunk = rest[: label.start()] if label else rest
        chunk = chunk.strip().rstrip(",;.").strip().strip("[]").strip()
        ids = _ids_from([p.strip() for p in re.split(r",|\band\b", chunk)]) if chunk else ()
    start = end = None
    if m_time is not None:
        start, end = _span(_as_time(m_time.group(1)), _as_time(m_time.group(2)))
    return ids, start, end


def _answer_block(tags: list[re.Match], text: str) -> tuple[str, bool] | None:
    """Content of the last complete ``<answer>`` block (or of a trailing unclosed one).

    The last complete block opens at the last ``<answer>`` before the last ``</answer>``
    and ends at the first ``</answer>`` after that opening (so nested tags resolve to the
    inner block). One pass over the tags: linear in their number.
    """
    kinds = [(t.group(1) == "/", t.group(2).lower() == "answer") for t in tags]
    last_close = max((i for i, (c, a) in enumerate(kinds) if a and c), default=-1)
    last_open = max(
        (i for i, (c, a) in enumerate(kinds) if a and not c and i < last_close), default=-1
    )
    if last_open >= 0:
        close = next(i for i in range(last_open + 1, len(tags)) if kinds[i] == (True, True))
        return text[tags[last_open].end() : tags[close].start()], True
    trailing = max((i for i, (c, a) in enumerate(kinds) if a and not c), default=-1)
    if trailing >= 0:
        return text[tags[trailing].end() :], False
    return None


def _structure_ok(tags: list[re.Match], text: str, think: bool) -> bool:
    """Exactly [<think>, </think>,] <answer>, </answer>, only whitespace around them."""
    want = [("", "think"), ("/", "think")] if think else []
    want += [("", "answer"), ("/", "answer")]
    if [(t.group(1), t.group(2).lower()) for t in tags] != want:
        return False
    gaps = [text[: tags[0].start()], text[tags[-1].end() :]]
    if think:
        gaps.append(text[tags[1].end() : tags[2].start()])
    return all(not g.strip() for g in gaps)


def parse_answer(text: str, *, template: str | None = None) -> Answer:
    """Read a completion; never raises (anything unparsable gives an empty :class:`Answer`).

    ``template`` sets what ``format_ok`` demands: with ``None`` a think block then an
    answer block in either payload form; with a template name, that template's think
    requirement and payload form.
    """
    try:
        return _parse(text, template)
    except Exception:  # the contract: a completion can never crash a reward or an evaluation
        return Answer()


def _parse(text: str, template: str | None) -> Answer:
    if not isinstance(text, str) or not text:
        return Answer()
    tpl = TEMPLATES.get(template) if template is not None else None
    body = text.strip()
    stripped = True
    while stripped:
        stripped = False
        for tok in _TRAILING_SPECIAL:
            if body.endswith(tok):
                body, stripped = body[: -len(tok)].rstrip(), True
    tags = list(_TAG.finditer(body))
    block = _answer_block(tags, body)
    if block is None:
        return Answer()
    payload, closed = block
    parsed = None
    form = None
    strict = False
    if "{" in payload:
        res = _parse_json(payload)
        if res is not None:
            ids, start, end, strict = res
            parsed, form = (ids, start, end), "json"
    if parsed is None:
        res = _parse_text(payload)
        if res is not None:
            parsed, form = res, "stvg_r1"
            strict = _STVG_FULL.fullmatch(payload) is not None
    if parsed is None:
        return Answer()
    ids, start, end = parsed
    if not ids and start is None:
        return Answer()  # a recognised label with nothing readable behind it
    want_form = tpl.form if tpl is not None else form
    think = tpl.think if tpl is not None else True
    format_ok = (
        closed
        and strict
        and form == want_form
        and bool(ids)
        and start is not None
        and _structure_ok(tags, body, think)
    )
    return Answer(ids=ids, start_s=start, end_s=end, format_ok=format_ok, form=form)


def format_answer(
    ids: Sequence[int] | int,
    start_s: float,
    end_s: float,
    template: str = "json",
    think: str = "",
) -> str:
    """A completion in ``template``'s exact format (for tests, baselines and SFT targets)."""
    tpl = get_template(template)
    id_list = [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
    if tpl.form == "json":
        payload = json.dumps(
            {"ids": id_list, "start": round(float(start_s), 2), "end": round(float(end_s), 2)}
        )
    else:
        label = "Target ID" if len(id_list) == 1 else "Target IDs"
        payload = f"{label}: {', '.join(map(str, id_list))}, Time range: {float(start_s):.2f} to {float(end_s):.2f}"
    head = f"<think>{think}</think>" if tpl.think else ""
    return f"{head}<answer>{payload}</answer>"
