"""Telephone audio on the real broker: calls whose speech arrives as 8 kHz G.711 (mu-law and
A-law) or 8 kHz PCM are labelled with their audio, like FLAC calls; a G.711 part that claims
another rate is dead-lettered with the reason, and the other calls go on. A line that carries
no voice (a held call's hiss, as mu-law) is not used: weight 0, and the event says why. Speech whose
rate the producer declared wrongly (8 kHz PCM sent as 16 kHz, 16 kHz PCM as 8 kHz: its voice is an
octave off) or its G.711 law (A-law sent as mu-law) is used all the same (the voice gate weighs
it), counted by mistake and logged once a call with the likely mistake. Big-endian PCM (RTP's L16
forwarded as it is) is dead-lettered with the reason."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from client.publisher import make_producer
from engines.features.codecs import decode_audio, encode_audio
from engines.features.format_check import WRONG_LAW, WRONG_RATE
from streams.kafka import ensure_topics
from streams.pipeline import QUIET
from streams.schemas import AudioPart, TextPart
from tests.integration.harness import Collector, WorkerProcess, settings_for
from tools.dialogues import attach_ravdess, read_meld_csv
from tools.feed import feed

pytestmark = pytest.mark.integration


def test_g711_and_8_khz_calls_are_labelled_with_their_audio(services, unique, shared_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(services, unique)
    ensure_topics(settings)
    meld = read_meld_csv(shared_data / "meld" / "dev_sent_emo.csv", dialogue_ids=[0, 1, 2])
    calls = attach_ravdess(meld, shared_data / "ravdess", seed=3, actors=range(17, 21))
    lines = {"pcm_mulaw": (calls[0], None), "pcm_alaw": (calls[1], None), "pcm_s16le": (calls[2], 8000)}
    worker = WorkerProcess(settings, tmp_path).start()
    collector = Collector(settings)
    try:
        worker.wait_ready()
        for encoding, (call, rate) in lines.items():
            feed([call], settings, realtime=False, progress=False, modalities=("text", "audio"),
                 audio_as=(encoding, rate))  # fmt: skip
        bad = AudioPart(call_id="liar", utterance_id="u0", seq=0, encoding="pcm_mulaw", sample_rate=16000,
                        data="/" * 10_000)  # fmt: skip
        producer = make_producer(settings)
        t = settings.kafka.topics
        producer.send(t.audio, key=b"liar", value=bad.to_bytes())
        producer.send(
            t.text, key=b"liar", value=TextPart(call_id="liar", utterance_id="u0", seq=0, text="hi").to_bytes()
        )
        hiss = np.random.default_rng(0).standard_normal(3 * 8000) * 0.03  # 3 s of a held line, no voice
        held = AudioPart(call_id="held", utterance_id="u0", seq=0, encoding="pcm_mulaw", sample_rate=8000,
                         data=base64.b64encode(encode_audio(hiss, 8000, "pcm_mulaw")).decode())  # fmt: skip
        producer.send(t.audio, key=b"held", value=held.to_bytes())
        producer.send(
            t.text,
            key=b"held",
            value=TextPart(call_id="held", utterance_id="u0", seq=0, text="I'm so angry!").to_bytes(),
        )
        # a producer that declares the wrong rate for its PCM: valid bytes at either rate
        first = next(u for u in calls[0].utterances if u.audio)
        wave = decode_audio(first.audio, first.audio_encoding or "flac")
        misdeclared = {"fast": (encode_audio(wave, 16000, "pcm_s16le", 8000), 16000),  # 8 kHz samples as 16 kHz
                       "slow": (encode_audio(wave, 16000, "pcm_s16le"), 8000)}  # fmt: skip
        misdeclared["law"] = (encode_audio(wave, 16000, "pcm_alaw"), 8000)  # A-law bytes sent as mu-law
        for call_id, (pcm, rate) in misdeclared.items():
            encoding = "pcm_mulaw" if call_id == "law" else "pcm_s16le"
            part = AudioPart(call_id=call_id, utterance_id="u0", seq=0, encoding=encoding, sample_rate=rate,
                             data=base64.b64encode(pcm).decode())  # fmt: skip
            producer.send(t.audio, key=call_id.encode(), value=part.to_bytes())
            text = TextPart(call_id=call_id, utterance_id="u0", seq=0, text="Why is nobody helping me?")
            producer.send(t.text, key=call_id.encode(), value=text.to_bytes())
        # and one that forwards RTP's L16 payload (big-endian) as pcm_s16le
        swapped = np.frombuffer(encode_audio(wave, 16000, "pcm_s16le", 8000), "<i2").byteswap().tobytes()
        rtp = AudioPart(call_id="rtp", utterance_id="u0", seq=0, encoding="pcm_s16le", sample_rate=8000,
                        data=base64.b64encode(swapped).decode())  # fmt: skip
        producer.send(t.audio, key=b"rtp", value=rtp.to_bytes())
        producer.send(
            t.text, key=b"rtp", value=TextPart(call_id="rtp", utterance_id="u0", seq=0, text="Hello?").to_bytes()
        )
        # a caller on a quiet line: three utterances 25 dB under the studio's level (speech all the same)
        voiced = [u for d in calls for u in d.utterances if u.audio][:3]
        assert len(voiced) == 3
        for seq, u in enumerate(voiced):
            quiet = decode_audio(u.audio, u.audio_encoding or "flac") * 10 ** (-25 / 20)
            pcm = base64.b64encode(encode_audio(quiet, 16000, "pcm_s16le")).decode()
            part = AudioPart(call_id="quiet", utterance_id=f"u{seq}", seq=seq, speaker="caller", encoding="pcm_s16le",
                             sample_rate=16000, data=pcm)  # fmt: skip
            producer.send(t.audio, key=b"quiet", value=part.to_bytes())
            text = TextPart(call_id="quiet", utterance_id=f"u{seq}", seq=seq, speaker="caller", text="Okay.")
            producer.send(t.text, key=b"quiet", value=text.to_bytes())
        producer.flush()
        producer.close()
        want = {(u.call_id, u.utterance_id) for d in calls for u in d.utterances}
        want |= {("quiet", f"u{i}") for i in range(3)}
        want |= {("liar", "u0"), ("held", "u0"), ("fast", "u0"), ("slow", "u0"), ("law", "u0"), ("rtp", "u0")}
        assert collector.poll_until(lambda c: {(e.call_id, e.utterance_id) for _, e in c.events} >= want, 120), (
            want - {(e.call_id, e.utterance_id) for _, e in collector.events},
            worker.tail(),
        )
        assert collector.poll_until(lambda c: len(c.dead) >= 2, 10)
        dead = {d.call_id: d for d in collector.dead}
        assert len(collector.dead) == 2 and set(dead) == {"liar", "rtp"}, collector.dead
        assert dead["liar"].reason == "undecodable_audio" and "8000 Hz" in dead["liar"].detail
        assert dead["rtp"].reason == "undecodable_audio" and "look big-endian" in dead["rtp"].detail, dead["rtp"]
        events = {(e.call_id, e.utterance_id): e for _, e in collector.events if e.revision == 0}
        for _, (call, _) in lines.items():
            voiced = []
            for u in call.utterances:
                ev = events[(u.call_id, u.utterance_id)]
                assert ev.modalities_present == (["text", "audio"] if u.audio else ["text"]), ev
                if u.audio:
                    assert ev.ignored == {}, ev  # G.711 speech passes the voice activity check
                    assert ev.suspect is None, ev  # and the format check
                    voiced.append(ev.weights["audio"])
            assert voiced and sum(w > 0 for w in voiced) >= len(voiced) / 2, voiced  # and carries labels
        for refused in ("liar", "rtp"):
            assert events[(refused, "u0")].modalities_present == ["text"]  # its audio refused, its text labelled
        held_ev = events[("held", "u0")]
        assert held_ev.modalities_present == ["text", "audio"] and held_ev.weights["audio"] == 0, held_ev
        assert held_ev.ignored["audio"].startswith("no speech"), held_ev
        # used all the same (engine.format_check = "warn": the voice gate weighs it), said by the event, counted and
        # logged once a call
        for call_id, said in (
            ("fast", WRONG_RATE + "the voice sounds an octave high"),
            ("slow", WRONG_RATE + "the voice sounds an octave low"),
            ("law", WRONG_LAW + "the voice sounds distorted as by the other G.711 law"),
        ):
            ev = events[(call_id, "u0")]
            assert ev.modalities_present == ["text", "audio"] and ev.ignored == {}, ev
            assert set(ev.suspect or {}) == {"audio"} and (ev.suspect or {})["audio"].startswith(said), ev
            logged = f"call {call_id}: audio of utterance u0 used all the same: {said}"
            deadline = time.monotonic() + 20  # logged once the batch is acked, after its events went out
            while logged not in worker.tail(10**7) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert logged in worker.tail(10**7), worker.tail()
        # said from the third utterance on (a calm clip alone may be as quiet), counted and logged once a call
        quiet_said = [(events[("quiet", f"u{i}")].suspect or {}).get("audio", "") for i in range(3)]
        assert [x.startswith(QUIET) for x in quiet_said] == [False, False, True], quiet_said
        for i in range(3):  # used all the same
            ev = events[("quiet", f"u{i}")]
            assert ev.modalities_present == ["text", "audio"] and ev.ignored == {}, ev
        logged = "call quiet: audio of utterance u2 used all the same: " + QUIET
        deadline = time.monotonic() + 20
        while logged not in worker.tail(10**7) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert logged in worker.tail(10**7), worker.tail()
        page = worker.metrics()
        assert "emostream_quiet_audio_total 1.0" in page, page
        assert 'emostream_misdeclared_audio_total{mistake="sample_rate"} 2.0' in page, page
        assert 'emostream_misdeclared_audio_total{mistake="g711_law"} 1.0' in page, page
    finally:
        collector.close()
        worker.stop()
