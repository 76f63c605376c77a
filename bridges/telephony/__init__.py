"""The telephony side: bounded, parsed peer messages, and the AudioCodes and Twilio bridges."""
