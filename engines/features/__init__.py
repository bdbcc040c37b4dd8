"""Per-utterance feature extractors: text embeddings and audio functionals."""
