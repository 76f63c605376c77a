"""Who may reach the bridge: a credential per endpoint, no serving open, limits on trying.

- A bridge that listens beyond loopback refuses to start while an endpoint it serves has no
  credential (AudioCodes: a bearer token; Twilio: the auth token its signatures are checked
  with); an endpoint may be switched off instead. ALLOW_UNAUTHENTICATED=true lets it start
  anyway, for development, with a warning at every start.
- The operator endpoints (`/stats`, `/metrics`, the detail of `/health`) want
  `Authorization: Bearer <OPERATOR_TOKEN>`; with no OPERATOR_TOKEN they answer only when the
  bridge listens on loopback alone.
- A client address that fails its credential AUTH_FAILURE_LIMIT times within a minute is
  refused (HTTP 429) for the rest of that minute, whatever it sends.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections import OrderedDict, deque

from pydantic import SecretStr
from starlette.datastructures import Headers

from sessions.errors import ConfigError
from sessions.settings import Settings

log = logging.getLogger(__name__)
FAILURE_WINDOW_S = 60.0
MAX_TRACKED_CLIENTS = 10_000


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_endpoints(settings: Settings) -> list[str]:
    """The served endpoints that have no credential, as the variables that would close them."""
    missing = []
    if settings.audiocodes_enabled and not _set(settings.audiocodes_bot_token):
        missing.append("AUDIOCODES_BOT_TOKEN (or AUDIOCODES_ENABLED=false)")
    if settings.twilio_enabled and not _set(settings.twilio_auth_token):
        missing.append("TWILIO_AUTH_TOKEN (or TWILIO_ENABLED=false)")
    return missing


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse to listen beyond loopback with an open endpoint (ConfigError naming them)."""
    missing = open_endpoints(settings)
    if not missing or is_loopback(host):
        return
    if not settings.allow_unauthenticated:
        raise ConfigError(
            f"refusing to serve on {host} with endpoints anyone could call: set "
            + " and ".join(missing)
            + " (or ALLOW_UNAUTHENTICATED=true, for development only)"
        )
    log.warning("serving on %s WITHOUT authentication (ALLOW_UNAUTHENTICATED=true): anyone "
                "who reaches it can place calls; set %s", host, " and ".join(missing))  # fmt: skip


def bearer_matches(headers: Headers, expected: SecretStr | None) -> bool:
    """`Authorization: Bearer <token>` carries `expected` (compared in constant time)."""
    if not _set(expected):
        return False
    assert expected is not None
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    )


def operator_allowed(headers: Headers, settings: Settings, loopback_only: bool) -> bool:
    """May this request see the operator endpoints?"""
    if _set(settings.operator_token):
        return bearer_matches(headers, settings.operator_token)
    return loopback_only


class AuthFailures:
    """Failed credentials per client address in the last minute (bounded in memory)."""

    def __init__(self, limit: int, window_s: float = FAILURE_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def refused(self, client: str) -> bool:
        """True while `client` is over the limit."""
        return len(self._recent(client)) >= self.limit

    def failed(self, client: str) -> None:
        """Record one failed credential from `client`."""
        self._recent(client).append(time.monotonic())
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_TRACKED_CLIENTS:
            self._failures.popitem(last=False)

    def _recent(self, client: str) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        cutoff = time.monotonic() - self.window_s
        while times and times[0] < cutoff:
            times.popleft()
        return times


def _set(secret: SecretStr | None) -> bool:
    return secret is not None and bool(secret.get_secret_value())
