"""`DirectLane`: script round trips on connections kept apart from redis-py's pool.

On loopback, redis-py's per-command path (the pool's lock and checkout, its health probe,
the retry wrapper, the observability hooks and pure-Python packing) costs about as much as
the round trip itself. `RedisSessionStorage` already bounds how many commands run at once
and how long each may take, so its scripts skip that path: each is packed by hiredis, sent
on a connection the lane holds, and its one reply read back.

A command that fails or is cancelled between its send and its reply drops its connection,
so a late reply can never be read as the answer to the next command. A connection the
server closed while it sat idle is reopened and the command sent once more: a script run
twice that way is harmless (saves, ends and updates are fenced by their own first run, a
claim moves the epoch twice), except a create, which reports that the session exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError, ResponseError


class DirectLane:
    """Connections made by `pool`'s own factory (so Sentinel connections still find the
    master) but kept out of it, used one command at a time. Callers bound the concurrency."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._idle: list[AbstractConnection] = []
        self._made: list[AbstractConnection] = []

    async def execute(self, command: Sequence[str | int]) -> Any:
        """Send one command and return its raw reply (no redis-py response callbacks).

        A connection that was open before this command and breaks on it is taken to have
        been closed by the server while idle (its `timeout`, a restart, a failover) before the
        loop noticed: the command is sent once more, on a new connection, as redis-py's own
        retry would.
        """
        packed = pack_command(tuple(command))  # type: ignore[arg-type]  # the stub: a 1-tuple
        conn = self._idle.pop() if self._idle else self._new()
        reused = conn.is_connected
        try:
            try:
                return await self._round_trip(conn, packed)
            except ConnectionError:
                if not reused:
                    raise
                return await self._round_trip(conn, packed)
        finally:
            self._idle.append(conn)

    @staticmethod
    async def _round_trip(conn: AbstractConnection, packed: bytes) -> Any:
        try:
            if conn.is_connected and await conn.can_read():
                await conn.disconnect()  # closed by the server, or holding bytes no one read
            if not conn.is_connected:  # its own connect: a Sentinel connection asks for the master
                await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_packed_command(packed, check_health=False)
            return await conn.read_response()
        except ResponseError:
            raise  # an error reply was read whole: the connection is clean
        except BaseException:
            await conn.disconnect(nowait=True)  # a reply may still come: never read it
            raise

    async def disconnect(self) -> None:
        """Close every connection, the pool's included (they reconnect on next use)."""
        for conn in self._made:
            await conn.disconnect()
        await self._pool.disconnect()

    def _new(self) -> AbstractConnection:
        conn: AbstractConnection = self._pool.make_connection()
        self._made.append(conn)
        return conn
