"""The package's exceptions: one base, retryable vs terminal visible in the type."""

from __future__ import annotations


class OpusSessionsError(Exception):
    """Base class of every error raised by opus-sessions."""


class RetryableError(OpusSessionsError):
    """A failure that may succeed when tried again (a service was unreachable)."""


class TerminalError(OpusSessionsError):
    """A failure that retrying cannot fix (bad input, a refused transition)."""


class StorageUnavailable(RetryableError):
    """The session store could not be reached or did not answer in time."""


class ConfigError(TerminalError):
    """A setting is missing or invalid; the message names the variable."""


class InvalidSessionData(TerminalError, ValueError):
    """Session data failed validation; the message names the field."""


class InvalidConversationId(InvalidSessionData):
    """A conversation id is empty, too long or has characters outside the safe set."""


class CorruptSession(TerminalError):
    """A stored session could not be decoded; the message names the conversation."""

    def __init__(self, conversation_id: str, detail: str) -> None:
        super().__init__(f"stored session {conversation_id!r} is corrupt: {detail}")
        self.conversation_id = conversation_id
        self.detail = detail


class SessionExists(TerminalError):
    """A live session with this conversation id exists and replacing it was not asked for."""


class InvalidUpdate(TerminalError, ValueError):
    """An update names an unknown or read-only field, or a value of the wrong type."""


class SessionLimitReached(RetryableError):
    """The configured maximum of live sessions is reached; retry when one ends."""


class SessionEnded(TerminalError):
    """The session has ended; ENDED is terminal and nothing moves it back."""
