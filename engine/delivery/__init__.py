"""The delivery stage: wake-ups (listener), claiming (dispatcher), one actor per endpoint, the
HTTP attempt, and the result writer that records every attempt."""
