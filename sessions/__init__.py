"""opus-sessions: resumable, accountable voice-call sessions."""
