"""Fault scenarios against real processes: ``emostream chaos`` (and ``make chaos``).

Each scenario starts its own Kafka broker and Redis server (deploy/local scripts, ports of their
own), real ``emostream worker`` processes, streams calls into the input topics, does something
harmful (kill -9 a worker, scale out and back, stop the broker, kill Redis, send fuzzed messages)
and reads every event and dead letter back. :mod:`chaos.verdict` turns what came out into one
table row: utterances in, events out, lost, conflicting (one ``event_id``, two contents),
duplicates, and how long the stream took to recover. The integration tests run short versions.
"""
