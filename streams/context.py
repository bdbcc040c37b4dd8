"""Each call's dialogue context window in Redis.

One Redis list per call (``{prefix}{call_id}``) holds the call's last ``window`` utterances,
encoded features included, oldest first. Appending is one Lua script: skip utterances already in
the window (a replay after a restart), RPUSH, LTRIM to the window, PEXPIRE (RPUSH alone does not
refresh a TTL), so an idle call's window expires ``ttl_s`` after its last utterance. Reads refresh
the TTL too. Many calls are read or appended in one pipeline per batch. A call's end deletes it.

Beside the window, a set per call (``{prefix}labelled#{call_id}``) holds the ids of every
utterance appended: the worker appends only after its events are published, so an utterance in
that set is one whose event is out, and a replay of it (after a crash or a rebalance) is acked
without a second, possibly different, event (its window may have moved on since).

The modalities a call's ``started`` message declared are kept beside its window
(``{prefix}declared#{call_id}``, same TTL), so the worker that owns the call after a rebalance or
restart waits for the same parts as the one that read the declaration.

Windows kept in memory: every append also stores a new random token beside the window
(``{prefix}wtok#{call_id}``, same TTL) and says whether the token it replaced was the one the
worker expected. A worker keeps the windows it read or appended with their token, and a batch reads
only each call's token (a few bytes); the window itself (some 70 KB of JSON at 12 utterances) is read
back only when the token differs: another worker appended since, the window expired or Redis lost
it, or it was never read. A worker forgets every window it holds when its partitions change
(:meth:`ContextStore.forget_cached`), so a call that went to another worker and came back is read
afresh even from a worker of an older version that writes no token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.exceptions import NoScriptError

from streams.errors import ConfigError, ServiceUnavailable
from streams.schemas import encode_f32
from streams.settings import RedisSettings

log = logging.getLogger("emostream.context")

_APPEND = """
-- KEYS: window, labelled set, window token; ARGV: window size, TTL ms, new token, expected token, items...
-- returns {1 if the token replaced was the expected one ('' for none) else 0, the window's length,
-- then the positions (1-based) of the items pushed}
local key, labelled, token = KEYS[1], KEYS[2], KEYS[3]
-- an item's utterance id, read from the front of its JSON (ContextItem.to_json writes it first),
-- not by decoding the whole item: a window of 12 is some 70 KB of JSON, decoded with every append
local function id_of(item)
  return string.match(item, '^{"u": "([%w%._:@/%-]+)", ') or cjson.decode(item)['u']
end
local expected = (redis.call('GET', token) or '') == ARGV[4] and 1 or 0
local existing = redis.call('LRANGE', key, 0, -1)
local seen = {}
for _, item in ipairs(existing) do seen[id_of(item)] = true end
local pushed = {}
for i = 5, #ARGV do
  local id = id_of(ARGV[i])
  if not seen[id] and redis.call('SISMEMBER', labelled, id) == 0 then
    redis.call('RPUSH', key, ARGV[i])
    pushed[#pushed + 1] = i - 4
  end
  seen[id] = true
  redis.call('SADD', labelled, id)
end
redis.call('LTRIM', key, -tonumber(ARGV[1]), -1)
redis.call('PEXPIRE', key, ARGV[2])
redis.call('PEXPIRE', labelled, ARGV[2])
redis.call('SET', token, ARGV[3], 'PX', ARGV[2])
return {expected, redis.call('LLEN', key), unpack(pushed)}
"""

_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()


@dataclass(frozen=True)
class ContextItem:
    """One past utterance of a call, as the engine needs it."""

    utterance_id: str
    seq: int
    speaker: str
    features: dict[str, np.ndarray]  # modality -> (D,) float32, only the modalities present

    def to_json(self) -> str:
        feats = {m: encode_f32(v) for m, v in self.features.items()}  # the parts' compact vector form
        return json.dumps({"u": self.utterance_id, "q": self.seq, "s": self.speaker, "f": feats})

    @classmethod
    def from_json(cls, raw: str | bytes) -> ContextItem:
        obj = json.loads(raw)
        feats = {m: np.frombuffer(base64.b64decode(b), dtype="<f4").copy() for m, b in obj["f"].items()}
        return cls(utterance_id=obj["u"], seq=int(obj["q"]), speaker=obj["s"], features=feats)


@dataclass
class CallState:
    """What a batch needs to know of one call: its window (oldest first), the ids of utterances whose
    events are out, and the parts each labelled utterance was joined with ('text+audio')."""

    window: list[ContextItem]
    labelled: set[str]
    joins: dict[str, str]


class ContextStore:
    """Async access to the windows; ``client`` is a ``redis.asyncio.Redis``."""

    def __init__(self, client: Any, prefix: str, window: int, ttl_s: float, max_decoded: int = 8192) -> None:
        assert window >= 1 and ttl_s > 0
        self.client = client
        self.prefix = prefix
        self.window = window
        self.ttl_ms = int(ttl_s * 1000)
        # call -> (token, window, monotonic time stored), least recently used first; bounded by the
        # items it holds (shared with the decoded items below), and an entry older than the TTL unused
        self._windows: OrderedDict[str, tuple[str, list[ContextItem], float]] = OrderedDict()
        self._windowed = 0  # items held in _windows
        self.window_reads = 0  # windows read back from Redis (not in memory, or stale), for tests
        # a call's window is read back with every batch of the call: the items decoded last time, by
        # their stored bytes (the same bytes are the same item), so each is decoded about once
        self._decoded: OrderedDict[bytes, ContextItem] = OrderedDict()
        self.max_decoded = max_decoded

    def _item(self, raw: bytes | str) -> ContextItem:
        key = raw.encode() if isinstance(raw, str) else raw
        item = self._decoded.get(key)
        if item is None:
            item = self._decoded[key] = ContextItem.from_json(key)
            for v in item.features.values():
                v.flags.writeable = False  # shared by every batch that reads it: nobody may change it
            if len(self._decoded) > self.max_decoded:
                self._decoded.popitem(last=False)
        else:
            self._decoded.move_to_end(key)
        return item

    def key(self, call_id: str) -> str:
        return f"{self.prefix}{call_id}"

    def token_key(self, call_id: str) -> str:
        return f"{self.prefix}wtok#{call_id}"

    def forget_cached(self) -> None:
        """Forget every window held in memory (the worker's partitions changed: the calls it held may
        have been appended by another worker meanwhile)."""
        self._windows.clear()
        self._windowed = 0

    def _uncache(self, call_id: str) -> tuple[str, list[ContextItem], float] | None:
        entry = self._windows.pop(call_id, None)
        if entry is not None:
            self._windowed -= len(entry[1])
        return entry

    def _cache(self, call_id: str, token: str, window: list[ContextItem]) -> None:
        self._uncache(call_id)
        self._windows[call_id] = (token, window, time.monotonic())
        self._windowed += len(window)
        while self._windowed > self.max_decoded and self._windows:
            self._uncache(next(iter(self._windows)))

    def _cached(self, call_id: str, token: bytes | str | None) -> list[ContextItem] | None:
        """The window held for the call if Redis still has it under the same token."""
        entry = self._windows.get(call_id)
        if entry is None or entry[0] != (_text(token) if token is not None else ""):
            return None
        if time.monotonic() - entry[2] >= self.ttl_ms / 1000:  # could have expired and come back meanwhile
            return None
        self._windows.move_to_end(call_id)
        return entry[1]

    async def _read_windows(self, call_ids: list[str]) -> dict[str, list[ContextItem]]:
        """Windows not held in memory, read with their tokens in one transaction (a consistent pair)."""
        if not call_ids:
            return {}
        self.window_reads += len(call_ids)
        async with self.client.pipeline(transaction=True) as pipe:
            for call_id in call_ids:
                pipe.lrange(self.key(call_id), 0, -1)
                pipe.get(self.token_key(call_id))
            replies = await pipe.execute()
        out = {}
        for i, call_id in enumerate(call_ids):
            window, token = [self._item(r) for r in replies[2 * i]], replies[2 * i + 1]
            # no token: nothing there yet, or an older version's window ('' until this worker appends)
            self._cache(call_id, _text(token) if token is not None else "", window)
            out[call_id] = window
        return out

    async def fetch(self, call_ids: list[str]) -> dict[str, list[ContextItem]]:
        """Each call's window, oldest first (empty for an unknown call)."""
        if not call_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.lrange(self.key(call_id), 0, -1)
                pipe.pexpire(self.key(call_id), self.ttl_ms)
                pipe.pexpire(self.declaration_key(call_id), self.ttl_ms)  # lives as long as the call is active
                pipe.pexpire(self.token_key(call_id), self.ttl_ms)
            replies = await pipe.execute()
        return {c: [self._item(r) for r in replies[4 * i]] for i, c in enumerate(call_ids)}

    async def append(self, items: dict[str, list[ContextItem]]) -> None:
        """Append each call's new utterances (in order), trim, refresh the TTL, in one pipeline."""
        if not items:
            return
        rows = []
        for call_id, new in items.items():
            if new:
                held = self._uncache(call_id)  # put back below if the append leaves it exact
                rows.append((call_id, new, held, os.urandom(8).hex()))
        for attempt in (1, 2):  # EVALSHA: a registered script would ask SCRIPT EXISTS before every pipeline
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for call_id, new, held, token in rows:
                        keys = (self.key(call_id), self.labelled_key(call_id), self.token_key(call_id))
                        args = (self.window, self.ttl_ms, token, held[0] if held else "", *(i.to_json() for i in new))
                        pipe.evalsha(_APPEND_SHA, 3, *keys, *args)
                    replies = await pipe.execute()
                break
            except NoScriptError:  # a Redis new or restarted (or SCRIPT FLUSH): no append ran; load it, once
                if attempt == 2:
                    raise
                await self.client.script_load(_APPEND)
        for (call_id, new, held, token), reply in zip(rows, replies, strict=True):
            expected, length, *pushed = (int(x) for x in reply)
            if held is None or not expected:
                continue  # another writer since the read (or none held): read back next time
            window = [*held[1], *(new[i - 1] for i in pushed)][-self.window :]
            if len(window) == length:
                self._cache(call_id, token, window)

    def labelled_key(self, call_id: str) -> str:
        return f"{self.prefix}labelled#{call_id}"

    def joined_key(self, call_id: str) -> str:
        return f"{self.prefix}joined#{call_id}"

    async def record_joins(self, joins: dict[str, dict[str, str]]) -> None:
        """Remember which parts each utterance was labelled with (call -> utterance -> 'text+audio'),
        before its event goes out, so that a replay joins the same parts."""
        if not joins:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for call_id, mapping in joins.items():
                pipe.hset(self.joined_key(call_id), mapping=mapping)
                pipe.pexpire(self.joined_key(call_id), self.ttl_ms)
            await pipe.execute()

    async def state(self, call_ids: list[str], asking: dict[str, list[str]] | None = None) -> dict[str, CallState]:
        """Each call's window, labelled ids and recorded joins, in one round trip (refreshing the
        window's and the declaration's TTL, as :meth:`fetch` does), and a second for the windows not
        held in memory under the token Redis has (see the module doc). With ``asking`` (call ->
        utterance ids), the labelled ids and joins are only those of the utterances asked about: a
        batch needs no more, and a long call's sets grow with every turn."""
        if not call_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.get(self.token_key(call_id))
                pipe.pexpire(self.token_key(call_id), self.ttl_ms)
                ids = None if asking is None else asking.get(call_id, [])
                if ids is None:
                    pipe.smembers(self.labelled_key(call_id))
                    pipe.hgetall(self.joined_key(call_id))
                elif ids:
                    pipe.smismember(self.labelled_key(call_id), ids)
                    pipe.hmget(self.joined_key(call_id), ids)
                pipe.pexpire(self.key(call_id), self.ttl_ms)
                pipe.pexpire(self.declaration_key(call_id), self.ttl_ms)
            replies = await pipe.execute()
        out = {}
        at = 0
        windows: dict[str, list[ContextItem] | None] = {}
        for c in call_ids:
            windows[c] = self._cached(c, replies[at])
            ids = None if asking is None else asking.get(c, [])
            if ids is None:
                labelled, joins = replies[at + 2 : at + 4]
                out[c] = CallState([], {_text(m) for m in labelled}, {_text(k): _text(v) for k, v in joins.items()})
                at += 6
            elif ids:
                member, joined = replies[at + 2 : at + 4]
                out[c] = CallState(
                    [],
                    {u for u, m in zip(ids, member, strict=True) if m},
                    {u: _text(v) for u, v in zip(ids, joined, strict=True) if v is not None},
                )
                at += 6
            else:
                out[c] = CallState([], set(), {})
                at += 4
        read = await self._read_windows([c for c, w in windows.items() if w is None])
        for c, state in out.items():
            held = windows[c]
            state.window = list(held) if held is not None else read[c]  # a batch may not change the one held
        return out

    def declaration_key(self, call_id: str) -> str:
        return f"{self.prefix}declared#{call_id}"  # '#' is not allowed in call ids: no clash with windows

    async def declare(self, call_id: str, modalities: list[str]) -> None:
        """Remember what a call's 'started' said it will send, for whichever worker owns it next."""
        await self.client.set(self.declaration_key(call_id), json.dumps(modalities), px=self.ttl_ms)

    async def declared(self, call_id: str) -> list[str] | None:
        raw = await self.client.get(self.declaration_key(call_id))
        return None if raw is None else [str(m) for m in json.loads(raw)]

    async def release(self, call_ids: list[str]) -> None:
        if call_ids:
            for c in call_ids:
                self._uncache(c)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(*(k for c in call_ids for k in (self.key(c), self.declaration_key(c), self.token_key(c))))
                for c in call_ids:  # kept until its TTL: a replay of the call's last parts is still skipped
                    pipe.pexpire(self.labelled_key(c), self.ttl_ms)
                    pipe.pexpire(self.joined_key(c), self.ttl_ms)
                await pipe.execute()


def _options(settings: RedisSettings) -> dict[str, Any]:
    url = settings.url.get_secret_value()
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
    }
    if url.startswith("rediss://"):
        options.update(
            ssl_ca_certs=settings.tls_ca_file, ssl_certfile=settings.tls_cert_file, ssl_keyfile=settings.tls_key_file
        )
    elif settings.tls_ca_file or settings.tls_cert_file:
        raise ConfigError("redis.tls_* files are set but redis.url is not rediss://")
    return options


def connect(settings: RedisSettings) -> Any:
    """The worker's ``redis.asyncio.Redis`` client (TLS and ACL credentials from the settings)."""
    import redis.asyncio as aioredis

    return aioredis.from_url(settings.url.get_secret_value(), **_options(settings))


def wait_for_redis(settings: RedisSettings, timeout_s: float) -> None:
    """Ping Redis at start-up: retried while it cannot be reached; refused credentials or TLS
    settings that cannot work raise :class:`ConfigError` at once."""
    import redis

    client = redis.Redis.from_url(settings.url.get_secret_value(), **_options(settings))
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    try:
        while True:
            try:
                client.ping()
                return
            except (redis.AuthenticationError, redis.exceptions.NoPermissionError, redis.ResponseError) as exc:
                raise ConfigError(f"Redis refused the worker: {exc} (check redis.url's user and password)") from exc
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise ServiceUnavailable(f"Redis not reachable after {timeout_s:.0f} s: {exc}") from exc
                log.warning("Redis not ready (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
    finally:
        client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
