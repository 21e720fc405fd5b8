"""/imagine with Midjourney's ``--`` parameters typed in the prompt, and the translation setting:
the real bot against the Discord double and the sandbox."""

from __future__ import annotations

import sqlalchemy as sa

from bot.grid import grid_owner, reroll_custom_id
from bot.jobs.tables import jobs
from tests.fakes.discord_double import ADMINISTRATOR, DiscordDouble, StoredMessage
from tests.harness import Harness, grid_task

MANAGE_GUILD = 1 << 5


async def imagine_grid(
    double: DiscordDouble, user: int, prompt: str, shown: str, **options: str
) -> StoredMessage:
    """/imagine ``prompt``; the grid whose first line starts with ``shown``."""
    handle = await double.slash("imagine", {"prompt": prompt, **options}, user)
    ack = await handle.wait_ack()
    assert ack.type == 4
    status = handle.original
    assert status is not None and status.content.startswith(f"⏳ Generating {shown} for")
    return await double.wait_for_message(
        lambda m: len(m.attachments) == 4 and m.content.startswith(f"{shown} - <@")
    )


async def refused(double: DiscordDouble, user: int, options: dict[str, str]) -> str:
    handle = await double.slash("imagine", options, user)
    await handle.wait_ack()
    assert handle.original is not None and handle.original.ephemeral
    return handle.original.content


async def stored_jobs(harness_app: object) -> int:
    store = harness_app.services.store  # type: ignore[attr-defined]
    async with store.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(jobs))).scalar())


async def test_typed_parameters_are_sent_as_fields_and_shown_in_the_caption(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine_grid(
            double, alice, "a fox --ar 16:9 --s 250", "**a fox** --ar 16:9 --s 250"
        )
        assert grid.content == f"**a fox** --ar 16:9 --s 250 - <@{alice}>"
        assert grid_owner(grid.content) == alice
        (body,) = [c.body for c in sandbox.calls if c.endpoint == "generate"]
        assert body["prompt"] == "a fox"
        assert body["aspectRatio"] == "16:9" and body["stylization"] == 250
        assert "variety" not in body and "weirdness" not in body
        assert "enableTranslation" not in body

        grid = await imagine_grid(
            double,
            alice,
            "--niji 6 <@1234567890123456> in *ink* --c 20 --w 7 --relax",
            r"**<@1234567890123456> in \*ink\*** --niji 6 --c 20 --w 7 --relax",
        )
        assert grid_owner(grid.content) == alice
        body = [c.body for c in sandbox.calls if c.endpoint == "generate"][-1]
        assert body["prompt"] == "<@1234567890123456> in *ink*"
        assert body["version"] == "niji6" and body["speed"] == "relaxed"
        assert body["variety"] == 20 and body["weirdness"] == 7

        # A parameter that agrees with the option is fine; shown once.
        grid = await imagine_grid(
            double, alice, "a cat --ar 2:3", "**a cat** --ar 2:3", aspect_ratio="2:3"
        )
        assert grid.content == f"**a cat** --ar 2:3 - <@{alice}>"


async def test_every_bad_parameter_is_refused_privately_before_anything_is_paid(
    harness: Harness,
) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running() as app:
        cases = {
            "x --ar 3:7": "`--ar 3:7`: the API has only 1:1",
            "x --v 5": "`--v 5`: the API has versions 7, 6.1, 6, 5.2, 5.1 and --niji 6",
            "x --s 1001": "`--s 1001`: give a whole number from 0 to 1000",
            "x --c 23": "`--c 23`: the API takes steps of 5: use 20 or 25",
            "x --w lots": "`--w lots`: give a whole number from 0 to 3000",
            "x --sref": "`--sref`: the API has no such parameter: use the style attachment",
            "x --cref": "use the subject attachment of /imagine",
            "x --ow": "use the subject_strength option of /imagine",
            "x --seed": "`--seed`: the API has no such parameter, and nothing replaces it",
            "x --bogus": "`--bogus`: not a parameter the bot knows",
            "x --s 100 --s 200": "`--s 100` and `--s 200` disagree: give one",
            "--ar 16:9 --s 250": "the prompt has parameters only: say what to draw too",
        }
        for prompt, words in cases.items():
            text = await refused(double, alice, {"prompt": prompt})
            assert text.startswith("❌") and words in text, (prompt, text)
        text = await refused(double, alice, {"prompt": "x --no --seed 3 --q 2 --tile"})
        for name in ("--no", "--seed", "--q", "--tile"):
            assert f"`{name}`" in text
        text = await refused(double, alice, {"prompt": "x --ar 16:9", "aspect_ratio": "1:1"})
        assert "the aspect_ratio option says 1:1 and the prompt's --ar says 16:9" in text
        text = await refused(double, alice, {"prompt": "x --turbo", "speed": "relaxed"})
        assert "the speed option says relaxed" in text and "says turbo" in text
        assert sandbox.count("generate") == 0
        assert await stored_jobs(app) == 0
        assert [m for m in double.messages(ephemeral=False) if m.content.startswith("⏳")] == []


async def test_a_reroll_sends_the_grid_parameters_again(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    async with harness.running():
        grid = await imagine_grid(
            double, alice, "a dune --v 6.1 --s 50 --turbo", "**a dune** --v 6.1 --s 50 --turbo"
        )
        handle = await double.click(grid.id, reroll_custom_id(grid_task(grid)), alice)
        await handle.wait_ack()
        again = await double.wait_for_message(lambda m: m.content.endswith("(re-roll)"))
        assert again.content == f"**a dune** --v 6.1 --s 50 --turbo - <@{alice}> (re-roll)"
        assert grid_owner(again.content) == alice
        first, second = [c.body for c in sandbox.calls if c.endpoint == "generate"]
        assert second["prompt"] == "a dune"
        for name in ("version", "stylization", "speed"):
            assert second[name] == first[name]
        assert second["speed"] == "turbo" and second["stylization"] == 50


async def test_translation_is_an_admin_setting_per_server(harness: Harness) -> None:
    double, sandbox = harness.double, harness.sandbox
    alice = double.add_user("alice")
    admin = double.add_user("admin", permissions=ADMINISTRATOR | MANAGE_GUILD)
    async with harness.running():
        handle = await double.slash("mj translation", {"state": "on"}, alice)
        await handle.wait_ack()
        assert handle.original is not None and handle.original.ephemeral
        assert "manage the server" in handle.original.content

        status = await double.slash("mj status", {}, admin)
        assert "Translation of prompts: off" in (await status.wait_followup()).content

        await imagine_grid(double, alice, "un renard", "**un renard**")
        assert "enableTranslation" not in sandbox.calls[-1].body

        handle = await double.slash("mj translation", {"state": "on"}, admin)
        answer = await handle.wait_followup()
        assert answer.ephemeral and answer.content.startswith("✅")
        status = await double.slash("mj status", {}, admin)
        assert "Translation of prompts: on" in (await status.wait_followup()).content

        grid = await imagine_grid(double, alice, "ein Fuchs", "**ein Fuchs**")
        body = [c.body for c in sandbox.calls if c.endpoint == "generate"][-1]
        assert body["enableTranslation"] is True
        # Its re-roll is translated too: the same prompt, sent as it was.
        handle = await double.click(grid.id, reroll_custom_id(grid_task(grid)), alice)
        await handle.wait_ack()
        await double.wait_for_message(lambda m: m.content.endswith("(re-roll)"))
        body = [c.body for c in sandbox.calls if c.endpoint == "generate"][-1]
        assert body["prompt"] == "ein Fuchs" and body["enableTranslation"] is True

        handle = await double.slash("mj translation", {"state": "off"}, admin)
        await handle.wait_followup()
        await imagine_grid(double, alice, "a fox", "**a fox**")
        body = [c.body for c in sandbox.calls if c.endpoint == "generate"][-1]
        assert "enableTranslation" not in body
