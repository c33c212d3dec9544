"""Connection limits uvicorn lacks: a deadline and a size limit for request heads, a cap on open connections.

uvicorn closes a keep-alive connection that stays silent for ``timeout_keep_alive`` after an
answer, but a connection that never finishes its request head (or trickles it a byte at a
time) stays open forever while its head grows in the parser; 1,100 of them used up the
process's open files and every new client was reset. The protocol classes here are
uvicorn's own (httptools, or h11 without it) with three rules added per connection:

- **head deadline**: a request head must be complete within ``header_timeout_s`` of the
  connection being made, or of the first byte after the previous answer; otherwise a 408
  (a silent close when nothing came at all, or when the rest of an answered body was still
  trickling in). Bodies are bounded by the app's own deadline (``--timeout-s``, a 408).
- **head size**: more than ``max_header_bytes`` of request line and headers get a 431.
- **open connections**: with ``max_connections`` open, a new connection closes the one
  that has been quiet longest among those not waiting for an answer (an idle keep-alive,
  an unfinished head or body), so idle connections can never lock new clients out; only
  when every connection waits for its answer does the new one get a 503.

Refusals are ``{"error": ...}`` JSON answers with ``Connection: close``; the connection then
reads and drops what the client still sends for up to ``LINGER_S`` before closing, so that
the client reads the answer instead of a reset. The limits come from the app's lifespan
state (key :data:`LIMITS_KEY`), so each server, and each ``--workers`` process, has its own.
"""

from __future__ import annotations

import itertools
import resource
from dataclasses import dataclass

from ..errors import UsageError
from .protocol import json_bytes

LIMITS_KEY = "dnnspec.connection_limits"
#: Open files kept for everything but client connections: the listening socket, the event
#: loop, the model files, pipes, and connections being closed while new ones are accepted.
RESERVED_FILES = 64
#: How long a refused connection keeps reading (and dropping) what its client still sends.
LINGER_S = 1.0
#: Ticks that order the connections' last reads (the event loop's clock is read once per loop
#: iteration, so connections accepted together would tie).
_TICKS = itertools.count()
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection rules above; ``dnnspec serve`` sets them from its options."""

    max_connections: int = 1000
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024


def fit_open_files(max_connections: int) -> tuple[int, int]:
    """``(connections, open-file limit)``: the cap that fits this process's open-file limit.

    Raises the soft limit (``ulimit -n``) towards ``max_connections + RESERVED_FILES`` as far as
    the hard limit allows, then lowers the cap to what fits; UsageError when not even one does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    fits = max_connections if soft == resource.RLIM_INFINITY else min(max_connections, soft - RESERVED_FILES)
    if fits < 1:
        raise UsageError(f"the open-file limit (ulimit -n) is {soft}; dnnspec serve needs at least "
                         f"{RESERVED_FILES + 1}: raise it with 'ulimit -n {want}'")
    return fits, soft


class _Guard:
    """The three rules, mixed into a uvicorn HTTP protocol class (which must come after it)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._limits: ConnectionLimits = self.app_state.get(LIMITS_KEY) or ConnectionLimits()
        self._head = 0  # bytes of the request head being received
        self._tail = b""  # its last 3 bytes: the end of the head may straddle two reads
        self._deadline = None  # TimerHandle of the head deadline
        self._refused = False
        self._last_heard = next(_TICKS)
        if len(self.connections) > self._limits.max_connections and not self._evict_quietest():
            self._refuse(503, f"too many open connections ({self._limits.max_connections}), all waiting for "
                              "answers; try again later")
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: drop it
        self._last_heard = next(_TICKS)
        cycle = self.cycle
        head = cycle is None or not cycle.more_body  # these bytes start a request head, not a body
        if head and self._head + len(data) > self._limits.max_header_bytes and self._head_too_big(data):
            return
        super().data_received(data)
        if self.cycle is not cycle:  # a head is complete: its request has its own deadline (--timeout-s)
            self._head, self._tail = 0, b""
            self._disarm()
            return
        if head:
            self._head += len(data)
            self._tail = data[-3:]
        if self._deadline is None and (cycle is None or cycle.response_complete) and not self.transport.is_closing():
            self._arm()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    # ---------------------------------------------------------------- the rules

    def _head_too_big(self, data: bytes) -> bool:
        """True (and a 431 sent) when the head under way, ``data`` included, is over the limit."""
        across = (self._tail + data[:3]).find(b"\r\n\r\n")  # the end straddling the last read and this one
        if across >= 0:
            size = self._head + across + 4 - len(self._tail)
        else:
            end = data.find(b"\r\n\r\n")
            size = self._head + (len(data) if end < 0 else end + 4)
        if size <= self._limits.max_header_bytes:
            return False
        self._refuse(431, f"request line and headers are over the limit of {self._limits.max_header_bytes} bytes")
        return True

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self._limits.header_timeout_s, self._head_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_late(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return  # closed, or a request is in progress: the app's deadline covers it
        if self._head and (cycle is None or not cycle.more_body):
            self._refuse(408, f"request headers not received within {self._limits.header_timeout_s:g} s")
        else:  # idle since connecting, or the rest of an answered body is trickling in
            self.transport.close()

    def _evict_quietest(self) -> bool:
        """Close the connection quiet longest among those not waiting for an answer; False if none is."""
        victim, since = None, float("inf")
        for conn in self.connections:
            cycle = getattr(conn, "cycle", None)
            busy = cycle is not None and not cycle.response_complete and not cycle.more_body
            heard = getattr(conn, "_last_heard", since)
            if conn is not self and not busy and heard < since and not conn.transport.is_closing():
                victim, since = conn, heard
        if victim is None:
            return False
        self.connections.discard(victim)  # now, not when its close completes: the next arrival counts right
        victim.transport.close()
        return True

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON error and ``Connection: close``, then linger and close."""
        self._disarm()
        self._refused = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # the app is answering here: do not interleave
            self.transport.close()
            return
        body = json_bytes({"error": message})
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.loop.call_later(LINGER_S, self.transport.close)


def protocol_class() -> type:
    """The guarded class of the protocol uvicorn would pick itself: httptools when installed, else h11."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return GuardedH11
    return GuardedHttpTools


def _classes():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: the h11 class serves
        HttpToolsProtocol = H11Protocol
    return H11Protocol, HttpToolsProtocol


_H11, _HTTPTOOLS = _classes()


class GuardedHttpTools(_Guard, _HTTPTOOLS):
    """uvicorn's httptools protocol with the limits above."""


class GuardedH11(_Guard, _H11):
    """uvicorn's h11 protocol with the limits above."""
