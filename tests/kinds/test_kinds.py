"""The kinds of job on their own: the registry, what each built-in kind declares, its lines
(byte for byte those the bot posted before kinds were plug-ins), its paid call and its checks."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from bot.jobs.categories import CATEGORIES, GENERATION, UPSCALE, VIDEOS, category_named
from bot.jobs.kinds import (
    Button,
    Call,
    Dedupe,
    Hold,
    Kind,
    Per,
    Pieces,
    Product,
    UnknownKind,
    all_kinds,
    button_kinds,
    buttons_under,
    kind_named,
    register,
    unregister,
)
from bot.jobs.kinds.use import ParentUse
from bot.jobs.store import Job, JobState
from bot.jobs.vary_index import Sent, VaryIndex
from bot.midjourney.models import TASK_ID_PATTERN, Task, TaskStatus
from tests.names import JobKind

TASK = "a" * 32
P = Pieces(prompt="**a fox**", requester_id=42, number=2, started="<t:100:R>")


def job(kind: str, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": "j1",
        "kind": JobKind(kind),
        "parent_task_id": TASK,
        "image_index": 1,
        "upstream_task_id": None,
        "requester_id": 42,
        "guild_id": 7,
        "channel_id": 8,
        "grid_message_id": None,
        "status_message_id": None,
        "result_message_id": None,
        "callback_secret": "s",
        "state": JobState.REQUESTED,
        "error": None,
        "result_urls": (),
        "prompt": "a fox",
        "options": {"speed": "turbo", "aspect_ratio": "16:9", "version": "7"},
        "created_at": 100.0,
        "updated_at": 100.0,
        "deadline_at": 1000.0,
        "completed_at": None,
        "delivered_at": None,
    }
    values.update(fields)
    return Job(**values)


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    async def upscale(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("upscale", args, kwargs))
        return "up-task"

    async def vary(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("vary", args, kwargs))
        return "vary-task"

    async def generate(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append(("generate", args, kwargs))
        return "gen-task"


class NoFacts:
    async def api_fact(self, name: str) -> str | None:
        return None


def call(client: FakeClient, base: int | None = 0) -> Call:
    index = VaryIndex(NoFacts(), base)  # type: ignore[arg-type]
    return Call(client, "https://bot/cb/x", "wm", index)  # type: ignore[arg-type]


def test_the_registry_finds_the_built_in_kinds_under_their_stored_names() -> None:
    assert {k.name for k in all_kinds()} == {k.value for k in JobKind}
    for stored in JobKind:
        assert kind_named(stored).name == stored.value
    with pytest.raises(UnknownKind):
        kind_named("sepia")
    assert [k.name for k in buttons_under(Product.GRID)] == ["upscale", "reroll", "vary"]
    assert {k.name for k in button_kinds()} == {
        "upscale",
        "vary",
        "reroll",
        "animate_low",
        "animate_high",
        "extend",
    }
    assert [k.name for k in buttons_under(Product.IMAGE)] == ["animate_low", "animate_high"]
    assert [k.name for k in buttons_under(Product.VIDEO)] == ["extend"]


def test_what_each_kind_declares() -> None:
    running = Dedupe(Per.PARENT, Hold.UNFINISHED)
    declared = {
        k.name: (k.product, k.category, k.dedupe, k.needs_grid, k.verb) for k in all_kinds()
    }
    assert declared == {
        "imagine": (Product.GRID, GENERATION, None, False, ""),
        "upscale": (Product.IMAGE, UPSCALE, Dedupe(Per.IMAGE, Hold.LIVE), False, "upscale"),
        "vary": (Product.GRID, GENERATION, Dedupe(Per.IMAGE, Hold.UNFINISHED), True, "vary"),
        "reroll": (Product.GRID, GENERATION, Dedupe(Per.PARENT, Hold.UNFINISHED), True, "re-roll"),
        "animate_low": (Product.VIDEO, VIDEOS, running, False, "animate"),
        "animate_high": (Product.VIDEO, VIDEOS, running, False, "animate"),
        "extend": (Product.VIDEO, VIDEOS, Dedupe(Per.IMAGE, Hold.UNFINISHED), False, "extend"),
    }


def test_the_buttons_keep_their_custom_ids_byte_for_byte() -> None:
    up, vary, reroll = (kind_named(n).button for n in ("upscale", "vary", "reroll"))
    assert up is not None and vary is not None and reroll is not None
    assert up.template == rf"mju:(?P<task>{TASK_ID_PATTERN}):(?P<n>[1-4])"
    assert vary.template == rf"mjv:(?P<task>{TASK_ID_PATTERN}):(?P<n>[1-4])"
    assert reroll.template == rf"mjr:(?P<task>{TASK_ID_PATTERN})"
    assert up.custom_id(TASK, 2) == f"mju:{TASK}:2"
    assert vary.custom_id(TASK, 4) == f"mjv:{TASK}:4"
    assert reroll.custom_id(TASK) == f"mjr:{TASK}"
    assert up.parse(f"mju:{TASK}:2") == (TASK, 1)
    assert reroll.parse(f"mjr:{TASK}") == (TASK, None)
    assert up.parse(f"mjv:{TASK}:2") is None
    assert [up.label_of(n) for n in up.numbers()] == ["U1", "U2", "U3", "U4"]
    assert [reroll.label_of(n) for n in reroll.numbers()] == ["🔄"]
    assert (up.row, reroll.row, vary.row) == (0, 0, 1)
    with pytest.raises(ValueError):
        up.custom_id(TASK, 5)
    with pytest.raises(ValueError):
        reroll.custom_id("not a task id")


def test_channel_lines_are_todays() -> None:
    lines = {
        k.name: (k.status_line(P), k.result_line(P), k.failure_what(P))
        for k in all_kinds()
        if k.product is not Product.VIDEO
    }
    assert lines == {
        "imagine": (
            "⏳ Generating **a fox** for <@42> (started <t:100:R>)",
            "**a fox** - <@42>",
            "Generation of **a fox**",
        ),
        "upscale": (
            "⏳ Upscaling image #2 for <@42> (started <t:100:R>)",
            "**a fox** - Image #2 <@42>",
            "Upscale of image #2",
        ),
        "vary": (
            "⏳ Making variations of image #2 for <@42> (started <t:100:R>)",
            "**a fox** - Variations (image #2) <@42>",
            "Variations of image #2",
        ),
        "reroll": (
            "⏳ Re-rolling **a fox** for <@42> (started <t:100:R>)",
            "**a fox** - <@42> (re-roll)",
            "Re-roll of **a fox**",
        ),
    }


def test_clicker_lines_are_todays() -> None:
    up, vary, reroll = (kind_named(n) for n in ("upscale", "vary", "reroll"))
    assert up.not_started(2) == "Image #2 was not upscaled"
    assert up.already_done(2, "L") == "✅ Image #2 was already upscaled: L"
    assert up.already(2, "<@1>") == (
        "⏳ Image #2 is already being upscaled (asked by <@1>); "
        "the result will be posted in the channel."
    )
    assert vary.not_started(3) == "Variations of image #3 were not started"
    assert vary.already(3, "<@1>").startswith(
        "⏳ Variations of image #3 are already being made (asked by <@1>)"
    )
    assert reroll.not_started(1) == "The re-roll was not started"
    assert reroll.already(1, "<@1>").startswith("⏳ This grid is already being re-rolled")


def test_dedupe_rules_hold_as_today() -> None:
    live, running = Dedupe(Per.IMAGE, Hold.LIVE), Dedupe(Per.PARENT, Hold.UNFINISHED)
    assert [s for s in JobState if live.holds(s)] == [
        s for s in JobState if s is not JobState.FAILED
    ]
    assert [s for s in JobState if running.holds(s)] == [
        JobState.REQUESTED,
        JobState.SUBMITTING,
        JobState.SUBMITTED,
        JobState.SUCCEEDED,
    ]
    assert live.key("upscale", TASK, 2) == f"upscale:{TASK}:2"
    assert running.key("reroll", TASK, None) == f"reroll:{TASK}"


async def test_upscale_pays_for_one_image_and_keeps_its_first_url() -> None:
    client = FakeClient()
    kind = kind_named("upscale")
    assert await kind.send(call(client), job("upscale")) == Sent("up-task")
    assert client.calls == [
        ("upscale", (TASK, 1), {"watermark": "wm", "callback_url": "https://bot/cb/x"})
    ]
    assert kind.keeps(("u1", "u2")) == ("u1",)


async def test_imagine_and_reroll_generate_the_prompt_with_its_options() -> None:
    for name in ("imagine", "reroll"):
        client = FakeClient()
        assert await kind_named(name).send(call(client), job(name)) == Sent("gen-task")
        assert client.calls == [
            (
                "generate",
                ("a fox",),
                {
                    "speed": "turbo",
                    "aspect_ratio": "16:9",
                    "version": "7",
                    "callback_url": "https://bot/cb/x",
                },
            )
        ]
        assert kind_named(name).keeps(("a", "b", "c", "d")) == ("a", "b", "c", "d")


async def test_imagine_and_reroll_send_the_typed_parameters_and_translation() -> None:
    options = {"speed": "fast", "stylization": "250", "variety": "5", "weirdness": "0"}
    for name in ("imagine", "reroll"):
        client = FakeClient()
        await kind_named(name).send(call(client), job(name, options={**options, "translate": "on"}))
        ((_, _, sent),) = client.calls
        assert sent["stylization"] == 250 and sent["variety"] == 5 and sent["weirdness"] == 0
        assert sent["translate"] is True


async def test_vary_sends_through_the_index_base() -> None:
    client = FakeClient()
    kind = kind_named("vary")
    assert await kind.send(call(client, base=1), job("vary", image_index=2)) == Sent("vary-task")
    assert client.calls == [
        ("vary", (TASK, 3), {"watermark": "wm", "callback_url": "https://bot/cb/x"})
    ]


async def test_vary_may_not_send_v2_or_v3_while_the_base_is_unknown() -> None:
    kind, unknown = kind_named("vary"), call(FakeClient(), base=None)
    assert await kind.may_send(unknown, 0) is None
    assert await kind.may_send(unknown, 3) is None
    reason = await kind.may_send(unknown, 1)
    assert reason is not None and reason.startswith("V2 cannot start yet")
    assert await kind.may_send(call(FakeClient(), base=0), 1) is None
    assert await kind_named("upscale").may_send(unknown, 1) is None


def test_checks_of_a_parent_made_outside_the_bot() -> None:
    one = Task(TASK, TaskStatus.SUCCEEDED, ("u",), prompt="p", task_type="mj_txt2img")
    four = dataclasses.replace(one, result_urls=("a", "b", "c", "d"))
    up, vary, reroll = (kind_named(n) for n in ("upscale", "vary", "reroll"))
    assert up.parent_problem(job("upscale", image_index=0), one) is None
    assert up.parent_problem(job("upscale", image_index=1), one) == "that task has no such image"
    assert vary.parent_problem(job("vary"), one) == "that task is not a grid of four images"
    assert vary.parent_problem(job("vary"), four) is None
    rr = job("reroll", image_index=None)
    assert reroll.parent_problem(rr, four) is None
    assert (
        reroll.parent_problem(rr, dataclasses.replace(four, prompt=None))
        == "the API does not say what that grid's prompt was"
    )
    assert (
        reroll.parent_problem(rr, dataclasses.replace(four, task_type="mj_img2img"))
        == "only grids generated from a text prompt can be re-rolled here"
    )
    assert reroll.checks_parent(job("reroll", prompt=None))
    assert not reroll.checks_parent(rr)
    assert not up.checks_parent(job("upscale", prompt=None))


def test_a_kind_defined_elsewhere_registers_and_goes() -> None:
    class Shade(Kind):
        name = "shade"
        product = Product.IMAGE
        category = UPSCALE
        button = Button("mjshade", "Shade", row=1, per_image=False, under=Product.IMAGE)

    class Thief(Shade):
        name = "thief"
        button = Button("mju", "U{n}", row=0, per_image=True, under=Product.GRID)

    register(Shade())
    try:
        assert kind_named("shade").name == "shade"
        assert [k.name for k in buttons_under(Product.IMAGE)] == [
            "animate_low",
            "animate_high",
            "shade",
        ]
        with pytest.raises(ValueError, match="prefix"):
            register(Thief())
    finally:
        unregister("shade")
    assert "shade" not in {k.name for k in all_kinds()}


def test_cost_categories_as_data() -> None:
    assert [(c.name, c.option, c.setting, c.default_daily, c.default_cost) for c in CATEGORIES] == [
        ("generation", "imagines", "DAILY_IMAGINES_PER_USER", 20, 8),
        ("upscale", "upscales", "DAILY_UPSCALES_PER_USER", 40, 2),
        ("video", "videos", "DAILY_VIDEOS_PER_USER", 5, 16),
    ]
    assert [(c.limit_column, c.cost_column) for c in CATEGORIES] == [
        ("imagines", "generation_cost"),
        ("upscales", "upscale_cost"),
        ("videos", "video_cost"),
    ]
    assert category_named("upscale") is UPSCALE
    with pytest.raises(KeyError):
        category_named("sepia")


def test_parent_use_answers_per_image_and_per_message() -> None:
    use = ParentUse(frozenset({("upscale", 1), ("reroll", None)}))
    assert use.has("upscale", 1) and not use.has("upscale", 2)
    assert use.has("reroll", None) and not use.has("vary", None)
