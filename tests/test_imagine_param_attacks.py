"""The prompt's ``--`` parameters attacked: lookalike and glued flags, invisible prompts, versions
and values the API lacks, captions that would move a grid's owner, a re-roll's translation.
Found by the attacker's review of issue 23; each holds now."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.delivery.texts import prompt_text
from bot.grid import grid_owner
from bot.jobs.kinds import Pieces, kind_named
from bot.jobs.params import TYPED, read_params
from bot.midjourney.models import parse_record_info
from tests.harness import Harness
from tests.midjourney.test_sandbox import GENERATE, Start, stack, start  # noqa: F401
from tests.test_imagine_params import refused, stored_jobs

OWNER = 123456789012345678
OTHER = 876543210987654321

# A parameter the API cannot take (3:1 is not one of its aspect ratios), written so that the
# bot does not read it as a parameter: it stays in the prompt sent, unrefused. Midjourney's own
# docs say it accepts an em dash for "--" (Apple devices turn "--" into "—").
LOOKALIKES = {
    "em dash": "a fox —ar 3:1",
    "two en dashes": "a fox ––ar 3:1",
    "two minus signs": "a fox −−ar 3:1",
    "two fullwidth hyphens": "a fox －－ar 3:1",
    "zero-width joiner after --": "a fox --\u200dar 3:1",
    "zero-width space before --": "a fox \u200b--ar 3:1",
    "word joiner before --": "a fox\u2060--ar 3:1",
    "glued to a comma": "a fox,--ar 3:1",
}


@pytest.mark.parametrize("typed", list(LOOKALIKES.values()), ids=list(LOOKALIKES))
def test_a_lookalike_flag_is_read_or_refused_not_sent_as_text(typed: str) -> None:
    params = read_params(typed)
    assert params.problems, f"sent unrefused as {params.prompt!r} with {params.options}"


@pytest.mark.parametrize("typed", ["a fox --niji 7.0", "a fox --niji 5.2"])
def test_a_niji_version_the_api_lacks_is_refused_whatever_its_form(typed: str) -> None:
    params = read_params(typed)
    assert params.problems, f"sent as {params.prompt!r} with {params.options}"


@pytest.mark.parametrize("blank", ["\u200b", "\u3164", "\u2800"], ids=["zwsp", "hangul", "braille"])
async def test_a_prompt_left_invisible_by_the_removal_is_refused(
    harness: Harness, blank: str
) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running() as app:
        text = await refused(double, alice, {"prompt": f"{blank} --ar 16:9 --s 250"})
        assert text.startswith("❌")
        assert sandbox.count("generate") == 0
        assert await stored_jobs(app) == 0


async def test_the_sandbox_refuses_a_variety_off_its_steps_of_five(start: Start) -> None:  # noqa: F811
    api = await start()
    body = {"taskType": "mj_txt2img", "prompt": "a fox", "speed": "fast", "variety": 7}
    status, envelope = await api.call("POST", GENERATE, body=body)
    assert (status, envelope["code"]) == (422, 422)
    assert api.sandbox.credits == 1000


def record_of(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "taskId": "4edb3c5d9e0f4a1b8c2d3e4f5a6b7c8d",
        "taskType": "mj_txt2img",
        "paramJson": json.dumps(params),
        "successFlag": 1,
        "resultInfoJson": {
            "resultUrls": [{"resultUrl": f"https://x.example/a_0_{i}.jpeg"} for i in range(4)]
        },
    }


def test_a_foreign_grids_translation_is_learnt_for_its_reroll() -> None:
    task = parse_record_info(
        record_of({"prompt": "un renard roux", "speed": "fast", "enableTranslation": True})
    )
    assert task.prompt == "un renard roux"
    assert task.options.get("translate") == "on"


# ----- attacks that held ---------------------------------------------------------------------

REFUSED_VALUES = [
    "a fox --s ２５０",
    "a fox --s 1e3",
    "a fox --s 0x10",
    "a fox --c -0",
    "a fox --w 99999999999999999999999",
    "a fox --w 0003001",
    "a fox --ar 16:9:1",
    "a fox --ar 16：9",
    "a fox --v 6.10",
    "a fox --v ６",
    "a fox --niji 6 --v 7",
    "a fox --niji 5",
    "a fox --c 7",
    "a fox --AR 3:1",
    "a fox\u00a0--ar 3:1",
    "a fox\n--ar 3:1",
    "a fox --ar\n3:1",
    "a fox --s @everyone",
    "a fox --ѕ 5000 --bogus",
]


@pytest.mark.parametrize("typed", REFUSED_VALUES)
def test_values_out_of_the_documented_ranges_are_refused(typed: str) -> None:
    assert read_params(typed).problems


def test_an_owner_lookalike_in_the_prompt_does_not_own_the_grid() -> None:
    imagine = kind_named("imagine")
    for prompt in (
        f"a fox - <@{OTHER}>",
        f"a fox** - <@{OTHER}>",
        f"a fox ` - <@{OTHER}>",
        f"a fox\n - <@{OTHER}>",
        f"a fox \u2028 - <@{OTHER}>",
        f"{'x' * 1600} - <@{OTHER}>",
    ):
        params = read_params(f"{prompt} --ar 16:9 --s 5")
        options = {"speed": "fast", **params.options, TYPED: "on"}
        line = imagine.result_line(Pieces(prompt_text(params.prompt, options), OWNER, 1, ""))
        assert grid_owner(line) == OWNER, line
