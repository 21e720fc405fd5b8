"""The sandbox's videos: small real MP4 files (H.264, yuv420p, no audio) that every player plays,
made by the ffmpeg binary of imageio-ffmpeg from a test pattern whose hue depends on a seed, so
two tasks' videos differ and one task's is the same every time it is served."""

from __future__ import annotations

import functools
import hashlib
import struct
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg

# Few frames per second: a sandbox video is made in tens of milliseconds, and still moves.
FPS = 12
# Well above what a few seconds at 256×144 take; a stuck encoder must not hang the sandbox.
TIMEOUT = 30.0
# The largest size a box's 32-bit size field can say.
MAX_BOX = 0xFFFFFFFF


def make_mp4(
    seconds: float, seed: str, *, width: int = 256, height: int = 144, pad_to: int = 0
) -> bytes:
    """An MP4 of ``seconds`` seconds, ``width``×``height``, its colours chosen by ``seed``.
    With ``pad_to``, a top-level ``free`` box makes it at least that many bytes and it still
    plays (a video too large for a channel, made in no time). Synchronous: call it in a thread."""
    data = _encoded(float(seconds), seed, width, height)
    if pad_to <= len(data):
        return data
    return data + free_box(pad_to - len(data))


def free_box(size: int) -> bytes:
    """A ``free`` box of at least ``size`` bytes (its 8-byte header included): players skip it."""
    size = max(8, size)
    if size > MAX_BOX:
        raise ValueError(f"a free box of {size} bytes needs a 64-bit size; pad less")
    return struct.pack(">I4s", size, b"free") + bytes(size - 8)


@functools.lru_cache(maxsize=8)
def _encoded(seconds: float, seed: str, width: int, height: int) -> bytes:
    # The sandbox serves one task's video many times (each download, each retry): made once.
    hue = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:2], "big") % 360
    with tempfile.TemporaryDirectory(prefix="mj-sandbox-video-") as scratch:
        # +faststart rewrites the file to put the index first, which needs a seekable output.
        out = Path(scratch) / "video.mp4"
        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-nostdin",
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                f"testsrc2=size={width}x{height}:rate={FPS}:duration={seconds},hue=h={hue}",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-movflags",
                "+faststart",
                "-f",
                "mp4",
                str(out),
            ],
            check=True,
            capture_output=True,
            timeout=TIMEOUT,
        )
        return out.read_bytes()
