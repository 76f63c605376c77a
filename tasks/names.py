"""Task names; the prefix before the last dot is what routes a task to its queue."""

SAVE_SESSIONS = "opus.persistence.save_sessions"
END_SESSION = "opus.archive.end_session"
ARCHIVE_SESSION = "opus.archive.archive_session"
ARCHIVE_SESSIONS = "opus.archive.archive_sessions"
SWEEP_EXPIRED_SESSIONS = "opus.maintenance.sweep_expired_sessions"
COMPUTE_STATISTICS = "opus.maintenance.compute_statistics"
