"""Bridges: telephony WebSockets on one side, the realtime model on the other (asyncio)."""
