"""Moved to antiphon.dialogue_files (TEMPORARY: removed once antiphon/launch.py imports from there)."""
from antiphon.dialogue_files import write_dialogue, write_dialogues  # noqa: F401
