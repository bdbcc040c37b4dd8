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
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
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
local key, labelled = KEYS[1], KEYS[2]
-- an item's utterance id, read from the front of its JSON (ContextItem.to_json writes it first),
-- not by decoding the whole item: a window of 12 is some 70 KB of JSON, decoded with every append
local function id_of(item)
  return string.match(item, '^{"u": "([%w%._:@/%-]+)", ') or cjson.decode(item)['u']
end
local existing = redis.call('LRANGE', key, 0, -1)
local seen = {}
for _, item in ipairs(existing) do seen[id_of(item)] = true end
for i = 3, #ARGV do
  local id = id_of(ARGV[i])
  if not seen[id] and redis.call('SISMEMBER', labelled, id) == 0 then redis.call('RPUSH', key, ARGV[i]) end
  seen[id] = true
  redis.call('SADD', labelled, id)
end
redis.call('LTRIM', key, -tonumber(ARGV[1]), -1)
redis.call('PEXPIRE', key, ARGV[2])
redis.call('PEXPIRE', labelled, ARGV[2])
return redis.call('LLEN', key)
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

    async def fetch(self, call_ids: list[str]) -> dict[str, list[ContextItem]]:
        """Each call's window, oldest first (empty for an unknown call)."""
        if not call_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.lrange(self.key(call_id), 0, -1)
                pipe.pexpire(self.key(call_id), self.ttl_ms)
                pipe.pexpire(self.declaration_key(call_id), self.ttl_ms)  # lives as long as the call is active
            replies = await pipe.execute()
        return {c: [self._item(r) for r in replies[3 * i]] for i, c in enumerate(call_ids)}

    async def append(self, items: dict[str, list[ContextItem]]) -> None:
        """Append each call's new utterances (in order), trim, refresh the TTL, in one pipeline."""
        if not items:
            return
        rows = [(c, [self.window, self.ttl_ms, *(i.to_json() for i in new)]) for c, new in items.items() if new]
        for attempt in (1, 2):  # EVALSHA: a registered script would ask SCRIPT EXISTS before every pipeline
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for call_id, args in rows:
                        pipe.evalsha(_APPEND_SHA, 2, self.key(call_id), self.labelled_key(call_id), *args)
                    await pipe.execute()
                return
            except NoScriptError:  # a Redis new or restarted (or SCRIPT FLUSH): no append ran; load it, once
                if attempt == 2:
                    raise
                await self.client.script_load(_APPEND)

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
        window's and the declaration's TTL, as :meth:`fetch` does). With ``asking`` (call ->
        utterance ids), the labelled ids and joins are only those of the utterances asked about: a
        batch needs no more, and a long call's sets grow with every turn."""
        if not call_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.lrange(self.key(call_id), 0, -1)
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
        for c in call_ids:
            ids = None if asking is None else asking.get(c, [])
            if ids is None:
                window, labelled, joins = replies[at : at + 3]
                out[c] = CallState(
                    window=[self._item(r) for r in window],
                    labelled={_text(m) for m in labelled},
                    joins={_text(k): _text(v) for k, v in joins.items()},
                )
                at += 5
            elif ids:
                window, member, joined = replies[at : at + 3]
                out[c] = CallState(
                    window=[self._item(r) for r in window],
                    labelled={u for u, m in zip(ids, member, strict=True) if m},
                    joins={u: _text(v) for u, v in zip(ids, joined, strict=True) if v is not None},
                )
                at += 5
            else:
                out[c] = CallState(window=[self._item(r) for r in replies[at]], labelled=set(), joins={})
                at += 3
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
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(*(k for c in call_ids for k in (self.key(c), self.declaration_key(c))))
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
