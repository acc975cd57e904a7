"""Who is calling: the tenant of a request's bearer token, for every route of the API service."""

from __future__ import annotations

from fastapi import HTTPException

from katas.sensors.tenancy import Tokens


def bearer_tenant(tokens: Tokens, authorization: str | None) -> str:
    """The tenant (or the operator) whose token the `Authorization: Bearer` header carries; 401 otherwise."""
    scheme, _, token = (authorization or "").partition(" ")
    tenant = tokens.tenant_of(token) if scheme.lower() == "bearer" and token else None
    if tenant is None:
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return tenant
