from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import InvalidMessage
from streams.schemas import (
    AudioPart,
    CallControl,
    TextPart,
    VideoPart,
    encode_f32,
    event_id,
    json_schemas,
    parse_input,
)
from streams.settings import LimitSettings
from streams.validate import to_payload

REPO = Path(__file__).resolve().parents[2]
ids = st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True)
floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)  # MAX_ABS_FEATURE


@given(call=ids, utt=ids, seq=st.integers(0, 10_000), text=st.text(max_size=200))
def test_text_part_round_trips(call: str, utt: str, seq: int, text: str) -> None:
    part = TextPart(call_id=call, utterance_id=utt, seq=seq, text=text)
    assert parse_input("text", part.to_bytes(), 1 << 20) == part


@given(call=ids, vec=st.lists(floats, min_size=1, max_size=64))
def test_feature_parts_round_trip(call: str, vec: list[float]) -> None:
    audio = AudioPart(call_id=call, utterance_id="u", seq=0, encoding="features", features=vec)
    video = VideoPart(call_id=call, utterance_id="u", seq=0, features=vec)
    assert parse_input("audio", audio.to_bytes(), 1 << 20) == audio
    assert parse_input("video", video.to_bytes(), 1 << 20) == video


@given(vec=st.lists(floats, min_size=1, max_size=64))
def test_f32_vectors_carry_the_same_values_as_json_arrays(vec: list[float]) -> None:
    dims = {"text": len(vec), "audio": len(vec), "video": len(vec)}
    packed = encode_f32(vec)
    pairs = [
        ("text", TextPart(call_id="c", utterance_id="u", seq=0, embedding=vec),
         TextPart(call_id="c", utterance_id="u", seq=0, embedding_f32=packed)),
        ("audio", AudioPart(call_id="c", utterance_id="u", seq=0, encoding="features", features=vec),
         AudioPart(call_id="c", utterance_id="u", seq=0, encoding="features", features_f32=packed)),
        ("video", VideoPart(call_id="c", utterance_id="u", seq=0, features=vec),
         VideoPart(call_id="c", utterance_id="u", seq=0, features_f32=packed)),
    ]  # fmt: skip
    for kind, plain, compact in pairs:
        parsed = parse_input(kind, compact.to_bytes(), 1 << 20)
        assert parsed == compact
        a = to_payload(plain, dims, LimitSettings()).value
        b = to_payload(parsed, dims, LimitSettings()).value
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and b.dtype == np.float32
        assert np.array_equal(a, b)


def _f32(field: str, value: str, kind: str = "text", **kw: object) -> bytes:
    base: dict[str, object] = {"schema_version": 1, "call_id": "c", "utterance_id": "u", "seq": 0, field: value}
    if kind == "audio":
        base["encoding"] = "features"
    base.update(kw)
    return json.dumps(base).encode()


@pytest.mark.parametrize(
    ("kind", "raw", "reason"),
    [
        ("text", _f32("embedding_f32", "@@@@"), "invalid_value"),  # not base64
        ("text", _f32("embedding_f32", base64.encodebytes(b"\0" * 80).decode()), "invalid_value"),  # line breaks
        ("text", _f32("embedding_f32", base64.urlsafe_b64encode(b"\xfb\xff\xff\xbf").decode()), "invalid_value"),
        ("text", _f32("embedding_f32", base64.b64encode(b"\0" * 8).decode().rstrip("=")), "invalid_value"),  # unpadded
        ("text", _f32("embedding_f32", base64.b64encode(b"abcdef").decode()), "invalid_value"),  # 6 bytes
        ("text", _f32("embedding_f32", encode_f32([1.0, float("nan")])), "non_finite"),
        ("audio", _f32("features_f32", encode_f32([float("inf")]), "audio"), "non_finite"),
        ("video", _f32("features_f32", encode_f32([1.0]), "video", features=[1.0]), "invalid_value"),  # both forms
        ("text", _f32("embedding_f32", encode_f32([1.0]), text="hi"), "invalid_value"),  # text and a vector
        ("audio", _f32("features_f32", encode_f32([1.0]), "audio", encoding="flac"), "invalid_value"),
        ("video", b'{"schema_version": 1, "call_id": "c", "utterance_id": "u", "seq": 0}', "missing_field"),
    ],
)
def test_bad_f32_vectors_get_a_reason(kind: str, raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_input(kind, raw, 4096)
    assert info.value.reason == reason, info.value.detail


def test_an_f32_vector_is_decoded_once_and_a_copy_with_another_vector_reads_its_own(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import streams.schemas as schemas

    part = parse_input("audio", AudioPart(call_id="c", utterance_id="u", seq=0, encoding="features",
                                          features_f32=encode_f32([1.0, 2.0])).to_bytes(), 1 << 20)  # fmt: skip
    decoded = []
    monkeypatch.setattr(schemas, "f32_vector", lambda *a: decoded.append(a) or np.zeros(2, np.float32))
    assert part.vector().tolist() == [1.0, 2.0] and not decoded  # the validator's decoding, kept
    other = part.model_copy(update={"features_f32": encode_f32([3.0, 4.0])})  # no validation: not its bytes
    assert other.vector().tolist() == [0.0, 0.0] and len(decoded) == 1  # decoded afresh (here: the stand-in)


def test_an_f32_vector_of_the_wrong_length_is_refused() -> None:
    part = parse_input("text", _f32("embedding_f32", encode_f32([0.5] * 3)), 4096)
    with pytest.raises(InvalidMessage) as info:
        to_payload(part, {"text": 4, "audio": 0, "video": 0}, LimitSettings())  # type: ignore[arg-type]
    assert info.value.reason == "wrong_embedding_size"


@given(call=ids, started=st.booleans())
def test_control_round_trips(call: str, started: bool) -> None:
    msg = CallControl(call_id=call, event="started" if started else "ended", modalities=["text"])
    assert parse_input("control", msg.to_bytes(), 1 << 20) == msg


def test_a_call_s_modalities_are_kept_once_each() -> None:
    """A 'started' whose list repeats a modality (to its 1 MiB limit) was stored whole in Redis per call id."""
    raw = json.dumps({"schema_version": 1, "call_id": "c", "event": "started",
                      "modalities": ["text", "audio"] * 50_000 + ["text"]}).encode()  # fmt: skip
    assert parse_input("control", raw, 1 << 20).modalities == ["text", "audio"]  # type: ignore[union-attr]


def _text(**kw: object) -> bytes:
    base = {"schema_version": 1, "call_id": "c", "utterance_id": "u", "seq": 0, "text": "hi"}
    base.update(kw)
    return json.dumps(base).encode()


@pytest.mark.parametrize(
    ("kind", "raw", "reason"),
    [
        ("text", b"{not json", "malformed_json"),
        ("text", b"\xff\xfe", "malformed_json"),
        ("text", b"", "malformed_json"),
        ("text", b"[1, 2]", "wrong_type"),
        ("text", _text(schema_version=7), "unknown_schema_version"),
        # found by a newcomer: the published schema said optional, the worker said "None, reads 1"
        ("text", b'{"call_id": "c", "utterance_id": "u", "seq": 0, "text": "hi"}', "missing_field"),
        ("text", _text(schema_version="1"), "wrong_type"),  # said "'1', this worker reads 1"
        ("text", _text(schema_version=True), "wrong_type"),
        ("text", _text(schema_version=1.5), "unknown_schema_version"),
        ("text", b'{"schema_version": 1, "call_id": "c"}', "missing_field"),
        ("text", _text(seq="three"), "wrong_type"),
        ("text", _text(seq=-1), "invalid_value"),
        ("text", _text(seq=True), "wrong_type"),  # not taken as seq 1
        ("text", _text(seq=2.5), "wrong_type"),  # 2.0 is the integer 2, as JSON Schema reads it
        # found by a newcomer: lax pydantic read these strings and booleans as numbers, against the JSON Schema
        ("text", _text(seq="1"), "wrong_type"),
        ("text", _text(start_s="0.5"), "wrong_type"),
        ("text", _text(sent_at=True), "wrong_type"),
        ("text", _text(text=None, embedding=[1.0, "2.0"]), "wrong_type"),
        (
            "audio",
            json.dumps(
                {
                    "schema_version": 1,
                    "call_id": "c",
                    "utterance_id": "u",
                    "seq": 0,
                    "encoding": "pcm_s16le",
                    "sample_rate": "8000",
                    "data": "AAAA",
                }
            ).encode(),
            "wrong_type",
        ),
        (
            "control",
            json.dumps({"schema_version": 1, "call_id": "c", "event": "ended", "at": "1"}).encode(),
            "wrong_type",
        ),
        ("text", _text(start_s=3.0, end_s=2.5), "invalid_value"),  # ends before it starts
        (
            "text",
            b'{"schema_version": 1, "call_id": "c", "utterance_id": "u", "seq": 0, "text": "hi", "text": "bye"}',
            "malformed_json",
        ),  # which text counts would depend on the reader
        ("text", _text(text=None, embedding=[1.0, 1e38]), "invalid_value"),  # finite, but no feature
        ("text", _text(call_id="bad id with spaces"), "invalid_value"),
        ("text", _text(text=None, embedding=[1.0, float("nan")]), "non_finite"),
        ("text", _text(embedding=[1.0]), "invalid_value"),  # both text and embedding
        ("audio", _text(kind="audio", encoding="flac"), "invalid_value"),
        ("text", _text(text="x" * 5000), "oversized"),
        ("weather", _text(), "unknown_topic"),
    ],
)
def test_bad_input_gets_a_reason(kind: str, raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_input(kind, raw, 4096)
    assert info.value.reason == reason


def test_numbers_are_json_numbers_and_times_in_order() -> None:
    """What the strict number fields still take: integers for decimals, numpy integers from Python
    producers, and an utterance that ends where it starts."""
    part = parse_input("text", _text(seq=3, start_s=1, end_s=1, sent_at=1700000000), 4096)
    assert (part.seq, part.start_s, part.end_s) == (3, 1.0, 1.0)
    audio = AudioPart(call_id="c", utterance_id="u", seq=np.int64(2), encoding="pcm_s16le",
                      sample_rate=np.int32(8000), data="AAAA")  # fmt: skip
    assert (audio.seq, audio.sample_rate) == (2, 8000)
    # JSON Schema's integer: a number without a fraction (what the published schemas accept), so 8000.0 is 8000
    assert parse_input("text", _text(seq=2.0), 4096).seq == 2
    raw = {"schema_version": 1, "call_id": "c", "utterance_id": "u", "seq": 0, "encoding": "pcm_s16le",
           "sample_rate": 8000.0, "data": "AAAA"}  # fmt: skip
    assert parse_input("audio", json.dumps(raw).encode(), 4096).sample_rate == 8000
    with pytest.raises(ValueError, match="not a boolean"):
        TextPart(call_id="c", utterance_id="u", seq=np.True_, text="x")
    with pytest.raises(InvalidMessage, match="the key 'seq' appears twice"):
        parse_input("text", b'{"schema_version": 1, "call_id": "c", "utterance_id": "u", "seq": 0, "seq": 1, '
                    b'"text": "hi"}', 4096)  # fmt: skip


HOSTILE = [
    (b'{"schema_version":1,"call_id":"c","utterance_id":"u","seq":0,"text":"hello \\ud800 there"}', "invalid_value"),
    (b"[" * 1100 + b"]" * 1100, "malformed_json"),
    (b'{"schema_version":1,"call_id":"c","utterance_id":"u","seq":' + b"9" * 4400 + b',"text":"x"}', "invalid_value"),
    (_text(seq=2**63), "invalid_value"),
    (b'{"schema_version":1,"call_id":"c","utterance_id":"u","seq":0,"text":"x","sent_at":Infinity}', "non_finite"),
    (b'{"schema_version":1,"call_id":"c","utterance_id":"u","seq":0,"text":"x","start_s":-Infinity}', "non_finite"),
    (b'{"schema_version":1,"call_id":"c","utterance_id":"u","seq":0,"text":"x","speaker":' + b"[" * 900
     + b"]" * 900 + b"}", "wrong_type"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "reason"), HOSTILE)
def test_hostile_json_is_a_dead_letter_reason_not_an_exception(raw: bytes, reason: str) -> None:
    """Lone surrogates (tokenizers raise on them), deep nesting (RecursionError), 4,400-digit
    integers (ValueError) and infinities all become an InvalidMessage with a reason."""
    with pytest.raises(InvalidMessage) as info:
        parse_input("text", raw, 1 << 20)
    assert info.value.reason == reason, info.value.detail


@given(raw=st.binary(max_size=300))
def test_any_bytes_parse_or_give_a_reason(raw: bytes) -> None:
    try:
        parse_input("text", raw, 1 << 20)
    except InvalidMessage:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(
    fields=st.dictionaries(
        st.sampled_from(["schema_version", "call_id", "utterance_id", "seq", "text", "embedding", "speaker", "kind",
                         "sent_at", "encoding", "data", "features", "event", "modalities"]),
        json_values,
    ),
    kind=st.sampled_from(["text", "audio", "video", "control"]),
)  # fmt: skip
def test_any_json_object_parses_or_gives_a_reason(fields: dict[str, object], kind: str) -> None:
    fields.setdefault("schema_version", 1)
    try:
        parse_input(kind, json.dumps(fields).encode(), 1 << 20)
    except InvalidMessage:
        pass


def test_nan_literal_in_json_is_rejected() -> None:
    raw = b'{"schema_version":1,"call_id":"c","utterance_id":"u","seq":0,"embedding":[NaN, 1.0]}'
    with pytest.raises(InvalidMessage) as info:
        parse_input("text", raw, 4096)
    assert info.value.reason == "non_finite"


def test_audio_base64_is_checked() -> None:
    part = AudioPart(call_id="c", utterance_id="u", seq=0, encoding="flac", data="@@not-base64@@")
    with pytest.raises(InvalidMessage) as info:
        part.audio_bytes()
    assert info.value.reason == "undecodable_audio"
    ok = AudioPart(call_id="c", utterance_id="u", seq=0, encoding="flac", data=base64.b64encode(b"abc").decode())
    assert ok.audio_bytes() == b"abc"


def test_event_id_is_deterministic_and_distinct() -> None:
    assert event_id("c1", "u1", 0) == event_id("c1", "u1", 0)
    assert (
        len({event_id("c1", "u1", 0), event_id("c1", "u1", 1), event_id("c1", "u2", 0), event_id("c2", "u1", 0)}) == 4
    )
    assert not math.isnan(len(event_id("c", "u", 0)))


def test_published_json_schemas_match_the_code() -> None:
    folder = REPO / "schemas"
    for name, schema in json_schemas().items():
        path = folder / f"{name}.schema.json"
        assert path.exists(), f"{path} missing: run `make schemas`"
        assert json.loads(path.read_text()) == schema, f"{path} is stale: run `make schemas`"
        assert schema["required"][0] == "schema_version", name  # the worker refuses a message without it


def test_packed_vectors_are_checked_finite_and_bounded_from_their_bytes_as_numpy_would() -> None:
    """schemas.f32_vector reads NaN, Inf and values beyond MAX_ABS_FEATURE as numpy would, with
    numpy only where a float32 high byte says a value is 2**15 or more (schemas._large_f32)."""
    from streams.schemas import MAX_ABS_FEATURE, _large_f32, encode_f32, f32_vector

    rng = np.random.default_rng(0)
    for _ in range(3000):
        v = (rng.standard_normal(16) * 10.0 ** rng.integers(-40, 39, 16)).astype("<f4")  # overflows: inf
        v[rng.integers(0, 16)] = rng.choice([np.nan, np.inf, -np.inf, 3.3e38, -1.7e38, 1e6, 1.1e6, 1.0, 0.0])
        with np.errstate(invalid="ignore"):
            large = bool((~np.isfinite(v)).any() or (np.abs(v) >= 2.0**15).any())
            usable = bool(np.isfinite(v).all() and np.abs(v).max() <= MAX_ABS_FEATURE)
        assert _large_f32(v.tobytes()) == large
        try:
            f32_vector(encode_f32(v), "x")
            assert usable, v
        except ValueError as exc:
            assert not usable, v
            assert ("NaN or Inf" in str(exc)) == bool((~np.isfinite(v)).any())


def test_a_dead_letter_detail_is_one_line_without_memory_addresses() -> None:
    """soundfile's "Error opening <_io.BytesIO object at 0x7f5dfba2bbf0>" and pydantic's multi-line
    errors: what `emostream subscribe --deadletters` prints one record a line."""
    from streams.errors import one_line
    from streams.validate import to_payload

    part = AudioPart(call_id="c", utterance_id="u", seq=0, encoding="flac", data=base64.b64encode(b"x" * 64).decode())
    with pytest.raises(InvalidMessage) as info:
        to_payload(part, {"text": 384, "audio": 768, "video": 0}, LimitSettings())
    assert info.value.reason == "undecodable_audio" and "0x" not in info.value.detail, info.value.detail
    assert "Error opening" not in info.value.detail and "Format not recognised" in info.value.detail
    assert one_line("9 validation errors\nconfidence\n  Input should be finite") == (
        "9 validation errors | confidence | Input should be finite"
    )


def test_seq_takes_numpy_integers_but_not_booleans_or_floats() -> None:
    assert TextPart(call_id="c", utterance_id="u", seq=np.int64(3), text="x").seq == 3  # a producer's numpy ints
    with pytest.raises(ValueError, match=r"seq\n  must be an integer, not a boolean"):
        TextPart(call_id="c", utterance_id="u", seq=True, text="x")


def test_schema_version_1_0_is_the_integer_1_as_the_published_schema_says() -> None:
    raw = b'{"schema_version": 1.0, "call_id": "c", "utterance_id": "u", "seq": 0, "text": "hi"}'
    assert parse_input("text", raw, 10**6).schema_version == 1


def test_the_schemas_modalities_are_the_engines() -> None:
    import typing

    from engines.interface import MODALITIES
    from streams.schemas import Modality

    assert typing.get_args(Modality) == MODALITIES  # the same names in the same order


def test_a_part_against_its_schema_whose_ids_parse_keeps_its_ids() -> None:
    """An audio part in an encoding the worker does not know (or with a sample rate of 0) is
    dead-lettered, but its ids are read: its utterance need not wait for it, its dead letter names it."""
    bad = {"schema_version": 1, "kind": "audio", "call_id": "c", "utterance_id": "u3", "seq": 3, "speaker": "agent"}
    for fields in ({"encoding": "mp3", "data": "AAAA"}, {"encoding": "pcm_s16le", "sample_rate": 0, "data": "AAAA"}):
        with pytest.raises(InvalidMessage) as caught:
            parse_input("audio", json.dumps({**bad, **fields}).encode(), 1 << 20)
        part = caught.value.part
        assert isinstance(part, AudioPart) and caught.value.reason == "invalid_value", caught.value
        assert (part.call_id, part.utterance_id, part.seq, part.speaker, part.kind) == ("c", "u3", 3, "agent", "audio")
    with pytest.raises(InvalidMessage) as caught:  # a bad speaker too: the utterance's other parts say who
        parse_input("audio", json.dumps({**bad, "speaker": "a\nb", "encoding": "mp3"}).encode(), 1 << 20)
    assert caught.value.part is not None and caught.value.part.speaker == "unknown"
    # ids that are themselves bad, or no part at all: nothing to join
    for raw, kind in (({**bad, "seq": "3", "text": 1}, "text"), ({**bad, "call_id": "a b", "text": 1}, "text"),
                      ({"schema_version": 1, "call_id": "c", "event": "paused"}, "control")):  # fmt: skip
        with pytest.raises(InvalidMessage) as caught:
            parse_input(kind, json.dumps(raw).encode(), 1 << 20)
        assert caught.value.part is None, raw


def test_bytes_that_are_not_utf8_are_said_to_be_so() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_input("text", b"\xff\xfe\x00garbage", 1 << 20)
    assert caught.value.reason == "malformed_json" and caught.value.detail.startswith("not UTF-8 text (byte 0xff at 0)")
    with pytest.raises(InvalidMessage) as caught:
        parse_input("text", b"{not json", 1 << 20)
    assert "not UTF-8" not in caught.value.detail  # UTF-8 that is no JSON: the parser's own words


def test_speakers_are_named_as_telephony_platforms_name_them() -> None:
    """A newcomer's 'Agent Smith' and '+15551234567' (E.164 caller ids) were dead-lettered whole
    (the speaker took only the ids' characters), so their calls never showed up anywhere. A speaker
    is any printable text now, in the worker and in the published JSON Schema alike; control and
    format characters, blanks and over-long names are still refused."""
    import jsonschema

    from streams.schemas import json_schemas

    schema = json_schemas()["text-part"]
    base = {"schema_version": 1, "kind": "text", "call_id": "c", "utterance_id": "u0", "seq": 0, "text": "hi"}
    for name, kept in [("Agent Smith", "Agent Smith"), ("+15551234567", "+15551234567"), ("José", "José"),
                       ("张伟", "张伟"), ("sip:ext-204@pbx.example", "sip:ext-204@pbx.example"),
                       (" agent-7 ", "agent-7"), ("\ufeffagent-7", "agent-7"),  # a CSV export's BOM
                       ("Zoe\u0301", "Zo\u00e9"),  # NFC: one Zoé however it is composed
                       ("\u0645\u0647\u200c\u0633\u0627", "\u0645\u0647\u200c\u0633\u0627"),  # a ZWNJ (Persian)
                       ]:  # fmt: skip
        msg = {**base, "speaker": name}
        jsonschema.validate(msg, schema)
        part = parse_input("text", json.dumps(msg).encode(), 1 << 20)
        assert part.speaker == kept  # type: ignore[union-attr]
    for name in ["a\nb", "a\x85b", "x\u202ey", "x\u2066y", "   ", "\ufeff \ufeff \ufeff", "", "a" * 129]:
        with pytest.raises(InvalidMessage) as caught:
            parse_input("text", json.dumps({**base, "speaker": name}).encode(), 1 << 20)
        assert caught.value.reason == "invalid_value" and "speaker" in caught.value.detail, (name, caught.value)
    for name in [
        "a\nb",
        "a\x85b",
        "",
        "   ",
        "\ufeff ",
        "\ufeff \ufeff \ufeff",
        "a" * 129,
    ]:  # what the JSON Schema can say (not bidi)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**base, "speaker": name}, schema)


def test_the_published_schemas_refuse_what_the_worker_refuses_and_take_what_it_takes() -> None:
    """An integrator who validated against schemas/ before sending (a newcomer's run, 2026-12-06) had
    schema-valid parts dead-lettered: a blank speaker, a transcript with neither text nor embedding
    or with both, G.711 audio without data or at 16 kHz, a sample rate of 12345, empty or non-base64
    data. Each message here is judged by the JSON Schema and by the worker (parsing, then decoding
    the audio as the worker does), and both must agree."""
    import base64

    import jsonschema

    from engines.features.codecs import G711_RATE, RATES
    from streams.schemas import AUDIO_RATES, json_schemas
    from streams.settings import LimitSettings
    from streams.validate import to_payload

    assert AUDIO_RATES == RATES and G711_RATE == 8000
    ids = {"schema_version": 1, "call_id": "c", "utterance_id": "u0", "seq": 0, "speaker": "agent:1234"}
    mulaw = base64.b64encode(bytes(range(256)) * 8).decode()
    pcm = base64.b64encode(b"\x01\x00" * 1600).decode()
    cases: list[tuple[str, dict[str, object], bool]] = [
        ("text", {"text": "uh i um need help"}, True),
        ("text", {"text": "hi", "speaker": " "}, False),
        ("text", {}, False),
        ("text", {"text": None, "embedding": [0.1] * 384}, True),
        ("text", {"text": "hi", "embedding": [0.1] * 384}, False),
        ("text", {"embedding": [0.1] * 384, "embedding_f32": encode_f32([0.1] * 384)}, False),
        ("audio", {"encoding": "pcm_mulaw", "data": mulaw}, True),
        ("audio", {"encoding": "pcm_mulaw", "data": mulaw, "sample_rate": 8000}, True),
        ("audio", {"encoding": "pcm_mulaw", "data": mulaw, "sample_rate": 16000}, False),
        ("audio", {"encoding": "pcm_alaw"}, False),
        ("audio", {"encoding": "pcm_s16le", "data": pcm, "sample_rate": 8000}, True),
        ("audio", {"encoding": "pcm_s16le", "data": pcm, "sample_rate": 12345}, False),
        ("audio", {"encoding": "pcm_s16le", "data": ""}, False),
        ("audio", {"encoding": "pcm_s16le", "data": "not base64!"}, False),
        ("audio", {"encoding": "pcm_s16le", "data": pcm[:-2]}, False),  # its padding cut
        ("audio", {"encoding": "pcm_s16le", "data": pcm, "features": [0.1] * 768}, False),
        ("audio", {"encoding": "features", "features": [0.1] * 768}, True),
        ("audio", {"encoding": "features", "features": [0.1] * 768, "data": pcm}, False),
        ("audio", {"encoding": "features"}, False),
    ]
    schemas = {k: json_schemas()[f"{k}-part"] for k in ("text", "audio")}
    for kind, fields, ok in cases:
        msg = {**ids, "kind": kind, **fields}
        try:
            jsonschema.validate(msg, schemas[kind])
            schema_ok = True
        except jsonschema.ValidationError:
            schema_ok = False
        try:
            part = parse_input(kind, json.dumps(msg).encode(), 1 << 22)
            to_payload(part, {"text": 384, "audio": 768}, LimitSettings())  # type: ignore[arg-type]
            worker_ok = True
        except InvalidMessage:
            worker_ok = False
        assert (schema_ok, worker_ok) == (ok, ok), (fields, schema_ok, worker_ok)


def test_a_dead_letter_names_the_call_and_utterance_of_a_part_whose_seq_is_wrong() -> None:
    """A seq of "1" fails the part's ids, so it joins nothing; its dead letter still names whose it was."""
    with pytest.raises(InvalidMessage) as caught:
        parse_input("text", json.dumps({"schema_version": 1, "call_id": "c-9", "utterance_id": "u1", "seq": "1",
                                        "text": "hi"}).encode(), 1 << 20)  # fmt: skip
    assert caught.value.part is None and (caught.value.call_id, caught.value.utterance_id) == ("c-9", "u1")
    with pytest.raises(InvalidMessage) as caught:
        parse_input("text", json.dumps({"schema_version": 1, "call_id": "c 9", "seq": 1}).encode(), 1 << 20)
    assert (caught.value.call_id, caught.value.utterance_id) == (None, None)


def test_a_part_too_large_to_parse_is_dead_lettered_under_its_ids_where_they_can_be_read() -> None:
    """A long clip as raw PCM passes the message limit: its utterance waited join.wait_s for it, and its
    event said nothing of why it had no audio (an operator's trial). Its ids are read from its ends."""
    big = base64.b64encode(bytes(800_000)).decode()
    first = {"schema_version": 1, "call_id": "c-1", "utterance_id": "u_7", "seq": 3, "speaker": "agent 42",
             "encoding": "pcm_s16le", "data": big}  # fmt: skip
    last = {"data": big, **{k: v for k, v in first.items() if k != "data"}}
    for obj in (first, last):
        with pytest.raises(InvalidMessage) as caught:
            parse_input("audio", json.dumps(obj).encode(), 1 << 20)
        part = caught.value.part
        assert caught.value.reason == "oversized" and part is not None
        assert (part.call_id, part.utterance_id, part.seq, part.speaker) == ("c-1", "u_7", 3, "agent 42")
    # ids quoted inside a transcript are not the message's; a message whose ids are out of reach has none
    quoted = 'say \\"call_id\\": \\"evil\\" ' * 60_000
    words = {"schema_version": 1, "text": quoted, "call_id": "c", "utterance_id": "u", "seq": 1}
    with pytest.raises(InvalidMessage) as caught:
        parse_input("text", json.dumps(words).encode(), 1 << 20)
    assert caught.value.part is not None and caught.value.part.call_id == "c"
    hidden = {"schema_version": 1, "call_id": "c", "pad": "x" * 600_000, "utterance_id": "u", "more": "x" * 600_000,
              "seq": 1, "encoding": "pcm_s16le", "data": ""}  # fmt: skip
    with pytest.raises(InvalidMessage) as caught:
        parse_input("audio", json.dumps(hidden).encode(), 1 << 20)
    assert caught.value.part is None and caught.value.call_id is None
    for odd in ({"seq": 3.5}, {"kind": "text"}, {"schema_version": 2}):  # as the parser would refuse them
        with pytest.raises(InvalidMessage) as caught:
            parse_input("audio", json.dumps({**first, **odd}).encode(), 1 << 20)
        assert caught.value.part is None, odd


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"null", "top level is null, not an object"),
        (b"[1, 2]", "top level is array, not an object"),
        (b'"hi"', "top level is string, not an object"),
        (b"3.5", "top level is number, not an object"),
        (b'{"schema_version": "1"}', 'the integer 1, not "1" (string)'),
        (b'{"schema_version": true}', "the integer 1, not true (boolean)"),
        (b'{"schema_version": null}', "the integer 1, not null (null)"),
    ],
)
def test_a_wrong_type_is_named_as_json_names_it(raw: bytes, said: str) -> None:
    """Found by a newcomer: dead letters said "top level is NoneType" and "(str)", Python's names
    for what a producer sent as JSON null and a JSON string."""
    with pytest.raises(InvalidMessage) as info:
        parse_input("text", raw, 4096)
    assert info.value.reason == "wrong_type" and said in info.value.detail, info.value.detail


def test_a_dead_letters_detail_does_not_quote_a_long_value_or_key_of_the_message() -> None:
    """Details reach the worker's log: a transcript put in schema_version, kind or a key's name was
    quoted in it (a card number, a phone number)."""
    words = "Hi this is Jane Doe, card 4111 1111 1111 1111"
    cases = [
        ({"schema_version": words}, "the integer 1, not <string of 45 characters> (string)"),
        ({"schema_version": 1, "kind": words}, "kind <string of 45 characters> on the text topic"),
        (
            {"schema_version": 1, "call_id": "c", "utterance_id": "u", "seq": 0, "text": "x", words: 1},
            "<a key of 45 characters>: Extra inputs are not permitted",
        ),
    ]
    for obj, said in cases:
        with pytest.raises(InvalidMessage) as info:
            parse_input("text", json.dumps(obj).encode(), 4096)
        assert said in info.value.detail and "4111" not in info.value.detail, info.value.detail
