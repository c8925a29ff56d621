"""ZMQ contexts that garbage collection never terminates.

pyzmq's ``Context.__del__`` destroys an unclosed context, and ``term()`` blocks for as long as
any socket of the context is still open in libzmq (a thread still blocked on it, a socket object
alive elsewhere). Two CI runs hung there: a client or executor dropped without ``shutdown()``
was collected in the middle of a later test. Contexts made here are kept referenced until they
are closed, so collection never reaches them; their owners still close them explicitly
(``term()`` in every shutdown path), and process exit skips pyzmq's destroy.
"""

from __future__ import annotations

import threading

import zmq
import zmq.asyncio

_open: list[zmq.Context] = []
_lock = threading.Lock()


def make_context(use_asyncio: bool = False) -> zmq.Context:
    """A new context (``zmq.asyncio.Context`` when ``use_asyncio``) whose sockets default to
    LINGER 0 (closing never waits on a dead peer), kept alive until closed."""
    context = zmq.asyncio.Context() if use_asyncio else zmq.Context()
    context.setsockopt(zmq.LINGER, 0)
    with _lock:
        _open[:] = [c for c in _open if not c.closed]
        _open.append(context)
    return context
