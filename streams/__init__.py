"""emostream streams: Kafka/Faust transport, the modality join, Redis context, batching, metrics.

Everything here reaches models only through :class:`engines.interface.Engine`.
"""
