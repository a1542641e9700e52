"""API keys and rate limits on the gRPC port, with the same keys and the same budget as HTTP.

A gRPC client sends its key as call metadata, ``authorization: Bearer <key>`` or
``x-api-key: <key>`` (tritonclient's ``headers=`` argument sets either). Without a valid key a
call ends with UNAUTHENTICATED; over the rate limit with RESOURCE_EXHAUSTED and a
``retry-after`` trailer. ServerLive and ServerReady stay open unless ``--protect-ops``, like
``/v2/health`` over HTTP, and are never rate limited. The limiter is the HTTP side's own object,
so one key's budget covers both ports; if its shared storage fails, calls are served, as on HTTP.
"""

from __future__ import annotations

import logging
import math
from contextvars import ContextVar

import grpc
from grpc import aio

from .access.keys import KeyRing, presented_secret
from .access.limits import Limiter, identity

log = logging.getLogger("modelhost.auth")
# The verified key's name for the call being served (the prediction log's ``client``): the
# servicer runs in the interceptor's task, so it reads what the guard set.
client_name: ContextVar[str | None] = ContextVar("client_name", default=None)
_OPS = frozenset({"/inference.GRPCInferenceService/ServerLive",
                  "/inference.GRPCInferenceService/ServerReady"})


class Guard(aio.ServerInterceptor):
    """Wraps each unary method's handler with the key check and the rate limit."""

    def __init__(self, keys: KeyRing | None, limiter: Limiter | None,
                 protect_ops: bool = False) -> None:
        self._keys = keys
        self._limiter = limiter
        self._protect_ops = protect_ops

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        is_ops = details.method in _OPS
        needs_key = self._keys is not None and (self._protect_ops or not is_ops)
        limited = self._limiter is not None and not is_ops
        if handler is None or not (needs_key or limited):
            return handler
        inner = handler.unary_unary  # every method of GRPCInferenceService is unary

        async def guarded(request, context: aio.ServicerContext):
            name = await self._authenticate(context) if needs_key else None
            if limited:
                await self._admit(context, name)
            client_name.set(name)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    async def _authenticate(self, context: aio.ServicerContext) -> str:
        """The key's name, or the call ends with UNAUTHENTICATED."""
        assert self._keys is not None
        secret = presented_secret((key, value) for key, value
                                  in context.invocation_metadata() or ()
                                  if isinstance(value, str))
        name = self._keys.verify(secret) if secret else None
        if name is None:
            log.warning("unauthorized request", extra={"fields": {
                "client": _address(context), "protocol": "grpc",
                "reason": "invalid key" if secret else "no key"}})
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "the API key is not valid" if secret else
                                "an API key is required: send 'authorization: Bearer <key>' "
                                "or 'x-api-key' metadata")
        return name

    async def _admit(self, context: aio.ServicerContext, name: str | None) -> None:
        """Count the call against its key's (else its address's) budget."""
        assert self._limiter is not None
        counted = await self._limiter.hit(identity(name, _address(context)))
        if counted is not None and not counted.allowed:
            retry_after = str(max(1, math.ceil(counted.reset)))
            context.set_trailing_metadata((("retry-after", retry_after),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many requests; slow down")


def _address(context: aio.ServicerContext) -> str:
    """The client's address without its port: ``ipv4:127.0.0.1:5123`` → ``127.0.0.1``."""
    peer = context.peer() or "unknown"
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or rest
    return rest.rpartition(":")[0] or peer
