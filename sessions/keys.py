"""Every Redis key the project uses, and the rule for ids that may appear in one."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from sessions.errors import InvalidConversationId

DEFAULT_PREFIX = "opusagent:session:"
LOCK_KINDS = frozenset({"sweep", "archive"})

# Starts with a letter or digit, so no id can collide with the `_`-named keys below.
CONVERSATION_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")


def check_conversation_id(conversation_id: object) -> str:
    """Return the id if it is safe to put in a key; raise InvalidConversationId if not."""
    if not isinstance(conversation_id, str) or not CONVERSATION_ID_PATTERN.fullmatch(
        conversation_id
    ):
        raise InvalidConversationId(
            f"conversation id {str(conversation_id)[:80]!r} must be 1-128 characters of "
            "letters, digits and . _ : @ + -, starting with a letter or digit"
        )
    return conversation_id


@dataclass(frozen=True)
class KeySpace:
    """The key templates under one prefix, over `shards` groups of sessions.

    With one shard and no hash tags (`tagged=False`, the default for one Redis or Sentinel)
    the keys are `<prefix><conversation id>`, `<prefix>_idx:live`, ... With `tagged` (a
    Redis Cluster, or more than one shard) every key of a session and its shard's indexes
    and counters carry the shard's hash tag: `<prefix>{s3}<conversation id>`,
    `<prefix>{s3}_idx:live`, ..., so a script touches one hash slot, and the shards spread
    over the cluster's masters. A session's shard is the CRC-32 of its id, modulo `shards`.
    """

    prefix: str = DEFAULT_PREFIX
    shards: int = 1
    tagged: bool = False

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be at least 1")
        if self.shards > 1 and not self.tagged:
            object.__setattr__(self, "tagged", True)

    def shard_of(self, conversation_id: str) -> int:
        """The shard a conversation's keys live in."""
        if self.shards == 1:
            return 0
        return zlib.crc32(conversation_id.encode()) % self.shards

    def _base(self, shard: int) -> str:
        return f"{self.prefix}{{s{shard}}}" if self.tagged else self.prefix

    def session(self, conversation_id: str) -> str:
        """Hash holding one session's fields."""
        check_conversation_id(conversation_id)
        return self._base(self.shard_of(conversation_id)) + conversation_id

    def live_index(self, shard: int = 0) -> str:
        """Sorted set: a shard's live (not ended) ids scored by last activity (µs)."""
        return self._base(shard) + "_idx:live"

    def archive_index(self, shard: int = 0) -> str:
        """Sorted set: a shard's ended, not yet archived ids scored by end time (µs)."""
        return self._base(shard) + "_idx:archive"

    def status_counts(self, shard: int = 0) -> str:
        """Hash: number of a shard's stored sessions in each status."""
        return self._base(shard) + "_counts"

    def events(self, shard: int = 0) -> str:
        """Hash: a shard's monotonic event counters (resumes, archived, archive failures, ...)."""
        return self._base(shard) + "_events"

    def durations(self, shard: int = 0) -> str:
        """List: durations (s) of a shard's most recently archived calls, newest first."""
        return self._base(shard) + "_durations"

    @property
    def all_shards(self) -> range:
        """Every shard number."""
        return range(self.shards)

    @property
    def statistics(self) -> str:
        """String: the last computed statistics document (JSON)."""
        return self.prefix + "_stats"

    def lock(self, name: str) -> str:
        """String: a lock (`sweep`, or `archive:<conversation id>`), holding its owner's token."""
        kind, _, conversation_id = name.partition(":")
        if kind not in LOCK_KINDS or (conversation_id and kind != "archive"):
            raise ValueError(f"unknown lock {name!r}")
        if conversation_id:
            check_conversation_id(conversation_id)
        return self.prefix + "_lock:" + name

    def control(self, instance_id: str) -> str:
        """Pub/sub channel: requests to the bridge instance `instance_id` (hang up a call)."""
        return self.prefix + "_control:" + check_conversation_id(instance_id)

    def control_reply(self, token: str) -> str:
        """Pub/sub channel: one requester's answers from the bridges."""
        return self.control_reply_prefix + check_conversation_id(token)

    @property
    def control_reply_prefix(self) -> str:
        """What every reply channel starts with (a bridge answers on no other channel)."""
        return self.prefix + "_control_reply:"

    def script_keys(self, conversation_id: str) -> list[str]:
        """The KEYS list of the per-session scripts: session, and its shard's live index,
        archive index, status counts and event counters (one hash slot)."""
        shard = self.shard_of(conversation_id)
        return [
            self.session(conversation_id),
            self.live_index(shard),
            self.archive_index(shard),
            self.status_counts(shard),
            self.events(shard),
        ]
