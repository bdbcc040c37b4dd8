"""The shipped default reads emoji of feelings through their words (engines/features/emoji.py):
an angry chat line of emoji alone was joy 0.60 when MiniLM read it as unknown tokens."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.engine


def test_emoji_alone_get_the_feeling_they_show() -> None:
    from engines.registry import load_engine, load_extractors
    from engines.windows import UtteranceFeatures, pack_windows

    engine, ex = load_engine("default"), load_extractors("default")
    assert ex.text is not None
    lines = {
        "\U0001f621\U0001f621\U0001f621\U0001f92c": "anger",
        "\U0001f62d\U0001f62d": "sadness",
        "\U0001f631 my card was stolen": "fear",
        "\U0001f922": "disgust",
        "\U0001f62e really?": "surprise",
        "\U0001f642\U0001f642\U0001f642": "joy",
    }
    vectors = ex.text.encode(list(lines))
    windows = [[UtteranceFeatures("customer", {"text": v})] for v in vectors]
    best = engine.predict(pack_windows(windows, engine.info.features)).probs.argmax(1)
    assert [engine.info.labels[b] for b in best] == list(lines.values())
