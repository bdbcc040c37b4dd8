"""Per-utterance feature extractors: text embeddings and audio functionals.

``make_text_encoder(name)`` ("minilm", "e5-multilingual") and ``make_audio_extractor(name)``
("whisper-tiny", "functionals", "egemaps") build them by name; :mod:`engines.features.factory` also rebuilds them
from an artifact's ``features.json``. The non-default ones need optional extras.
"""

from engines.features.factory import (
    AUDIO_EXTRACTORS,
    TEXT_ENCODERS,
    audio_extractor_from_dict,
    make_audio_extractor,
    make_text_encoder,
    text_encoder_from_dict,
)

__all__ = [
    "AUDIO_EXTRACTORS",
    "TEXT_ENCODERS",
    "audio_extractor_from_dict",
    "make_audio_extractor",
    "make_text_encoder",
    "text_encoder_from_dict",
]
