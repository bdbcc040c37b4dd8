"""No message stops the stream, on the real broker: hostile input among ten live calls, sent to a
worker that started before its topics existed. Every hostile message becomes a dead letter with its
reason, every valid utterance gets its event, and the worker stays up."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from kafka import KafkaAdminClient, KafkaProducer

from streams.schemas import AudioPart
from tests.integration.harness import REPO, Collector, WorkerProcess, env_for, settings_for
from tools.dialogues import read_meld_csv
from tools.feed import part_message

pytestmark = pytest.mark.integration


def _flac_bomb(seconds: float = 600.0) -> str:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), dtype=np.int16), 16000, format="FLAC", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def _hostile(text_topic: str, audio_topic: str) -> list[tuple[str, bytes, str]]:
    head = b'{"schema_version":1,"call_id":"hostile","utterance_id":"h","seq":'
    return [
        (text_topic, head + b'0,"text":"hello \\ud800 there"}', "invalid_value"),  # tokenizers raise on it
        (text_topic, b"[" * 1100 + b"]" * 1100, "malformed_json"),  # RecursionError in json
        (text_topic, head + b"9" * 4400 + b',"text":"x"}', "invalid_value"),  # ValueError in int()
        (
            audio_topic,
            AudioPart(call_id="hostile", utterance_id="b", seq=0, encoding="flac", data=_flac_bomb()).to_bytes(),
            "oversized",  # 600 s in a few KB: refused from its header
        ),
        (
            audio_topic,  # finite float32 that overflowed the engine to NaN (a processing_failed) until values
            # beyond +-1e6 were refused when read (streams.schemas.MAX_ABS_FEATURE); the isolation of a batch
            # that fails is tests/unit/test_worker_logic.py's (no valid message makes the real engine fail now)
            json.dumps(
                {
                    "schema_version": 1,
                    "call_id": "poison",
                    "utterance_id": "p",
                    "seq": 0,
                    "encoding": "features",
                    "features": [3e38] * 768,
                }
            ).encode(),  # fmt: skip
            "invalid_value",
        ),
    ]


def test_hostile_messages_are_dead_lettered_and_ten_calls_keep_getting_events(  # type: ignore[no-untyped-def]
    services, unique, shared_data, tmp_path
) -> None:
    settings = settings_for(services, unique, default_modalities=("text",))
    t = settings.kafka.topics
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.brokers)
    assert not set(t.inputs()) & set(admin.list_topics())  # the worker meets a broker without its topics
    admin.close()
    dialogues = read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", limit_dialogues=10)
    good = [u for d in dialogues for u in d.utterances[:5]]
    hostile = _hostile(t.text, t.audio)
    worker = WorkerProcess(settings, tmp_path).start()
    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers, max_request_size=4 * 1024 * 1024)
    collector = None
    try:
        worker.wait_ready()
        collector = Collector(settings)
        for i, utt in enumerate(good):
            if i % 10 == 0 and hostile:
                topic, value, _ = hostile[i // 10]
                key = b"poison" if b'"poison"' in value else b"hostile"
                producer.send(topic, key=key, value=value).get(timeout=30)
            topic, value = part_message(utt, "text", t)  # type: ignore[misc]
            producer.send(topic, key=utt.call_id.encode(), value=value)
        producer.flush()
        want = {(u.call_id, u.utterance_id) for u in good}
        ok = collector.poll_until(
            lambda c: {(e.call_id, e.utterance_id) for _, e in c.events} >= want and len(c.dead) >= len(hostile), 120
        )
        got = {(e.call_id, e.utterance_id) for _, e in collector.events}
        assert ok, f"{len(want - got)} utterances without an event, {len(collector.dead)} dead letters\n{worker.tail()}"
        assert sorted(d.reason for d in collector.dead) == sorted(r for _, _, r in hostile)
        poison = next(d for d in collector.dead if d.key == "poison")
        assert (poison.reason, poison.source_topic) == ("invalid_value", t.audio), poison
        assert "beyond" in poison.detail, poison.detail
        assert not {e.call_id for _, e in collector.events} & {"hostile", "poison"}
        assert worker.proc is not None and worker.proc.poll() is None, "the worker survived"
        assert "Crashed" not in worker.tail(100_000)
        metrics = worker.metrics()
        assert "emostream_processing_failed_total 0.0" in metrics
        assert 'emostream_deadletters_total{reason="oversized"} 1.0' in metrics
    finally:
        producer.close()
        if collector is not None:
            collector.close()
        worker.stop()


def test_worker_refuses_input_topics_that_are_not_copartitioned(services, unique) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(services, unique)
    t = settings.kafka.topics
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.brokers)
    admin.create_topics({t.text: {"num_partitions": 2, "replication_factor": 1}}, raise_errors=True)
    admin.close()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        cwd=REPO,
        env=env_for(settings),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    err = done.stderr.decode()
    assert "not co-partitioned" in err and f"{t.text}: 2" in err and f"{t.audio}: 4" in err
    assert "Traceback" not in err


def test_json_of_the_hostile_list_is_what_it_claims() -> None:
    """The hostile messages really are what their reasons say (checked without a broker)."""
    hostile = _hostile("text", "audio")
    assert json.loads(hostile[0][1])["text"] == "hello \ud800 there"
    assert len(hostile[3][1]) < 64 * 1024
