"""Functions the model may call: a registry, two example functions, and the call handler."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sessions.history import history_entry, new_entry_id

log = logging.getLogger(__name__)

Handler = Callable[..., Any | Awaitable[Any]]  # plain functions run in a worker thread


@dataclass(frozen=True)
class FunctionSpec:
    """A callable function: its name, description, JSON-schema parameters and handler."""

    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler

    def tool(self) -> dict[str, Any]:
        """The tool definition sent in `session.update`."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


@dataclass
class FunctionResult:
    """What a call returned (or the error it raised), as recorded in the session."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    result: Any
    ok: bool
    action: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The entry stored in `SessionState.function_calls` (a history entry: id first)."""
        return history_entry(
            new_entry_id("call"),
            call_id=self.call_id,
            name=self.name,
            arguments=self.arguments,
            result=self.result,
            ok=self.ok,
        )


@dataclass
class FunctionRegistry:
    """Functions by name."""

    functions: dict[str, FunctionSpec] = field(default_factory=dict)

    def register(self, spec: FunctionSpec) -> None:
        """Add (or replace) a function."""
        self.functions[spec.name] = spec

    def tools(self) -> list[dict[str, Any]]:
        """Tool definitions for the model."""
        return [spec.tool() for spec in self.functions.values()]

    async def call(
        self, call_id: str, name: str, arguments: str | dict[str, Any]
    ) -> FunctionResult:
        """Run a function; unknown names, bad arguments and exceptions become error results."""
        args = _parse_arguments(arguments)
        spec = self.functions.get(name)
        if args is None:
            return FunctionResult(
                call_id, name, {}, {"error": "arguments are not a JSON object"}, False
            )
        if spec is None:
            return FunctionResult(
                call_id, name, args, {"error": f"unknown function {name!r}"}, False
            )
        try:
            if inspect.iscoroutinefunction(spec.handler):
                value = await spec.handler(**args)
            else:  # a plain function may block (a database, an HTTP API): keep it off the loop
                value = await asyncio.to_thread(spec.handler, **args)
        except TypeError as exc:
            return FunctionResult(call_id, name, args, {"error": f"bad arguments: {exc}"}, False)
        except Exception as exc:  # noqa: BLE001 - a failing function is reported to the model
            log.warning("function %s failed: %s", name, exc)
            return FunctionResult(call_id, name, args, {"error": str(exc)}, False)
        action = value.pop("_action", None) if isinstance(value, dict) else None
        return FunctionResult(call_id, name, args, value, True, action)


def _parse_arguments(arguments: str | dict[str, Any]) -> dict[str, Any] | None:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def lookup_account(account_id: str) -> dict[str, Any]:
    """An example lookup: a deterministic account record for the id."""
    digits = "".join(c for c in str(account_id) if c.isdigit())
    if not digits:
        raise ValueError("account_id must contain digits")
    balance_cents = int(digits) * 137 % 1_000_000
    return {"account_id": digits, "status": "active", "balance": f"{balance_cents / 100:.2f}"}


def transfer_call(destination: str, reason: str = "") -> dict[str, Any]:
    """An example transfer: accepted, and the bridge asks the telephony side to transfer."""
    if not destination:
        raise ValueError("destination is required")
    return {
        "transferring": True,
        "destination": destination,
        "_action": {"type": "transfer", "destination": destination, "reason": reason},
    }


def default_registry() -> FunctionRegistry:
    """The two example functions."""
    registry = FunctionRegistry()
    registry.register(
        FunctionSpec(
            "lookup_account",
            "Look up a caller's account by its number.",
            {
                "type": "object",
                "properties": {"account_id": {"type": "string"}},
                "required": ["account_id"],
            },
            lookup_account,
        )
    )
    registry.register(
        FunctionSpec(
            "transfer_call",
            "Transfer the call to a human agent or another number.",
            {
                "type": "object",
                "properties": {"destination": {"type": "string"}, "reason": {"type": "string"}},
                "required": ["destination"],
            },
            transfer_call,
        )
    )
    return registry
