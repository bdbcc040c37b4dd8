"""The emostream client: what a team integrating emostream needs, typed, sync and async.

- :class:`Publisher` / :class:`AsyncPublisher` publish a call's control messages and its
  utterances' parts (text, audio bytes or features, video features) to the input topics, keyed by
  call id so a call's parts stay on one partition.
- :class:`Subscriber` / :class:`AsyncSubscriber` read what the workers publish (emotion events,
  escalation alerts, call reports, dead letters) as typed objects (:mod:`streams.schemas`, the one
  place the message schemas live), drop the duplicates that at-least-once delivery brings (same
  ``event_id``) and hand each revised event together with the revision it replaces.

Connection settings (brokers, TLS, SASL) come from the same :class:`~streams.settings.Settings` the
service reads, built by :mod:`streams.kafka` (one place for every Kafka client). The tools in
:mod:`tools` (``emostream feed``, ``subscribe``, ``demo``) are users of this package.

    from client import Publisher, Subscriber
    from streams.settings import load_settings

    settings = load_settings()
    with Publisher(settings) as pub:
        pub.start_call("call-7", ["text"])
        pub.text("call-7", "u0", 0, "customer", "I have been waiting for an hour!")
        pub.end_call("call-7")
    with Subscriber(settings, kinds=("events", "alerts")) as sub:
        for got in sub:
            print(got.record)
"""

from __future__ import annotations

from client.publisher import AsyncPublisher, DeliveryFailed, Publisher, PublishStats
from client.subscriber import AsyncSubscriber, Kind, Received, Subscriber, Tracker
from streams.schemas import (
    AlertEvent,
    AudioPart,
    CallControl,
    CallReport,
    DeadLetter,
    EmotionEvent,
    TextPart,
    VideoPart,
)

__all__ = [
    "AlertEvent",
    "AsyncPublisher",
    "AsyncSubscriber",
    "AudioPart",
    "CallControl",
    "CallReport",
    "DeadLetter",
    "DeliveryFailed",
    "EmotionEvent",
    "Kind",
    "PublishStats",
    "Publisher",
    "Received",
    "Subscriber",
    "TextPart",
    "Tracker",
    "VideoPart",
]
