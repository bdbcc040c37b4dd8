"""Each call's dialogue context window in Redis.

One Redis list per call (``{prefix}{call_id}``) holds the call's last ``window`` utterances,
encoded features included, oldest first. Appending is one Lua script: skip utterances already in
the window (a replay after a restart), RPUSH, LTRIM to the window, PEXPIRE (RPUSH alone does not
refresh a TTL), so an idle call's window expires ``ttl_s`` after its last utterance. Reads refresh
the TTL too. A batch reads its calls with one script and appends to them with another (one command
each, however many calls: a pipeline of several commands a call cost the worker more to pack and
parse than Redis to answer). A call's end deletes it.

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
import functools
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.exceptions import NoScriptError

from engines.interface import MODALITIES
from streams.errors import ConfigError, ServiceUnavailable
from streams.schemas import encode_f32
from streams.settings import RedisSettings

log = logging.getLogger("emostream.context")

_APPEND = """
-- A batch's appends, as one command.
-- KEYS: three per call: its window, labelled set, window token
-- ARGV: window size, TTL ms, then per call: its new token, the token expected ('' for none), how
-- many items follow, the items
-- returns per call {1 if the token replaced was the expected one else 0, the window's length, then
-- the positions (1-based) of the items pushed}
-- an item's utterance id, read from the front of its JSON (ContextItem.to_json writes it first),
-- not by decoding the whole item: a window of 12 is some 70 KB of JSON, decoded with every append
local function id_of(item)
  return string.match(item, '^{"u": "([%w%._:@/%-]+)", ') or cjson.decode(item)['u']
end
-- its seq, written second, as its digits: seqs go to 2^63 - 1, past what a Lua number holds exactly
local function seq_of(item)
  return string.match(item, '^{"u": "[%w%._:@/%-]+", "q": (%d+)') or string.format('%.0f', cjson.decode(item)['q'])
end
-- whether seq a (digits, no leading zeros) is below seq b
local function below(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local size, ttl, at, out = tonumber(ARGV[1]), ARGV[2], 3, {}
for c = 0, #KEYS / 3 - 1 do
  local key, labelled, token = KEYS[3 * c + 1], KEYS[3 * c + 2], KEYS[3 * c + 3]
  local fresh, wanted, n = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  at = at + 3
  local expected = (redis.call('GET', token) or '') == wanted and 1 or 0
  local seen, items = {}, redis.call('LRANGE', key, 0, -1)  -- (read once: the trim below uses it too)
  for _, item in ipairs(items) do seen[id_of(item)] = true end
  local reply = {expected, 0}
  for i = at, at + n - 1 do
    local id = id_of(ARGV[i])
    if not seen[id] and redis.call('SISMEMBER', labelled, id) == 0 then
      redis.call('RPUSH', key, ARGV[i])
      items[#items + 1] = ARGV[i]
      reply[#reply + 1] = i - at + 1
    end
    seen[id] = true
    redis.call('SADD', labelled, id)
  end
  at = at + n
  local len = #items
  if len > size then
    -- the window keeps the call's latest utterances by seq, not by arrival: a late one (read behind
    -- the later ones) goes first, not the newest context
    local order = {}
    for i, item in ipairs(items) do order[i] = {seq_of(item), i} end
    table.sort(order, function(a, b) if a[1] ~= b[1] then return below(a[1], b[1]) end return a[2] < b[2] end)
    local front = true  -- the ones to drop are the oldest arrivals (no late one): one LTRIM, as before
    for k = 1, len - size do front = front and order[k][2] == k end
    if front then
      redis.call('LTRIM', key, -size, -1)
    else
      for k = 1, len - size do redis.call('LREM', key, 1, items[order[k][2]]) end
    end
  end
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', labelled, ttl)
  redis.call('SET', token, fresh, 'PX', ttl)
  reply[2] = redis.call('LLEN', key)
  out[c + 1] = reply
end
return out
"""

_STATE = """
-- What a batch reads of its calls, as one command: a pipeline of six per call cost the worker more
-- to pack and parse than Redis to answer.
-- KEYS: six per call: its window token, labelled set, joins hash, window, declaration, generation
-- ARGV: TTL ms, then per call: how many utterance ids follow (-1: the whole sets), the ids
-- returns per call {token or nil, labelled: 1 or 0 per id (or every member), joins: one per id
-- (or field, value, ...), generation or nil}; refreshes the TTL of the window, its token, the
-- declaration and the generation
local ttl, at, out = ARGV[1], 2, {}
for c = 0, #KEYS / 6 - 1 do
  local token, labelled, joined = KEYS[6 * c + 1], KEYS[6 * c + 2], KEYS[6 * c + 3]
  local n = tonumber(ARGV[at])
  at = at + 1
  local member, joins = {}, {}
  if n < 0 then
    member, joins = redis.call('SMEMBERS', labelled), redis.call('HGETALL', joined)
  elseif n > 0 then
    member = redis.call('SMISMEMBER', labelled, unpack(ARGV, at, at + n - 1))
    joins = redis.call('HMGET', joined, unpack(ARGV, at, at + n - 1))
    at = at + n
  end
  redis.call('PEXPIRE', token, ttl)
  redis.call('PEXPIRE', KEYS[6 * c + 4], ttl)
  redis.call('PEXPIRE', KEYS[6 * c + 5], ttl)
  redis.call('PEXPIRE', KEYS[6 * c + 6], ttl)
  out[c + 1] = {redis.call('GET', token), member, joins, redis.call('GET', KEYS[6 * c + 6])}
end
return out
"""

_JOINS = """
-- KEYS: each call's joins hash; ARGV: TTL ms, then per call: how many pairs follow, the pairs
-- (utterance id, parts)
local ttl, at = ARGV[1], 2
for c = 1, #KEYS do
  local n = tonumber(ARGV[at])
  if n > 0 then redis.call('HSET', KEYS[c], unpack(ARGV, at + 1, at + 2 * n)) end
  redis.call('PEXPIRE', KEYS[c], ttl)
  at = at + 1 + 2 * n
end
return #KEYS
"""

#: a call's 'started' (ARGV: its declaration as JSON or '', the TTL in ms, its offset on the control
#: partition, the TTL of the started mark in ms). A 'started' at or before the mark its call's release
#: left (the offset of its 'ended') or the mark the id's last 'started' left, read again after a
#: crash, changes nothing; else its declaration is stored, its offset marked, and, past either mark
#: (the id's previous call closed, or began and went quiet without an 'ended': the worker closed it
#: first if it had spoken, :meth:`ContextStore.previous_start`), what that call left is forgotten and
#: the call's generation is that offset (its ids then differ from the previous call's:
#: :func:`streams.schemas.call_instance`). KEYS: the mark, the labelled set, the joins, the
#: declaration, the window, its token, the generation, the started mark. Returns 1 if a previous call
#: closed or started under the id
_STARTED = """
local closed, mark, offset = redis.call('GET', KEYS[1]), redis.call('GET', KEYS[8]), tonumber(ARGV[3])
local previous, sent, ended = nil, '', nil
if mark then
  local o, s, e = string.match(mark, '^([^|]*)|([^|]*)|([^|]*)$')
  previous, sent, ended = tonumber(o), s or '', tonumber(e)
end
closed = tonumber(closed) or ended
if (closed and offset <= closed) or (previous and offset <= previous)
    or (previous and ARGV[5] ~= '' and sent == ARGV[5]) then
  return 0
end
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
end
redis.call('SET', KEYS[8], ARGV[3] .. '|' .. ARGV[5] .. '|', 'PX', ARGV[4])
if not closed and not previous then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6])
redis.call('SET', KEYS[7], ARGV[3], 'PX', ARGV[2])
return 1
"""

#: a call's release writes the offset of its 'ended' into its started mark too, which outlives the
#: close mark (KEYS: started marks; ARGV: the 'ended' offsets)
_MARK_ENDED = """
for i, key in ipairs(KEYS) do
  local mark = redis.call('GET', key)
  if mark then
    local o, s = string.match(mark, '^([^|]*)|([^|]*)|')
    if o then redis.call('SET', key, o .. '|' .. s .. '|' .. ARGV[i], 'KEEPTTL') end
  end
end
return #KEYS
"""

#: what a 'started' finds of its call id's previous call (KEYS: the started mark, the close mark,
#: the labelled set): {the started mark ('<offset>|<its time>|<its end's offset>') or nil, the close
#: mark or nil, how many utterances are labelled}
_PREVIOUS = """
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('SCARD', KEYS[3])}
"""


@dataclass(frozen=True)
class PreviousStart:
    """What a 'started' finds of its call id's previous call (:meth:`ContextStore.previous_start`)."""

    offset: int | None  # of the id's last 'started' on its control partition (None: none kept)
    identity: str  # what tells that 'started' sent again from a new one (Worker's _identity; '' if nothing)
    closed: int | None  # the offset of its 'ended' if it closed (None: it did not, or both marks expired)
    labelled: int  # its utterances labelled (0 once expired)


def latest_by_seq(items: list[ContextItem], size: int) -> list[ContextItem]:
    """What a window keeps of ``items`` (in arrival order): the ``size`` latest by seq, those of
    equal seq by arrival, in their arrival order (as :data:`_APPEND` trims it in Redis)."""
    if len(items) <= size:
        return items
    gone = set(sorted(range(len(items)), key=lambda i: (items[i].seq, i))[: len(items) - size])
    return [it for i, it in enumerate(items) if i not in gone]


async def run_script(client: Any, script: str, keys: list[str], args: list[Any]) -> Any:
    """One Lua script by its SHA (EVALSHA; a registered script would ask SCRIPT EXISTS before every
    call), loaded first where Redis does not have it (new, restarted, SCRIPT FLUSH: nothing ran)."""
    sha = _sha(script)
    try:
        return await client.evalsha(sha, len(keys), *keys, *args)
    except NoScriptError:
        await client.script_load(script)
        return await client.evalsha(sha, len(keys), *keys, *args)


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


@dataclass(frozen=True)
class ContextItem:
    """One past utterance of a call, as the engine needs it."""

    utterance_id: str
    seq: int
    speaker: str
    features: dict[str, np.ndarray]  # modality -> (D,) float32, only the modalities present
    #: modality -> why a part used here looks wrong (EmotionEvent.suspect), so the revisions say it too
    suspect: dict[str, str] = field(default_factory=dict)
    #: modality -> why a part that came was not used (EmotionEvent.ignored), so the revisions say it too
    ignored: dict[str, str] = field(default_factory=dict)
    #: the modalities whose parts came (EmotionEvent.modalities_present) where not those of ``features``
    #: (a part that came and was not used: a blank transcript, silence); None: those of ``features``
    present: tuple[str, ...] | None = None

    def to_json(self) -> str:
        feats = {m: encode_f32(v) for m, v in self.features.items()}  # the parts' compact vector form
        obj: dict[str, Any] = {"u": self.utterance_id, "q": self.seq, "s": self.speaker, "f": feats}
        if self.suspect:  # rare: left out otherwise (items written before it read the same)
            obj["x"] = self.suspect
        if self.ignored:  # as rare
            obj["i"] = self.ignored
        if self.present is not None and tuple(self.present) != tuple(self.features):
            obj["p"] = list(self.present)
        return json.dumps(obj)

    @classmethod
    def from_json(cls, raw: str | bytes) -> ContextItem:
        obj = json.loads(raw)
        feats = {m: np.frombuffer(base64.b64decode(b), dtype="<f4").copy() for m, b in obj["f"].items()}
        suspect = {str(m): str(why) for m, why in obj.get("x", {}).items()}
        ignored = {str(m): str(why) for m, why in obj.get("i", {}).items()}
        present = tuple(str(m) for m in obj["p"]) if "p" in obj else None
        return cls(
            utterance_id=obj["u"],
            seq=int(obj["q"]),
            speaker=obj["s"],
            features=feats,
            suspect=suspect,
            ignored=ignored,
            present=present,
        )

    def modalities_present(self) -> list[str]:
        """The modalities whose parts came, as its provisional event said (items written before
        2026-12-06: those it was labelled with)."""
        return list(self.present) if self.present is not None else [m for m in MODALITIES if m in self.features]


@dataclass
class CallState:
    """What a batch needs to know of one call: its window (oldest first), the ids of utterances whose
    events are out, and the parts each labelled utterance was joined with ('text+audio')."""

    window: list[ContextItem]
    labelled: set[str]
    joins: dict[str, str]
    generation: str = ""  # '' for the first call under its id (see ContextStore.started)


class ContextStore:
    """Async access to the windows; ``client`` is a ``redis.asyncio.Redis``."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        window: int,
        ttl_s: float,
        max_decoded: int = 8192,
        started_ttl_s: float = 172800.0,
    ) -> None:
        assert window >= 1 and ttl_s > 0 and started_ttl_s > 0
        self.client = client
        self.prefix = prefix
        self.window = window
        self.ttl_ms = int(ttl_s * 1000)
        self.started_ttl_ms = int(max(started_ttl_s, ttl_s) * 1000)  # kept at least as long as the call's state
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
            if token is not None:
                self._cache(call_id, _text(token), window)
            elif not window:  # nothing there yet: held as '' until this worker's append sets a token
                self._cache(call_id, "", window)
            else:  # an older version's window: not held (a worker of that version may still append)
                self._uncache(call_id)
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
        """Append each call's new utterances (in order), trim, refresh the TTL: one script for them all."""
        rows = []
        keys: list[str] = []
        args: list[Any] = [self.window, self.ttl_ms]
        for call_id, new in items.items():
            if new:
                held = self._uncache(call_id)  # put back below if the append leaves it exact
                token = os.urandom(8).hex()
                rows.append((call_id, new, held, token))
                keys += [self.key(call_id), self.labelled_key(call_id), self.token_key(call_id)]
                args += [token, held[0] if held else "", len(new), *(i.to_json() for i in new)]
        if not rows:
            return
        replies = await run_script(self.client, _APPEND, keys, args)
        for (call_id, new, held, token), reply in zip(rows, replies, strict=True):
            expected, length, *pushed = (int(x) for x in reply)
            if held is None or not expected:
                continue  # another writer since the read (or none held): read back next time
            window = latest_by_seq([*held[1], *(new[i - 1] for i in pushed)], self.window)
            if len(window) == length:
                self._cache(call_id, token, window)

    def labelled_key(self, call_id: str) -> str:
        return f"{self.prefix}labelled#{call_id}"

    def joined_key(self, call_id: str) -> str:
        return f"{self.prefix}joined#{call_id}"

    async def record_joins(self, joins: dict[str, dict[str, str]]) -> None:
        """Remember which parts each utterance was labelled with (call -> utterance -> 'text+audio'),
        before its event goes out, so that a replay joins the same parts."""
        joins = {c: m for c, m in joins.items() if m}
        if not joins:
            return
        args: list[Any] = [self.ttl_ms]
        for mapping in joins.values():
            args += [len(mapping), *(x for pair in mapping.items() for x in pair)]
        await run_script(self.client, _JOINS, [self.joined_key(c) for c in joins], args)

    async def state(self, call_ids: list[str], asking: dict[str, list[str]] | None = None) -> dict[str, CallState]:
        """Each call's window, labelled ids and recorded joins, in one round trip (refreshing the
        window's and the declaration's TTL, as :meth:`fetch` does), and a second for the windows not
        held in memory under the token Redis has (see the module doc). With ``asking`` (call ->
        utterance ids), the labelled ids and joins are only those of the utterances asked about: a
        batch needs no more, and a long call's sets grow with every turn."""
        if not call_ids:
            return {}
        keys: list[str] = []
        args: list[Any] = [self.ttl_ms]
        for c in call_ids:
            keys += [self.token_key(c), self.labelled_key(c), self.joined_key(c), self.key(c), self.declaration_key(c)]
            keys.append(self.generation_key(c))
            ids = None if asking is None else asking.get(c, [])
            args += [-1] if ids is None else [len(ids), *ids]
        replies = await run_script(self.client, _STATE, keys, args)
        out = {}
        windows: dict[str, list[ContextItem] | None] = {}
        for c, (token, member, joined, generation) in zip(call_ids, replies, strict=True):
            windows[c] = self._cached(c, token)
            ids = None if asking is None else asking.get(c, [])
            if ids is None:
                joins = {_text(k): _text(v) for k, v in zip(joined[::2], joined[1::2], strict=True)}  # HGETALL's pairs
                out[c] = CallState([], {_text(m) for m in member}, joins, _text(generation or b""))
            else:
                out[c] = CallState(
                    [],
                    {u for u, m in zip(ids, member, strict=True) if m},
                    {u: _text(v) for u, v in zip(ids, joined, strict=True) if v is not None},
                    _text(generation or b""),
                )
        read = await self._read_windows([c for c, w in windows.items() if w is None])
        for c, state in out.items():
            held = windows[c]
            state.window = list(held if held is not None else read[c])  # a batch may not change the one held
        return out

    def declaration_key(self, call_id: str) -> str:
        return f"{self.prefix}declared#{call_id}"  # '#' is not allowed in call ids: no clash with windows

    async def declared(self, call_id: str) -> list[str] | None:
        raw = await self.client.get(self.declaration_key(call_id))
        return None if raw is None else [str(m) for m in json.loads(raw)]

    def closed_key(self, call_id: str) -> str:
        return f"{self.prefix}closed#{call_id}"

    def generation_key(self, call_id: str) -> str:
        return f"{self.prefix}generation#{call_id}"

    async def generations(self, call_ids: list[str]) -> dict[str, str]:
        """Each call's generation ('' for the first call under its id; see :meth:`started`)."""
        if not call_ids:
            return {}
        got = await self.client.mget([self.generation_key(c) for c in call_ids])
        return {c: _text(g) if g is not None else "" for c, g in zip(call_ids, got, strict=True)}

    def started_key(self, call_id: str) -> str:
        return f"{self.prefix}started#{call_id}"

    async def previous_start(self, call_id: str) -> PreviousStart:
        """What a 'started' of ``call_id`` finds of the id's previous call. A later 'started' of a
        call that began, spoke and never closed ends it first (``Worker._ends_unended``)."""
        keys = [self.started_key(call_id), self.closed_key(call_id), self.labelled_key(call_id)]
        mark, closed, labelled = await run_script(self.client, _PREVIOUS, keys, [])
        offset, identity, ended = (_text(mark).split("|") + ["", ""])[:3] if mark is not None else ("", "", "")
        if closed is None and ended:
            closed = ended  # its close mark expired, its started mark keeps it
        return PreviousStart(
            int(offset) if offset else None, identity, None if closed is None else int(closed), int(labelled)
        )

    async def started(self, call_id: str, modalities: list[str] | None, offset: int, identity: str = "") -> bool:
        """A call's 'started', read at ``offset`` of its control partition: what it said it will send
        stored (if anything), for whichever worker owns it next (:meth:`declared`), and True if the
        id's previous call closed (:meth:`release`) before it, whose labelled utterances, the parts
        they were labelled with and any window are then forgotten: they say nothing about the new
        call's, which may use the same utterance ids (a 'started' read again after a crash, from
        before that close, forgets nothing), and the call's generation is ``offset``: its events',
        alerts' and reports' ids are not its previous call's (a consumer deduplicating on them would
        drop the new call's). So is a 'started' after the id's last one within ``started_ttl_s``,
        unless it is the same message again (``identity``: the message's ``at`` as its producer gave
        it, else its record time: a producer's retry). One round trip, atomic."""
        keys = [self.closed_key(call_id), self.labelled_key(call_id), self.joined_key(call_id)]
        keys += [self.declaration_key(call_id), self.key(call_id), self.token_key(call_id)]
        keys += [self.generation_key(call_id), self.started_key(call_id)]
        declared = json.dumps(modalities) if modalities else ""
        args = [declared, self.ttl_ms, offset, self.started_ttl_ms, identity]
        again = bool(await run_script(self.client, _STARTED, keys, args))
        if again:
            self._uncache(call_id)
        return again

    def active_key(self, partition: int) -> str:
        """The calls of an input partition that labelled something, scored by when they last sent a
        part (a record time, s): what the worker owning the partition ends when they go quiet
        (``join.idle_end_s``), even after a restart or a rebalance."""
        return f"{self.prefix}active#p{partition}"  # no clash: the calls' own keys are kind#call

    async def touch(self, calls: dict[str, tuple[int, float]]) -> None:
        """The calls (-> their input partition, and when they last sent a part, s) labelled
        something: one round trip. A call's score only grows (a batch of its older parts read late
        does not make it look quieter)."""
        by_partition: dict[int, dict[str, float]] = {}
        for call_id, (partition, at) in calls.items():
            by_partition.setdefault(partition, {})[call_id] = at
        if not by_partition:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for partition, scores in by_partition.items():
                pipe.zadd(self.active_key(partition), scores, gt=True)
                pipe.pexpire(self.active_key(partition), self.ttl_ms)  # a partition quiet that long: all expired
            await pipe.execute()

    async def quiet(self, partition: int, since: float, limit: int = 100) -> list[tuple[str, float]]:
        """The partition's calls that sent no part labelled after ``since``, the quietest first,
        with when they last did."""
        got = await self.client.zrangebyscore(
            self.active_key(partition), "-inf", since, start=0, num=limit, withscores=True
        )
        return [(_text(c), float(at)) for c, at in got]

    async def closed_before(self, call_ids: list[str]) -> set[str]:
        """The calls that closed (:meth:`release`) since their id's last 'started': a call among the
        quiet ones was reopened by a part after its 'ended', not a call that never sent one."""
        if not call_ids:
            return set()
        got = await self.client.mget([self.closed_key(c) for c in call_ids])
        return {c for c, mark in zip(call_ids, got, strict=True) if mark is not None}

    async def forget_quiet(self, partition: int, since: float) -> int:
        """Stop watching the partition's calls that sent no part labelled after ``since`` (their
        state has expired), however many: one command, where paging them through :meth:`quiet`
        forgot at most a page per sweep, and the set grew while more calls went quiet than that."""
        return int(await self.client.zremrangebyscore(self.active_key(partition), "-inf", since))

    async def untrack(self, partition: int, call_ids: list[str]) -> None:
        """The calls are no longer watched for going quiet (closed, or left to their state's TTL)."""
        if call_ids:
            await self.client.zrem(self.active_key(partition), *call_ids)

    async def release(
        self, call_ids: list[str], ended: dict[str, int] | None = None, partitions: dict[str, int] | None = None
    ) -> None:
        """The calls ended: their windows and declarations deleted, their labelled ids kept for
        replays until the TTL, and a mark that they closed: ``ended``, the offset of each one's
        'ended' on its control partition (see :meth:`started`; -1 where not given). The generation
        is kept as long as the labelled ids. ``partitions``: each call's input partition, whose
        calls watched for going quiet (:meth:`touch`) it leaves."""
        ended = ended or {}
        if call_ids:
            for c in call_ids:
                self._uncache(c)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.delete(*(k for c in call_ids for k in (self.key(c), self.declaration_key(c), self.token_key(c))))
                for c in call_ids:  # kept until its TTL: a replay of the call's last parts is still skipped
                    pipe.pexpire(self.labelled_key(c), self.ttl_ms)
                    pipe.pexpire(self.joined_key(c), self.ttl_ms)
                    pipe.pexpire(self.generation_key(c), self.ttl_ms)
                    pipe.set(self.closed_key(c), ended.get(c, -1), px=self.ttl_ms)  # until a 'started' uses the id
                    if partitions is not None and c in partitions:
                        pipe.zrem(self.active_key(partitions[c]), c)
                await pipe.execute()
            # and in the call's started mark, kept longer: a later 'started' then finds the call ended
            marks = [self.started_key(c) for c in call_ids]
            await run_script(self.client, _MARK_ENDED, marks, [ended.get(c, -1) for c in call_ids])


def _options(settings: RedisSettings) -> dict[str, Any]:
    url = settings.url.get_secret_value()
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
    }
    if url.startswith("rediss://"):
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):  # named at start, not at every retry
            path = getattr(settings, name)
            if path and not os.access(path, os.R_OK):
                why = "does not exist" if not os.path.exists(path) else "cannot be read by this user"
                raise ConfigError(f"redis.{name} {path} {why}")
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
                _say_if_evicting(client)
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


def _say_if_evicting(client: Any) -> None:
    """Warn where Redis may evict the worker's keys: every one has a TTL, so a maxmemory with a
    ``volatile-*`` or ``allkeys-*`` policy would drop them under memory pressure (a labelled set
    evicted labels a replay again under the same event_id; a generation evicted gives a call id used
    again its previous call's ids). A managed Redis that refuses CONFIG is not asked twice."""
    import redis

    try:
        config = client.config_get("maxmemory*")
    except (redis.exceptions.ResponseError, redis.exceptions.NoPermissionError):
        log.info("Redis does not say its maxmemory-policy (CONFIG refused): it must be noeviction (README: Operations)")
        return
    policy, limit = _text(config.get("maxmemory-policy", "noeviction")), _text(config.get("maxmemory", "0"))
    if policy != "noeviction" and limit not in ("", "0"):
        log.warning("Redis evicts keys at its maxmemory (%s bytes, maxmemory-policy %s): the context windows, "
                    "labelled sets and generations may go under memory pressure, and replays be labelled again "
                    "under the same event_id; set maxmemory-policy noeviction (README: Operations)",
                    limit, policy)  # fmt: skip


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
