"""Errors of the emostream service.

    EmostreamError                 root of everything the service raises on purpose
    ├── ConfigError                settings or artifacts that cannot work (bad path, wrong model)
    │   └── TopologyError          the topics exist but cannot be consumed together (not
    │                              co-partitioned): the worker refuses to start
    ├── ServiceUnavailable         Kafka or Redis cannot be reached in time
    └── InvalidMessage             one input message is unusable; carries a dead-letter ``reason``
                                   code (see :data:`REASONS`) and a human ``detail``

Engine errors (``engines.errors``) are the models' own; the stream turns the ones caused by a
message (undecodable audio) into :class:`InvalidMessage`.
"""

from __future__ import annotations

import re
from typing import Any

#: Dead-letter reason codes, also the label values of the dead-letter metric.
REASONS: tuple[str, ...] = (
    "malformed_json",
    "unknown_schema_version",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "non_finite",
    "wrong_embedding_size",
    "undecodable_audio",
    "oversized",
    "unknown_topic",
    "wrong_key",  # the Kafka key is not the message's call id: the call's parts would not meet in one partition
    "after_call_ended",  # a part sent more than join.wait_s after its call's 'ended' (record times): not reopened
    "conflicting_part",  # another, different part of the same modality under an utterance's ids (the first counts)
    "processing_failed",  # valid on its own, but the encoders, the engine or the event build failed on it
)


class EmostreamError(Exception):
    """Root of the service's errors."""


class ConfigError(EmostreamError):
    """Settings or artifacts that cannot work."""


class ServiceUnavailable(EmostreamError):
    """Kafka or Redis could not be reached in time."""


class TopologyError(ConfigError):
    """Existing topics that the worker cannot join (different partition counts)."""


def one_line(detail: str, limit: int = 500) -> str:
    """A dead letter's ``detail`` as one line (the tools print one record a line) without the
    memory addresses of Python objects ("<_io.BytesIO object at 0x7f...>" says nothing to a reader)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+>", ">", detail)
    return " | ".join(part.strip() for part in text.splitlines() if part.strip())[:limit]


class InvalidMessage(EmostreamError):
    """An input message that cannot be processed; it goes to the dead-letter topic."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        detail = one_line(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        #: a part whose content failed its schema while its ids did not: those ids (streams.schemas
        #: parse_input), so that its utterance waits for it no longer and its dead letter names it
        self.part: Any = None
        #: the message's call and utterance ids where they are valid though the part's other ids are
        #: not (a seq of "1"): for its dead letter's names only (streams.schemas.parse_input)
        self.call_id: str | None = None
        self.utterance_id: str | None = None
