"""What the kinds of video job (🎬 Animate, ⏩ Extend) share: the options a video job keeps,
its cost key, and the age past which the vendor no longer has what it is made from."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bot.jobs.cost_keys import video_cost_key

if TYPE_CHECKING:
    from bot.jobs.store import Job

# The vendor keeps result files about fifteen days; a day less leaves room for its clocks.
KEPT_DAYS = 14
# Midjourney extends a video at most four times (about 21 seconds in all).
MAX_EXTENSIONS = 4

# The options a video job stores when it is asked for: whatever the settings say later, its
# paid call, its cost key and its texts are the ones of the click.
QUALITY = "video_quality"
BATCH = "video_batch"
MOTION = "motion"
# The image's number (1–4) in the grid its upscale came from.
NUMBER = "number"
# The upscaled image's URL, which the API animates.
IMAGE_URL = "image_url"
# How many times the video was extended (0: an animation).
EXTENSIONS = "extensions"
# How many videos the extended video's batch holds (its ⏩ buttons).
VIDEOS = "videos"


def cost_key(job: Job, *, extend: bool) -> str:
    """The video's cost key, from what its click stored."""
    hd = job.options.get(QUALITY) == "hd"
    return video_cost_key(hd=hd, batch=1 if extend else batch_of(job), extend=extend).name


def batch_of(job: Job) -> int:
    """How many videos the job asked for."""
    raw = job.options.get(BATCH, "1")
    return int(raw) if raw in ("1", "2", "4") else 1


def extensions(job: Job) -> int:
    raw = job.options.get(EXTENSIONS, "0")
    return int(raw) if raw.isdigit() else 0


def too_old(parent: Job, what: str) -> str | None:
    """Why ``parent``'s result can no longer be used by the API (it keeps files two weeks)."""
    done = parent.completed_at or parent.created_at
    if time.time() - done > KEPT_DAYS * 86400:
        return (
            f"that {what} is more than {KEPT_DAYS} days old: Midjourney no longer keeps it, "
            "so it cannot be used"
        )
    return None


def number(options: Mapping[str, str]) -> str:
    """The image number a video's texts name ("?" when its click did not store one)."""
    value = options.get(NUMBER, "")
    return value if value.isdigit() else "?"
