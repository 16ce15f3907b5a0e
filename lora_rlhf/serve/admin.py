"""Loading and unloading adapters while the server runs, only from folders the operator allowed.

POST   /v1/adapters          {"name": "kind", "path": "/srv/adapters/kind"}   -> 201 and the model entry
DELETE /v1/adapters/{name}                                                   -> {"id", "deleted": true}
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lora_rlhf.inference.registry import AdapterRegistry
from lora_rlhf.models.roles import BASE
from lora_rlhf.serve.errors import APIError
from lora_rlhf.serve.schemas import LoadAdapterRequest


@dataclasses.dataclass(frozen=True)
class AdminPolicy:
    roots: tuple[Path, ...]  # resolved folders adapters may be loaded from
    allow_hub: bool
    check_caller: Callable[[], None]  # raises APIError where no caller may load or unload (serve/access.py)

    @classmethod
    def make(
        cls, roots: Sequence[str | Path], allow_hub: bool, check_caller: Callable[[], None] = lambda: None
    ) -> AdminPolicy:
        return cls(tuple(Path(r).expanduser().resolve() for r in roots), allow_hub, check_caller)

    def check(self, source: str) -> str:
        """The source to load, or an APIError: 403 for a path outside every allowed root."""
        path = Path(os.path.expanduser(source))
        is_local = path.is_absolute() or source.startswith((".", "~")) or path.exists()
        if not is_local:
            if self.allow_hub:
                return source
            raise APIError(
                403, f"{source!r} is not a local path and Hub downloads are off (--allow-hub)", "forbidden", "path"
            )
        # resolve() follows symlinks and "..", so neither can lead outside a root.
        resolved = path.resolve()
        if not any(resolved == root or resolved.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots) or "none (start the server with --allowed-root)"
            raise APIError(
                403, f"adapter path {source!r} is outside the allowed folders: {allowed}", "forbidden", "path"
            )
        return str(resolved)


def add_admin_routes(
    app: FastAPI, registry: AdapterRegistry, policy: AdminPolicy, card: Callable[[AdapterRegistry, str], dict[str, Any]]
) -> None:
    @app.post("/v1/adapters", status_code=201)
    def load_adapter(body: LoadAdapterRequest):
        policy.check_caller()
        source = policy.check(body.path)
        if body.name == BASE or body.name in registry.names:
            raise APIError(409, f"model {body.name!r} is already loaded; unload it first", "model_exists", "name")
        registry.attach(body.name, source)
        return JSONResponse(card(registry, body.name), status_code=201)

    @app.delete("/v1/adapters/{name}")
    def unload_adapter(name: str) -> dict[str, Any]:
        policy.check_caller()
        if name == BASE:
            raise APIError(400, "the bare base cannot be unloaded", "invalid_request", "name")
        registry.detach(name)
        return {"id": name, "object": "model", "deleted": True}
