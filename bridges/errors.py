"""Errors of the bridges, in the package's one tree (retryable vs terminal in the type)."""

from __future__ import annotations

from sessions.errors import OpusSessionsError, RetryableError, TerminalError


class BridgeError(OpusSessionsError):
    """Base class of the errors raised by the bridges."""


class ProtocolError(BridgeError, TerminalError):
    """A telephony peer sent a message that is malformed or not allowed now."""


class UnsupportedMediaFormat(ProtocolError):
    """None of the offered media formats is one the bridge can speak."""


class AuthenticationFailed(BridgeError, TerminalError):
    """A telephony peer's credentials (bearer token, request signature) were refused."""


class ModelUnavailable(BridgeError, RetryableError):
    """The realtime model could not be reached, or its connection dropped."""


class InstanceFull(BridgeError, RetryableError):
    """This bridge instance holds MAX_CALLS calls already; another instance may take the call."""


class ModelRefused(BridgeError, TerminalError):
    """The realtime model refused the session (credentials, quota, a setting): no retry helps."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
