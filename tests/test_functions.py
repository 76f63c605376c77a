"""The function registry: results recorded, failures reported to the model, the loop never held."""

from __future__ import annotations

import asyncio
import threading

from bridges.call.functions import FunctionRegistry, FunctionSpec, default_registry


async def test_the_example_functions_answer_and_a_transfer_asks_the_telephony_side() -> None:
    registry = default_registry()
    looked_up = await registry.call("c1", "lookup_account", '{"account_id": "123"}')
    assert looked_up.ok and looked_up.result["account_id"] == "123" and looked_up.action is None
    moved = await registry.call("c2", "transfer_call", {"destination": "+15550199"})
    assert moved.ok and moved.action == {"type": "transfer", "destination": "+15550199",
                                         "reason": ""}  # fmt: skip
    assert "_action" not in moved.result and moved.record()["call_id"] == "c2"


async def test_unknown_functions_bad_arguments_and_exceptions_become_error_results() -> None:
    registry = default_registry()
    unknown = await registry.call("c1", "format_disk", "{}")
    not_json = await registry.call("c2", "lookup_account", "{not json")
    wrong_args = await registry.call("c3", "lookup_account", '{"acct": "1"}')
    raised = await registry.call("c4", "lookup_account", '{"account_id": "no digits"}')
    for result in (unknown, not_json, wrong_args, raised):
        assert not result.ok and "error" in result.result
    assert "unknown function" in unknown.result["error"]


async def test_a_blocking_function_does_not_hold_the_event_loop() -> None:
    release = threading.Event()
    registry = FunctionRegistry()
    registry.register(FunctionSpec("slow", "blocks", {"type": "object"},
                                   lambda: release.wait(5) and {"done": True}))  # fmt: skip
    call = asyncio.create_task(registry.call("c1", "slow", "{}"))
    await asyncio.sleep(0)  # the call has started and is blocked in its thread
    loop_ran = asyncio.Event()
    asyncio.get_running_loop().call_soon(loop_ran.set)
    await asyncio.wait_for(loop_ran.wait(), 1)
    assert not call.done()
    release.set()
    assert (await call).result == {"done": True}
