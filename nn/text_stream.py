"""Streamed token ids as text, at the client: what to show now, and where to stop.

Decoding token by token goes wrong in two ways that this module handles: a token may end
in the middle of a UTF-8 character (the tokenizer shows U+FFFD until the rest arrives),
and text that could be the start of a stop string must wait until it is known not to be
one, or the client would show what it is about to cut (OpenAI's ``stop`` never shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_PARTIAL_CHARACTER = "\ufffd"


class TextStream:
    """One row of streamed ids turned into text pieces, cut at EOS or a stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), stop_at_eos: bool = False):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.eos_token_id = tokenizer.eos_token_id if stop_at_eos else None
        self.ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        """``"stop"`` once EOS or a stop string ended the text, else None."""
        self._shown = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> str:
        """The text that ``token`` makes safe to show (often ""; nothing once done)."""
        if self.done:
            return ""
        if self.eos_token_id is not None and token == self.eos_token_id:
            self.finish_reason = "stop"
            return self._show(len(self.text))
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
            return self._show(cut)
        safe = len(self.text) - self._held_back()
        return self._show(safe)

    def flush(self) -> str:
        """What is still held back once no more tokens will come."""
        return self._show(len(self.text))

    def _held_back(self) -> int:
        """Characters at the end that may still change: a partial character, or the start
        of a stop string."""
        if self.text.endswith(_PARTIAL_CHARACTER):
            return len(self.text) - len(self.text.rstrip(_PARTIAL_CHARACTER))
        return max(
            (k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])),
            default=0,
        )

    def _show(self, upto: int) -> str:
        piece = self.text[self._shown : upto] if upto > self._shown else ""
        self._shown = max(self._shown, upto)
        return piece
