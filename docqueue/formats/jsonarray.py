"""The elements of a JSON array (``[{...}, {...}]``), decoded one at a time from a
stream: the file is never held whole in memory, only the element being read.

After a malformed element nothing further can be found reliably (where the next
element starts is unknown), so it is the last thing read: its error says so.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import IO, Any

from docqueue.errors import Refused

#: Bytes read at a time.
CHUNK = 1 << 16
#: An element longer than this that still does not decode is malformed, not cut short
#: by the chunk: the rest of the file is not buffered looking for its end.
MAX_ELEMENT_CHARS = 1 << 26

_WHITESPACE = " \t\r\n"


class ArrayError(Refused, ValueError):
    """The stream is not a JSON array; the message says where and why."""


class _Buffer:
    """Decoded text read from a binary stream on demand."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.text = ""
        self.pos = 0
        self.eof = False
        self.consumed = 0  # characters dropped from the front of ``text``

    def fill(self) -> bool:
        """Read one more chunk; False at the end of the stream."""
        if self.eof:
            return False
        block = self.stream.read(CHUNK)
        try:
            self.text = self.text[self.pos :] + self.decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            raise ArrayError(f"invalid UTF-8 near character {self.consumed + self.pos}") from exc
        self.consumed += self.pos
        self.pos = 0
        self.eof = not block
        return True

    def next_char(self) -> str | None:
        """The next character that is not whitespace (left unread), or None at the end."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return None


def starts_array(stream: IO[bytes]) -> bool:
    """Whether the first character that is not whitespace (after a BOM) is ``[``."""
    return _Buffer(stream).next_char() == "["


def array_items(stream: IO[bytes]) -> Iterator[Any | ArrayError]:
    """Each element of the array, or an :class:`ArrayError` as the last item when an
    element is malformed.  Raises :class:`ArrayError` when the stream does not hold
    an array at all."""
    buffer = _Buffer(stream)
    if buffer.next_char() != "[":
        raise ArrayError("not a JSON array (it does not start with '[')")
    buffer.pos += 1
    if buffer.next_char() == "]":
        return
    decoder = json.JSONDecoder()
    while True:
        value = _decode(buffer, decoder)
        if isinstance(value, ArrayError):
            yield value
            return
        yield value
        after = buffer.next_char()
        if after == "]":
            return
        if after != ",":
            found = "the end of the file" if after is None else repr(after)
            yield ArrayError(f"expected ',' or ']' after it, found {found}")
            return
        buffer.pos += 1


def _decode(buffer: _Buffer, decoder: json.JSONDecoder) -> Any:
    """The element at the buffer's position, reading more until it is complete."""
    while True:
        if buffer.next_char() is None:
            return ArrayError("the array is not closed (no ']')")
        try:
            value, end = decoder.raw_decode(buffer.text, buffer.pos)
        except json.JSONDecodeError as exc:
            if len(buffer.text) - buffer.pos < MAX_ELEMENT_CHARS and buffer.fill():
                continue
            return ArrayError(f"malformed JSON ({exc.msg})")
        except (ValueError, RecursionError) as exc:
            return ArrayError(f"malformed JSON ({exc})")
        if end == len(buffer.text) and buffer.fill():
            continue  # a number may go on in the next chunk
        buffer.pos = end
        return value
