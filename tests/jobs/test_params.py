"""The ``--`` parameters read from a prompt (bot/jobs/params.py), on their own."""

from __future__ import annotations

import random

import pytest

from bot.jobs.params import UNSUPPORTED, params_text, read_params, shown_params
from bot.midjourney.models import ASPECT_RATIOS


@pytest.mark.parametrize(
    ("typed", "options"),
    [
        ("a fox --ar 16:9", {"aspect_ratio": "16:9"}),
        ("a fox --aspect 2:3", {"aspect_ratio": "2:3"}),
        ("a fox --v 7", {"version": "7"}),
        ("a fox --version 6.1", {"version": "6.1"}),
        ("a fox --v 6.0", {"version": "6"}),
        ("a fox --v 7.0", {"version": "7"}),
        ("a fox --v 5.2", {"version": "5.2"}),
        ("a fox --niji", {"version": "niji6"}),
        ("a fox --niji 6", {"version": "niji6"}),
        ("a fox --s 250", {"stylization": "250"}),
        ("a fox --stylize 0", {"stylization": "0"}),
        ("a fox --c 100", {"variety": "100"}),
        ("a fox --chaos 25", {"variety": "25"}),
        ("a fox --w 3000", {"weirdness": "3000"}),
        ("a fox --weird 1", {"weirdness": "1"}),
        ("a fox --fast", {"speed": "fast"}),
        ("a fox --relax", {"speed": "relaxed"}),
        ("a fox --turbo", {"speed": "turbo"}),
    ],
)
def test_every_parameter_sets_its_option_and_leaves_the_prompt(
    typed: str, options: dict[str, str]
) -> None:
    params = read_params(typed)
    assert params.problems == ()
    assert params.prompt == "a fox"
    assert params.options == options


def test_parameters_anywhere_in_any_case_and_agreeing_repeats() -> None:
    params = read_params("--AR 16:9 a red --S 250 fox --v 7 --s 250 --version 7.0")
    assert params.problems == ()
    assert params.prompt == "a red fox"
    assert params.options == {"aspect_ratio": "16:9", "stylization": "250", "version": "7"}


def test_text_that_only_looks_like_a_flag_stays_prompt_text() -> None:
    for text in ("a--b", "a — b", "a -- b", "arrows --> and <--", "--1 and --", "x—y", "-ar 1:1"):
        assert read_params(text).prompt == text
        assert read_params(text).options == {} and read_params(text).problems == ()


def test_a_prompt_without_parameters_is_left_exactly_as_typed() -> None:
    text = "a fox\n\nin  snow "
    assert read_params(text).prompt == text


@pytest.mark.parametrize(
    ("typed", "problem"),
    [
        ("x --ar 3:7", "the API has only 1:1, 1:2, 2:1"),
        ("x --ar", "give an aspect ratio"),
        ("x --v 5", "the API has versions 7, 6.1, 6, 5.2, 5.1 and --niji 6"),
        ("x --v 8", "the API has versions"),
        ("x --v", "give a version"),
        ("x --niji 5", "niji 6 only"),
        ("x --s 1001", "from 0 to 1000"),
        ("x --s -1", "from 0 to 1000"),
        ("x --s lots", "from 0 to 1000"),
        ("x --s 2.5", "from 0 to 1000"),
        ("x --c 101", "from 0 to 100"),
        ("x --c 23", "steps of 5: use 20 or 25"),
        ("x --w 3001", "from 0 to 3000"),
        ("x --w", "from 0 to 3000"),
        ("x --sref", "use the style attachment of /imagine"),
        ("x --cref", "use the subject attachment of /imagine"),
        ("x --oref", "use the subject attachment of /imagine"),
        ("x --ow", "use the subject_strength option of /imagine"),
        ("x --iw", "nothing replaces it"),
        ("x --frobnicate", "not a parameter the bot knows"),
        ("x --s 250 --stylize 300", "`--s 250` and `--stylize 300` disagree"),
        ("x --v 7 --niji", "`--v 7` and `--niji` disagree"),
        ("x --relax --turbo", "`--relax` and `--turbo` disagree"),
    ],
)
def test_every_refusal_names_the_parameter_and_what_to_do(typed: str, problem: str) -> None:
    params = read_params(typed)
    assert len(params.problems) == 1
    assert problem in params.problems[0]
    assert params.problems[0].startswith("`--")


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_every_parameter_the_api_lacks_is_refused(name: str) -> None:
    params = read_params(f"a fox --{name}")
    assert len(params.problems) == 1 and params.problems[0].startswith(f"`--{name}`")


def test_each_bad_parameter_is_named() -> None:
    params = read_params("a fox --no cats --seed 4 --ar 3:7 --c 23 --foo --s 250")
    named = [p.split("`")[1] for p in params.problems]
    assert named == ["--no", "--seed", "--ar 3:7", "--c 23", "--foo"]
    assert params.options == {"stylization": "250"}


def test_a_quoted_parameter_is_cut_and_has_no_backticks() -> None:
    (problem,) = read_params("x --a`b" + "c" * 80).problems
    assert "`" not in problem.split("`")[1] and len(problem.split("`")[1]) <= 40


def test_params_text_writes_what_is_sent_and_not_the_default_speed() -> None:
    assert params_text({}) == ""
    assert params_text({"speed": "fast"}) == ""
    options = {
        "speed": "relaxed",
        "weirdness": "9",
        "variety": "5",
        "stylization": "250",
        "version": "niji6",
        "aspect_ratio": "16:9",
        "translate": "on",
    }
    assert params_text(options) == " --ar 16:9 --niji 6 --s 250 --c 5 --w 9 --relax"


def test_round_trips() -> None:
    rng = random.Random(23)
    words = ["a", "red", "fox", "a--b", "—", "<@123>", "**bold**", "16:9", "-x"]
    values = {
        "aspect_ratio": list(ASPECT_RATIOS),
        "version": ["7", "6.1", "6", "5.2", "5.1", "niji6"],
        "stylization": ["0", "250", "1000"],
        "variety": ["0", "5", "100"],
        "weirdness": ["0", "17", "3000"],
        "speed": ["fast", "relaxed", "turbo"],
    }
    for _ in range(300):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        options = {k: rng.choice(v) for k, v in values.items() if rng.random() < 0.5}
        flags = params_text(options).split(" --")[1:]
        if options.get("speed") == "fast":
            flags.append("fast")
        rng.shuffle(flags)
        typed = prompt + "".join(f" --{f}" for f in flags)
        params = read_params(typed)
        assert params.problems == ()
        assert params.prompt == prompt
        assert params.options == options
        assert read_params(params.prompt + params_text(params.options)).options == {
            k: v for k, v in options.items() if (k, v) != ("speed", "fast")
        }


def test_kept_names_stay_in_the_prompt_as_text() -> None:
    params = read_params("this will --fail --ar 16:9", kept=("fail",))
    assert params.prompt == "this will --fail" and params.options == {"aspect_ratio": "16:9"}
    assert read_params("this will --fail").problems


def test_only_a_prompt_with_typed_parameters_shows_them() -> None:
    assert shown_params({"aspect_ratio": "2:3", "speed": "turbo"}) == ""
    typed = {"aspect_ratio": "2:3", "speed": "turbo", "typed_params": "on"}
    assert shown_params(typed) == " --ar 2:3 --turbo"
