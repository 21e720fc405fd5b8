"""examples/demo.py, the newcomer's first look (issue 21): it runs the real bot against the Discord
double and the sandbox, prints what a member sees and writes the posted images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.delivery.video import video_kind
from examples.demo import run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def test_demo_prints_each_step_and_writes_the_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo-output"
    await run_demo(out)
    printed = capsys.readouterr().out

    steps = [
        '1. alice runs /imagine prompt:"a lighthouse at dawn"',
        "status line:  ⏳ Generating a lighthouse at dawn for @alice",
        "grid posted:  a lighthouse at dawn - @alice  [4 images]",
        "2. alice clicks U1",
        "status line:  ⏳ Upscaling image #1 for @alice",
        "result:       a lighthouse at dawn - Image #1 @alice  [1 image, upscaled]",
        "3. alice clicks U1 again",
        "only alice sees:  ✅ Image #1 was already upscaled: https://discord.com/channels/",
        "4. alice clicks V1",
        "status line:  ⏳ Making variations of image #1 for @alice",
        "new grid:     a lighthouse at dawn - Variations (image #1) @alice  [4 images]",
        "5. alice clicks 🎬 Animate (low motion) under the upscaled image",
        "buttons:      🎬 Animate (low motion) 🎬 Animate (high motion)",
        "status line:  ⏳ Animating image #1 (low motion) for @alice",
        "video:        a lighthouse at dawn - Video (image #1, low motion) @alice  [1 video, MP4]",
        "buttons:      ⏩ Extend",
        "10 files written:",
        f"Stopped. The images are in {out}/",
    ]
    positions = [printed.find(step) for step in steps]
    assert -1 not in positions, [s for s, at in zip(steps, positions, strict=True) if at == -1]
    assert positions == sorted(positions), "the steps are printed out of order"
    # Both grids show both rows of buttons, as a member sees them.
    assert printed.count("buttons:      U1 U2 U3 U4 🔄\n                 V1 V2 V3 V4\n") == 2
    # What a member sees, not the bot's log lines or Discord's raw mention syntax.
    assert "INFO" not in printed and "<@" not in printed

    names = [f"grid-{n}.png" for n in range(1, 5)] + ["U1-1.png"]
    names += [f"V1-{n}.png" for n in range(1, 5)]
    for name in names:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE), name
        assert f"{out / name}" in printed
    assert video_kind((out / "video-1.mp4").read_bytes()) == "mp4"
    assert f"{out / 'video-1.mp4'}" in printed
    assert (
        f"the bot's log goes to {out / 'bot.log'}" in printed
        and (out / "bot.log").stat().st_size > 0
    )


def test_demo_without_the_clones_tests_says_so_in_one_line(tmp_path: Path) -> None:
    # Run as a script from elsewhere, the repository's root is not on the path: tests/fakes is
    # out of reach as it is for an installed copy.
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
    done = subprocess.run(
        [sys.executable, str(demo)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "the demo needs tests/fakes/ from a clone of the repository: "
        "run `python -m examples.demo` from the repository's root folder"
    ]
