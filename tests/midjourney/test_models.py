"""bot/midjourney/models.py: the two payload shapes of the API, and what is refused."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.midjourney.models import (
    ASPECT_RATIOS,
    SPEEDS,
    VERSIONS,
    CallbackNotice,
    MalformedAnswer,
    Task,
    TaskStatus,
    is_task_id,
    parse_callback,
    parse_record_info,
    parse_time,
    webhook_signature,
)

TASK = "4edb3c5d9e0f4a1b8c2d3e4f5a6b7c8d"
URLS = [f"https://tempfile.aiquickdraw.com/v/{TASK}_0_{i}.jpeg" for i in range(4)]
CREATED = datetime(2024, 3, 20, 10, 30, tzinfo=UTC)
COMPLETED = datetime(2024, 3, 20, 10, 31, 30, tzinfo=UTC)


def record(**changes: Any) -> dict[str, Any]:
    """record-info ``data`` as docs/reference/midjourney-api.md documents it."""
    data: dict[str, Any] = {
        "taskId": TASK,
        "taskType": "mj_txt2img",
        "paramJson": json.dumps({"prompt": "a red fox", "speed": "Relax"}),
        "createTime": "2024-03-20T10:30:00Z",
        "completeTime": "2024-03-20T10:31:30Z",
        "resultInfoJson": {"resultUrls": [{"resultUrl": url} for url in URLS]},
        "successFlag": 1,
        "errorCode": None,
        "errorMessage": None,
    }
    data.update(changes)
    return data


def callback(**changes: Any) -> dict[str, Any]:
    """A success callback body as documented."""
    data: dict[str, Any] = {
        "taskId": TASK,
        "promptJson": json.dumps({"prompt": "a red fox"}),
        "resultUrls": list(URLS),
    }
    data.update(changes)
    return {"code": 200, "msg": "success", "data": data}


# ----- record-info -----------------------------------------------------------------------------


def test_record_info_success() -> None:
    task = parse_record_info(record())
    assert task == Task(
        task_id=TASK,
        status=TaskStatus.SUCCEEDED,
        result_urls=tuple(URLS),
        error=None,
        prompt="a red fox",
        completed_at=COMPLETED,
        options={"speed": "relaxed"},
        task_type="mj_txt2img",
    )


def test_record_info_result_info_as_a_json_string() -> None:
    as_string = json.dumps({"resultUrls": [{"resultUrl": url} for url in URLS]})
    task = parse_record_info(record(resultInfoJson=as_string))
    assert task.status is TaskStatus.SUCCEEDED
    assert task.result_urls == tuple(URLS)


def test_record_info_single_upscale_url() -> None:
    url = "https://tempfile.aiquickdraw.com/v/upscaled_0_0.png"
    task = parse_record_info(record(resultInfoJson={"resultUrls": [{"resultUrl": url}]}))
    assert task.result_urls == (url,)


def test_record_info_pending() -> None:
    task = parse_record_info(record(successFlag=0, resultInfoJson=None, completeTime=None))
    assert task.status is TaskStatus.PENDING
    assert task.result_urls == ()
    assert task.error is None
    assert task.completed_at is None
    assert task.prompt == "a red fox"


@pytest.mark.parametrize("flag", [2, 3])
def test_record_info_failure_keeps_the_vendor_message(flag: int) -> None:
    task = parse_record_info(
        record(successFlag=flag, resultInfoJson=None, errorCode=501, errorMessage="banned prompt")
    )
    assert task.status is TaskStatus.FAILED
    assert task.error == "banned prompt"
    assert task.result_urls == ()


@pytest.mark.parametrize("flag", [2, 3])
def test_record_info_failure_without_a_message_still_explains(flag: int) -> None:
    task = parse_record_info(record(successFlag=flag, resultInfoJson=None, errorMessage=None))
    assert task.status is TaskStatus.FAILED
    assert isinstance(task.error, str)
    assert task.error.strip()


def test_record_info_param_json_forms() -> None:
    assert parse_record_info(record(paramJson={"prompt": "as object"})).prompt == "as object"
    assert parse_record_info(record(paramJson='{"prompt": "trunc')).prompt is None
    assert parse_record_info(record(paramJson="not json at all")).prompt is None
    assert parse_record_info(record(paramJson='{"speed": "fast"}')).prompt is None
    assert parse_record_info(record(paramJson='{"prompt": 5}')).prompt is None
    del_param = record()
    del del_param["paramJson"]
    assert parse_record_info(del_param).prompt is None


def test_record_info_options_next_to_the_prompt() -> None:
    params = {"prompt": "a fox", "speed": "turbo", "aspectRatio": "16:9", "version": "niji6"}
    task = parse_record_info(record(paramJson=json.dumps(params)))
    assert task.prompt == "a fox"
    assert task.options == {"speed": "turbo", "aspect_ratio": "16:9", "version": "niji6"}
    as_object = parse_record_info(record(paramJson={"speed": "fast", "version": "6.1"}))
    assert as_object.options == {"speed": "fast", "version": "6.1"}
    assert as_object.prompt is None


@pytest.mark.parametrize(
    ("speed", "expected"),
    [("Relax", "relaxed"), ("relax", "relaxed"), ("RELAXED", "relaxed"), ("Fast", "fast")],
)
def test_record_info_speed_is_matched_case_insensitively(speed: str, expected: str) -> None:
    task = parse_record_info(record(paramJson=json.dumps({"prompt": "p", "speed": speed})))
    assert task.options == {"speed": expected}


@pytest.mark.parametrize(("version", "expected"), [(7, "7"), (6.1, "6.1"), ("5.2", "5.2")])
def test_record_info_version_may_be_a_number(version: object, expected: str) -> None:
    task = parse_record_info(record(paramJson={"prompt": "p", "version": version}))
    assert task.options == {"version": expected}


@pytest.mark.parametrize(
    "params",
    [
        {"speed": "slow"},
        {"speed": "relaxing"},
        {"speed": 5},
        {"speed": None},
        {"speed": ["fast"]},
        {"speed": {"fast": True}},
        {"aspectRatio": "5:4"},
        {"aspectRatio": "16:9 "},
        {"aspectRatio": 1.5},
        {"aspectRatio": ["16:9"]},
        {"version": "8"},
        {"version": 8},
        {"version": 6.0},
        {"version": True},
        {"version": float("nan")},
        {"version": 10**5000},
        {"version": [7]},
        {"version": {"v": "7"}},
        {"stylization": 100, "chaos": 5, "waterMark": "w", "taskType": "mj_txt2img"},
    ],
)
def test_record_info_junk_options_are_ignored(params: dict[str, Any]) -> None:
    # Passed as an object: json.dumps itself refuses some of these values.
    task = parse_record_info(record(paramJson={"prompt": "a fox", **params}))
    assert task.options == {}
    assert task.prompt == "a fox"


@pytest.mark.parametrize("param_json", ["not json", '{"speed": "fast"', "[1, 2]", 7, None])
def test_record_info_without_a_param_object_has_no_options(param_json: object) -> None:
    assert parse_record_info(record(paramJson=param_json)).options == {}


def test_fuzz_options_are_only_known_values() -> None:
    rng = random.Random(7)
    seen: set[str] = set()
    for _ in range(2000):
        names = rng.sample(("prompt", "speed", "aspectRatio", "version"), rng.randrange(5))
        params = {name: rng.choice((*OPTION_VALUES, junk(rng))) for name in names}
        task = parse_record_info(record(paramJson=json.dumps(params)))
        assert task.options.get("speed", "fast") in SPEEDS
        assert task.options.get("aspect_ratio", "1:1") in ASPECT_RATIOS
        assert task.options.get("version", "7") in VERSIONS
        assert set(task.options) <= {"speed", "aspect_ratio", "version"}
        seen.update(task.options)
    # The valid values came up often enough for every option to be parsed at least once.
    assert seen == {"speed", "aspect_ratio", "version"}


def test_record_info_times_as_iso_and_epoch_millis() -> None:
    millis = int(COMPLETED.timestamp() * 1000)
    assert parse_record_info(record(completeTime=millis)).completed_at == COMPLETED
    assert parse_record_info(record(completeTime=str(millis))).completed_at == COMPLETED
    assert (
        parse_record_info(record(completeTime="2024-03-20T10:31:30+00:00")).completed_at
        == COMPLETED
    )
    assert parse_record_info(record(completeTime="yesterday")).completed_at is None


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "record",
        42,
        {},
        {k: v for k, v in record().items() if k != "taskId"},
        record(taskId="bad id!"),
        record(taskId="../../etc/passwd"),
        record(taskId="abc"),
        record(taskId="a" * 65),
        record(taskId=12345678),
        record(taskId=None),
        {k: v for k, v in record().items() if k != "successFlag"},
        record(successFlag="x"),
        record(successFlag=True),
        record(successFlag=False),
        record(successFlag=7),
        record(successFlag=-1),
        record(successFlag=None),
        record(successFlag=[1]),
        record(resultInfoJson=None),
        record(resultInfoJson={"resultUrls": []}),
        record(resultInfoJson='{"resultUrls": [broken'),
        record(resultInfoJson={"resultUrls": "https://x.example/a.png"}),
        record(resultInfoJson={"resultUrls": 5}),
        record(resultInfoJson=5),
        record(resultInfoJson={"resultUrls": [{"resultUrl": "ftp://x.example/a.png"}]}),
        record(resultInfoJson={"resultUrls": [{"resultUrl": "javascript:alert(1)"}]}),
        record(resultInfoJson={"resultUrls": [{"resultUrl": "file:///etc/passwd"}]}),
        record(resultInfoJson={"resultUrls": [{"resultUrl": None}]}),
        record(resultInfoJson={"resultUrls": [{}]}),
        record(resultInfoJson={"resultUrls": [URLS[0], 7]}),
        record(successFlag=0, resultInfoJson={"resultUrls": ["//no-scheme.example/a.png"]}),
    ],
)
def test_record_info_malformed(data: object) -> None:
    with pytest.raises(MalformedAnswer):
        parse_record_info(data)


# These inputs make parse_record_info raise something other than MalformedAnswer, so a caller that
# (rightly) catches only MalformedAnswer crashes. MidjourneyClient.record_info is such a caller.
@pytest.mark.parametrize(
    "changes",
    [
        {"successFlag": "²"},
        {"completeTime": "²"},
        {"completeTime": 10**400},
        {"paramJson": "[" * 100_000},
    ],
    ids=["flag-superscript", "time-superscript", "time-huge-int", "param-deep-json"],
)
def test_record_info_odd_values_give_a_task_or_malformed_answer(changes: dict[str, Any]) -> None:
    try:
        parse_record_info(record(**changes))
    except MalformedAnswer:
        pass


# ----- callbacks -------------------------------------------------------------------------------


def test_callback_success() -> None:
    assert parse_callback(callback()) == CallbackNotice(TASK, 200, tuple(URLS))


def test_callback_task_id_spelling() -> None:
    body = callback()
    body["data"]["task_id"] = body["data"].pop("taskId")
    assert parse_callback(body).task_id == TASK


@pytest.mark.parametrize("spelling", ["taskId", "task_id"])
def test_callback_task_id_at_the_top_level(spelling: str) -> None:
    body = {"code": 200, "msg": "success", spelling: TASK, "data": None}
    assert parse_callback(body) == CallbackNotice(TASK, 200, ())


def test_callback_task_id_in_data_wins_over_the_top_level() -> None:
    # The kie.ai signature covers one id: always the same one for the same body.
    body = callback()
    body["task_id"] = "another-task-id"
    assert parse_callback(body).task_id == TASK


def test_callback_failure() -> None:
    body = {
        "code": 500,
        "msg": "Image generation failed",
        "data": {"taskId": TASK, "resultUrls": []},
    }
    assert parse_callback(body) == CallbackNotice(TASK, 500, ())


def test_callback_in_record_info_shape() -> None:
    body = {"code": 200, "data": {"taskId": TASK, "resultInfoJson": record()["resultInfoJson"]}}
    assert parse_callback(body).result_urls == tuple(URLS)


@pytest.mark.parametrize(
    "result_urls", ["https://x.example/a.png", 5, ["ftp://x.example/a.png"], [None], "[broken"]
)
def test_callback_with_junk_urls_is_still_a_doorbell(result_urls: object) -> None:
    # The callback only has to name a task; record-info decides what happened.
    assert parse_callback(callback(resultUrls=result_urls)) == CallbackNotice(TASK, 200, ())


@pytest.mark.parametrize("code", [None, "200", True, 1.5])
def test_callback_code_that_is_not_an_int_is_none(code: object) -> None:
    body = callback()
    body["code"] = code
    assert parse_callback(body).code is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "callback",
        {},
        {"code": 200, "msg": "success"},
        {"code": 200, "data": {"resultUrls": URLS}},
        {"code": 200, "data": []},
        callback(taskId="bad id!"),
        callback(taskId="../../x"),
        callback(taskId=123456789),
        callback(taskId=None),
    ],
)
def test_callback_malformed(body: object) -> None:
    with pytest.raises(MalformedAnswer):
        parse_callback(body)


# ----- a small fuzz: junk in, Task / CallbackNotice or MalformedAnswer out ----------------------

KEYS = (
    "taskId",
    "task_id",
    "successFlag",
    "resultInfoJson",
    "resultUrls",
    "result_urls",
    "resultUrl",
    "url",
    "paramJson",
    "completeTime",
    "errorMessage",
    "data",
    "code",
    "msg",
)
STRINGS = (
    "",
    "0",
    "1",
    "3",
    "x",
    "{",
    "[",
    "[1,",
    "{}",
    "[]",
    "null",
    '{"resultUrls": [1]}',
    '{"resultUrls": ["https://a.example/x.png"]}',
    '[{"resultUrl": "http://a.example/y.png"}]',
    '{"prompt": "p"}',
    "https://a.example/x.png",
    "ftp://a.example/x.png",
    "2024-03-20T10:30:00Z",
    "2024-13-45T99:99:99",
    "1710930600000",
    TASK,
    "bad id!",
    "ü" * 8,
)
OPTION_VALUES = ("Relax", "fast", "TURBO", "16:9", "2:1", "niji6", "6.1", 7, 5.2)


def junk(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, 2, 3, 4, -1, 7, 10**11 + 1, 1710930600000, 2**63])
    if kind == 3:
        return rng.choice([0.0, 1.0, 1.5, -3.5, 1e30, float("inf"), float("nan")])
    if kind in (4, 5):
        return rng.choice(STRINGS)
    if kind == 6:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): junk(rng, depth + 1) for _ in range(rng.randrange(5))}


def mutate(rng: random.Random, value: dict[str, Any]) -> dict[str, Any]:
    value = copy.deepcopy(value)
    for _ in range(rng.randrange(1, 4)):
        target = value
        if "data" in target and isinstance(target["data"], dict) and rng.random() < 0.7:
            target = target["data"]
        if rng.random() < 0.3 and target:
            del target[rng.choice(sorted(target))]
        else:
            target[rng.choice(KEYS)] = junk(rng)
    return value


def test_fuzz_record_info_gives_a_task_or_malformed_answer() -> None:
    rng = random.Random(20240320)
    outcomes = {"task": 0, "malformed": 0}
    samples = [junk(rng) for _ in range(300)] + [mutate(rng, record()) for _ in range(700)]
    for sample in samples:
        try:
            task = parse_record_info(sample)
        except MalformedAnswer:
            outcomes["malformed"] += 1
            continue
        outcomes["task"] += 1
        assert isinstance(task, Task)
        assert is_task_id(task.task_id)
        assert all(url.startswith(("http://", "https://")) for url in task.result_urls)
        if task.status is TaskStatus.SUCCEEDED:
            assert task.result_urls
        if task.status is TaskStatus.FAILED:
            assert task.error
        assert task.completed_at is None or task.completed_at.tzinfo is not None
    # Both outcomes occur, so the loop exercised more than one path.
    assert outcomes["task"] > 50 and outcomes["malformed"] > 50, outcomes


def test_fuzz_callback_gives_a_notice_or_malformed_answer() -> None:
    rng = random.Random(15)
    outcomes = {"notice": 0, "malformed": 0}
    samples = [junk(rng) for _ in range(300)] + [mutate(rng, callback()) for _ in range(700)]
    for sample in samples:
        try:
            notice = parse_callback(sample)
        except MalformedAnswer:
            outcomes["malformed"] += 1
            continue
        outcomes["notice"] += 1
        assert isinstance(notice, CallbackNotice)
        assert is_task_id(notice.task_id)
        assert notice.code is None or type(notice.code) is int
        assert all(url.startswith(("http://", "https://")) for url in notice.result_urls)
    assert outcomes["notice"] > 50 and outcomes["malformed"] > 50, outcomes


# ----- task ids, times, signatures -------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [TASK, "abcdef", "A" * 64, "task_id-0123", "0" * 32, "uuid-like_ID-9"]
)
def test_is_task_id_accepts(value: str) -> None:
    assert is_task_id(value) is True


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abcde",
        "a" * 65,
        "abc def",
        "abcdef\n",
        "\nabcdef",
        "abc/def",
        "abc.def",
        "abc:def",
        "ü" * 8,
        "٠١٢٣٤٥",
        None,
        123456,
        b"abcdef",
        ["abcdef"],
    ],
)
def test_is_task_id_refuses(value: object) -> None:
    assert is_task_id(value) is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-20T10:30:00Z", CREATED),
        ("2024-03-20T10:30:00+00:00", CREATED),
        ("2024-03-20T12:30:00+02:00", CREATED),
        ("2024-03-20T10:30:00", CREATED),
        (int(CREATED.timestamp() * 1000), CREATED),
        (str(int(CREATED.timestamp() * 1000)), CREATED),
        (int(CREATED.timestamp()), CREATED),
        (CREATED.timestamp() * 1000, CREATED),
    ],
)
def test_parse_time(value: object, expected: datetime) -> None:
    parsed = parse_time(value)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize(
    "value", [None, "", "soon", "2024-13-01T00:00:00Z", True, False, [], {}, 1e300, float("nan")]
)
def test_parse_time_of_junk_is_none(value: object) -> None:
    assert parse_time(value) is None


@pytest.mark.parametrize("value", [10**400, "²"])
def test_parse_time_of_odd_numbers_is_none(value: object) -> None:
    assert parse_time(value) is None


@pytest.mark.parametrize(
    ("key", "task_id", "timestamp"),
    [
        ("hmac-key", TASK, "1710930600"),
        ("another key ü", "abcdef", "0"),
        ("k", "A" * 64, "9999999999"),
    ],
)
def test_webhook_signature_matches_kie_ai(key: str, task_id: str, timestamp: str) -> None:
    message = (task_id + "." + timestamp).encode("utf-8")
    expected = base64.b64encode(
        hmac.new(key.encode("utf-8"), message, hashlib.sha256).digest()
    ).decode("ascii")
    assert webhook_signature(key, task_id, timestamp) == expected


def test_webhook_signature_depends_on_every_part() -> None:
    base = webhook_signature("key", TASK, "1710930600")
    assert webhook_signature("kez", TASK, "1710930600") != base
    assert webhook_signature("key", TASK[:-1] + "e", "1710930600") != base
    assert webhook_signature("key", TASK, "1710930601") != base
    # A known answer, computed with `openssl dgst -sha256 -hmac key -binary | base64`.
    assert base == "U8Q6ppYapUCieAoYNjaHLFToMv5d7IyrfrvjRfdiyi8="
