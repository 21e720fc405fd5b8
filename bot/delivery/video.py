"""Videos as the publisher posts them: what container some bytes are, how long an MP4 lasts,
and ``VideoFitter``, which re-encodes a video too large for a channel so that it fits.

The encoder is the ffmpeg binary of imageio-ffmpeg in a child process (bot.delivery.child), not
a library in ours: its memory is capped, it runs only on CPU the bot leaves idle, and a stuck or
runaway encode is killed without touching the bot."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

from bot.delivery.child import ChildTimedOut, run_limited

log = logging.getLogger(__name__)

# Major brands of ISO BMFF files that are videos ("qt  " is QuickTime). HEIC and AVIF images
# and M4A audio are ISO BMFF too, under brands of their own: not videos.
_MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"M4V ", b"M4VH"}
    | {b"M4VP", b"dash", b"mmp4", b"MSNV", b"3gp4", b"3gp5", b"3gp6", b"3g2a"}
)
_EBML = b"\x1a\x45\xdf\xa3"

# A 21 s HD Midjourney video is about 20 MB. The files of a batch (up to four) are held in
# memory until posted; a larger one is posted as its link, not lost.
MAX_VIDEO_BYTES = 64 * 1024 * 1024
# Tens of MB from the vendor's host: more time than an image's download gets.
DOWNLOAD_TIMEOUT = 300.0

# A video re-encoded for a channel: time given to one encode, and the bitrate below which the
# result is mush and its link serves better.
ENCODE_TIMEOUT = 120.0
# Less than this is no video worth its link's place, whatever its length.
MIN_FITTED_BYTES = 32 * 1024
PROBE_TIMEOUT = 15.0
MIN_VIDEO_BITRATE = 150_000
AUDIO_BITRATE = 48_000
# Of the bits the limit allows, what the encoder is asked for: the rest is for the container and
# for libx264's average running over its target.
BITRATE_SHARE = 0.9
# The short side of the picture by the bitrate it gets (a 720p video needs about 2 Mbit/s).
SHORT_SIDES = ((2_000_000, 720), (1_000_000, 540), (500_000, 360), (0, 240))
# A second encode, at a bitrate lowered by the first one's overshoot, when that one missed.
ATTEMPTS = 2
# At most one encode at once: it takes two threads for up to its deadline.
ENCODES_AT_ONCE = 1
NO_TIME = "no time left before its job's deadline"
NO_FFMPEG = "there is no ffmpeg binary on this machine"


def _bundled_ffmpeg() -> str | None:
    """The ffmpeg binary the imageio-ffmpeg wheel carries (or IMAGEIO_FFMPEG_EXE, or one on the
    PATH); None where there is none (a platform without such a wheel): the bot still starts,
    and a video too large for its channel is posted as its link."""
    try:
        found: str = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        log.warning("no ffmpeg binary (%s): videos too large for a channel go as links", exc)
        return None
    return found


@dataclass(frozen=True)
class Video:
    data: bytes
    filename: str


def video_kind(data: bytes) -> str | None:
    """The file extension the bytes really are (mp4, mov, webm), or None for anything that is
    not a video (an error page, an image, audio)."""
    if data[4:8] == b"ftyp" and len(data) >= 12:
        brand = data[8:12]
        if brand == b"qt  ":
            return "mov"
        return "mp4" if brand in _MP4_BRANDS else None
    if data.startswith(_EBML):
        return "webm"
    return None


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, start of contents, end) of each ISO BMFF box from ``start`` to ``end``. A box whose
    size is impossible or runs past ``end`` ends the walk: the file is cut or not one."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            if at + 16 > end:
                return
            (size,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif size == 0:
            # The last box, to the end of the file.
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size


def _box(
    data: bytes, path: tuple[bytes, ...], start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int]]:
    """(start of contents, end) of each box found down ``path`` (moov, trak, …)."""
    end = len(data) if end is None else end
    for kind, body, stop in _boxes(data, start, end):
        if kind == path[0]:
            if len(path) == 1:
                yield body, stop
            else:
                yield from _box(data, path[1:], body, stop)


def mp4_duration(data: bytes) -> float | None:
    """How many seconds an MP4 (or MOV) lasts by its movie header, or None when the bytes do
    not say (not an MP4, cut before its header, an unknown duration)."""
    for body, end in _box(data, (b"moov", b"mvhd")):
        version = data[body] if body < end else None
        if version == 0 and end - body >= 20:
            timescale, duration = struct.unpack_from(">II", data, body + 12)
            unknown = 0xFFFFFFFF
        elif version == 1 and end - body >= 32:
            timescale, duration = struct.unpack_from(">IQ", data, body + 20)
            unknown = 0xFFFFFFFFFFFFFFFF
        else:
            return None
        if timescale == 0 or duration == unknown:
            return None
        return float(duration / timescale)
    return None


def mp4_has_audio(data: bytes) -> bool:
    """Whether an MP4 has a sound track (a ``soun`` handler in one of its tracks)."""
    for body, end in _box(data, (b"moov", b"trak", b"mdia", b"hdlr")):
        # version and flags (4), pre_defined (4), then the handler's type.
        if end - body >= 12 and data[body + 8 : body + 12] == b"soun":
            return True
    return False


@dataclass(frozen=True)
class _Facts:
    seconds: float
    audio: bool


@dataclass(frozen=True)
class _Fitted:
    data: bytes
    facts: _Facts
    bitrate: int
    # Whether the encoder ran under idle scheduling.
    idle: bool


_DURATION = re.compile(rb"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_AUDIO = re.compile(rb"Stream #\d+:\d+.*: Audio: ")


class VideoFitter:
    """Re-encodes a video to at most a number of bytes, as H.264 MP4 (every Discord client plays
    it inline), one encode at a time, each in a capped child process with a deadline; the input
    and output are temporary files, removed whatever happens."""

    def __init__(
        self,
        *,
        timeout: float = ENCODE_TIMEOUT,
        scratch: str | None = None,
        ffmpeg: str | None = None,
    ) -> None:
        self._timeout = timeout
        # Where the temporary files go (the system's temporary directory by default).
        self._scratch = scratch
        self._ffmpeg = ffmpeg or _bundled_ffmpeg()
        self._slots = asyncio.Semaphore(ENCODES_AT_ONCE)

    async def fit(
        self, data: bytes, limit: int, label: str, until: float | None = None
    ) -> bytes | None:
        """``data`` re-encoded as an MP4 of at most ``limit`` bytes, or None when it cannot be
        (its length unknown, a bitrate too low to be worth it, ffmpeg failed, timed out, or
        missed the limit twice), or not by ``until`` (``time.time()``: its job's post must not
        wait past it, in the queue or in the encoder)."""
        started = time.perf_counter()
        # In a thread: the walk is one step per box, and a hostile file of 64 MiB holds
        # millions of them (seconds in which the event loop would answer nothing).
        facts = await asyncio.to_thread(_mp4_facts, data)
        # A limit that cannot be met is said at once: no file written, no wait for the encoder.
        outcome: _Fitted | str | None = _hopeless(facts, limit)
        if outcome is None and self._ffmpeg is None:
            outcome = NO_FFMPEG
        if outcome is None:
            outcome = await self._in_turn(data, limit, facts, until)
        ms = (time.perf_counter() - started) * 1000
        if isinstance(outcome, str):
            log.info(
                "video not re-encoded %s bytes=%d limit=%d: %s ms=%.0f",
                label,
                len(data),
                limit,
                outcome,
                ms,
            )
            return None
        log.info(
            "video re-encoded %s bytes=%d->%d limit=%d seconds=%.1f bitrate=%d idle=%s ms=%.0f",
            label,
            len(data),
            len(outcome.data),
            limit,
            outcome.facts.seconds,
            outcome.bitrate,
            "yes" if outcome.idle else "no",
            ms,
        )
        return outcome.data

    async def _in_turn(
        self, data: bytes, limit: int, facts: _Facts | None, until: float | None
    ) -> _Fitted | str:
        """The encode once the slot is this one's, unless ``until`` comes first."""
        try:
            async with asyncio.timeout(None if until is None else until - time.time()):
                await self._slots.acquire()
        except TimeoutError:
            return NO_TIME
        try:
            folder = Path(tempfile.mkdtemp(prefix="mj-video-", dir=self._scratch))
            try:
                return await self._fit(data, limit, facts, folder, until)
            finally:
                # Unlinking is quick, and it must happen even when cancelled: not in a thread.
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            self._slots.release()

    async def _fit(
        self, data: bytes, limit: int, facts: _Facts | None, folder: Path, until: float | None
    ) -> _Fitted | str:
        assert self._ffmpeg is not None
        """The fitted bytes and what they were made with, or why there are none."""
        source, target = folder / "source", folder / "fitted.mp4"
        await asyncio.to_thread(source.write_bytes, data)
        if facts is None:
            facts = await self._probe(source)
            if facts is None:
                return "its length is unknown"
        bitrate = _bitrate(facts, limit)
        for _ in range(ATTEMPTS):
            if bitrate < MIN_VIDEO_BITRATE:
                return _too_low(facts)
            timeout = self._timeout if until is None else min(self._timeout, until - time.time())
            if timeout <= 0:
                return NO_TIME
            try:
                finished = await run_limited(
                    self._encode_argv(source, target, facts, bitrate), timeout=timeout
                )
            except ChildTimedOut as exc:
                return f"ffmpeg {exc}"
            if finished.returncode != 0:
                tail = finished.stderr.decode(errors="replace").strip().splitlines()[-1:]
                return f"ffmpeg failed ({finished.returncode}): {' '.join(tail)[:300]}"
            fitted = await asyncio.to_thread(target.read_bytes)
            if len(fitted) <= limit:
                return _Fitted(fitted, facts, bitrate, finished.idle)
            # libx264's average ran over its target: aim lower by as much, and a bit more.
            bitrate = int(bitrate * limit / len(fitted) * BITRATE_SHARE)
        return f"still over the limit after {ATTEMPTS} encodes"

    async def _probe(self, source: Path) -> _Facts | None:
        """Length and sound of a video that is not an MP4 (a WebM), as ffmpeg reads them."""
        assert self._ffmpeg is not None
        argv = [self._ffmpeg, "-nostdin", "-hide_banner", "-i", str(source)]
        try:
            # No output named: ffmpeg prints what the input holds and exits with an error.
            finished = await run_limited(argv, timeout=PROBE_TIMEOUT)
        except ChildTimedOut:
            return None
        match = _DURATION.search(finished.stderr)
        if match is None:
            return None
        hours, minutes, seconds = int(match[1]), int(match[2]), float(match[3])
        total = hours * 3600 + minutes * 60 + seconds
        return _Facts(total, _AUDIO.search(finished.stderr) is not None) if total > 0 else None

    def _encode_argv(self, source: Path, target: Path, facts: _Facts, bitrate: int) -> list[str]:
        assert self._ffmpeg is not None
        side = next(side for floor, side in SHORT_SIDES if bitrate >= floor)
        # The short side at most ``side`` (portrait videos too), never enlarged; even sides,
        # which yuv420p needs; -2 keeps the aspect.
        short = f"trunc(min(min(iw,ih),{side})/2)*2"
        scale = f"scale=w='if(gte(iw,ih),-2,{short})':h='if(gte(iw,ih),{short},-2)'"
        audio = (
            ["-map", "0:a:0", "-c:a", "aac", "-b:a", str(AUDIO_BITRATE)] if facts.audio else ["-an"]
        )
        return [
            self._ffmpeg,
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-i",
            str(source),
            "-map",
            "0:v:0",
            *audio,
            "-vf",
            scale,
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-b:v",
            str(bitrate),
            "-maxrate",
            str(bitrate),
            "-bufsize",
            str(bitrate * 2),
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-threads",
            "2",
            "-f",
            "mp4",
            str(target),
        ]


def _mp4_facts(data: bytes) -> _Facts | None:
    """An MP4's length and sound by its headers, or None when they do not tell its length."""
    seconds = mp4_duration(data)
    return None if seconds is None else _Facts(seconds, mp4_has_audio(data))


def _hopeless(facts: _Facts | None, limit: int) -> str | None:
    """Why no encode can fit ``limit``, when that is known before any is tried."""
    if limit < MIN_FITTED_BYTES:
        return f"under {MIN_FITTED_BYTES} bytes is no video"
    if facts is not None and _bitrate(facts, limit) < MIN_VIDEO_BITRATE:
        return _too_low(facts)
    return None


def _too_low(facts: _Facts) -> str:
    return f"would need under {MIN_VIDEO_BITRATE} bit/s for {facts.seconds:.1f} s"


def _bitrate(facts: _Facts, limit: int) -> int:
    """The video bitrate that fills ``limit`` bytes over the video's length, sound aside."""
    total = limit * 8 * BITRATE_SHARE / max(facts.seconds, 0.1)
    return int(total - (AUDIO_BITRATE if facts.audio else 0))
