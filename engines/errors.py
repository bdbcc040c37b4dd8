"""Errors raised by the engines package.

One root, a short tree::

    EngineError                  root of everything engines/ raises on purpose
    ├── AudioDecodeError         audio bytes that cannot become a 16 kHz mono waveform
    │   │                        (unknown encoding, garbage, empty, too short, wrong rate)
    │   └── AudioTooLong         longer than the caller allows (found from the header, before decoding)
    ├── DatasetError             a dataset or split that cannot be loaded (missing files, bad
    │                            columns, unknown labels)
    ├── ArtifactError            a model artifact directory that is missing, incomplete or
    │                            inconsistent (config, weights, ONNX graph, feature spec)
    └── FeatureError             a feature extractor that cannot run (model files missing,
                                 wrong input shapes)

A stream worker catches :class:`AudioDecodeError` per message (dead-letter the message, never the
batch); the others are start-up or offline-command failures.
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of all errors raised on purpose by :mod:`engines`."""


class AudioDecodeError(EngineError, ValueError):
    """Audio bytes that cannot be decoded to a usable 16 kHz mono waveform."""


class AudioTooLong(AudioDecodeError):
    """Audio longer than the caller's limit (checked before it is decoded)."""


class DatasetError(EngineError):
    """A dataset or split that cannot be loaded."""


class ArtifactError(EngineError):
    """A model artifact directory that is missing, incomplete or inconsistent."""


class FeatureError(EngineError):
    """A feature extractor that cannot run."""
