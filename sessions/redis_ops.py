"""The Redis side of each storage operation, without I/O: script, keys, arguments, reply parsing.

`RedisSessionStorage` (async) and `SyncRedisStore` (sync) are thin shells that
send these calls; the rules live in the scripts, the layout in `KeySpace`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sessions.clock import from_us, now_us
from sessions.codec import ACTIVITY_FIELD, ARCHIVED_FIELD, Snapshot, decode_flat, decode_state
from sessions.keys import KeySpace, check_conversation_id
from sessions.redis_reads import Command
from sessions.state import SessionState
from sessions.storage import (
    EXPIRED_REASON,
    ClaimOutcome,
    ClaimResult,
    CreateResult,
    EndOutcome,
    ExpireResult,
    UpdateOutcome,
)

Arg = str | int
DURATIONS_KEPT = 10_000


@dataclass(frozen=True)
class ScriptCall:
    """One script invocation."""

    script: str
    keys: list[str]
    args: list[Arg]


@dataclass(frozen=True)
class Retention:
    """How long Redis keeps a session's key after its last write, by stage."""

    session_ttl_s: float = 3600
    margin_s: float = 900
    ended_s: float = 7 * 86_400
    archived_s: float = 3600

    @property
    def live_ms(self) -> int:
        """A safety net past the session TTL plus a sweep interval; the sweep acts first."""
        return int((self.session_ttl_s + self.margin_s) * 1000)

    @property
    def ended_ms(self) -> int:
        """Ended sessions wait this long for their archive."""
        return int(self.ended_s * 1000)

    @property
    def archived_ms(self) -> int:
        """Archived sessions stay this long so a late resume is told 'ended', not 'missing'."""
        return int(self.archived_s * 1000)


def _flatten(fields: Mapping[str, str]) -> list[Arg]:
    out: list[Arg] = []
    for name, value in fields.items():
        out.append(name)
        out.append(value)
    return out


def redact_url(url: str) -> str:
    """The URL with any password replaced by *** (each of a `;`-separated list, as kombu's
    `sentinel://a;sentinel://b`)."""
    if ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


class RedisOps:
    """Builds each operation's script call and parses its reply."""

    def __init__(self, keys: KeySpace, retention: Retention) -> None:
        self.keys = keys
        self.retention = retention

    def save(self, snap: Snapshot, now: int | None = None) -> ScriptCall:
        """Compare-and-set save of one snapshot."""
        args: list[Arg] = [
            snap.conversation_id,
            snap.epoch,
            snap.seq,
            snap.status.value,
            snap.last_activity_us,
            now or now_us(),
            self.retention.live_ms,
            self.retention.ended_ms,
        ]
        fields = {k: v for k, v in snap.fields.items() if k != ACTIVITY_FIELD}
        return ScriptCall(
            "save", self.keys.script_keys(snap.conversation_id), args + _flatten(fields)
        )

    def save_many(self, snaps: Sequence[Snapshot], now: int | None = None) -> list[ScriptCall]:
        """Compare-and-set saves of several snapshots: one script call per shard, in order
        within each shard; `split_outcomes` puts the replies back in the snapshots' order."""
        now = now or now_us()
        by_shard: dict[int, list[Snapshot]] = {}
        for snap in snaps:
            by_shard.setdefault(self.keys.shard_of(snap.conversation_id), []).append(snap)
        return [self._save_shard(shard, group, now) for shard, group in by_shard.items()]

    def _save_shard(self, shard: int, snaps: Sequence[Snapshot], now: int) -> ScriptCall:
        k = self.keys
        keys = [k.live_index(shard), k.archive_index(shard), k.status_counts(shard),
                k.events(shard)]  # fmt: skip
        args: list[Arg] = [now, self.retention.live_ms, self.retention.ended_ms]
        for snap in snaps:
            keys.append(k.session(snap.conversation_id))
            fields = (item for pair in snap.fields.items() if pair[0] != ACTIVITY_FIELD
                      for item in pair)  # fmt: skip
            args += [snap.conversation_id, snap.epoch, snap.seq, snap.status.value,
                     snap.last_activity_us, "\0".join(fields)]  # fmt: skip
        return ScriptCall("save_many", keys, args)

    def split_outcomes(
        self, snaps: Sequence[Snapshot], replies: Sequence[Sequence[Any]]
    ) -> list[int]:
        """The outcomes of `save_many`'s calls (one reply per call) in the snapshots' order."""
        order: dict[int, list[int]] = {}
        for index, snap in enumerate(snaps):
            order.setdefault(self.keys.shard_of(snap.conversation_id), []).append(index)
        outcomes = [0] * len(snaps)
        for indexes, reply in zip(order.values(), replies, strict=True):
            for index, outcome in zip(indexes, reply, strict=True):
                outcomes[index] = int(outcome)
        return outcomes

    def touch_load(self, conversation_id: str) -> ScriptCall:
        """Read a session, moving its activity to now unless it is already expired."""
        idle_us = int(self.retention.session_ttl_s * 1_000_000)
        args: list[Arg] = [conversation_id, now_us(), idle_us, self.retention.live_ms]
        shard = self.keys.shard_of(conversation_id)
        keys = [self.keys.session(conversation_id), self.keys.live_index(shard)]
        return ScriptCall("touch_load", keys, args)

    def claim(
        self, conversation_id: str, max_age_s: float, holder: str | None = None
    ) -> ScriptCall:
        """Atomic resume claim (recording the claiming instance as the holder, if given)."""
        args: list[Arg] = [
            conversation_id,
            now_us(),
            int(max_age_s * 1_000_000),
            self.retention.live_ms,
            json.dumps(holder) if holder else "",
        ]
        return ScriptCall("claim", self.keys.script_keys(conversation_id), args)

    def end(
        self, conversation_id: str, reason: str, expected_epoch: int | None = None
    ) -> ScriptCall:
        """Atomic end (only while the epoch is `expected_epoch`, if given)."""
        now = now_us()
        args: list[Arg] = [
            conversation_id,
            now,
            json.dumps(reason),
            json.dumps(from_us(now).isoformat()),
            self.retention.ended_ms,
            "" if expected_epoch is None else str(expected_epoch),
        ]
        return ScriptCall("end", self.keys.script_keys(conversation_id), args)

    def update(
        self, conversation_id: str, fields: Mapping[str, str], status: str | None
    ) -> ScriptCall:
        """Atomic field update."""
        args: list[Arg] = [conversation_id, now_us(), self.retention.live_ms, status or ""]
        return ScriptCall("update", self.keys.script_keys(conversation_id), args + _flatten(fields))

    def create(
        self, state: SessionState, fields: Mapping[str, str], replace: bool, max_live: int
    ) -> ScriptCall:
        """Create, fencing any replaced session with a higher epoch; refuse past `max_live`."""
        args: list[Arg] = [
            state.conversation_id,
            "1" if replace else "0",
            now_us(),
            self.retention.live_ms,
            state.status.value,
            fields[ACTIVITY_FIELD],
            self.shard_quota(max_live),
        ]
        return ScriptCall(
            "create", self.keys.script_keys(state.conversation_id), args + _flatten(fields)
        )

    def shard_quota(self, max_live: int) -> int:
        """The live sessions one shard may hold under a limit of `max_live` (0: no limit).

        The check is atomic within a shard's hash slot; across shards it cannot be, so on a
        sharded layout each shard holds at most its share, rounded up.
        """
        if max_live <= 0 or self.keys.shards == 1:
            return max_live
        return -(-max_live // self.keys.shards)

    def delete(self, conversation_id: str) -> ScriptCall:
        """Delete a session and its index entries."""
        return ScriptCall("delete", self.keys.script_keys(conversation_id), [conversation_id])

    def expire_sweep(self, max_age_s: float, limit: int) -> ExpireSweep:
        """A batch of the expiry sweep: the shards in turn, up to `limit` sessions."""
        return ExpireSweep(self, now_us() - int(max_age_s * 1_000_000), limit)

    def expire_candidates(self, shard: int, cutoff_us: int, limit: int) -> Command:
        """The read that picks up to `limit` of a shard's sessions idle since `cutoff_us`."""
        live = self.keys.live_index(shard)
        return ("ZRANGEBYSCORE", live, "-inf", cutoff_us, "LIMIT", 0, limit)

    def expire(self, shard: int, candidates: Sequence[str], cutoff_us: int) -> ScriptCall:
        """End the candidates still idle since `cutoff_us` (and not ended)."""
        now, k = now_us(), self.keys
        keys = [k.live_index(shard), k.archive_index(shard), k.status_counts(shard)]
        keys += [k.session(cid) for cid in candidates]
        ended_at = json.dumps(from_us(now).isoformat())
        args: list[Arg] = [cutoff_us, now, json.dumps(EXPIRED_REASON), ended_at,
                           self.retention.ended_ms]  # fmt: skip
        return ScriptCall("expire_batch", keys, args + list(candidates))

    def mark_archived(
        self, conversation_id: str, duration_s: float, counters: Mapping[str, int] | None = None
    ) -> ScriptCall:
        """Flag an ended session archived, count it, keep its duration, add `counters` once."""
        k, shard = self.keys, self.keys.shard_of(conversation_id)
        keys = [k.session(conversation_id), k.archive_index(shard), k.events(shard),
                k.durations(shard)]  # fmt: skip
        args: list[Arg] = [
            conversation_id,
            self.retention.archived_ms,
            repr(float(duration_s)),
            max(1, DURATIONS_KEPT // self.keys.shards),
        ]
        for name, amount in (counters or {}).items():
            args += [name, int(amount)]
        return ScriptCall("mark_archived", keys, args)

    @staticmethod
    def now_us() -> int:
        """The clock the operations use."""
        return now_us()

    # -- replies ---------------------------------------------------------------

    @staticmethod
    def parse_flat(conversation_id: str, flat: Sequence[str] | None) -> SessionState | None:
        """A decoded state from a script's name/text list, or None for an empty reply."""
        return decode_flat(conversation_id, flat) if flat else None

    @staticmethod
    def parse_state(conversation_id: str, fields: Mapping[str, str] | None) -> SessionState | None:
        """A decoded state, or None for an empty reply."""
        if not fields:
            return None
        return decode_state(conversation_id, fields)

    @staticmethod
    def parse_claim(conversation_id: str, reply: list[Any]) -> ClaimResult:
        """ClaimResult from the claim script's reply."""
        outcome = ClaimOutcome(reply[0])
        if outcome is not ClaimOutcome.OK:
            return ClaimResult(outcome)
        return ClaimResult(outcome, decode_flat(conversation_id, reply[1]))

    @staticmethod
    def parse_create(reply: list[str]) -> CreateResult:
        """CreateResult from the create script's reply."""
        if reply[0] == "created":
            return CreateResult(created=True, epoch=int(reply[1]))
        if reply[0] == "full":
            return CreateResult(created=False, full=True)
        return CreateResult(created=False, existing_status=reply[1], archived=reply[2] == "1")

    @staticmethod
    def parse_expire(reply: list[Any]) -> ExpireResult:
        """ExpireResult from the expiry script's reply."""
        return ExpireResult(ended=list(reply[0]), vanished=int(reply[1]))

    @staticmethod
    def parse_counts(raw: Mapping[str, str]) -> dict[str, int]:
        """Status counters, leaving out zeros."""
        return {k: int(v) for k, v in raw.items() if int(v) != 0}

    @staticmethod
    def is_archived(fields: Mapping[str, str]) -> bool:
        """Whether a stored field map carries the archived flag."""
        return ARCHIVED_FIELD in fields


class ExpireSweep:
    """One expiry batch over the shards: for each, read the candidates (`next_read`), then
    end the ones still idle with the script (`script`); `add` counts what it did."""

    def __init__(self, ops: RedisOps, cutoff_us: int, limit: int) -> None:
        self.ops, self.cutoff_us, self.limit = ops, cutoff_us, limit
        self.ended: list[str] = []
        self.vanished = 0
        self._shards = iter(ops.keys.all_shards)

    def next_read(self) -> tuple[int, Command] | None:
        """The next shard and the read of its candidates; None once done or full."""
        left = self.limit - len(self.ended) - self.vanished
        shard = next(self._shards, None) if left > 0 else None
        if shard is None:
            return None
        return shard, self.ops.expire_candidates(shard, self.cutoff_us, left)

    def script(self, shard: int, candidates: Sequence[str]) -> ScriptCall:
        return self.ops.expire(shard, candidates, self.cutoff_us)

    def add(self, reply: list[Any]) -> None:
        result = self.ops.parse_expire(reply)
        self.ended += result.ended
        self.vanished += result.vanished

    def result(self) -> ExpireResult:
        return ExpireResult(ended=self.ended, vanished=self.vanished)


def check_ids(ids: Iterable[str]) -> list[str]:
    """Validate a batch of conversation ids."""
    return [check_conversation_id(cid) for cid in ids]


END_OUTCOMES = {o.value: o for o in EndOutcome}
UPDATE_OUTCOMES = {o.value: o for o in UpdateOutcome}


def translate_error(exc: Exception, where: str, conversation_id: str | None) -> Exception:
    """The package error for a redis-py exception; `where` names the store (no credentials)."""
    from redis import exceptions as rex

    from sessions.errors import CorruptSession, StorageUnavailable

    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | rex.ReadOnlyError):
        return StorageUnavailable(f"{where} is unavailable: {exc}")
    if isinstance(exc, rex.ClusterDownError | rex.TryAgainError | rex.MasterDownError):
        return StorageUnavailable(f"{where} is unavailable: {exc}")
    if isinstance(exc, rex.ResponseError) and "WRONGTYPE" in str(exc) and conversation_id:
        return CorruptSession(conversation_id, "the key holds a value that is not a session hash")
    return exc
