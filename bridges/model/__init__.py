"""The model side: the OpenAI Realtime GA client, its session and event shapes, history replay."""

from bridges.model.client import RealtimeClient
from bridges.model.config import RealtimeConfig, session_update_event
from bridges.model.history import history_items

__all__ = ["RealtimeClient", "RealtimeConfig", "history_items", "session_update_event"]
