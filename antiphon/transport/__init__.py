"""Stream transport: Redis Streams between rollout workers, the reward service and the learner.

One interface, ``Transport`` (asyncio), one implementation, ``RedisTransport`` (any Redis >= 6.2 /
Valkey), built with ``from_config``; synchronous callers wrap it in ``BlockingTransport``.
``EmbeddedValkey`` runs a local, password-protected, persistent server for runs with no ``transport.url``.
"""
from antiphon.transport.admission import admission_key
from antiphon.transport.base import (
    DEAD_LETTER, DELETED_BEFORE_ACK, Backlog, BackpressureTimeout, DeadLetter, Message, Transport,
    TransportConfigError, TransportError, counters_key, stream_name,
)
from antiphon.transport.blocking import BlockingTransport
from antiphon.transport.embedded import EmbeddedValkey, EmbeddedValkeyError
from antiphon.transport.redis import RedisTransport, from_config, transport_config
from antiphon.transport.secrets import redact_url, resolve_password

__all__ = [
    "Backlog", "BackpressureTimeout", "BlockingTransport", "DEAD_LETTER", "DELETED_BEFORE_ACK", "DeadLetter",
    "EmbeddedValkey", "EmbeddedValkeyError", "Message", "RedisTransport", "Transport", "TransportConfigError",
    "TransportError", "admission_key", "counters_key", "from_config", "redact_url", "resolve_password",
    "stream_name", "transport_config",
]
