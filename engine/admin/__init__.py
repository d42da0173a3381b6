"""The admin HTTP server: health, metrics and the ``/v1`` API described by ``openapi.json``."""
