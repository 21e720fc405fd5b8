"""What every cog shares: a private answer longer than one Discord message."""

from __future__ import annotations

import pytest

from cogs.interactions import pieces


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short", ["short"]),
        ("a\n" + "b" * 1999 + "\n\n   \n", ["a", "b" * 1999]),
        ("x" * 4500, ["x" * 2000, "x" * 2000, "x" * 500]),
        ("", ["…"]),
        # Only a real new line cuts: a server's name with U+2028 is not two lines here.
        ("one\u2028two", ["one\u2028two"]),
    ],
)
def test_long_private_answers_go_as_messages_discord_takes(text: str, expected: list[str]) -> None:
    assert pieces(text) == expected
    assert all(0 < len(piece) <= 2000 and piece.strip() for piece in pieces(text))
