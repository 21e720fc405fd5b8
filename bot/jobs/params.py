"""Midjourney's ``--`` parameters typed in a prompt: read into a job's options, or refused.

Pure text work, no Discord and no store: ``read_params`` takes the prompt as typed and gives the
prompt to send (the parameters taken out) and the options they set, or every problem found;
``params_text`` writes options back as parameters, and ``shown_params`` says what the lines that
show a job's prompt add after it (nothing unless the prompt had parameters, ``TYPED``).

A parameter starts a word: ``--`` then a letter, after a space or at the start (``a--b``, an em
dash or ``-->`` are prompt text). Names are read in any case (``--AR`` is ``--ar``). The API has
no field for the parameters in ``UNSUPPORTED``, and does not say whether it reads parameters left
in the prompt: every other ``--word`` is refused rather than sent, so nothing is paid for a
picture the member did not ask for.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, field

from bot.midjourney.models import ASPECT_RATIOS, VERSIONS

# The option key saying the prompt had parameters typed in it ("on"): its lines show them.
TYPED = "typed_params"
# Option keys (a job's ``options``) of the ranges the API documents.
RANGES: dict[str, tuple[int, int]] = {
    "stylization": (0, 1000),
    "variety": (0, 100),
    "weirdness": (0, 3000),
}
# The API documents chaos (``variety``) in steps of 5: another number is refused, not rounded,
# so the picture paid for is the one asked for.
VARIETY_STEP = 5

# Parameter name → the option it sets.
_NUMBERS = {
    "s": "stylization",
    "stylize": "stylization",
    "c": "variety",
    "chaos": "variety",
    "w": "weirdness",
    "weird": "weirdness",
}
_SPEEDS = {"fast": "fast", "relax": "relaxed", "turbo": "turbo"}
_VERSION_FLAGS = ("v", "version")
_ASPECT_FLAGS = ("ar", "aspect")
# How each option is written back, in this order (``fast`` is the default and not written).
_SHOWN = (
    ("aspect_ratio", "ar"),
    ("version", "v"),
    ("stylization", "s"),
    ("variety", "c"),
    ("weirdness", "w"),
)

# Midjourney parameters the API has no field for, and what /imagine offers instead (or None).
UNSUPPORTED: dict[str, str | None] = {
    "no": None,
    "seed": None,
    "sameseed": None,
    "q": None,
    "quality": None,
    "tile": None,
    "iw": None,
    "sref": "the style attachment of /imagine",
    "sw": None,
    "sv": None,
    "cref": "the subject attachment of /imagine",
    "oref": "the subject attachment of /imagine",
    "cw": None,
    "ow": "the subject_strength option of /imagine",
    "raw": None,
    "style": None,
    "stop": None,
    "repeat": None,
    "r": None,
    "video": None,
    "motion": None,
    "loop": None,
    "end": None,
    "bs": None,
    "p": None,
    "profile": None,
    "personalize": None,
    "exp": None,
    "draft": None,
    "hd": None,
    "sd": None,
    "uplight": None,
    "upbeta": None,
    "upanime": None,
    "test": None,
    "testp": None,
    "creative": None,
    "public": None,
    "stealth": None,
    "relaxed": "--relax",
}

_WORD = re.compile(r"\S+")
_FLAG = re.compile(r"--([A-Za-z]\S*)\Z")
_INTEGER = re.compile(r"[0-9]{1,7}\Z")
_VERSION = re.compile(r"([0-9])(?:\.([0-9]))?\Z")
# What is left of a parameter written otherwise (Midjourney reads an em dash for "--", as phones
# make one of it): a dash-like start, maybe an invisible character, then a name. After a letter
# or digit it is prompt text ("a--b").
_LEFTOVER = re.compile(
    r"(?<![A-Za-z0-9])(?:--|[\u2014\u2015]|[\u2010-\u2013\u2212\ufe63\uff0d]{2})"
    r"[\u200b-\u200d\u2060\ufeff]*([A-Za-z]\w*)"
)
# Characters a prompt may hold that show nothing: a prompt of only these is no prompt.
_BLANKS = frozenset("\u2800\u3164\u115f\u1160\uffa0")


@dataclass(frozen=True)
class Params:
    """A prompt as typed, read: the prompt to send, the options its parameters set, and what is
    wrong with them (nothing may be sent unless ``problems`` is empty)."""

    prompt: str
    options: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def read_params(text: str, *, kept: Collection[str] = ()) -> Params:
    """``text``'s parameters taken out; the text unchanged when it has none. The names in
    ``kept`` are left in the prompt as text (the sandbox's ``--fail``, which it reads there)."""
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
    options: dict[str, str] = {}
    given: dict[str, str] = {}
    problems: list[str] = []
    cuts: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        start, end, word = words[i]
        flag = _FLAG.match(word)
        i += 1
        if flag is None:
            continue
        name = flag[1].lower()
        if name in kept:
            continue
        value = words[i][2] if i < len(words) and not _FLAG.match(words[i][2]) else None
        key, setting, problem, takes = _one(name, value)
        if takes:
            end = words[i][1]
            i += 1
        cuts.append((start, end))
        # The member's own words, quoted in code: no backtick of theirs, and not a page of it.
        shown = (f"--{name}" + (f" {value}" if takes else "")).replace("`", "'")[:40]
        if problem is not None:
            problems.append(f"`{shown}`: {problem}")
            continue
        assert key is not None and setting is not None
        if key in options and options[key] != setting:
            problems.append(f"`{given[key]}` and `{shown}` disagree: give one")
            continue
        options.setdefault(key, setting)
        given.setdefault(key, shown)
    if cuts:
        parts, at = [], 0
        for start, end in cuts:
            parts.append(text[at:start].strip())
            at = end
        parts.append(text[at:].strip())
        text = " ".join(part for part in parts if part)
    for leftover in _LEFTOVER.finditer(text):
        if leftover[1].lower() not in kept:
            shown = leftover.group().replace("`", "'")[:40]
            problems.append(f"`{shown}`: write a parameter as --name, after a space")
    return Params(text, options, tuple(problems))


def visible(text: str) -> bool:
    """Whether ``text`` shows anything: not only spaces, controls, format characters (zero
    width) or blank glyphs."""
    return any(
        unicodedata.category(ch) not in ("Cf", "Cc", "Zs", "Zl", "Zp") and ch not in _BLANKS
        for ch in text
    )


def _one(name: str, value: str | None) -> tuple[str | None, str | None, str | None, bool]:
    """(option key, its value, problem, whether ``value`` was taken) of one parameter."""
    if name in _SPEEDS:
        return "speed", _SPEEDS[name], None, False
    if name == "niji":
        if value is not None and (_INTEGER.match(value) or _VERSION.match(value)):
            if value in ("6", "6.0"):
                return "version", "niji6", None, True
            return None, None, "the API has niji 6 only: use --niji 6", True
        return "version", "niji6", None, False
    if name in _ASPECT_FLAGS:
        if value is None:
            return None, None, "give an aspect ratio, such as --ar 16:9", False
        if value not in ASPECT_RATIOS:
            return None, None, f"the API has only {', '.join(ASPECT_RATIOS)}", True
        return "aspect_ratio", value, None, True
    if name in _VERSION_FLAGS:
        return _version(value)
    if name in _NUMBERS:
        return _number(_NUMBERS[name], value)
    if name in UNSUPPORTED:
        instead = UNSUPPORTED[name]
        if instead is None:
            return None, None, "the API has no such parameter, and nothing replaces it", False
        return None, None, f"the API has no such parameter: use {instead}", False
    return None, None, "not a parameter the bot knows", False


def _version(value: str | None) -> tuple[str | None, str | None, str | None, bool]:
    known = "the API has versions 7, 6.1, 6, 5.2, 5.1 and --niji 6"
    if value is None:
        return None, None, f"give a version: {known}", False
    match = _VERSION.match(value)
    # 7.0 and 6.0 are the versions 7 and 6 (as Midjourney reads them).
    version = None if match is None else match[1] if match[2] in (None, "0") else value
    if version is None or version not in VERSIONS:
        return None, None, known, True
    return "version", version, None, True


def _number(key: str, value: str | None) -> tuple[str | None, str | None, str | None, bool]:
    low, high = RANGES[key]
    if value is None or not _INTEGER.match(value):
        return None, None, f"give a whole number from {low} to {high}", value is not None
    number = int(value)
    if not low <= number <= high:
        return None, None, f"give a whole number from {low} to {high}", True
    if key == "variety" and number % VARIETY_STEP:
        down = number - number % VARIETY_STEP
        return None, None, f"the API takes steps of 5: use {down} or {down + 5}", True
    return key, str(number), None, True


def shown_params(options: dict[str, str]) -> str:
    """What a line showing the job's prompt adds after it: every parameter sent, when the prompt
    had any typed in it (``TYPED`` in its options), else nothing, as before parameters."""
    return params_text(options) if options.get(TYPED) == "on" else ""


def params_text(options: dict[str, str]) -> str:
    """The parameters ``options`` stand for, as typed, with a leading space ('' for none)."""
    words: list[str] = []
    for key, flag in _SHOWN:
        value = options.get(key)
        if value is None:
            continue
        if key == "version" and value == "niji6":
            words.append("--niji 6")
        else:
            words.append(f"--{flag} {value}")
    speed = options.get("speed")
    if speed == "relaxed":
        words.append("--relax")
    elif speed == "turbo":
        words.append("--turbo")
    return "".join(f" {w}" for w in words)
