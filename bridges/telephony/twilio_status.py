"""Twilio's call status callback (`/twilio/status`): a signed form POST saying a call is over.

A stream's `stop` says only that the stream ended; the call's status callback says whether
the call did. A final `CallStatus` (completed, busy, failed, no-answer, canceled) ends the
call at once, wherever it is: live on this instance, live on another one, or PAUSED within
the grace window that follows a `stop`. Other statuses are acknowledged and ignored.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from twilio.request_validator import RequestValidator

from bridges.telephony.twilio import signed_urls
from sessions.keys import check_conversation_id
from sessions.settings import Settings

if TYPE_CHECKING:
    from bridges.call.runtime import BridgeRuntime

log = logging.getLogger(__name__)
FINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
MAX_BODY_BYTES = 16 * 1024


class StatusCallback(BaseModel):
    """The fields of the callback the bridge reads (Twilio sends many more)."""

    model_config = ConfigDict(extra="ignore")

    CallSid: str  # noqa: N815 - Twilio's names
    CallStatus: str = Field(max_length=32)  # noqa: N815

    @field_validator("CallSid")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_conversation_id(value)


def signature_valid(url: str, params: dict[str, str], signature: str, settings: Settings) -> bool:
    """X-Twilio-Signature over the URL and the sorted form fields (no token: no check)."""
    token = settings.twilio_auth_token
    if token is None or not token.get_secret_value():
        return True
    if not signature:
        return False
    validator = RequestValidator(token.get_secret_value())
    return any(validator.validate(u, params, signature) for u in signed_urls(url, "https"))


async def status_callback(request: Request, runtime: BridgeRuntime) -> Response:
    """Handle one status callback: 204 when taken, 403 unsigned, 400 malformed, 413 too big."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return PlainTextResponse("too large", 413)
    params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    signature = request.headers.get("x-twilio-signature", "")
    if not signature_valid(str(request.url), params, signature, runtime.settings):
        runtime.metrics.count("refused_status_callbacks")
        return PlainTextResponse("invalid signature", 403)
    try:
        callback = StatusCallback.model_validate(params)
    except ValidationError:
        return PlainTextResponse("CallSid and CallStatus are required", 400)
    if callback.CallStatus in FINAL_STATUSES:
        reason = f"call {callback.CallStatus}"
        ended = await runtime.end_anywhere(callback.CallSid, reason)
        log.info("status callback: call %s %s (%s)", callback.CallSid, callback.CallStatus,
                 "ended" if ended else "nothing to end")  # fmt: skip
    return Response(status_code=204)
