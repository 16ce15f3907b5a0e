"""Who may drive the server: the API key, the Host header on a loopback bind, and the admin routes.

Three rules, as vLLM and the OpenAI API have them (issue 29):
- with an API key (`--api-key`, or $LORA_RLHF_API_KEY), every route needs `Authorization: Bearer <key>`;
- a server bound to loopback answers only requests addressed to a loopback name: a page in the user's browser
  can reach 127.0.0.1 through DNS rebinding (evil.example resolving to 127.0.0.1), but its requests still
  carry `Host: evil.example`;
- bound beyond loopback, loading and unloading adapters (the admin routes) needs an API key: without one,
  anyone who can reach the port could load adapters from the allowed folders or unload the operator's.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress

from fastapi import Request

from lora_rlhf.serve.errors import APIError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address or a Host header's name, no port) names this machine only."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name of a Host header, without its port: "localhost:8000" -> "localhost", "[::1]:80" -> "::1"."""
    header = header.strip()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        return header.split(":")[0]
    return header  # a bare IPv6 address, or a name without a port


@dataclasses.dataclass(frozen=True)
class Access:
    """The access rules of one server: the address it binds and its API key (None: no key)."""

    bind_host: str
    api_key: str | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.bind_host)

    def check_request(self, request: Request) -> None:
        """Every route: the Host header on a loopback bind, then the API key. Raises APIError (403, 401)."""
        host = request.headers.get("host")
        if self.loopback and host is not None and not is_loopback(host_name(host)):
            raise APIError(
                403,
                f"Host {host_name(host)!r} is not this machine: a server bound to {self.bind_host} answers only "
                "requests addressed to localhost or a loopback address (bind --host to serve other names)",
                "forbidden_host",
            )
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise APIError(401, "invalid or missing API key (send Authorization: Bearer <key>)", "invalid_api_key")

    def check_admin(self) -> None:
        """The admin routes: refused (403) on a server bound beyond loopback without an API key."""
        if self.api_key is None and not self.loopback:
            raise APIError(
                403,
                f"loading and unloading adapters needs an API key on a server bound to {self.bind_host} "
                "(start it with --api-key or $LORA_RLHF_API_KEY)",
                "forbidden",
            )
