"""Version routing at run time: ``GET|PUT /api/models/{model}/routing``.

A change (split, default, sticky, shadow), a promotion or a rollback is checked as start-up
checks ``[versions]`` (422 ``invalid_parameter`` naming the key), stored in the prediction log's
database with the time and the API key's name (503 ``db_unavailable`` and nothing changed when
it cannot be), then made in one assignment (``Registry.reroute``), so no request fails during
it. Like every ``/api`` route it needs an API key when the server has keys (``--api-keys``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request

from ..errors import InvalidInput, MalformedRequest
from ..feedback.recorder import PredictionLog
from ..registry import Registry
from ..routing import PolicyError, as_json, changed, promoted
from ..types import VersionPolicy
from .parse import client_of
from .schemas import ERRORS

log = logging.getLogger("modelhost.routing")

_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object",
    "description": "Any of `default`, `split` (weights adding up to 100; `{}` for none), "
                   "`sticky`, `shadow` (`null` for none); or `{\"promote\": VERSION}`; or "
                   "`{\"rollback\": true}` (undo the last change).",
    "properties": {"default": {"type": "string"}, "split": {"type": "object"},
                   "sticky": {"type": "boolean"}, "shadow": {"type": ["string", "null"]},
                   "promote": {"type": "string"}, "rollback": {"type": "boolean"}}}}}}}


def router(registry: Registry, prediction_log: PredictionLog | None) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["models"], responses=ERRORS)
    one_at_a_time = asyncio.Lock()  # each change is made on the routing the last one left

    @api.get("/models/{model}/routing", summary="How requests are shared among the served "
             "versions, and the changes made at run time (newest first)")
    async def get_routing(model: str) -> dict:
        policy = registry.policy(model)
        history = await prediction_log.routing_history(model) if prediction_log else []
        return {"model": model, "versions": list(registry.versions(model)),
                "routing": as_json(policy), "changes": [_change_json(c) for c in history]}

    @api.put("/models/{model}/routing", summary="Change the split, default, stickiness or "
             "shadow; promote a version; or roll the last change back",
             openapi_extra=_BODY_DOC)
    async def put_routing(model: str, request: Request) -> dict:
        body = _body(await request.body())
        async with one_at_a_time:
            return await _change(model, body, client_of(request))

    async def _change(model: str, body: dict[str, Any], client: str | None) -> dict:
        current = registry.policy(model)
        action, policy = _asked(body, current, registry, model)
        change = {"created_at": datetime.now(UTC), "model": model, "action": action,
                  "routing": as_json(policy), "previous": as_json(current), "client": client}
        if prediction_log is not None:  # stored first: a change that is made is recorded
            await prediction_log.record_routing(change)
        if action == "rollback":
            registry.rollback(model)
        else:
            registry.reroute(model, policy)
        log.info("model %s routing: %s", model, action, extra={"fields": {
            "model": model, "action": action, "routing": change["routing"],
            "client": change["client"]}})
        return {"model": model, "action": action, "routing": change["routing"],
                "previous": change["previous"]}

    return api


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        raise MalformedRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput('send a JSON object, e.g. {"split": {"1": 90, "2": 10}}')
    return body


def _asked(body: dict[str, Any], current: VersionPolicy, registry: Registry,
           model: str) -> tuple[str, VersionPolicy]:
    """What the body asks for: (action, the routing from then on); 422 when it cannot be."""
    try:
        if "promote" in body or "rollback" in body:
            if len(body) != 1:
                raise PolicyError("promote and rollback go alone in the body")
            if "promote" in body:
                return "promote", promoted(current, body["promote"])
            earlier = registry.earlier(model)
            if body["rollback"] is not True or earlier is None:
                raise PolicyError("rollback: nothing to roll back (no change since start)"
                                  if earlier is None else 'rollback: send {"rollback": true}')
            return "rollback", earlier
        return "set", changed(current, body)
    except PolicyError as exc:
        raise InvalidInput(f"routing of {model!r}: {exc}") from None


def _change_json(row: dict) -> dict:
    return {"time": row["created_at"].isoformat(), "action": row["action"],
            "routing": row["routing"], "previous": row["previous"], "client": row["client"]}
