"""What the API says about tasks, in one place for both payload shapes it uses.

record-info nests result URLs as ``resultInfoJson.resultUrls[].resultUrl`` while callbacks carry
``data.resultUrls`` as plain strings; third-party reports say real payloads stray from both, so
the parsers accept either shape anywhere and refuse anything they cannot make sense of with
:class:`MalformedAnswer` rather than guessing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeGuard

# Task ids the vendor hands out are hex; the sandbox and other resellers use similar tokens.
# Anything outside this set is refused before it reaches the API, a custom_id or a log line.
TASK_ID_PATTERN = r"[A-Za-z0-9_-]{6,64}"
_TASK_ID_RE = re.compile(TASK_ID_PATTERN)

TASK_TYPES = ("mj_txt2img", "mj_img2img", "mj_style_reference", "mj_omni_reference")
SPEEDS = ("relaxed", "fast", "turbo")
ASPECT_RATIOS = ("1:1", "1:2", "2:1", "2:3", "3:2", "3:4", "4:3", "5:6", "6:5", "9:16", "16:9")
VERSIONS = ("7", "6.1", "6", "5.2", "5.1", "niji6")

GRID_SIZE = 4


class MalformedAnswer(ValueError):
    """An API answer or callback body that does not have the documented shape."""


class TaskStatus(Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Task:
    task_id: str
    status: TaskStatus
    result_urls: tuple[str, ...] = ()
    error: str | None = None
    prompt: str | None = None
    completed_at: datetime | None = None
    # What a re-roll needs besides the prompt: "speed", "aspect_ratio", "version", when known.
    options: dict[str, str] = field(default_factory=dict)
    # mj_txt2img and the others of TASK_TYPES; upscales and variations are undocumented.
    task_type: str | None = None


@dataclass(frozen=True)
class CallbackNotice:
    """What a callback claims; only a doorbell, record-info has the final word."""

    task_id: str | None
    code: int | None
    result_urls: tuple[str, ...]


def is_task_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _TASK_ID_RE.fullmatch(value) is not None


def _mapping(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedAnswer(f"{what} is not a JSON object")
    return value


def _maybe_json(value: object) -> object:
    """The vendor nests JSON as strings in some fields and objects in others."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return None
    return value


def _urls(value: object) -> tuple[str, ...]:
    value = _maybe_json(value)
    if value is None:
        return ()
    if isinstance(value, dict):
        return _urls(value.get("resultUrls", value.get("result_urls")))
    if not isinstance(value, list):
        raise MalformedAnswer("resultUrls is not a list")
    urls: list[str] = []
    for item in value:
        if isinstance(item, dict):
            item = item.get("resultUrl", item.get("url"))
        if not isinstance(item, str) or not item.startswith(("http://", "https://")):
            raise MalformedAnswer("resultUrls holds something that is not an http(s) URL")
        urls.append(item)
    return tuple(urls)


def parse_time(value: object) -> datetime | None:
    """Times come as ISO strings or as epoch milliseconds; anything else is no time."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = value / 1000 if value > 10**11 else value
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and value:
        if value.isdecimal() and value.isascii():
            return parse_time(int(value))
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _prompt_and_options(param_json: object) -> tuple[str | None, dict[str, str]]:
    """The prompt and the known options of a paramJson; odd values are left out, never raised."""
    params = _maybe_json(param_json)
    if not isinstance(params, dict):
        return None, {}
    prompt = params.get("prompt")
    options: dict[str, str] = {}
    speed = params.get("speed")
    if isinstance(speed, str):
        speed = speed.lower()
        # The vendor's own record-info example says "Relax" for what generate calls "relaxed".
        speed = "relaxed" if speed == "relax" else speed
        if speed in SPEEDS:
            options["speed"] = speed
    aspect_ratio = params.get("aspectRatio")
    if isinstance(aspect_ratio, str) and aspect_ratio in ASPECT_RATIOS:
        options["aspect_ratio"] = aspect_ratio
    version = _version(params.get("version"))
    if version is not None:
        options["version"] = version
    if params.get("enableTranslation") is True:
        # A re-roll of a grid that was translated is translated again: else another picture.
        options["translate"] = "on"
    return (prompt if isinstance(prompt, str) else None), options


def _version(value: object) -> str | None:
    # A version may come as a JSON number (7, 6.1) rather than the string generate sends.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        text = str(value)
    except ValueError:
        # An int longer than the interpreter will convert; no version either way.
        return None
    return text if text in VERSIONS else None


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)[:500]


def parse_record_info(data: object) -> Task:
    """The ``data`` of a record-info answer as a :class:`Task`."""
    record = _mapping(data, "record-info data")
    task_id = record.get("taskId")
    if not is_task_id(task_id):
        raise MalformedAnswer("record-info has no valid taskId")
    flag = record.get("successFlag")
    if isinstance(flag, str) and flag.isdecimal() and flag.isascii():
        flag = int(flag)
    if isinstance(flag, bool) or flag not in (0, 1, 2, 3):
        raise MalformedAnswer(f"record-info successFlag {flag!r} is not 0, 1, 2 or 3")
    urls = _urls(record.get("resultInfoJson", record.get("resultUrls")))
    error = _text(record.get("errorMessage"))
    status = TaskStatus.PENDING
    if flag == 1:
        if not urls:
            raise MalformedAnswer("record-info says success but carries no result URLs")
        status = TaskStatus.SUCCEEDED
    elif flag in (2, 3):
        status = TaskStatus.FAILED
        error = error or ("the generation failed" if flag == 3 else "the task failed")
    prompt, options = _prompt_and_options(record.get("paramJson"))
    return Task(
        task_id=task_id,
        status=status,
        result_urls=urls,
        error=error,
        prompt=prompt,
        completed_at=parse_time(record.get("completeTime")),
        options=options,
        task_type=_text(record.get("taskType")),
    )


def parse_callback(body: object) -> CallbackNotice:
    """A callback body; it only has to name a task, the rest is advisory."""
    envelope = _mapping(body, "callback body")
    data = envelope.get("data")
    data = data if isinstance(data, dict) else {}
    task_id = data.get(
        "taskId", data.get("task_id", envelope.get("taskId", envelope.get("task_id")))
    )
    if not is_task_id(task_id):
        raise MalformedAnswer("callback names no valid taskId")
    code = envelope.get("code")
    try:
        urls = _urls(data.get("resultUrls", data.get("resultInfoJson")))
    except MalformedAnswer:
        urls = ()
    return CallbackNotice(
        task_id=task_id,
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        result_urls=urls,
    )


def webhook_signature(key: str, task_id: str, timestamp: str) -> str:
    """kie.ai's callback signature: base64(HMAC-SHA256(taskId + "." + timestamp, key))."""
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()
