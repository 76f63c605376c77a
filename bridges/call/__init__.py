"""One call between the telephony side and the model: the base bridge, its turns, transcript,
functions and VAD, and what a bridge process shares (runtime, hand-over, control, metrics)."""
