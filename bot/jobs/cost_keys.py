"""Cost keys as data: what the credit budget learns a cost of, apart from the allowance a job
counts against (bot.jobs.categories). Every image generation counts as a generation for the
allowances, yet an omni-reference one is documented to cost more than a text one (and a batch of
four HD videos is one use of the videos allowance at many times one SD video's cost): each key is
learnt from the readings of the credit endpoint on its own (bot.jobs.ledger) and reserved at its
own cost in the budget (bot.jobs.admission). A kind of job names its key (``Kind.cost_key``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bot.jobs.categories import GENERATION, UPSCALE, VIDEOS, CostCategory


@dataclass(frozen=True)
class CostKey:
    # Stored in allowance_uses.cost_key and credit_costs.key: never rename one.
    name: str
    # The allowance it counts against; its cost before any reading follows that category's.
    category: CostCategory
    # How many of its category's default cost one job is taken to cost before readings.
    times: int
    # How /mj usage and /mj status name it.
    words: str


# A category's own key is named as the category: what allowance_uses.category already says.
GENERATION_KEY = CostKey(GENERATION.name, GENERATION, 1, "generation")
UPSCALE_KEY = CostKey(UPSCALE.name, UPSCALE, 1, "upscale")
# The API's task types of a generation with images: an image prompt and a style reference are
# priced as a generation, an omni reference at twice one (docs/reference/midjourney-api.md).
IMG2IMG = CostKey("mj_img2img", GENERATION, 1, "image prompt")
STYLE_REFERENCE = CostKey("mj_style_reference", GENERATION, 1, "style reference")
OMNI_REFERENCE = CostKey("mj_omni_reference", GENERATION, 2, "omni reference")
# Videos (mj_video, mj_video_hd, generateVideoExtend): a batch of 2 or 4 is one click and one use
# of the videos allowance, yet two or four videos' credits; HD is taken as about three times SD
# until readings show otherwise. Each is learnt apart, as docs/reference prices none of them; an
# extension is one key per quality, whatever the batch.
VIDEO_KEY = CostKey(VIDEOS.name, VIDEOS, 1, "video")
VIDEO_X2 = CostKey("video_x2", VIDEOS, 2, "video ×2")
VIDEO_X4 = CostKey("video_x4", VIDEOS, 4, "video ×4")
VIDEO_HD = CostKey("video_hd", VIDEOS, 3, "HD video")
VIDEO_HD_X2 = CostKey("video_hd_x2", VIDEOS, 6, "HD video ×2")
VIDEO_HD_X4 = CostKey("video_hd_x4", VIDEOS, 12, "HD video ×4")
VIDEO_EXTEND = CostKey("video_extend", VIDEOS, 1, "video extension")
VIDEO_EXTEND_HD = CostKey("video_extend_hd", VIDEOS, 3, "HD video extension")
# In the order the budget's estimate and the words list them: by default cost, so that a stored
# key none of these names (a later release's) is reserved at the last, the dearest.
COST_KEYS: tuple[CostKey, ...] = (
    GENERATION_KEY,
    UPSCALE_KEY,
    IMG2IMG,
    STYLE_REFERENCE,
    OMNI_REFERENCE,
    VIDEO_KEY,
    VIDEO_EXTEND,
    VIDEO_X2,
    VIDEO_HD,
    VIDEO_EXTEND_HD,
    VIDEO_X4,
    VIDEO_HD_X2,
    VIDEO_HD_X4,
)
# The videoBatchSize values the API takes.
VIDEO_BATCHES = (1, 2, 4)
_ANIMATE: dict[tuple[bool, int], CostKey] = {
    (False, 1): VIDEO_KEY,
    (False, 2): VIDEO_X2,
    (False, 4): VIDEO_X4,
    (True, 1): VIDEO_HD,
    (True, 2): VIDEO_HD_X2,
    (True, 4): VIDEO_HD_X4,
}


def cost_key_named(name: str) -> CostKey | None:
    for key in COST_KEYS:
        if key.name == name:
            return key
    return None


def video_cost_key(*, hd: bool, batch: int, extend: bool) -> CostKey:
    """The key of a video job: an animation by quality and ``videoBatchSize`` (1, 2 or 4), an
    extension by quality alone."""
    if batch not in VIDEO_BATCHES:
        raise ValueError(f"a video batch is 1, 2 or 4, not {batch!r}")
    if extend:
        return VIDEO_EXTEND_HD if hd else VIDEO_EXTEND
    return _ANIMATE[hd, batch]


def default_costs(category_costs: Mapping[str, int]) -> dict[str, int]:
    """What a job of each key is taken to cost before readings, from its category's (by the
    category's cost_column: ``generation_cost``, ``upscale_cost``, ``video_cost``)."""
    return {key.name: key.times * category_costs[key.category.cost_column] for key in COST_KEYS}


def category_key(key: CostKey) -> CostKey:
    """The key named as ``key``'s category: what its category was seen to cost."""
    own = cost_key_named(key.category.name)
    if own is None:
        raise LookupError(f"no cost key named as the category {key.category.name}")
    return own


def floored(costs: Mapping[str, int]) -> dict[str, int]:
    """What a job of each key is reserved at: its own learnt cost, yet no less than ``times`` its
    category key's. A key seldom seen alone in an interval (image prompts among text prompts)
    would otherwise stay at its default while generations were seen to cost more."""
    return {
        key.name: max(costs[key.name], key.times * costs[category_key(key).name])
        for key in COST_KEYS
    }
