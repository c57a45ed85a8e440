"""Stream transport: Redis Streams between rollout workers, the reward service and the learner.

``RedisTransport`` / ``AsyncRedisTransport`` talk to any Redis >= 6.2 / Valkey; ``EmbeddedValkey`` runs a
local, password-protected, persistent server for runs with no ``transport.url``.
"""
from antiphon.transport.admission import Admission, AsyncAdmission, admission_key
from antiphon.transport.base import (
    DEAD_LETTER, DELETED_BEFORE_ACK, AsyncTransport, Backlog, BackpressureTimeout, Transport, TransportConfigError,
    TransportError, counters_key, stream_name,
)
from antiphon.transport.embedded import EmbeddedValkey, EmbeddedValkeyError
from antiphon.transport.redis import AsyncRedisTransport, RedisTransport, from_config, redact_url, resolve_password

__all__ = [
    "Admission", "AsyncAdmission", "admission_key", "AsyncRedisTransport", "AsyncTransport", "Backlog", "BackpressureTimeout", "DEAD_LETTER", "DELETED_BEFORE_ACK",
    "EmbeddedValkey", "EmbeddedValkeyError", "RedisTransport", "Transport", "TransportConfigError", "TransportError",
    "counters_key", "from_config", "redact_url", "resolve_password", "stream_name",
]
