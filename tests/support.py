"""Test doubles shared by unit tests of single parts (importable as ``support``: pytest's pythonpath)."""
from __future__ import annotations


class ScriptedEngine:
    """A stand-in policy engine for unit tests of the dialogue loop and simulators: replies with fixed
    token ids, records every request it saw."""

    def __init__(self, replies, version: int = 7):
        self.replies, self.requests, self.version = list(replies), [], version

    async def generate(self, req):
        from antiphon.generation import GenerationResult

        self.requests.append(req)
        ids = self.replies.pop(0)
        return GenerationResult(req.request_id, ids, [-0.5] * len(ids), self.version, "stop", len(req.prompt_ids))
