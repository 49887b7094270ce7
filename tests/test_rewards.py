"""Reward terms and the batch reward, with hand-computed values and hostile completions."""

import pickle

import numpy as np
import pytest

from pipeline.records import GTObject, QueryRecord, Track
from pipeline.shards import ShardVideo
from trainer.answer import format_answer, parse_answer
from trainer.rewards import (
    TaskReward,
    format_reward,
    id_reward,
    present_in_span,
    temporal_reward,
    viou_reward,
)

BOX_A = [0, 0, 10, 10]
BOX_B = [5, 0, 15, 10]  # IoU with A: 50 / 150 = 1/3


def track(track_id, box, times):
    return Track(
        track_id,
        "shape",
        np.array(times, dtype=np.float32),
        np.tile(np.float32(box), (len(times), 1)),
    )


# track 1 follows the target during the whole clip; track 2 sits next to it; track 5 only
# lives before the GT span (0..1 s) -- present in the video, absent in the span.
TRACKS = (
    track(1, BOX_A, [0, 1, 2, 3, 4]),
    track(2, BOX_B, [0, 1, 2, 3, 4]),
    track(5, BOX_A, [0, 1]),
)
QUERY = QueryRecord(
    "q1",
    "the square",
    "referring",
    (2.0, 4.0),
    gt=(GTObject(0, [2, 3, 4], [BOX_A] * 3),),
    target_ids=(1,),
)
MULTI = QueryRecord(
    "q2",
    "both",
    "referring",
    (2.0, 4.0),
    gt=(GTObject(0, [2, 3, 4], [BOX_A] * 3),),
    target_ids=(1, 2),
)
UNMATCHED = QueryRecord(
    "q3", "nobody", "referring", (2.0, 4.0), gt=(GTObject(0, [2, 3, 4], [BOX_A] * 3),)
)
VIDEO = ShardVideo(
    video_id="v",
    dataset="synthetic",
    split="train",
    width=32,
    height=32,
    out_fps=1.0,
    track_fps=1.0,
    native_fps=1.0,
    frame_times_s=np.arange(5, dtype=np.float32),
    frames=(b"",) * 5,
    tracks=TRACKS,
    queries=(QUERY, MULTI, UNMATCHED),
)


def ans(ids, start, end, **kw):
    return parse_answer(format_answer(ids, start, end, **kw))


def test_format_reward():
    assert format_reward(ans([1], 2, 4)) == 1.0
    assert (
        format_reward(parse_answer('<answer>{"ids": [1], "start": 2, "end": 4}</answer>')) == 0.0
    )  # no think
    assert format_reward(parse_answer("")) == 0.0


def test_temporal_reward_hand_computed():
    assert temporal_reward(ans([1], 2, 4), QUERY) == pytest.approx(1.0)
    assert temporal_reward(ans([1], 1, 3), QUERY) == pytest.approx(
        1 / 3
    )  # overlap 1 (2..3), union 3 (1..4)
    assert temporal_reward(ans([1], 0, 1), QUERY) == 0.0
    assert (
        temporal_reward(
            parse_answer('<think></think><answer>{"ids": [1], "start": 4, "end": 2}</answer>'),
            QUERY,
        )
        == 0.0
    )


def test_id_reward_single_and_multi_target():
    assert id_reward(ans([1], 2, 4), QUERY) == 1.0
    assert id_reward(ans([2], 2, 4), QUERY) == 0.0
    assert id_reward(ans([1, 2], 2, 4), QUERY) == 0.0  # single target: only the exact set counts
    assert id_reward(ans([1, 2], 2, 4), MULTI) == 1.0
    assert id_reward(ans([2, 5], 2, 4), MULTI) == pytest.approx(1 / 3)  # {2} / {1, 2, 5}
    assert id_reward(ans([1], 2, 4), MULTI) == pytest.approx(1 / 2)  # {1} / {1, 2}
    assert id_reward(ans([1], 2, 4), UNMATCHED) == 0.0  # no matched target: 0, and still scored
    assert id_reward(parse_answer("garbage"), QUERY) == 0.0


def test_id_reward_require_in_span():
    # the paper's definition: the ID's track must be present inside the GT span (2..4 s)
    assert present_in_span(TRACKS[0], QUERY, max_gap_s=0.5)
    assert not present_in_span(TRACKS[2], QUERY, max_gap_s=0.5)  # track 5 ends at 1 s
    q5 = QueryRecord("q", "x", "referring", (2.0, 4.0), gt=QUERY.gt, target_ids=(5,))
    assert id_reward(ans([5], 2, 4), q5) == 1.0
    assert id_reward(ans([5], 2, 4), q5, tracks=TRACKS, require_in_span=True) == 0.0
    assert id_reward(ans([1], 2, 4), QUERY, tracks=TRACKS, require_in_span=True) == 1.0
    # multi-target: an absent ID counts in the union but not as a hit -> hits {2} / union {2, 5} = 1/2
    m5 = QueryRecord("q", "x", "referring", (2.0, 4.0), gt=QUERY.gt, target_ids=(2, 5))
    assert id_reward(ans([2, 5], 2, 4), m5) == 1.0
    assert id_reward(ans([2, 5], 2, 4), m5, tracks=TRACKS, require_in_span=True) == pytest.approx(
        1 / 2
    )
    with pytest.raises(ValueError, match="needs the video's tracks"):
        id_reward(ans([1], 2, 4), QUERY, require_in_span=True)


def test_viou_reward_hand_computed():
    # the official vIoU on the 1 fps frames; the GT span (2, 4) holds frames 2, 3 (half-open)
    assert viou_reward(ans([1], 2, 4), VIDEO, QUERY) == pytest.approx(1.0)
    # object 2 over the GT span: IoU 1/3 at each of its 2 frames -> 1/3
    assert viou_reward(ans([2], 2, 4), VIDEO, QUERY) == pytest.approx(1 / 3)
    # object 1 over (0, 4): S_u = {0, 1, 2, 3}, S_i = {2, 3} with IoU 1 -> 2 / 4
    assert viou_reward(ans([1], 0, 4), VIDEO, QUERY) == pytest.approx(2 / 4)
    # object 5 (alive at 0, 1 only) over the GT span: absent on S_i = {2, 3} -> 0
    assert viou_reward(ans([5], 2, 4), VIDEO, QUERY) == 0.0
    assert (
        viou_reward(parse_answer("<answer>Target ID: 1</answer>"), VIDEO, QUERY) == 0.0
    )  # no span


HOSTILE = [
    "",
    "<answer>",
    "<answer></answer>",
    '<think></think><answer>{"ids": [1e308], "start": -1e308, "end": 1e308}</answer>',
    '<think></think><answer>{"ids": [true], "start": NaN, "end": Infinity}</answer>',
    "<answer>" * 10_000 + "</answer>" * 10_000,
    "<think>" + "x" * 1_000_000 + "</think><answer>{" + "[" * 100_000 + "}</answer>",
    "\x00\ud800 <answer>Target ID: ٣, Time range: ١ to ٢</answer>",  # lone surrogate, Arabic digits
    None,
]


def test_task_reward_batch_hand_computed():
    completions = [
        format_answer([1], 2, 4),  # format 1 + time 1 + id 1 = 3
        format_answer([2], 1, 3),  # 1 + 1/3 + 0
        '<answer>{"ids": [1], "start": 2, "end": 4}</answer>',  # no think: 0 + 1 + 1 = 2
        format_answer([1, 2], 2, 3),  # MULTI: 1 + 1/2 (2..3 of 2..4) + 1 = 2.5
        format_answer([1], 2, 4),  # UNMATCHED: 1 + 1 + 0 = 2
    ]
    queries = [QUERY, QUERY, QUERY, MULTI, UNMATCHED]
    total, comps = TaskReward()(completions, [VIDEO] * 5, queries)
    assert total == pytest.approx([3.0, 1 + 1 / 3, 2.0, 2.5, 2.0])
    assert comps["format"].tolist() == [1, 1, 0, 1, 1]
    assert comps["id"].tolist() == [1, 0, 1, 1, 0]
    assert comps["time"] == pytest.approx([1, 1 / 3, 1, 0.5, 1])
    assert set(comps) == {"format", "time", "id"} and total.shape == (5,)


def test_task_reward_weights_and_viou():
    r = TaskReward({"time": 2.0, "viou": 0.5})
    total, comps = r([format_answer([2], 2, 4)], [VIDEO], [QUERY])
    # format 1·1 + time 2·1 + id 1·0 + viou 0.5·(1/3)
    assert total[0] == pytest.approx(1 + 2 + 0 + 0.5 / 3)
    assert comps["viou"][0] == pytest.approx(1 / 3)
    logged = TaskReward(use_viou=True)([format_answer([2], 2, 4)], [VIDEO], [QUERY])
    assert logged[0][0] == pytest.approx(2.0) and logged[1]["viou"][0] == pytest.approx(
        1 / 3
    )  # weight 0


def test_task_reward_never_raises_on_hostile_completions():
    n = len(HOSTILE)
    total, comps = TaskReward(use_viou=True, require_in_span=True)(
        HOSTILE, [VIDEO] * n, [QUERY] * n
    )
    assert total.tolist() == [0.0] * n
    assert all(v.tolist() == [0.0] * n for v in comps.values())


def test_task_reward_checks_its_arguments_and_pickles():
    with pytest.raises(ValueError, match="unknown reward terms"):
        TaskReward({"tIoU": 1.0})
    with pytest.raises(ValueError, match="use_viou=False"):
        TaskReward({"viou": 1.0}, use_viou=False)
    with pytest.raises(ValueError, match="unknown prompt template"):
        TaskReward(template="xml")
    with pytest.raises(ValueError, match="2 completions, 1 videos, 1 queries"):
        TaskReward()(["a", "b"], [VIDEO], [QUERY])
    r = TaskReward({"id": 2.0}, require_in_span=True, template="stvg_r1")
    clone = pickle.loads(pickle.dumps(r))
    c = [format_answer([1], 2, 4, template="stvg_r1")]
    assert clone(c, [VIDEO], [QUERY])[0].tolist() == r(c, [VIDEO], [QUERY])[0].tolist() == [4.0]
