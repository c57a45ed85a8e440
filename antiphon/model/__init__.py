"""The policy at token level: chat format and special tokens, the audio front end, the tiny policy builder,
and the parameter-name maps between transformers and vLLM.

Nothing is imported here on purpose: ``antiphon.model.tokens`` and ``antiphon.model.chat`` stay importable
without torch, so callers import the module they need.
"""
