"""Which model failures are refusals (retrying won't help), and the setting each one names.

A refused handshake (HTTP 401/403/404/429) or an `error` event whose code says the
credentials, the account's quota or the session's shape were rejected becomes a
`ModelRefused` that names the variable to fix. Everything else (a network failure, a 5xx,
a dropped socket) stays a retryable `ModelUnavailable`.
"""

from __future__ import annotations

import re

from bridges.errors import ModelRefused, ModelUnavailable
from bridges.model.config import RealtimeConfig
from bridges.model.events import ServerError

AUTH_CODES = frozenset(
    {
        "invalid_api_key",
        "invalid_authentication",
        "authentication_error",
        "unauthorized",
        "permission_denied",
        "invalid_token",
        "expired_token",
    }
)
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})
MODEL_CODES = frozenset(
    {"model_not_found", "invalid_model", "deployment_not_found", "DeploymentNotFound"}
)
SHAPE_CODES = frozenset({"unknown_parameter", "beta_api_shape_disabled"})
REFUSAL_CODES = AUTH_CODES | QUOTA_CODES | MODEL_CODES | SHAPE_CODES
# Where a refused `session.update` parameter comes from.
PARAM_SETTINGS = (
    ("session.audio.output.voice", "OPENAI_VOICE"),
    ("session.audio.input.transcription", "OPENAI_TRANSCRIPTION_MODEL"),
    ("session.audio.input.noise_reduction", "MODEL_NOISE_REDUCTION"),
    ("session.audio.input.turn_detection", "VAD_MODE"),
    ("session.instructions", "BOT_INSTRUCTIONS"),
)
_KEY_LIKE = re.compile(r"\b(?:sk|key|rk)-[A-Za-z0-9_*\-]{4,}")
MAX_MESSAGE = 200


def refusal_for_status(status: int, config: RealtimeConfig) -> ModelRefused | ModelUnavailable:
    """The error of a handshake the server answered with HTTP `status`."""
    where = config.describe()
    if status in (401, 403):
        setting = config.setting("key")
        return ModelRefused(
            f"the realtime model ({where}) refused the credentials "
            f"(HTTP {status}): check {setting}",
            setting,
        )
    if status == 404:
        setting = f"{config.setting('model')} and {config.setting('url')}"
        return ModelRefused(
            f"the realtime model ({where}) was not found (HTTP 404): check {setting}",
            config.setting("model"),
        )
    if status == 429:
        setting = config.setting("key")
        return ModelRefused(
            f"the realtime model ({where}) refused the session (HTTP 429: "
            f"rate limit or quota): check the account of {setting}",
            setting,
        )
    return ModelUnavailable(f"the realtime model ({where}) answered HTTP {status}")


def is_refusal(error: ServerError) -> bool:
    """Whether an `error` event mid-call means the session cannot go on."""
    return error.code in REFUSAL_CODES


def refusal_for_error(error: ServerError, config: RealtimeConfig) -> ModelRefused:
    """A refusal naming the setting behind `error` (any error that answers the set-up)."""
    setting = setting_for(error, config)
    text = f"{error.code or error.type or 'error'}: {scrub(error.message, config)}"
    if error.param:
        text += f" (param {error.param[:80]})"
    return ModelRefused(
        f"the realtime model ({config.describe()}) refused the session: {text}; check {setting}",
        setting,
    )


def setting_for(error: ServerError, config: RealtimeConfig) -> str:
    """The variable an operator should look at for `error`."""
    code = error.code or ""
    if code in AUTH_CODES or code in QUOTA_CODES:
        return config.setting("key")
    if code == "beta_api_shape_disabled":
        return config.setting("url")
    param = error.param or ""
    for prefix, name in PARAM_SETTINGS:
        if param.startswith(prefix):
            return name
    return config.setting("model")


def scrub(message: str, config: RealtimeConfig) -> str:
    """A server message without anything key-like in it (servers echo partial keys), bounded."""
    text = _KEY_LIKE.sub("[redacted]", message)
    if config.api_key is not None and (secret := config.api_key.get_secret_value()):
        text = text.replace(secret, "[redacted]")
    return text[:MAX_MESSAGE]
