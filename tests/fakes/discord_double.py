"""A loopback Discord double that a real, unmodified discord.py client can talk to.

Usage::

    async with DiscordDouble() as double:
        with point_discord_at(double):
            bot = MyBot(...)
            task = asyncio.create_task(bot.start("fake-token"))
            await double.wait_until_connected()
            user = double.add_user("alice")
            handle = await double.slash("upscale", {"index": 1}, user)
            ack = await handle.wait_ack()
            ...
            await bot.close()

The double serves the REST API under ``/api/v10`` and the gateway as a websocket on one aiohttp
server bound to 127.0.0.1 on a free port. It models one guild with text channels, the users a
test adds, application commands synced by the bot, channel messages (with attachment bytes),
interactions and their webhook tokens. Everything a test waits for is built on asyncio events, so
tests never depend on sleep timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import mimetypes
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import discord.gateway
import discord.http
import yarl
from aiohttp import BodyPartReader, WSMsgType, web

log = logging.getLogger(__name__)

Json = dict[str, Any]
T = TypeVar("T")

DISCORD_EPOCH_MS = 1_420_070_400_000
API_PREFIX = "/api/v10"
GATEWAY_PATH = "/gateway"
ATTACHMENT_PATH = "/attachments"
DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
ATTACHMENT_LINK_SECONDS = 24 * 3600
# aiohttp refuses bodies over 1 MiB by default; uploads must reach the double's own 413 check.
MAX_REQUEST_BODY = 512 * 1024 * 1024

ADD_REACTIONS = 1 << 6
ADMINISTRATOR = 1 << 3
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
USE_APPLICATION_COMMANDS = 1 << 31
DEFAULT_MEMBER_PERMISSIONS = (
    ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | USE_APPLICATION_COMMANDS
)
DEFAULT_APP_PERMISSIONS = DEFAULT_MEMBER_PERMISSIONS | MANAGE_MESSAGES

SUPPRESS_EMBEDS = 1 << 2
EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_NOTIFICATIONS = 1 << 12
COMPONENTS_V2 = 1 << 15
CHANNEL_MESSAGE_FLAGS = SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | COMPONENTS_V2
INTERACTION_MESSAGE_FLAGS = CHANNEL_MESSAGE_FLAGS | EPHEMERAL

APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
MODAL_SUBMIT = 5

CHANNEL_MESSAGE_WITH_SOURCE = 4
DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
AUTOCOMPLETE_RESULT = 8
MODAL = 9

DEFAULT_MESSAGE = 0
CHAT_INPUT_COMMAND_MESSAGE = 20

GUILD_MEMBERS_INTENT = 1 << 1
GUILD_PRESENCES_INTENT = 1 << 8
GUILD_MESSAGES_INTENT = 1 << 9
MESSAGE_CONTENT_INTENT = 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS_INTENT | GUILD_PRESENCES_INTENT | MESSAGE_CONTENT_INTENT

# Close codes after which Discord forgets the session (the client closed on purpose).
_SESSION_ENDING_CLOSE_CODES = (1000, 1001)

_MENTION_RE = re.compile(r"<@!?([0-9]+)>")
_ROLE_MENTION_RE = re.compile(r"<@&([0-9]+)>")
_EVERYONE_RE = re.compile(r"@(?:everyone|here)")
_FILE_PART_RE = re.compile(r"files\[([0-9]+)\]")
_COMMAND_NAME_RE = re.compile(r"[-_\w]{1,32}")

_ERROR_MESSAGES = {
    400: "400: Bad Request",
    401: "401: Unauthorized",
    403: "Missing Permissions",
    404: "404: Not Found",
    405: "405: Method Not Allowed",
    413: "Request entity too large",
    429: "You are being rate limited.",
    500: "500: Internal Server Error",
    502: "502: Bad Gateway",
    503: "503: Service Unavailable",
}


# Where an interaction comes from (``slash``/``click``): a server the bot was added to, the
# user's DM with the bot, or a server through a copy the user installed for themselves.
GUILD_CONTEXT, DM_CONTEXT, USER_INSTALL = "guild", "dm", "user_install"


class DiscordError(Exception):
    """An error answer of the double, shaped like Discord's JSON errors."""

    def __init__(self, status: int, code: int, message: str, *, errors: Json | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers: dict[str, str] = {}
        self.extra: Json = {}

    def body(self) -> Json:
        body: Json = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


def _invalid_form(field_name: str, code: str, message: str) -> DiscordError:
    return DiscordError(
        400,
        50035,
        "Invalid Form Body",
        errors={field_name: {"_errors": [{"code": code, "message": message}]}},
    )


def json_response(
    data: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Answer JSON with ``Content-Type: application/json`` exactly, as discord.py requires."""
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class StoredAttachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None
    # What the interaction says its size is, when not its length.
    declared_size: int | None = None


@dataclass(frozen=True)
class ButtonInfo:
    custom_id: str | None
    style: int
    label: str | None
    disabled: bool
    url: str | None


def walk_components(components: list[Json]) -> Iterator[Json]:
    """Every component in a message, depth first (rows, containers, section accessories)."""
    for component in components:
        yield component
        yield from walk_components(component.get("components") or [])
        for key in ("accessory", "component"):
            child = component.get(key)
            if isinstance(child, dict):
                yield from walk_components([child])


@dataclass(eq=False)
class StoredMessage:
    """A message as the double holds it; ``content``/``components`` reflect the latest edit."""

    id: int
    channel_id: int
    content: str = ""
    components: list[Json] = field(default_factory=list)
    embeds: list[Json] = field(default_factory=list)
    files: list[StoredAttachment] = field(default_factory=list)
    nonce: str | None = None
    flags: int = 0
    # Whom the content pings, as Discord works it out from the content and the request's
    # allowed_mentions (the latest one that set the content; absent means every mention pings).
    mentions: list[int] = field(default_factory=list)
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    allowed_mentions: Json | None = None
    author_id: int = 0
    type: int = DEFAULT_MESSAGE
    kind: str = "channel"
    interaction_id: int | None = None
    deleted: bool = False
    edits: int = 0
    created_at: float = field(default_factory=time.perf_counter)
    timestamp: str = field(default_factory=_now_iso)
    edited_timestamp: str | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred ("thinking") interaction response that has not been filled in yet."""
        return bool(self.flags & LOADING)

    @property
    def attachments(self) -> list[tuple[str, bytes]]:
        return [(a.filename, a.data) for a in self.files]

    def buttons(self) -> list[ButtonInfo]:
        return [
            ButtonInfo(
                custom_id=c.get("custom_id"),
                style=int(c.get("style", 0)),
                label=c.get("label"),
                disabled=bool(c.get("disabled", False)),
                url=c.get("url"),
            )
            for c in walk_components(self.components)
            if c.get("type") == 2
        ]

    def button(self, custom_id: str | None = None, *, label: str | None = None) -> ButtonInfo:
        """The button with this custom_id (or label); LookupError if there is none."""
        for button in self.buttons():
            if custom_id is not None and button.custom_id != custom_id:
                continue
            if label is not None and button.label != label:
                continue
            return button
        raise LookupError(
            f"no button custom_id={custom_id!r} label={label!r} in message {self.id}; "
            f"buttons: {self.buttons()}"
        )


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    time: float
    body: Any = None
    status: int = 0


@dataclass
class Callback:
    """One interaction callback as it reached the double (accepted or refused)."""

    type: int
    data: Json
    payload: Json
    files: list[tuple[str, bytes]]
    arrived_at: float
    ack_seconds: float
    accepted: bool
    error_code: int | None = None


@dataclass
class CommandSync:
    guild_id: int | None
    names: list[str]
    time: float


@dataclass
class _User:
    id: int
    name: str
    permissions: int
    bot: bool = False
    roles: list[int] = field(default_factory=list)
    joined_at: str = field(default_factory=_now_iso)
    locale: str = "en-US"


@dataclass
class _Upload:
    index: int | None
    filename: str
    data: bytes
    content_type: str | None


@dataclass
class _Call:
    request: web.Request
    params: dict[str, str]
    body: Any
    uploads: list[_Upload]

    @property
    def json(self) -> Json:
        return self.body if isinstance(self.body, dict) else {}


@dataclass
class _FailureRule:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: int
    message: str
    retry_after: float
    remaining: int


class ResponseHold:
    """REST answers the double keeps back after it has acted on the request (see hold_responses).

    A held channel post is already stored when its sender is still waiting for the answer: the
    window in which a bot may die having posted but not knowing it.
    """

    def __init__(
        self,
        double: DiscordDouble,
        method: str,
        pattern: re.Pattern[str],
        where: Callable[[Any], bool] | None,
        times: int,
    ) -> None:
        self._double = double
        self.method = method
        self.pattern = pattern
        self.where = where
        self.remaining = times
        self.held: list[RequestRecord] = []
        self._gate = asyncio.Event()

    def __repr__(self) -> str:
        return f"<ResponseHold {self.method} {self.pattern.pattern} held={len(self.held)}>"

    @property
    def released(self) -> bool:
        return self._gate.is_set()

    def release(self) -> None:
        """Let every held answer, and any later match, go out."""
        self._gate.set()

    def matches(self, record: RequestRecord) -> bool:
        return (
            self.remaining > 0
            and record.method == self.method
            and self.pattern.fullmatch(record.path) is not None
            and (self.where is None or self.where(record.body))
        )

    async def wait_held(self, count: int = 1, timeout: float = 10) -> RequestRecord:
        """The count-th request (1-based) whose answer is being held, existing or future."""

        def check() -> RequestRecord | None:
            return self.held[count - 1] if len(self.held) >= count else None

        return await self._double._wait(check, timeout, f"held request #{count} of {self!r}")

    async def wait_released(self) -> None:
        await self._gate.wait()


@dataclass(eq=False)
class _Session:
    id: str
    intents: int
    shard: list[int] | None
    ready: bool = False
    seq: int = 0
    history: list[Json] = field(default_factory=list)
    conn: _Connection | None = None


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    query: dict[str, str]
    session: _Session | None = None
    dropped: bool = False


class InteractionHandle:
    """One interaction the double dispatched, and everything the bot did with its token."""

    def __init__(
        self,
        double: DiscordDouble,
        *,
        interaction_id: int,
        token: str,
        interaction_type: int,
        user_id: int,
        channel_id: int,
        payload: Json,
        message_id: int | None = None,
    ) -> None:
        self._double = double
        self.id = interaction_id
        self.token = token
        self.type = interaction_type
        self.user_id = user_id
        self.channel_id = channel_id
        self.payload = payload
        self.message_id = message_id
        self.dispatched_at = 0.0
        self.callbacks: list[Callback] = []
        self.ack: Callback | None = None
        self.original_id: int | None = None
        self.followup_ids: list[int] = []
        self.expired = False

    def __repr__(self) -> str:
        return f"<InteractionHandle id={self.id} type={self.type} ack={self.ack and self.ack.type}>"

    @property
    def original(self) -> StoredMessage | None:
        """The original response (type 4/5), or the component's message after a 6/7 ack."""
        if self.original_id is None:
            return None
        return self._double._messages.get(self.original_id)

    @property
    def followups(self) -> list[StoredMessage]:
        return [self._double._messages[i] for i in self.followup_ids]

    @property
    def rejected_callbacks(self) -> list[Callback]:
        return [c for c in self.callbacks if not c.accepted]

    async def wait_ack(self, timeout: float = 5) -> Callback:
        """The first callback; check ``accepted`` to see whether Discord would have refused it."""

        def check() -> Callback | None:
            return self.callbacks[0] if self.callbacks else None

        return await self._double._wait(check, timeout, f"a callback of {self!r}")

    async def wait_followup(self, timeout: float = 5, *, count: int = 1) -> StoredMessage:
        """The count-th followup (1-based), existing or future."""

        def check() -> StoredMessage | None:
            ids = self.followup_ids
            return self._double._messages[ids[count - 1]] if len(ids) >= count else None

        return await self._double._wait(check, timeout, f"followup #{count} of {self!r}")

    def ephemeral_texts(self) -> list[str]:
        """Contents of the ephemeral messages this interaction produced, in order."""
        original = self.original
        own_original = original is not None and (
            original.interaction_id == self.id
            or (self.ack is not None and self.ack.type == UPDATE_MESSAGE)
        )
        messages = [original if own_original else None, *self.followups]
        seen: set[int] = set()
        texts: list[str] = []
        for message in messages:
            if message is None or message.id in seen or message.deleted:
                continue
            seen.add(message.id)
            if message.ephemeral:
                texts.append(message.content)
        return texts


Handler = Callable[[_Call], Coroutine[Any, Any, Any]]


class DiscordDouble:
    """A fake Discord (REST + gateway) on 127.0.0.1 for end-to-end tests of a discord.py bot."""

    def __init__(
        self,
        *,
        token: str | None = None,
        bot_name: str = "upscale-bot",
        guild_name: str = "Test Guild",
        channel_name: str = "general",
        heartbeat_interval_ms: int = 41250,
        ack_deadline: float | None = 3.0,
    ) -> None:
        self.token = token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # Discord refuses a first callback later than 3 s with 10062; None disables the check.
        self.ack_deadline = ack_deadline
        self.attachment_size_limit = DEFAULT_ATTACHMENT_SIZE_LIMIT
        # How long an attachment link works, as Discord signs it (``ex``: its expiry, hex Unix
        # seconds); the double refuses an expired link as Discord does.
        self.attachment_link_seconds = ATTACHMENT_LINK_SECONDS
        self.app_permissions = DEFAULT_APP_PERMISSIONS
        # What the bot may do in one channel, where it differs from app_permissions (an admin
        # denied it Attach Files there, say): sent as the interaction's app_permissions.
        self.channel_app_permissions: dict[int, int] = {}
        # Roles of the guild besides @everyone and the bot's own: id → name.
        self._roles: dict[int, str] = {}
        self.enabled_privileged_intents = PRIVILEGED_INTENTS

        self._last_snowflake = 0
        self.application_id = self._snowflake()
        self.bot_user_id = self._snowflake()
        self.bot_name = bot_name
        # How many shards GET /gateway/bot advises; a session covers the guilds of its shard.
        self.shard_count = 1
        self.guild_id = self._snowflake()
        self.guild_name = guild_name
        # Every guild the bot is in (the first one is ``guild_id``): id → name. Users and roles
        # are the same in each; channels belong to one.
        self._guilds: dict[int, str] = {self.guild_id: guild_name}
        # Guilds whose GUILD_CREATE an IDENTIFY does not send (Discord slow to stream them after
        # a reconnect or a failover): the bot knows only their ids, unavailable, until
        # ``send_guild_create``. Interactions from them still arrive, as on Discord.
        self.withheld_guilds: set[int] = set()
        self._channel_guild: dict[int, int] = {}
        self.bot_role_id = self._snowflake()
        self._channels: dict[int, str] = {}
        self.channel_id = self.add_channel(channel_name)
        self._users: dict[int, _User] = {
            self.bot_user_id: _User(self.bot_user_id, bot_name, self.app_permissions, bot=True)
        }
        self.owner_id = self.add_user("guild-owner", permissions=ADMINISTRATOR)
        # The application's team, when a team owns it: (user id, role such as "admin" or
        # "read_only", membership state: 1 invited, 2 accepted).
        self.team_members: list[tuple[int, str, int]] = []

        self._messages: dict[int, StoredMessage] = {}
        self._nonces: dict[tuple[int, str], int] = {}
        self._commands: dict[int | None, dict[str, Json]] = {}
        self._command_ids: dict[tuple[int | None, str], int] = {}
        self.command_syncs: list[CommandSync] = []
        self._interactions: dict[int, InteractionHandle] = {}
        self._by_token: dict[str, InteractionHandle] = {}
        self._slash_uploads: dict[int, StoredAttachment] = {}

        self.requests: list[RequestRecord] = []
        self.unknown_requests: list[RequestRecord] = []
        self.internal_errors: list[BaseException] = []
        self._failures: list[_FailureRule] = []
        self._holds: list[ResponseHold] = []

        self._connections: list[_Connection] = []
        self._sessions: dict[str, _Session] = {}
        # The sessions of each shard ([id, count], None for a bot without shards) that Discord
        # still sends events to: usually one; two when a shard was identified again while its
        # first session stayed connected (a frozen process): both get every event, as on
        # Discord. And the last session identified.
        self._live: dict[tuple[int, int] | None, list[_Session]] = {}
        self._session: _Session | None = None
        self.identifies: list[Json] = []
        # A shard identified while another session of it was still connected: Discord would
        # send both every event, and the bot would answer each click twice.
        self.shard_overlaps: list[tuple[int, int] | None] = []
        self.resumes = 0
        self._gateway_lock = asyncio.Lock()
        self._changed = asyncio.Event()

        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (method, re.compile(pattern), handler)
            for method, pattern, handler in [
                ("GET", r"/users/@me", self._get_me),
                ("GET", r"/users/@me/guilds", self._get_my_guilds),
                ("GET", r"/users/(?P<user>[0-9]+)", self._get_user),
                ("GET", r"/oauth2/applications/@me", self._get_application),
                ("GET", r"/applications/@me", self._get_application),
                ("GET", r"/gateway", self._get_gateway),
                ("GET", r"/gateway/bot", self._get_gateway),
                ("GET", r"/applications/(?P<app>[0-9]+)/commands", self._get_commands),
                ("PUT", r"/applications/(?P<app>[0-9]+)/commands", self._put_commands),
                (
                    "GET",
                    r"/applications/(?P<app>[0-9]+)/guilds/(?P<guild>[0-9]+)/commands",
                    self._get_commands,
                ),
                (
                    "PUT",
                    r"/applications/(?P<app>[0-9]+)/guilds/(?P<guild>[0-9]+)/commands",
                    self._put_commands,
                ),
                ("GET", r"/guilds/(?P<guild>[0-9]+)", self._get_guild),
                ("GET", r"/guilds/(?P<guild>[0-9]+)/members/(?P<user>[0-9]+)", self._get_member),
                ("GET", r"/channels/(?P<channel>[0-9]+)", self._get_channel),
                ("GET", r"/channels/(?P<channel>[0-9]+)/messages", self._get_channel_messages),
                ("POST", r"/channels/(?P<channel>[0-9]+)/messages", self._post_channel_message),
                (
                    "GET",
                    r"/channels/(?P<channel>[0-9]+)/messages/(?P<message>[0-9]+)",
                    self._get_channel_message,
                ),
                (
                    "PATCH",
                    r"/channels/(?P<channel>[0-9]+)/messages/(?P<message>[0-9]+)",
                    self._patch_channel_message,
                ),
                (
                    "DELETE",
                    r"/channels/(?P<channel>[0-9]+)/messages/(?P<message>[0-9]+)",
                    self._delete_channel_message,
                ),
                (
                    "POST",
                    r"/interactions/(?P<interaction>[0-9]+)/(?P<token>[^/]+)/callback",
                    self._post_callback,
                ),
                ("POST", r"/webhooks/(?P<app>[0-9]+)/(?P<token>[^/]+)", self._post_followup),
                (
                    "GET",
                    r"/webhooks/(?P<app>[0-9]+)/(?P<token>[^/]+)/messages/(?P<message>@original|[0-9]+)",
                    self._get_webhook_message,
                ),
                (
                    "PATCH",
                    r"/webhooks/(?P<app>[0-9]+)/(?P<token>[^/]+)/messages/(?P<message>@original|[0-9]+)",
                    self._patch_webhook_message,
                ),
                (
                    "DELETE",
                    r"/webhooks/(?P<app>[0-9]+)/(?P<token>[^/]+)/messages/(?P<message>@original|[0-9]+)",
                    self._delete_webhook_message,
                ),
            ]
        ]

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_REQUEST_BODY)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._handle_api)
        app.router.add_get(GATEWAY_PATH, self._handle_gateway)
        app.router.add_get(ATTACHMENT_PATH + "/{attachment}/{filename}", self._handle_attachment)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        # A held handler would keep the server's shutdown waiting for its answer.
        for hold in self._holds:
            hold.release()
        for conn in list(self._connections):
            conn.dropped = True
            await conn.ws.close(code=1001, message=b"double closing")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("DiscordDouble is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}{GATEWAY_PATH}" if self._port else ""

    def _snowflake(self) -> int:
        # Time-based like Discord's, since discord.py derives created_at/expires_at from ids.
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last_snowflake = max(candidate, self._last_snowflake + 1)
        return self._last_snowflake

    @property
    def _connected(self) -> bool:
        return any(s.ready and s.conn is not None for ss in self._live.values() for s in ss)

    def add_channel(self, name: str, guild_id: int | None = None) -> int:
        channel_id = self._snowflake()
        self._channels[channel_id] = name
        self._channel_guild[channel_id] = guild_id or self.guild_id
        return channel_id

    def add_guild(self, name: str, *, shard: int | None = None) -> tuple[int, int]:
        """Another guild the bot is in, with a channel of its own: (guild id, channel id).
        ``shard``: an id that lands on that shard of ``shard_count``. Add guilds before the
        bot connects: a connected bot is not told of them."""
        guild_id = self._snowflake()
        while shard is not None and (guild_id >> 22) % self.shard_count != shard:
            guild_id += 1 << 22
        self._last_snowflake = max(self._last_snowflake, guild_id)
        self._guilds[guild_id] = name
        return guild_id, self.add_channel("general", guild_id)

    def guild_of(self, channel_id: int) -> int:
        return self._channel_guild[channel_id]

    def shard_of(self, guild_id: int) -> int:
        return (guild_id >> 22) % self.shard_count

    def sessions(self) -> dict[tuple[int, int] | None, int]:
        """How many sessions of each shard are connected now."""
        return {key: sum(s.conn is not None for s in ss) for key, ss in self._live.items()}

    def identified_shards(self) -> list[int | None]:
        """The shard of every IDENTIFY so far, in order."""
        return [d["shard"][0] if d.get("shard") else None for d in self.identifies]

    def add_user(self, name: str, *, permissions: int = DEFAULT_MEMBER_PERMISSIONS) -> int:
        """A new guild member; ``permissions`` is what interactions report for them."""
        user_id = self._snowflake()
        self._users[user_id] = _User(user_id, name, permissions)
        return user_id

    def set_permissions(self, user_id: int, permissions: int) -> None:
        self._users[user_id].permissions = permissions

    async def add_role(self, name: str) -> int:
        """A new role of the guild; a connected bot hears of it as from Discord."""
        role_id = self._snowflake()
        self._roles[role_id] = name
        if self._session is not None:
            position = len(self._roles) + 1
            role = self._role_json(role_id, name, DEFAULT_MEMBER_PERMISSIONS, position, False)
            await self._dispatch(
                "GUILD_ROLE_CREATE", {"guild_id": str(self.guild_id), "role": role}
            )
        return role_id

    def give_role(self, user_id: int, role_id: int) -> None:
        """Interactions of ``user_id`` from now on carry the role."""
        if role_id not in self._roles:
            raise LookupError(f"unknown role {role_id}: create roles with add_role()")
        self._users[user_id].roles.append(role_id)

    def commands(self, guild_id: int | None = None) -> dict[str, Json]:
        """Commands the bot synced, by name: global ones (None) or a guild's."""
        return dict(self._commands.get(guild_id, {}))

    def message(self, message_id: int) -> StoredMessage:
        return self._messages[message_id]

    def messages(
        self, channel_id: int | None = None, *, ephemeral: bool | None = None
    ) -> list[StoredMessage]:
        """Live messages in creation order (channel posts and interaction messages)."""
        return [
            m
            for m in self._messages.values()
            if not m.deleted
            and (channel_id is None or m.channel_id == channel_id)
            and (ephemeral is None or m.ephemeral == ephemeral)
        ]

    def deleted_messages(self) -> list[StoredMessage]:
        return [m for m in self._messages.values() if m.deleted]

    async def wait_for_message(
        self,
        predicate: Callable[[StoredMessage], bool],
        timeout: float = 10,
    ) -> StoredMessage:
        """The first message, existing or future, matching predicate (deleted ones included)."""

        def check() -> StoredMessage | None:
            return next((m for m in self._messages.values() if predicate(m)), None)

        return await self._wait(check, timeout, "a matching message")

    async def wait_for(self, check: Callable[[], T | None], timeout: float = 10) -> T:
        """Generic wait: re-evaluates check whenever the double's state changes."""
        return await self._wait(check, timeout, "a condition")

    def requests_to(self, method: str, path_regex: str) -> list[RequestRecord]:
        """REST requests (API path without /api/v10) whose path fullmatches path_regex."""
        pattern = re.compile(path_regex)
        method = method.upper()
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    def count_requests(self, method: str, path_regex: str) -> int:
        return len(self.requests_to(method, path_regex))

    @property
    def interactions(self) -> list[InteractionHandle]:
        return list(self._interactions.values())

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        code: int = 0,
        message: str | None = None,
        times: int = 1,
        retry_after: float = 0.05,
    ) -> None:
        """Make the next ``times`` REST calls whose path fullmatches path_regex answer an error."""
        self._failures.append(
            _FailureRule(
                method=method.upper(),
                pattern=re.compile(path_regex),
                status=status,
                code=code,
                message=message or _ERROR_MESSAGES.get(status, f"{status}: Error"),
                retry_after=retry_after,
                remaining=times,
            )
        )

    def hold_responses(
        self,
        method: str,
        path_regex: str,
        *,
        where: Callable[[Any], bool] | None = None,
        times: int = 1,
    ) -> ResponseHold:
        """Keep back the answers of the next ``times`` REST calls whose path fullmatches
        path_regex (and whose parsed body satisfies ``where``) until ``release()``.

        The double carries each request out first (a post is stored, an edit applied), so a
        client that dies meanwhile has changed Discord without learning the outcome.
        """
        hold = ResponseHold(self, method.upper(), re.compile(path_regex), where, times)
        self._holds.append(hold)
        return hold

    def expire_interaction(self, handle: InteractionHandle) -> None:
        """Simulate the end of the token's 15 minutes: callbacks and webhooks answer 404."""
        handle.expired = True
        self._notify()

    async def wait_until_connected(self, timeout: float = 5) -> None:
        """Until a bot holds a live gateway session (after READY or RESUMED)."""
        await self._wait(lambda: True if self._connected else None, timeout, "a bot")

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the bot's websocket the way an outage would, so the client resumes."""
        session = self._session
        if session is None or session.conn is None:
            raise RuntimeError("no bot is connected to the gateway")
        conn = session.conn
        conn.dropped = True
        session.ready = False
        await conn.ws.close(code=code, message=b"dropped by the test")

    async def slash(
        self,
        name: str,
        options: Mapping[str, object] | None,
        user_id: int,
        *,
        channel_id: int | None = None,
        context: str = GUILD_CONTEXT,
    ) -> InteractionHandle:
        """Run a synced chat-input command as user_id; name may be "group sub" for subcommands.

        Values are sent as given: like a modified client, the double does not enforce
        min/max/choices (nor the command's contexts), so the bot's own checks are exercised.
        ``context``: GUILD_CONTEXT, DM_CONTEXT (the user's DM with the bot) or USER_INSTALL (in
        the channel, through a copy the user installed for themselves).
        """
        parts = name.split()
        scope: int | None = self.guild_id
        command = self._commands.get(self.guild_id, {}).get(parts[0])
        if command is None:
            scope = None
            command = self._commands.get(None, {}).get(parts[0])
        if command is None:
            raise LookupError(
                f"command {parts[0]!r} was not synced; "
                f"guild: {sorted(self.commands(self.guild_id))}, global: {sorted(self.commands())}"
            )
        resolved: Json = {}
        leaf: Json = command
        chain: list[Json] = []
        for sub in parts[1:]:
            found = next(
                (o for o in leaf.get("options", []) if o["name"] == sub and o["type"] in (1, 2)),
                None,
            )
            if found is None:
                raise LookupError(f"no subcommand {sub!r} in {name!r}")
            chain.append(found)
            leaf = found
        leaf_options = self._build_options(leaf, dict(options or {}), resolved)
        for sub in reversed(chain):
            leaf_options = [{"name": sub["name"], "type": sub["type"], "options": leaf_options}]
        data: Json = {
            "id": command["id"],
            "name": command["name"],
            "type": command.get("type", 1),
            "options": leaf_options,
        }
        if scope is not None:
            data["guild_id"] = str(scope)
        if resolved:
            data["resolved"] = resolved
        return await self._dispatch_interaction(
            APPLICATION_COMMAND, data, user_id, channel_id or self.channel_id, context=context
        )

    async def click(
        self, message_id: int, custom_id: str, user_id: int, *, context: str = GUILD_CONTEXT
    ) -> InteractionHandle:
        """Click the button custom_id on a stored message, as user_id (``context``: see
        ``slash``)."""
        message = self._messages.get(message_id)
        if message is None or message.deleted:
            raise LookupError(f"no live message {message_id}")
        button = next(
            (c for c in walk_components(message.components) if c.get("custom_id") == custom_id),
            None,
        )
        if button is None:
            raise LookupError(
                f"message {message_id} has no component {custom_id!r}; "
                f"has {[b.custom_id for b in message.buttons()]}"
            )
        if button.get("disabled"):
            raise ValueError(f"button {custom_id!r} is disabled: a user cannot click it")
        data = {"custom_id": custom_id, "component_type": int(button.get("type", 2))}
        return await self._dispatch_interaction(
            MESSAGE_COMPONENT, data, user_id, message.channel_id, message=message, context=context
        )

    def _build_options(
        self, command: Json, values: dict[str, object], resolved: Json
    ) -> list[Json]:
        definitions = {o["name"]: o for o in command.get("options", [])}
        built: list[Json] = []
        for key, value in values.items():
            definition = definitions.get(key)
            if definition is None:
                raise ValueError(
                    f"option {key!r} not in {command['name']!r}: {sorted(definitions)}"
                )
            built.append(
                {
                    "name": key,
                    "type": definition["type"],
                    "value": self._option_value(definition, value, resolved),
                }
            )
        missing = [n for n, d in definitions.items() if d.get("required") and n not in values]
        if missing:
            raise ValueError(f"required options missing for {command['name']!r}: {missing}")
        return built

    def _option_value(self, definition: Json, value: object, resolved: Json) -> object:
        option_type = definition["type"]
        if option_type in (3, 4, 5, 10):
            return value
        if option_type in (6, 9) and isinstance(value, int) and value in self._users:
            user = self._users[value]
            resolved.setdefault("users", {})[str(value)] = self._user_json(user)
            member = self._member_json(user, with_user=False)
            member["permissions"] = str(user.permissions)
            resolved.setdefault("members", {})[str(value)] = member
            return str(value)
        if option_type in (8, 9) and value == self.guild_id:
            resolved.setdefault("roles", {})[str(value)] = self._everyone_role_json()
            return str(value)
        if option_type in (8, 9) and isinstance(value, int) and value in self._roles:
            role = self._role_json(value, self._roles[value], DEFAULT_MEMBER_PERMISSIONS, 2, False)
            resolved.setdefault("roles", {})[str(value)] = role
            return str(value)
        if option_type == 7 and isinstance(value, int) and value in self._channels:
            channel = self._channel_json(value)
            channel["permissions"] = str(DEFAULT_MEMBER_PERMISSIONS)
            resolved.setdefault("channels", {})[str(value)] = channel
            return str(value)
        if option_type == 11 and isinstance(value, tuple) and len(value) in (2, 3):
            # (filename, bytes) or (filename, bytes, declared size): a client may declare any.
            filename, data = value[0], bytes(value[1])
            stored = StoredAttachment(
                self._snowflake(),
                str(filename),
                data,
                mimetypes.guess_type(str(filename))[0],
                declared_size=int(value[2]) if len(value) == 3 else None,
            )
            self._slash_uploads[stored.id] = stored
            attachments = resolved.setdefault("attachments", {})
            attachments[str(stored.id)] = self._attachment_json(stored, ephemeral=True)
            return str(stored.id)
        raise ValueError(
            f"unsupported value {value!r} for option {definition['name']!r} (type {option_type})"
        )

    async def _dispatch_interaction(
        self,
        interaction_type: int,
        data: Json,
        user_id: int,
        channel_id: int,
        *,
        message: StoredMessage | None = None,
        context: str = GUILD_CONTEXT,
    ) -> InteractionHandle:
        user = self._users.get(user_id)
        if user is None:
            raise LookupError(f"unknown user {user_id}: create users with add_user()")
        if channel_id not in self._channels:
            raise LookupError(f"unknown channel {channel_id}")
        guild_id = self.guild_of(channel_id)
        if not self._covering(guild_id):
            raise RuntimeError("no bot session: start the bot and await wait_until_connected()")
        interaction_id = self._snowflake()
        token = "itk." + secrets.token_urlsafe(32)
        channel = self._channel_json(channel_id)
        channel["permissions"] = str(user.permissions)
        member = self._member_json(user)
        member["permissions"] = str(user.permissions)
        payload: Json = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": interaction_type,
            "token": token,
            "version": 1,
            "guild_id": str(guild_id),
            "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
            "channel_id": str(channel_id),
            "channel": channel,
            "member": member,
            "app_permissions": str(
                self.channel_app_permissions.get(channel_id, self.app_permissions)
            ),
            "locale": user.locale,
            "guild_locale": "en-US",
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild_id)},
            "context": 0,
            "attachment_size_limit": self.attachment_size_limit,
            "data": data,
        }
        if context == DM_CONTEXT:
            # The user's DM with the bot: no server, no member, and Discord's BOT_DM context.
            for key in ("guild_id", "guild", "member", "guild_locale"):
                del payload[key]
            payload["user"] = self._user_json(user)
            payload["channel"] = {"id": str(channel_id), "type": 1, "recipients": []}
            payload["context"] = 1
            payload["authorizing_integration_owners"] = {"0": "0"}
        elif context == USER_INSTALL:
            payload["authorizing_integration_owners"] = {"1": str(user_id)}
        elif context != GUILD_CONTEXT:
            raise ValueError(f"unknown interaction context {context!r}")
        if message is not None:
            payload["message"] = self._message_json(message)
        handle = InteractionHandle(
            self,
            interaction_id=interaction_id,
            token=token,
            interaction_type=interaction_type,
            user_id=user_id,
            channel_id=channel_id,
            payload=payload,
            message_id=message.id if message is not None else None,
        )
        self._interactions[interaction_id] = handle
        self._by_token[token] = handle
        handle.dispatched_at = time.perf_counter()
        await self._dispatch("INTERACTION_CREATE", payload)
        self._notify()
        return handle

    async def copy_message(self, message_id: int, channel_id: int) -> StoredMessage:
        """The bot's message ``message_id`` as it stands, posted by the bot in ``channel_id``
        too (a grid an older version re-posted in another server): its buttons carry the same
        custom_ids, so clicks on them reach the bot from there."""
        original = self._messages[message_id]
        if channel_id not in self._channels:
            raise LookupError(f"unknown channel {channel_id}")
        copy = StoredMessage(
            id=self._snowflake(),
            channel_id=channel_id,
            content=original.content,
            components=json.loads(json.dumps(original.components)),
            files=list(original.files),
            author_id=original.author_id,
        )
        await self._store(copy)
        return copy

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, check: Callable[[], T | None], seconds: float, what: str) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            result = check()
            if result is not None:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"timed out after {seconds}s waiting for {what}; {self._summary()}"
                )
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _summary(self) -> str:
        failed = [f"{r.method} {r.path} -> {r.status}" for r in self.requests if r.status >= 400]
        live = [f"{m.id}:{m.content[:40]!r}" for m in self.messages()]
        return f"connected={self._connected} messages={live[-5:]} failed requests={failed[-5:]}"

    def _user_json(self, user: _User) -> Json:
        return {
            "id": str(user.id),
            "username": user.name,
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": user.bot,
            "public_flags": 0,
            "flags": 0,
        }

    def _bot_user_json(self) -> Json:
        return {
            **self._user_json(self._users[self.bot_user_id]),
            "verified": True,
            "mfa_enabled": False,
            "locale": "en-US",
        }

    def _member_json(self, user: _User, *, with_user: bool = True) -> Json:
        member: Json = {
            "roles": (
                [str(self.bot_role_id)]
                if user.id == self.bot_user_id
                else [str(role_id) for role_id in user.roles]
            ),
            "joined_at": user.joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "communication_disabled_until": None,
        }
        if with_user:
            member["user"] = self._user_json(user)
        return member

    def _everyone_role_json(self) -> Json:
        return self._role_json(self.guild_id, "@everyone", DEFAULT_MEMBER_PERMISSIONS, 0, False)

    def _role_json(
        self, role_id: int, name: str, permissions: int, position: int, managed: bool
    ) -> Json:
        role: Json = {
            "id": str(role_id),
            "name": name,
            "permissions": str(permissions),
            "position": position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": managed,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        if managed:
            role["tags"] = {"bot_id": str(self.bot_user_id)}
        return role

    def _channel_json(self, channel_id: int) -> Json:
        last = [m.id for m in self._messages.values() if m.channel_id == channel_id]
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(self.guild_of(channel_id)),
            "name": self._channels[channel_id],
            "position": list(self._channels).index(channel_id),
            "permission_overwrites": [],
            "nsfw": False,
            "topic": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "last_message_id": str(last[-1]) if last else None,
            "flags": 0,
        }

    def _guild_json(self, *, members: list[_User], guild_id: int | None = None) -> Json:
        guild_id = guild_id or self.guild_id
        return {
            "id": str(guild_id),
            "name": self._guilds[guild_id],
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "features": [],
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_progress_bar_enabled": False,
            "roles": [
                self._everyone_role_json(),
                self._role_json(self.bot_role_id, self.bot_name, self.app_permissions, 1, True),
                *(
                    self._role_json(role_id, name, DEFAULT_MEMBER_PERMISSIONS, n, False)
                    for n, (role_id, name) in enumerate(self._roles.items(), start=2)
                ),
            ],
            "emojis": [],
            "stickers": [],
            "channels": [
                self._channel_json(c) for c in self._channels if self.guild_of(c) == guild_id
            ],
            "threads": [],
            "members": [self._member_json(u) for u in members],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "member_count": len(self._users),
            "large": False,
            "unavailable": False,
            "lazy": True,
            "joined_at": self._users[self.bot_user_id].joined_at,
        }

    def _attachment_json(self, attachment: StoredAttachment, *, ephemeral: bool) -> Json:
        expiry = int(time.time() + self.attachment_link_seconds)
        signature = hashlib.sha256(f"{attachment.id}:{expiry}".encode()).hexdigest()
        url = (
            f"{self.base_url}{ATTACHMENT_PATH}/{attachment.id}/{attachment.filename}"
            f"?ex={expiry:x}&is={int(time.time()):x}&hm={signature}"
        )
        data: Json = {
            "id": str(attachment.id),
            "filename": attachment.filename,
            "size": (
                len(attachment.data)
                if attachment.declared_size is None
                else attachment.declared_size
            ),
            "url": url,
            "proxy_url": url,
            "content_type": attachment.content_type,
        }
        if attachment.description is not None:
            data["description"] = attachment.description
        if ephemeral:
            data["ephemeral"] = True
        return data

    def _message_json(self, message: StoredMessage, *, for_gateway: bool = False) -> Json:
        data: Json = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "author": self._user_json(self._users[message.author_id]),
            "content": message.content,
            "timestamp": message.timestamp,
            "edited_timestamp": message.edited_timestamp,
            "tts": False,
            "mention_everyone": message.mention_everyone,
            "mentions": [self._user_json(self._users[u]) for u in message.mentions],
            "mention_roles": [str(r) for r in message.mention_roles],
            "attachments": [
                self._attachment_json(a, ephemeral=message.ephemeral) for a in message.files
            ],
            "embeds": message.embeds,
            "components": message.components,
            "pinned": False,
            "type": message.type,
            "flags": message.flags,
        }
        if message.nonce is not None:
            data["nonce"] = message.nonce
        handle = self._interactions.get(message.interaction_id or 0)
        if handle is not None:
            data["webhook_id"] = str(self.application_id)
            data["application_id"] = str(self.application_id)
            metadata: Json = {
                "id": str(handle.id),
                "type": handle.type,
                "user": self._user_json(self._users[handle.user_id]),
                "authorizing_integration_owners": {"0": str(self.guild_id)},
            }
            if handle.message_id is not None:
                metadata["interacted_message_id"] = str(handle.message_id)
            if message.kind == "followup" and handle.original_id is not None:
                metadata["original_response_message_id"] = str(handle.original_id)
            data["interaction_metadata"] = metadata
        if for_gateway:
            data["guild_id"] = str(self.guild_of(message.channel_id))
            data["member"] = self._member_json(self._users[message.author_id], with_user=False)
        return data

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        record = RequestRecord(request.method, path, dict(request.query), time.perf_counter())
        self.requests.append(record)
        try:
            body, uploads = await self._read_body(request)
            record.body = body
            self._check_auth(request, path)
            self._apply_failure(request.method, path)
            handler, params = self._match(record)
            result = await handler(_Call(request, params, body, uploads))
            hold = next((h for h in self._holds if h.matches(record)), None)
            if hold is not None:
                hold.remaining -= 1
                hold.held.append(record)
                self._notify()
                await hold.wait_released()
        except DiscordError as exc:
            record.status = exc.status
            return json_response(exc.body(), status=exc.status, headers=exc.headers)
        except Exception as exc:
            # A bug in the double: a 4xx fails the bot's call at once, a 5xx would be retried.
            log.exception("DiscordDouble: internal error on %s %s", request.method, path)
            self.internal_errors.append(exc)
            record.status = 400
            return json_response({"message": f"DiscordDouble bug: {exc!r}", "code": 0}, status=400)
        finally:
            self._notify()
        if result is None:
            record.status = 204
            return web.Response(status=204)
        record.status = 200
        return json_response(result)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[_Upload]]:
        content_type = request.content_type
        if content_type == "multipart/form-data":
            body: Any = None
            uploads: list[_Upload] = []
            reader = await request.multipart()
            position = 0
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                elif part.filename is not None:
                    found = _FILE_PART_RE.fullmatch(part.name or "")
                    data = bytes(await part.read(decode=False))
                    index = int(found.group(1)) if found else position
                    uploads.append(
                        _Upload(index, part.filename, data, part.headers.get("Content-Type"))
                    )
                    position += 1
            return body, uploads
        raw = await request.read()
        if not raw:
            return None, []
        try:
            return json.loads(raw), []
        except ValueError:
            raise DiscordError(400, 50109, "The request body contains invalid JSON.") from None

    def _check_auth(self, request: web.Request, path: str) -> None:
        # Webhook and interaction-callback routes are authenticated by their token in the path.
        if path.startswith(("/webhooks/", "/interactions/")) or self.token is None:
            return
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordError(401, 0, "401: Unauthorized")

    def _apply_failure(self, method: str, path: str) -> None:
        for rule in self._failures:
            if rule.method == method and rule.pattern.fullmatch(path):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._failures.remove(rule)
                error = DiscordError(rule.status, rule.code, rule.message)
                if rule.status == 429:
                    # discord.py treats a 429 without Via as a Cloudflare ban and does not retry.
                    error.headers = {"Via": "1.1 google", "Retry-After": str(rule.retry_after)}
                    error.extra = {"retry_after": rule.retry_after, "global": False}
                raise error

    def _match(self, record: RequestRecord) -> tuple[Handler, dict[str, str]]:
        path_known = False
        for method, pattern, handler in self._routes:
            found = pattern.fullmatch(record.path)
            if found is None:
                continue
            if method == record.method:
                return handler, found.groupdict()
            path_known = True
        self.unknown_requests.append(record)
        log.warning("DiscordDouble: no route for %s %s", record.method, record.path)
        if path_known:
            raise DiscordError(405, 0, "405: Method Not Allowed")
        raise DiscordError(404, 0, f"404: Not Found ({record.method} {record.path})")

    async def _handle_attachment(self, request: web.Request) -> web.StreamResponse:
        attachment_id = int(request.match_info["attachment"])
        expiry = request.query.get("ex")
        if expiry is not None and int(expiry, 16) <= time.time():
            return web.Response(status=404, text="This content is no longer available.")
        for stored in self._all_attachments():
            if stored.id == attachment_id:
                return web.Response(
                    body=stored.data,
                    headers={"Content-Type": stored.content_type or "application/octet-stream"},
                )
        return web.Response(status=404, text="Not Found")

    def _all_attachments(self) -> Iterator[StoredAttachment]:
        for message in self._messages.values():
            yield from message.files
        yield from self._slash_uploads.values()

    async def _get_me(self, call: _Call) -> Json:
        return self._bot_user_json()

    async def _get_my_guilds(self, call: _Call) -> list[Json]:
        after = int(call.request.query.get("after") or 0)
        return [
            {
                "id": str(guild_id),
                "name": name,
                "icon": None,
                "owner": False,
                "permissions": "0",
                "features": [],
            }
            for guild_id, name in sorted(self._guilds.items())
            if guild_id > after
        ]

    async def _get_user(self, call: _Call) -> Json:
        user = self._users.get(int(call.params["user"]))
        if user is None:
            raise DiscordError(404, 10013, "Unknown User")
        return self._user_json(user)

    async def _get_application(self, call: _Call) -> Json:
        return {
            "id": str(self.application_id),
            "name": self.bot_name,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self._user_json(self._users[self.owner_id]),
            "team": self._team_json(),
            "verify_key": "0" * 64,
            "flags": 0,
            "hook": True,
            "bot": self._user_json(self._users[self.bot_user_id]),
            "interactions_endpoint_url": None,
            "redirect_uris": [],
            "tags": [],
        }

    def _team_json(self) -> Json | None:
        if not self.team_members:
            return None
        team_id = self.application_id + 1
        return {
            "id": str(team_id),
            "name": "the team",
            "icon": None,
            "owner_user_id": str(self.owner_id),
            "members": [
                {
                    "membership_state": state,
                    "team_id": str(team_id),
                    "user": self._user_json(self._users[user_id]),
                    "role": role,
                    "permissions": ["*"],
                }
                for user_id, role, state in self.team_members
            ],
        }

    async def _get_gateway(self, call: _Call) -> Json:
        return {
            "url": self.gateway_url,
            "shards": self.shard_count,
            "session_start_limit": {
                "total": 1000,
                "remaining": 1000,
                "reset_after": 0,
                "max_concurrency": 1,
            },
        }

    def _command_scope(self, call: _Call) -> int | None:
        if int(call.params["app"]) != self.application_id:
            raise DiscordError(404, 10002, "Unknown Application")
        guild = call.params.get("guild")
        if guild is None:
            return None
        if int(guild) not in self._guilds:
            raise DiscordError(403, 50001, "Missing Access")
        return int(guild)

    async def _get_commands(self, call: _Call) -> list[Json]:
        return list(self._commands.get(self._command_scope(call), {}).values())

    async def _put_commands(self, call: _Call) -> list[Json]:
        scope = self._command_scope(call)
        if not isinstance(call.body, list):
            raise _invalid_form("_root", "BASE_TYPE_ARRAY", "Must be an array.")
        stored: dict[str, Json] = {}
        for command in call.body:
            name = str(command.get("name", ""))
            command_type = int(command.get("type", 1))
            if command_type == 1 and (not _COMMAND_NAME_RE.fullmatch(name) or name != name.lower()):
                raise _invalid_form(
                    "name", "APPLICATION_COMMAND_INVALID_NAME", f"Bad name {name!r}"
                )
            if command_type == 1 and not 1 <= len(command.get("description", "")) <= 100:
                raise _invalid_form("description", "BASE_TYPE_BAD_LENGTH", "Must be 1-100 long.")
            command_id = self._command_ids.setdefault((scope, name), self._snowflake())
            echoed: Json = {
                **command,
                "id": str(command_id),
                "application_id": str(self.application_id),
                "version": str(self._snowflake()),
                "type": command_type,
                "default_member_permissions": command.get("default_member_permissions"),
                "nsfw": command.get("nsfw", False),
            }
            if scope is not None:
                echoed["guild_id"] = str(scope)
            stored[name] = echoed
        self._commands[scope] = stored
        self.command_syncs.append(CommandSync(scope, list(stored), time.perf_counter()))
        return list(stored.values())

    async def _get_guild(self, call: _Call) -> Json:
        if int(call.params["guild"]) not in self._guilds:
            raise DiscordError(404, 10004, "Unknown Guild")
        guild = self._guild_json(members=[], guild_id=int(call.params["guild"]))
        for key in ("channels", "members", "threads", "presences", "voice_states"):
            guild.pop(key)
        return guild

    async def _get_member(self, call: _Call) -> Json:
        user = self._users.get(int(call.params["user"]))
        if int(call.params["guild"]) not in self._guilds or user is None:
            raise DiscordError(404, 10007, "Unknown Member")
        return self._member_json(user)

    def _channel_id(self, call: _Call) -> int:
        channel_id = int(call.params["channel"])
        if channel_id not in self._channels:
            raise DiscordError(404, 10003, "Unknown Channel")
        return channel_id

    def _channel_message(self, call: _Call) -> StoredMessage:
        channel_id = self._channel_id(call)
        message = self._messages.get(int(call.params["message"]))
        # Ephemeral messages are not part of the channel: only their token reaches them.
        if (
            message is None
            or message.deleted
            or message.ephemeral
            or message.channel_id != channel_id
        ):
            raise DiscordError(404, 10008, "Unknown Message")
        return message

    async def _get_channel(self, call: _Call) -> Json:
        return self._channel_json(self._channel_id(call))

    async def _get_channel_messages(self, call: _Call) -> list[Json]:
        channel_id = self._channel_id(call)
        limit = int(call.request.query.get("limit", "50"))
        live = [m for m in self.messages(channel_id) if not m.ephemeral]
        return [self._message_json(m) for m in reversed(live)][:limit]

    async def _get_channel_message(self, call: _Call) -> Json:
        return self._message_json(self._channel_message(call))

    async def _post_channel_message(self, call: _Call) -> Json:
        channel_id = self._channel_id(call)
        body = call.json
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            earlier = self._nonces.get((self.bot_user_id, str(nonce)))
            if earlier is not None:
                return self._message_json(self._messages[earlier])
        message = self._new_message(
            channel_id, body, call.uploads, allowed_flags=CHANNEL_MESSAGE_FLAGS, kind="channel"
        )
        if nonce is not None:
            message.nonce = str(nonce)
            if body.get("enforce_nonce"):
                self._nonces[(self.bot_user_id, str(nonce))] = message.id
        await self._store(message)
        return self._message_json(message)

    async def _patch_channel_message(self, call: _Call) -> Json:
        message = self._channel_message(call)
        await self._edit(message, call.json, call.uploads)
        return self._message_json(message)

    async def _delete_channel_message(self, call: _Call) -> None:
        await self._delete(self._channel_message(call))

    async def _post_callback(self, call: _Call) -> Json:
        handle = self._interactions.get(int(call.params["interaction"]))
        if handle is None or handle.token != call.params["token"] or handle.expired:
            raise DiscordError(404, 10062, "Unknown interaction")
        arrived_at = time.perf_counter()
        body = call.json
        callback = Callback(
            type=int(body.get("type", 0)),
            data=body.get("data") or {},
            payload=body,
            files=[(u.filename, u.data) for u in call.uploads],
            arrived_at=arrived_at,
            ack_seconds=arrived_at - handle.dispatched_at,
            accepted=False,
        )
        handle.callbacks.append(callback)
        try:
            message = self._accept_callback(handle, callback, call.uploads)
        except DiscordError as exc:
            callback.error_code = exc.code
            raise
        callback.accepted = True
        handle.ack = callback
        if message is not None and callback.type == UPDATE_MESSAGE:
            await self._edit(message, callback.data, call.uploads)
        elif message is not None:
            await self._store(message)

        answer: Json = {
            "interaction": {
                "id": str(handle.id),
                "type": handle.type,
                "response_message_loading": callback.type == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
                "response_message_ephemeral": bool(message and message.ephemeral),
            }
        }
        if message is not None:
            answer["interaction"]["response_message_id"] = str(message.id)
            answer["resource"] = {"type": callback.type, "message": self._message_json(message)}
        return answer

    def _accept_callback(
        self, handle: InteractionHandle, callback: Callback, uploads: list[_Upload]
    ) -> StoredMessage | None:
        """Check a callback as Discord would; the message it creates or updates, if any."""
        if handle.ack is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        if self.ack_deadline is not None and callback.ack_seconds > self.ack_deadline:
            raise DiscordError(404, 10062, "Unknown interaction")
        if callback.type not in (
            CHANNEL_MESSAGE_WITH_SOURCE,
            DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
            DEFERRED_UPDATE_MESSAGE,
            UPDATE_MESSAGE,
            AUTOCOMPLETE_RESULT,
            MODAL,
        ):
            raise _invalid_form("type", "BASE_TYPE_CHOICES", f"Bad callback type {callback.type}")
        if callback.type in (CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE):
            data = dict(callback.data)
            if callback.type == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE:
                data = {"flags": (int(data.get("flags", 0)) & EPHEMERAL) | LOADING}
            message = self._new_message(
                handle.channel_id,
                data,
                uploads,
                allowed_flags=INTERACTION_MESSAGE_FLAGS | LOADING,
                kind="response",
                handle=handle,
                allow_empty=callback.type == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
            )
            handle.original_id = message.id
            return message
        if callback.type in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE):
            if handle.message_id is None:
                raise _invalid_form(
                    "type", "INTERACTION_CALLBACK_TYPE", "Not valid for this interaction"
                )
            message = self._messages[handle.message_id]
            if message.deleted:
                raise DiscordError(404, 10008, "Unknown Message")
            if callback.type == UPDATE_MESSAGE:
                self._validate(message, callback.data, uploads, creating=False)
            handle.original_id = message.id
            return message if callback.type == UPDATE_MESSAGE else None
        return None

    def _webhook_handle(self, call: _Call) -> InteractionHandle:
        handle = self._by_token.get(call.params["token"])
        # Until the first callback there is no webhook for the token yet.
        if (
            int(call.params["app"]) != self.application_id
            or handle is None
            or handle.expired
            or handle.ack is None
        ):
            raise DiscordError(404, 10015, "Unknown Webhook")
        return handle

    def _webhook_message(self, call: _Call) -> tuple[InteractionHandle, StoredMessage]:
        handle = self._webhook_handle(call)
        raw = call.params["message"]
        message_id = handle.original_id if raw == "@original" else int(raw)
        allowed = {handle.original_id, *handle.followup_ids}
        message = self._messages.get(message_id or 0)
        if message is None or message.deleted or message_id not in allowed:
            raise DiscordError(404, 10008, "Unknown Message")
        return handle, message

    async def _post_followup(self, call: _Call) -> Json | None:
        handle = self._webhook_handle(call)
        body = call.json
        original = handle.original
        if original is not None and original.loading and original.interaction_id == handle.id:
            # The first followup after a "thinking" defer fills in the deferred original.
            await self._edit(original, body, call.uploads, count_edit=False, finish_loading=True)
            message = original
        else:
            message = self._new_message(
                handle.channel_id,
                body,
                call.uploads,
                allowed_flags=INTERACTION_MESSAGE_FLAGS,
                kind="followup",
                handle=handle,
            )
            await self._store(message)
        handle.followup_ids.append(message.id)
        self._notify()
        wait = call.request.query.get("wait", "false").lower() in ("1", "true")
        return self._message_json(message) if wait else None

    async def _get_webhook_message(self, call: _Call) -> Json:
        return self._message_json(self._webhook_message(call)[1])

    async def _patch_webhook_message(self, call: _Call) -> Json:
        _, message = self._webhook_message(call)
        await self._edit(message, call.json, call.uploads, finish_loading=True)
        return self._message_json(message)

    async def _delete_webhook_message(self, call: _Call) -> None:
        await self._delete(self._webhook_message(call)[1])

    def _new_message(
        self,
        channel_id: int,
        body: Json,
        uploads: list[_Upload],
        *,
        allowed_flags: int,
        kind: str,
        handle: InteractionHandle | None = None,
        allow_empty: bool = False,
    ) -> StoredMessage:
        flags = int(body.get("flags") or 0)
        if flags & ~allowed_flags:
            raise _invalid_form("flags", "MESSAGE_FLAGS_INVALID", f"Flags {flags} not allowed here")
        message = StoredMessage(
            id=self._snowflake(),
            channel_id=channel_id,
            author_id=self.bot_user_id,
            flags=flags,
            kind=kind,
            interaction_id=handle.id if handle is not None else None,
            type=(
                CHAT_INPUT_COMMAND_MESSAGE
                if handle is not None and handle.type == APPLICATION_COMMAND
                else DEFAULT_MESSAGE
            ),
        )
        self._validate(message, body, uploads, creating=not allow_empty)
        self._apply(message, body, uploads, creating=True)
        return message

    def _validate(
        self, message: StoredMessage, body: Json, uploads: list[_Upload], *, creating: bool
    ) -> None:
        for upload in uploads:
            if len(upload.data) > self.attachment_size_limit:
                raise DiscordError(413, 40005, "Request entity too large")
        content = body.get("content") or ""
        if len(content) > 2000:
            raise _invalid_form(
                "content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
            )
        components = body.get("components") or []
        flags = int(body.get("flags") or message.flags)
        if not flags & COMPONENTS_V2:
            if len(components) > 5:
                raise _invalid_form("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer.")
            for row in components:
                if row.get("type") != 1 or len(row.get("components", [])) > 5:
                    raise _invalid_form("components", "COMPONENT_LAYOUT", "Bad action row")
        custom_ids = [c["custom_id"] for c in walk_components(components) if "custom_id" in c]
        if any(len(c) > 100 for c in custom_ids):
            raise _invalid_form(
                "custom_id", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length."
            )
        if len(custom_ids) != len(set(custom_ids)):
            raise _invalid_form(
                "components", "COMPONENT_CUSTOM_ID_DUPLICATED", "Duplicate custom_id"
            )
        if creating and not (content or body.get("embeds") or components or uploads):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        allowed = body.get("allowed_mentions")
        if allowed is not None:
            parse = allowed.get("parse") or []
            for kind in ("users", "roles"):
                if kind in parse and allowed.get(kind):
                    raise _invalid_form(
                        "allowed_mentions",
                        "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                        f'parse:["{kind}"] and {kind}: [ids] are mutually exclusive.',
                    )

    def _apply(
        self, message: StoredMessage, body: Json, uploads: list[_Upload], *, creating: bool
    ) -> None:
        if "content" in body:
            # Discord works the mentions out again only when the content changes.
            message.content = body["content"] or ""
            message.allowed_mentions = body.get("allowed_mentions")
            self._work_out_mentions(message)
        if "components" in body:
            message.components = body["components"] or []
        if "embeds" in body:
            message.embeds = body["embeds"] or []
        if "flags" in body and body["flags"] is not None:
            new_flags = int(body["flags"])
            if creating:
                message.flags = new_flags
            else:
                # An edit can only toggle suppress-embeds or switch to components v2.
                editable = SUPPRESS_EMBEDS | COMPONENTS_V2
                message.flags = (message.flags & ~SUPPRESS_EMBEDS) | (new_flags & editable)
        existing = {a.id: a for a in message.files}
        entries = body.get("attachments")
        if isinstance(entries, list):
            kept = [
                existing[int(e["id"])] for e in entries if _int_or_none(e.get("id")) in existing
            ]
        else:
            kept = list(message.files)
        by_index = {u.index: u for u in uploads}
        added: list[StoredAttachment] = []
        used: set[int | None] = set()
        for entry in entries if isinstance(entries, list) else []:
            index = _int_or_none(entry.get("id"))
            upload = by_index.get(index) if index not in existing else None
            if upload is not None and index not in used:
                used.add(index)
                added.append(
                    StoredAttachment(
                        self._snowflake(),
                        entry.get("filename") or upload.filename,
                        upload.data,
                        upload.content_type,
                        entry.get("description"),
                    )
                )
        for upload in uploads:
            if upload.index not in used:
                added.append(
                    StoredAttachment(
                        self._snowflake(), upload.filename, upload.data, upload.content_type
                    )
                )
        if len(kept) + len(added) > 10:
            raise _invalid_form("attachments", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer.")
        message.files = kept + added

    def _work_out_mentions(self, message: StoredMessage) -> None:
        """Whom ``message`` pings, under its allowed_mentions as Discord reads them: ``parse``
        lets every mention of a kind through, a ``users``/``roles`` list only those ids."""
        allowed = message.allowed_mentions
        parse = ["everyone", "users", "roles"] if allowed is None else allowed.get("parse") or []

        def passes(kind: str, found: int) -> bool:
            listed = [] if allowed is None else [int(i) for i in allowed.get(kind) or []]
            return kind in parse or found in listed

        users = dict.fromkeys(int(u) for u in _MENTION_RE.findall(message.content))
        roles = dict.fromkeys(int(r) for r in _ROLE_MENTION_RE.findall(message.content))
        message.mentions = [u for u in users if u in self._users and passes("users", u)]
        message.mention_roles = [r for r in roles if passes("roles", r)]
        message.mention_everyone = "everyone" in parse and bool(
            _EVERYONE_RE.search(message.content)
        )

    async def _store(self, message: StoredMessage) -> None:
        self._messages[message.id] = message
        self._notify()
        await self._announce("MESSAGE_CREATE", message)

    async def _edit(
        self,
        message: StoredMessage,
        body: Json,
        uploads: list[_Upload],
        *,
        count_edit: bool = True,
        finish_loading: bool = False,
    ) -> None:
        self._validate(message, body, uploads, creating=False)
        self._apply(message, body, uploads, creating=False)
        if finish_loading:
            message.flags &= ~LOADING
        if count_edit:
            message.edits += 1
            message.edited_timestamp = _now_iso()
        self._notify()
        await self._announce("MESSAGE_UPDATE", message)

    async def _delete(self, message: StoredMessage) -> None:
        message.deleted = True
        self._notify()
        if not message.ephemeral:
            await self._dispatch_if_subscribed(
                "MESSAGE_DELETE",
                {
                    "id": str(message.id),
                    "channel_id": str(message.channel_id),
                    "guild_id": str(self.guild_of(message.channel_id)),
                },
            )

    async def _announce(self, event: str, message: StoredMessage) -> None:
        if not message.ephemeral:
            await self._dispatch_if_subscribed(event, self._message_json(message, for_gateway=True))

    async def _dispatch_if_subscribed(self, event: str, data: Json) -> None:
        guild_id = int(data["guild_id"])
        for session in self._covering(guild_id):
            if session.intents & GUILD_MESSAGES_INTENT:
                await self._dispatch_to(session, event, data)

    async def _handle_gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _Connection(ws=ws, query=dict(request.query))
        self._connections.append(conn)
        try:
            # Plain text frames: the client asks for compression but inflates binary frames only.
            await self._send(
                conn, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}}
            )
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    await self._on_gateway_frame(conn, json.loads(frame.data))
                else:
                    log.warning("DiscordDouble: unexpected gateway frame %s", frame.type)
        finally:
            self._connections.remove(conn)
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                session.ready = False
                live = self._live.get(_shard_key(session), [])
                if session in live:
                    if not conn.dropped and ws.close_code in _SESSION_ENDING_CLOSE_CODES:
                        live.remove(session)
                        if session is self._session:
                            self._session = None
            self._notify()
        return ws

    async def _send(self, conn: _Connection, frame: Json) -> None:
        frame = {"op": frame["op"], "d": frame.get("d"), "s": frame.get("s"), "t": frame.get("t")}
        try:
            await conn.ws.send_str(json.dumps(frame))
        except (ConnectionResetError, RuntimeError) as exc:
            log.info("DiscordDouble: gateway send failed (%s); the client will resume", exc)

    def _covering(self, guild_id: int) -> list[_Session]:
        """The sessions that receive ``guild_id``'s events (its shard's, as on Discord)."""
        return [
            session
            for key, sessions in self._live.items()
            if key is None or self.shard_of(guild_id) == key[0]
            for session in sessions
        ]

    async def _dispatch(self, event: str, data: Json) -> None:
        # A DM's events come on shard 0, as guild 0's would.
        guild_id = int(data.get("guild_id") or 0)
        sessions = self._covering(guild_id)
        if not sessions:
            raise RuntimeError(f"cannot dispatch {event}: no bot session for guild {guild_id}")
        for session in sessions:
            await self._dispatch_to(session, event, data)

    async def _dispatch_to(self, session: _Session, event: str, data: Json) -> None:
        async with self._gateway_lock:
            session.seq += 1
            frame = {"op": 0, "t": event, "s": session.seq, "d": data}
            # Kept for RESUME replays; events sent while disconnected are delivered that way.
            session.history.append(frame)
            if session.conn is not None:
                await self._send(session.conn, frame)

    async def _on_gateway_frame(self, conn: _Connection, frame: Json) -> None:
        op = frame.get("op")
        data = frame.get("d")
        if op == 1:
            await self._send(conn, {"op": 11})
        elif op == 2:
            await self._identify(conn, data or {})
        elif op == 6:
            await self._resume(conn, data or {})
        elif op == 8:
            await self._request_members(conn, data or {})
        elif op in (3, 4):
            pass
        else:
            log.warning("DiscordDouble: unhandled gateway op %s", op)

    async def _identify(self, conn: _Connection, data: Json) -> None:
        self.identifies.append(data)
        if self.token is not None and data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~self.enabled_privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        shard = data.get("shard")
        if shard is not None and (len(shard) != 2 or shard[1] != self.shard_count):
            await conn.ws.close(code=4011, message=b"Sharding required.")
            return
        session = _Session(id=secrets.token_hex(16), intents=intents, shard=shard)
        session.conn = conn
        conn.session = session
        key = _shard_key(session)
        live = self._live.setdefault(key, [])
        if any(s.conn is not None and not s.conn.ws.closed for s in live):
            self.shard_overlaps.append(key)
        # A session left without a connection (its process died) is dropped by the new one.
        live[:] = [s for s in live if s.conn is not None]
        live.append(session)
        self._sessions[session.id] = session
        self._session = session
        guilds = [g for g in self._guilds if key is None or self.shard_of(g) == key[0]]
        ready: Json = {
            "v": 10,
            "user": self._bot_user_json(),
            "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        await self._dispatch_to(session, "READY", ready)
        members = [
            u
            for u in self._users.values()
            if intents & GUILD_MEMBERS_INTENT or u.id == self.bot_user_id
        ]
        for guild_id in guilds:
            if guild_id not in self.withheld_guilds:
                await self._dispatch_to(
                    session, "GUILD_CREATE", self._guild_json(members=members, guild_id=guild_id)
                )
        session.ready = True
        self._notify()

    async def send_guild_create(self, guild_id: int) -> None:
        """The GUILD_CREATE of a withheld guild, to every session that covers it, at last."""
        self.withheld_guilds.discard(guild_id)
        for session in self._covering(guild_id):
            members = [
                u
                for u in self._users.values()
                if session.intents & GUILD_MEMBERS_INTENT or u.id == self.bot_user_id
            ]
            await self._dispatch_to(
                session, "GUILD_CREATE", self._guild_json(members=members, guild_id=guild_id)
            )

    async def _resume(self, conn: _Connection, data: Json) -> None:
        session = self._sessions.get(str(data.get("session_id")))
        live = session is not None and session.conn is not None and not session.conn.ws.closed
        if session is None or session not in self._live.get(_shard_key(session), []) or live:
            await self._send(conn, {"op": 9, "d": False})
            return
        self.resumes += 1
        seen = int(data.get("seq") or 0)
        async with self._gateway_lock:
            session.conn = conn
            conn.session = session
            for frame in session.history:
                if frame["s"] > seen:
                    await self._send(conn, frame)
        await self._dispatch_to(session, "RESUMED", {})
        session.ready = True
        self._notify()

    async def _request_members(self, conn: _Connection, data: Json) -> None:
        query = str(data.get("query") or "")
        user_ids = {int(u) for u in data.get("user_ids") or []}
        members = [
            u
            for u in self._users.values()
            if (not user_ids or u.id in user_ids) and u.name.startswith(query)
        ]
        limit = int(data.get("limit") or 0)
        if limit:
            members = members[:limit]
        if conn.session is None:
            return
        await self._dispatch_to(
            conn.session,
            "GUILD_MEMBERS_CHUNK",
            {
                "guild_id": str(self.guild_id),
                "members": [self._member_json(u) for u in members],
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
                "nonce": data.get("nonce"),
            },
        )


def _shard_key(session: _Session) -> tuple[int, int] | None:
    return (session.shard[0], session.shard[1]) if session.shard else None


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


@contextlib.contextmanager
def point_discord_at(double: DiscordDouble) -> Iterator[DiscordDouble]:
    """Make discord.py clients created inside the block talk to the double.

    ``Route`` reads its ``BASE`` class attribute each time a route is built, and a client without
    shards connects to ``DEFAULT_GATEWAY``, so patching the two class attributes is enough.
    """
    route = discord.http.Route
    websocket = discord.gateway.DiscordWebSocket
    saved = (route.BASE, websocket.DEFAULT_GATEWAY)
    route.BASE = double.api_base
    websocket.DEFAULT_GATEWAY = yarl.URL(double.gateway_url)
    try:
        yield double
    finally:
        route.BASE, websocket.DEFAULT_GATEWAY = saved
