"""Each call's dialogue context window in Redis.

One Redis list per call (``{prefix}{call_id}``) holds the call's last ``window`` utterances,
encoded features included, oldest first. Appending is one Lua script: skip utterances already in
the window (a replay after a restart), RPUSH, LTRIM to the window, PEXPIRE (RPUSH alone does not
refresh a TTL), so an idle call's window expires ``ttl_s`` after its last utterance. Reads refresh
the TTL too. Many calls are read or appended in one pipeline per batch. A call's end deletes it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

_APPEND = """
local key = KEYS[1]
local existing = redis.call('LRANGE', key, 0, -1)
local seen = {}
for _, item in ipairs(existing) do seen[cjson.decode(item)['u']] = true end
for i = 3, #ARGV do
  local id = cjson.decode(ARGV[i])['u']
  if not seen[id] then redis.call('RPUSH', key, ARGV[i]); seen[id] = true end
end
redis.call('LTRIM', key, -tonumber(ARGV[1]), -1)
redis.call('PEXPIRE', key, ARGV[2])
return redis.call('LLEN', key)
"""


@dataclass(frozen=True)
class ContextItem:
    """One past utterance of a call, as the engine needs it."""

    utterance_id: str
    seq: int
    speaker: str
    features: dict[str, np.ndarray]  # modality -> (D,) float32, only the modalities present

    def to_json(self) -> str:
        feats = {m: base64.b64encode(v.astype("<f4").tobytes()).decode() for m, v in self.features.items()}
        return json.dumps({"u": self.utterance_id, "q": self.seq, "s": self.speaker, "f": feats})

    @classmethod
    def from_json(cls, raw: str | bytes) -> ContextItem:
        obj = json.loads(raw)
        feats = {m: np.frombuffer(base64.b64decode(b), dtype="<f4").copy() for m, b in obj["f"].items()}
        return cls(utterance_id=obj["u"], seq=int(obj["q"]), speaker=obj["s"], features=feats)


class ContextStore:
    """Async access to the windows; ``client`` is a ``redis.asyncio.Redis``."""

    def __init__(self, client: Any, prefix: str, window: int, ttl_s: float) -> None:
        assert window >= 1 and ttl_s > 0
        self.client = client
        self.prefix = prefix
        self.window = window
        self.ttl_ms = int(ttl_s * 1000)
        self._append = client.register_script(_APPEND)

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
            replies = await pipe.execute()
        return {c: [ContextItem.from_json(r) for r in replies[2 * i]] for i, c in enumerate(call_ids)}

    async def append(self, items: dict[str, list[ContextItem]]) -> None:
        """Append each call's new utterances (in order), trim, refresh the TTL, in one pipeline."""
        if not items:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for call_id, new in items.items():
                if new:
                    args = [self.window, self.ttl_ms, *(i.to_json() for i in new)]
                    await self._append(keys=[self.key(call_id)], args=args, client=pipe)
            await pipe.execute()

    async def release(self, call_ids: list[str]) -> None:
        if call_ids:
            await self.client.delete(*(self.key(c) for c in call_ids))
