"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}} with a 4xx/5xx status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from lora_rlhf.errors import LoraRlhfError
from lora_rlhf.inference.generation import Halted
from lora_rlhf.inference.registry import UnknownAdapter

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "server_busy",
    499: "client_closed_request",
    503: "server_busy",
}

logger = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status)


def install_handlers(app: FastAPI) -> None:
    """Every error leaves the server as an OpenAI error body; validation errors are 400, not FastAPI's 422."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return error_response(400, message, "invalid_request", param)

    @app.exception_handler(UnknownAdapter)
    async def _unknown(request: Request, exc: UnknownAdapter) -> JSONResponse:
        return error_response(404, str(exc), "model_not_found", "model")

    @app.exception_handler(LoraRlhfError)
    async def _user(request: Request, exc: LoraRlhfError) -> JSONResponse:
        return error_response(400, str(exc), "invalid_request")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback too; the client still gets a body its OpenAI library can read.
        return error_response(500, f"internal server error: {type(exc).__name__}", "internal_error")


def status_of(exc: BaseException) -> int:
    """The HTTP status an error raised while a response streams stands for (sent in-band as an error event)."""
    if isinstance(exc, APIError):
        return exc.status
    if isinstance(exc, UnknownAdapter):
        return 404
    return 503 if isinstance(exc, Halted) else 500
