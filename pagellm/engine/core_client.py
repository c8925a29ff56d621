"""Clients of the engine core with one interface: in-process now; over ZMQ for the server."""

from __future__ import annotations

from pagellm.core.request import Request
from pagellm.core.sched_output import EngineCoreOutput
from pagellm.engine.engine_core import EngineCore, EngineStats


class InprocClient:
    """Drives an EngineCore living in this process: ``get_output`` runs one step."""

    def __init__(self, engine_core: EngineCore):
        self.engine_core = engine_core

    def add_request(self, request: Request) -> None:
        self.engine_core.add_request(request)

    def abort_requests(self, request_ids) -> None:
        if request_ids:
            self.engine_core.abort_requests(request_ids)

    def get_output(self) -> list[EngineCoreOutput]:
        return self.engine_core.step()

    def has_unfinished_requests(self) -> bool:
        return self.engine_core.has_unfinished_requests()

    def stats(self) -> EngineStats:
        return self.engine_core.stats()

    def shutdown(self) -> None:
        self.engine_core.shutdown()
