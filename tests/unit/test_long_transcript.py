"""A transcript longer than the text encoder reads is used, and its event says so."""

from __future__ import annotations


def test_a_transcript_longer_than_the_encoder_reads_is_noted() -> None:
    """The text encoder reads its first 128 tokens: a longer transcript is used and its event's
    ``suspect`` says the rest was not read (a newcomer's rant of 4,904 characters ended in anger
    that was never read: neutral 0.69, with nothing to say why)."""
    from engines.registry import load_extractors
    from streams.join import Utterance
    from streams.pipeline import LONG_TRANSCRIPT, utterance_features
    from streams.runtime import ModelFeaturizer
    from streams.validate import Payload

    featurizer = ModelFeaturizer(load_extractors("default", runtime="onnxruntime"))
    # 70 emoji are 70 characters, but 140 tokens as read ("angry!")
    lines = ["I want my money back.", "The bill is wrong. " * 40, "\U0001f621 " * 200, "\U0001f621" * 70]
    utts = [
        Utterance("c", f"u{i}", i, "customer", 0.0, parts={"text": Payload("text", t)}) for i, t in enumerate(lines)
    ]
    feats = utterance_features(utts, featurizer, {"text": 384, "audio": 0, "video": 0})
    assert all("text" in f for f in feats)
    assert utts[0].suspect == {}
    for u in utts[1:]:
        assert u.suspect["text"].startswith(LONG_TRANSCRIPT + "the text model reads its first 128 tokens"), u.suspect
    assert featurizer.unread(["a " * 125, "a " * 127]) == [None, featurizer.unread(["a " * 200])[0]]
