"""The state of each open stream, keyed by its sequence (correlation) id: bounded, with an idle timeout.

Triton's sequence batcher routes every chunk of a stream to one model instance and tells it when a stream
starts and ends; a Python-backend model has no implicit state (FACTS.md section 7), so it keeps the state
itself. A client that vanishes without sending END must leak nothing: entries idle longer than
``idle_timeout_s`` are dropped (the same timeout as the batcher's ``max_sequence_idle_microseconds``), and
the store never holds more than ``max_streams`` entries (the batcher's ``max_candidate_sequences``).

A new stream that finds the store full evicts the least recently used entry instead of being refused:
the batcher never has more than ``max_streams`` streams live, so when it starts another one, the stalest
entry here belongs to a stream the batcher has already let go (its idle clock ran out a moment before
ours). Were it alive after all, its next chunk would get the "no state here" error, never wrong state.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class UnknownStream(KeyError):
    """No state for this sequence id: it never started, it ended, or it idled out."""


class StreamStore:
    """sequence id -> state (any object), least recently used first."""

    def __init__(self, max_streams: int, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic):
        if max_streams <= 0 or idle_timeout_s <= 0:
            raise ValueError("max_streams and idle_timeout_s must be positive")
        self.max_streams = max_streams
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self._entries: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self.expired = 0  # streams dropped for idling
        self.evicted = 0  # streams dropped to make room for a new one

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Any) -> bool:
        self.purge()
        return key in self._entries

    def purge(self) -> int:
        """Drop every entry idle for longer than the timeout; returns how many."""
        now = self.clock()
        dropped = 0
        while self._entries:
            key, (touched, _) = next(iter(self._entries.items()))
            if now - touched <= self.idle_timeout_s:
                break
            del self._entries[key]
            dropped += 1
        self.expired += dropped
        return dropped

    def start(self, key: Any, state: Any) -> None:
        """A new stream (or a restart of `key`: its old state is replaced)."""
        self.purge()
        self._entries.pop(key, None)
        while len(self._entries) >= self.max_streams:
            self._entries.popitem(last=False)
            self.evicted += 1
        self._entries[key] = (self.clock(), state)

    def get(self, key: Any) -> Any:
        self.purge()
        try:
            _, state = self._entries[key]
        except KeyError:
            raise UnknownStream(key) from None
        return state

    def put(self, key: Any, state: Any) -> None:
        """The state after a chunk; the stream's idle clock restarts."""
        self.purge()
        if key not in self._entries:
            raise UnknownStream(key)
        self._entries[key] = (self.clock(), state)
        self._entries.move_to_end(key)

    def end(self, key: Any) -> None:
        self._entries.pop(key, None)
