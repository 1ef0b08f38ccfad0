"""Incremental detokenization for streaming output and stop strings.

Byte-level BPE tokens need not end on character boundaries (one emoji can take several tokens), and a stop string
may be split across tokens. `TextStream` turns a growing list of ids into text pieces that are final: it holds back
an incomplete trailing character (decoded as U+FFFD until its last byte arrives) and the last
`len(longest stop string) - 1` characters, which could still turn out to begin a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.language.tokenizer import TextTokenizer

_INCOMPLETE = "\ufffd"


class TextStream:
    """Text of one generated sequence, released piece by piece.

    Args:
        tokenizer: decodes the ids.
        stop_strings: generation should stop once the text contains one of these; the text is cut before it.

    `push(id)` and `finish()` return the newly final text (possibly empty); `stopped` turns True when a stop string
    appeared; `text` is everything final so far (after `finish()` or a stop, the whole text).
    """

    def __init__(self, tokenizer: TextTokenizer, stop_strings: Sequence[str] = ()) -> None:
        if any(not s for s in stop_strings):
            raise ValueError(f"stop strings must be non-empty, got {list(stop_strings)!r}")
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.hold = max((len(s) for s in self.stop_strings), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False
        self.closed = False

    def _release(self, text: str, final: bool) -> str:
        emitted = len(self.text)
        # A stop string not present before this call must start at or after `emitted` (see the hold-back above).
        hits = [(i, s) for s in self.stop_strings if (i := text.find(s, emitted)) >= 0]
        if hits:
            end = min(hits)[0]
            self.stopped = self.closed = True
        else:
            end = len(text) if final else len(text) - self.hold
        if end <= emitted:
            return ""
        piece = text[emitted:end]
        self.text += piece
        return piece

    def push(self, token_id: int) -> str:
        """Add one id; returns the text that became final."""
        if self.closed:
            return ""
        self.ids.append(int(token_id))
        return self._release(self.tokenizer.decode(self.ids).rstrip(_INCOMPLETE), final=False)

    def finish(self) -> str:
        """No more ids: release the held-back text (an incomplete final character stays U+FFFD)."""
        if self.closed:
            return ""
        piece = self._release(self.tokenizer.decode(self.ids), final=True)
        self.closed = True
        return piece
