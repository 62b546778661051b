"""Signing of privileged calls with the cluster secret (node-to-node 2PC steps, fault injection).

These calls arrive on the same port as client traffic, so each carries an HMAC of
its exact request bytes; a call without a valid one is refused.
"""

from __future__ import annotations

import hashlib
import hmac

AUTH_HEADER = "x-tidebank-auth"


def sign(secret: bytes | str, method: str, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, method.encode() + b"\0" + body, hashlib.sha256).hexdigest()


def signed(secret: bytes | str, method: str, request) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the signature of `request` for `method`."""
    return ((AUTH_HEADER, sign(secret, method, request.SerializeToString())),)


def verify(secret: bytes | str, method: str, body: bytes, presented: str) -> bool:
    return hmac.compare_digest(presented, sign(secret, method, body))
