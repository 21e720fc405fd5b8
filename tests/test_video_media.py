"""Videos as media: the sandbox's MP4 files (real, played by ffmpeg), sniffing a container,
an MP4's length from its header on good, cut and hostile bytes, and VideoFitter re-encoding a
video too large for a channel in a capped child process (its deadline, a cancellation, its
temporary files)."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
import pytest

from bot.delivery.child import MEMORY_CAP, NICENESS, STDERR_TAIL, run_limited
from bot.delivery.video import (
    MIN_VIDEO_BITRATE,
    VideoFitter,
    mp4_duration,
    mp4_has_audio,
    video_kind,
)
from bot.midjourney.sandbox_video import make_mp4

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def plays(data: bytes, tmp_path: Path) -> bool:
    """Whether ffmpeg decodes every frame of ``data`` without a single error (ffprobe is not
    shipped with imageio-ffmpeg)."""
    path = tmp_path / "check.mp4"
    path.write_bytes(data)
    done = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        timeout=60,
    )
    return done.returncode == 0 and done.stderr == b""


def streams(data: bytes, tmp_path: Path) -> str:
    """What ffmpeg says the file holds (its stream lines)."""
    path = tmp_path / "info.mp4"
    path.write_bytes(data)
    done = subprocess.run(
        [FFMPEG, "-nostdin", "-hide_banner", "-i", str(path)], capture_output=True, timeout=60
    )
    return done.stderr.decode()


def noise_video(tmp_path: Path, *, seconds: int = 2, audio: bool = False) -> bytes:
    """A video that is large for its length: 320×240 of random pixels, losslessly coded
    (about 2.7 MB a second), with a tone when ``audio``."""
    out = tmp_path / "noise.mp4"
    sound = ["-f", "lavfi", "-i", f"sine=d={seconds}"] if audio else []
    sound_codec = ["-c:a", "aac", "-shortest"] if audio else []
    subprocess.run(
        [
            FFMPEG,
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"nullsrc=s=320x240:r=24:d={seconds},geq=random(1)*255:128:128",
            *sound,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-qp",
            "0",
            "-pix_fmt",
            "yuv420p",
            *sound_codec,
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out.read_bytes()


def webm_video(tmp_path: Path) -> bytes:
    """Three seconds of VP9 in WebM, 320×240."""
    out = tmp_path / "v.webm"
    vp9 = ["-c:v", "libvpx-vp9", "-b:v", "3M", "-deadline", "realtime"]
    pattern = ["-f", "lavfi", "-i", "testsrc2=s=320x240:r=12:d=3"]
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", *pattern, *vp9, str(out)], check=True, timeout=60
    )
    return out.read_bytes()


# -- the sandbox's videos -------------------------------------------------------------------------


def test_a_sandbox_video_is_a_real_mp4_of_its_length(tmp_path: Path) -> None:
    data = make_mp4(5, "task-1")
    assert video_kind(data) == "mp4"
    assert mp4_duration(data) == pytest.approx(5.0, abs=0.1)
    assert not mp4_has_audio(data)
    assert plays(data, tmp_path)
    info = streams(data, tmp_path)
    assert "h264" in info and "yuv420p" in info and "256x144" in info
    # The index comes first (+faststart): a player starts before the whole file is in.
    assert data.index(b"moov") < data.index(b"mdat")


def test_a_sandbox_video_depends_on_its_seed_only() -> None:
    assert make_mp4(2, "a") == make_mp4(2, "a")
    assert make_mp4(2, "a") != make_mp4(2, "b")
    assert mp4_duration(make_mp4(3.5, "a", width=128, height=96)) == pytest.approx(3.5, abs=0.1)


def test_a_padded_sandbox_video_is_as_large_as_asked_and_still_plays(tmp_path: Path) -> None:
    plain = make_mp4(2, "pad")
    padded = make_mp4(2, "pad", pad_to=3 * 1024 * 1024)
    assert len(padded) == 3 * 1024 * 1024
    assert padded.startswith(plain)
    assert mp4_duration(padded) == mp4_duration(plain)
    assert plays(padded, tmp_path)
    # Asked for less than it is: as it is.
    assert make_mp4(2, "pad", pad_to=10) == plain


# -- sniffing and the movie header ----------------------------------------------------------------


def ftyp(brand: bytes) -> bytes:
    return struct.pack(">I4s4sI", 16, b"ftyp", brand, 0)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (ftyp(b"isom"), "mp4"),
        (ftyp(b"mp42"), "mp4"),
        (ftyp(b"M4V "), "mp4"),
        (ftyp(b"qt  "), "mov"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm", "webm"),
        # ISO BMFF, but an image or sound.
        (ftyp(b"heic"), None),
        (ftyp(b"avif"), None),
        (ftyp(b"M4A "), None),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", None),
        (b"\x89PNG\r\n\x1a\n", None),
        (b"<!DOCTYPE html><html><body>expired</body></html>", None),
        (b"\x00\x00\x00\x10ftyp", None),
        (b"", None),
    ],
)
def test_video_kind(data: bytes, kind: str | None) -> None:
    assert video_kind(data) == kind


def box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(body), kind) + body


def mvhd(version: int, timescale: int, duration: int) -> bytes:
    if version == 0:
        times = struct.pack(">IIII", 0, 0, timescale, duration)
    else:
        times = struct.pack(">QQIQ", 0, 0, timescale, duration)
    return box(b"mvhd", bytes([version, 0, 0, 0]) + times + bytes(80))


def test_mp4_duration_reads_both_versions_of_the_movie_header() -> None:
    head = ftyp(b"isom")
    assert mp4_duration(head + box(b"moov", mvhd(0, 1000, 5200))) == 5.2
    assert mp4_duration(head + box(b"moov", mvhd(1, 90000, 90000 * 21))) == 21.0
    # After a large mdat (its 64-bit size) and a free box.
    mdat = struct.pack(">I4sQ", 1, b"mdat", 16 + 1000) + bytes(1000)
    assert mp4_duration(head + mdat + box(b"free", b"") + box(b"moov", mvhd(0, 10, 40))) == 4.0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00",
        ftyp(b"isom"),
        # No timescale; a duration of all ones means "unknown".
        ftyp(b"isom") + box(b"moov", mvhd(0, 0, 100)),
        ftyp(b"isom") + box(b"moov", mvhd(0, 1000, 0xFFFFFFFF)),
        ftyp(b"isom") + box(b"moov", mvhd(1, 1000, 2**64 - 1)),
        # A header too short for its version, an unknown version.
        ftyp(b"isom") + box(b"moov", box(b"mvhd", b"\x00\x00\x00\x00" + bytes(8))),
        ftyp(b"isom") + box(b"moov", box(b"mvhd", b"\x07" + bytes(100))),
        # Sizes that point nowhere: smaller than a header, past the end, 64-bit cut short.
        struct.pack(">I4s", 4, b"moov") + bytes(100),
        struct.pack(">I4s", 0xFFFFFFFF, b"moov") + bytes(100),
        struct.pack(">I4sQ", 1, b"moov", 2) + bytes(100),
        struct.pack(">I4s", 1, b"moov"),
        random.Random(5).randbytes(100_000),
    ],
)
def test_mp4_duration_of_bad_bytes_is_none(data: bytes) -> None:
    assert mp4_duration(data) is None


def test_mp4_duration_of_a_cut_file() -> None:
    data = make_mp4(2, "cut")
    moov = data.index(b"moov") - 4
    # Cut inside the movie header's box: unknown. Cut after it (in the pictures): still known.
    assert mp4_duration(data[: moov + 40]) is None
    assert mp4_duration(data[: len(data) // 2 + moov]) == pytest.approx(2.0, abs=0.1)


def test_mp4_duration_walks_every_box_in_one_pass() -> None:
    # A hundred thousand empty boxes before the header: walked, not recursed into.
    data = ftyp(b"isom") + box(b"free", b"") * 100_000 + box(b"moov", mvhd(0, 1, 3))
    assert mp4_duration(data) == 3.0


# -- VideoFitter ----------------------------------------------------------------------------------


def left_in(folder: Path, name: str = "*") -> list[str]:
    """The names in ``folder`` (matching ``name``)."""
    return sorted(p.name for p in folder.glob(name))


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


async def test_a_high_bitrate_video_is_reencoded_under_the_limit(
    tmp_path: Path, scratch: Path
) -> None:
    source = noise_video(tmp_path)
    limit = 600_000
    assert len(source) > 5 * limit
    fitted = await VideoFitter(scratch=str(scratch)).fit(source, limit, "job=t task=-")
    assert fitted is not None and len(fitted) <= limit
    assert video_kind(fitted) == "mp4"
    assert mp4_duration(fitted) == pytest.approx(2.0, abs=0.1)
    assert plays(fitted, tmp_path)
    info = streams(fitted, tmp_path)
    assert "h264" in info and "320x240" in info and "yuv420p" in info
    assert left_in(scratch) == []


async def test_sound_is_kept_at_a_low_bitrate(tmp_path: Path, scratch: Path) -> None:
    source = noise_video(tmp_path, audio=True)
    assert mp4_has_audio(source)
    fitted = await VideoFitter(scratch=str(scratch)).fit(source, 700_000, "job=t task=-")
    assert fitted is not None and len(fitted) <= 700_000
    assert mp4_has_audio(fitted) and "aac" in streams(fitted, tmp_path)


async def test_a_large_video_is_scaled_down_to_720p(tmp_path: Path, scratch: Path) -> None:
    # Portrait 1080×1920: its short side becomes 720.
    source = make_mp4(2, "tall", width=1080, height=1920)
    fitted = await VideoFitter(scratch=str(scratch)).fit(source, len(source) - 1, "job=t")
    assert fitted is not None
    assert "720x1280" in streams(fitted, tmp_path)


async def test_a_padded_video_is_fitted_by_dropping_its_padding(
    tmp_path: Path, scratch: Path
) -> None:
    source = make_mp4(5, "pad", pad_to=4 * 1024 * 1024)
    fitted = await VideoFitter(scratch=str(scratch)).fit(source, 1024 * 1024, "job=t")
    assert fitted is not None and len(fitted) <= 1024 * 1024
    assert mp4_duration(fitted) == pytest.approx(5.0, abs=0.1)
    assert plays(fitted, tmp_path)


async def test_a_webm_is_measured_by_ffmpeg_and_becomes_an_mp4(
    tmp_path: Path, scratch: Path
) -> None:
    source = webm_video(tmp_path)
    assert video_kind(source) == "webm" and mp4_duration(source) is None
    fitted = await VideoFitter(scratch=str(scratch)).fit(source, len(source) // 2, "job=t")
    assert fitted is not None and video_kind(fitted) == "mp4"
    assert mp4_duration(fitted) == pytest.approx(3.0, abs=0.1)


@pytest.mark.parametrize("limit", [0, 1000, 60_000])
async def test_a_limit_no_watchable_video_fits_gives_none_at_once(
    scratch: Path, limit: int
) -> None:
    # 21 s in 60 kB would be 23 kbit/s: far below the floor.
    assert 60_000 * 8 / 21 < MIN_VIDEO_BITRATE
    source = make_mp4(21, "long")
    assert (
        await VideoFitter(scratch=str(scratch), ffmpeg="/nonexistent").fit(source, limit, "job=t")
        is None
    )
    assert left_in(scratch) == []


@pytest.mark.parametrize(
    "data", [b"<html>not found</html>" * 1000, random.Random(9).randbytes(300_000)]
)
async def test_what_ffmpeg_cannot_read_gives_none(scratch: Path, data: bytes) -> None:
    assert await VideoFitter(scratch=str(scratch)).fit(data, 100_000, "job=t") is None
    assert left_in(scratch) == []


def stuck_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for ffmpeg that starts a grandchild and never ends; it writes the grandchild's
    pid to a file once it is running."""
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "stuck-ffmpeg"
    script.write_text(
        f"#!/bin/sh\nsleep 600 &\necho $! > {pidfile}.tmp\nmv {pidfile}.tmp {pidfile}\nwait\n"
    )
    script.chmod(0o755)
    return script, pidfile


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def dies(pid: int) -> bool:
    """Whether ``pid`` is gone within 10 s: a SIGKILL is delivered when the kernel gets to it,
    not by the time kill() returns."""
    for _ in range(1000):
        if gone(pid):
            return True
        await asyncio.sleep(0.01)
    return False


async def wait_for_file(path: Path) -> None:
    for _ in range(1000):
        if left_in(path.parent, path.name):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


async def test_an_encode_past_its_deadline_is_killed_with_its_children(
    tmp_path: Path, scratch: Path
) -> None:
    script, pidfile = stuck_ffmpeg(tmp_path)
    # Seconds for the stand-in to start its grandchild (it runs idle-scheduled), then none.
    fitter = VideoFitter(timeout=3.0, scratch=str(scratch), ffmpeg=str(script))
    assert await fitter.fit(make_mp4(2, "x", pad_to=500_000), 400_000, "job=t") is None
    assert await dies(int(pidfile.read_text()))
    assert left_in(scratch) == []


async def test_a_cancelled_encode_kills_the_child_and_removes_its_files(
    tmp_path: Path, scratch: Path
) -> None:
    script, pidfile = stuck_ffmpeg(tmp_path)
    fitter = VideoFitter(scratch=str(scratch), ffmpeg=str(script))
    task = asyncio.create_task(fitter.fit(make_mp4(2, "x", pad_to=500_000), 400_000, "job=t"))
    await wait_for_file(pidfile)
    assert left_in(scratch)  # its folder, while it runs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await dies(int(pidfile.read_text()))
    assert left_in(scratch) == []
    # The slot is free again: the next encode is not stuck behind the cancelled one.
    real = VideoFitter(scratch=str(scratch))
    assert await real.fit(make_mp4(2, "y", pad_to=500_000), 400_000, "job=t") is not None


async def test_an_encode_gives_up_at_its_jobs_deadline_in_the_queue_or_before_it_starts(
    tmp_path: Path, scratch: Path
) -> None:
    script, pidfile = stuck_ffmpeg(tmp_path)
    fitter = VideoFitter(scratch=str(scratch), ffmpeg=str(script))
    data = make_mp4(2, "x", pad_to=500_000)
    assert await fitter.fit(data, 400_000, "job=late", until=time.time() - 1) is None
    first = asyncio.create_task(fitter.fit(data, 400_000, "job=1"))
    await wait_for_file(pidfile)
    # Behind an encode that never ends: given up when its own job's time is up, not stuck.
    assert await fitter.fit(data, 400_000, "job=2", until=time.time() + 0.5) is None
    assert len(left_in(scratch)) == 1
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


async def test_encodes_run_one_at_a_time(tmp_path: Path, scratch: Path) -> None:
    script, pidfile = stuck_ffmpeg(tmp_path)
    fitter = VideoFitter(scratch=str(scratch), ffmpeg=str(script))
    data = make_mp4(2, "x", pad_to=500_000)
    first = asyncio.create_task(fitter.fit(data, 400_000, "job=1"))
    await wait_for_file(pidfile)
    second = asyncio.create_task(fitter.fit(data, 400_000, "job=2"))
    # However long we look, the second has no folder of its own: it waits for the slot.
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(left_in(scratch)) == 1 and not second.done()
    for task in (first, second):
        task.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert left_in(scratch) == []


async def test_the_child_runs_capped_and_at_the_lowest_priority(tmp_path: Path) -> None:
    limits, stat = tmp_path / "limits", tmp_path / "stat"
    finished = await run_limited(
        ["/bin/sh", "-c", f"cat /proc/self/limits > {limits}; cat /proc/self/stat > {stat}"],
        timeout=30,
    )
    assert finished.returncode == 0
    address = next(line for line in limits.read_text().splitlines() if "address space" in line)
    soft = address.split()[3]
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    expected = MEMORY_CAP if hard == resource.RLIM_INFINITY else min(MEMORY_CAP, hard)
    assert soft == str(expected)
    core = next(line for line in limits.read_text().splitlines() if "core file" in line)
    assert core.split()[4] == "0"
    fields = stat.read_text().rsplit(")", 1)[1].split()
    # Fields 19 (nice) and 41 (policy) of proc(5), counted after the command's name.
    assert int(fields[16]) == min(19, os.nice(0) + NICENESS)
    sched_idle = 5
    assert int(fields[38]) == sched_idle or not finished.idle


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
async def test_a_killed_bot_leaves_no_encoder_running(tmp_path: Path) -> None:
    """The bot SIGKILLed mid-encode cannot kill its child: the kernel does (PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "child.pid"
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import asyncio, sys\n"
        "from bot.delivery.child import run_limited\n"
        f"asyncio.run(run_limited(['/bin/sh', '-c', 'echo $$ > {pidfile}.tmp; "
        f"mv {pidfile}.tmp {pidfile}; exec sleep 600'], timeout=600))\n",
    )
    await wait_for_file(pidfile)
    child = int(pidfile.read_text())
    assert not gone(child)
    parent.kill()
    await parent.wait()
    assert await dies(child)


async def test_a_child_that_writes_without_end_costs_the_bot_only_the_tail(tmp_path: Path) -> None:
    # 64 MiB of errors: kept whole, they would be the bot's memory; the end is what is logged.
    finished = await run_limited(
        ["/bin/sh", "-c", "head -c 67108864 /dev/zero >&2; echo the last words >&2"],
        timeout=60,
    )
    assert finished.returncode == 0
    assert len(finished.stderr) == STDERR_TAIL
    assert finished.stderr.endswith(b"the last words\n")


async def test_without_an_ffmpeg_binary_the_fitter_links_rather_than_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A platform the imageio-ffmpeg wheel has no binary for, and none on the PATH.
    def missing() -> str:
        raise RuntimeError("No ffmpeg exe could be found")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    fitter = VideoFitter()
    assert "no ffmpeg binary" in caplog.text
    assert await fitter.fit(make_mp4(2, "x", pad_to=500_000), 400_000, "job=t") is None
