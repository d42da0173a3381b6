"""misarmail-webhooks: delivers MisarMail's webhooks from Postgres, signed and retried.

The receiver-side helper lives here so that customers can ``from engine import verify_signature``.
"""

from __future__ import annotations

from engine.signing import SignatureError, sign, verify_signature

__all__ = ["SignatureError", "sign", "verify_signature"]
