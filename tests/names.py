"""The stored names of the built-in kinds of job, for tests to name them (the bot finds its kinds
in bot/jobs/kinds by their modules; a job's ``kind`` is the name)."""

from enum import StrEnum


class JobKind(StrEnum):
    IMAGINE = "imagine"
    UPSCALE = "upscale"
    VARY = "vary"
    REROLL = "reroll"
    ANIMATE_LOW = "animate_low"
    ANIMATE_HIGH = "animate_high"
    EXTEND = "extend"
