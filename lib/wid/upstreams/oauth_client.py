"""What the proxy's OAuth clients share (DigitalOcean's web flow, ATProto's confidential client)."""

from __future__ import annotations


class TokenEndpointError(Exception):
    """The token endpoint refused (RFC 6749 5.2): `error` is the OAuth error code (invalid_grant, invalid_client...)."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(f"{error}: {description}" if description else error)
        self.status = status
        self.error = error
        self.description = description
