"""Read a prediction request, whatever form it came in, into a :class:`PredictRequest`.

Accepted: multipart field ``image``; a raw ``image/*`` (or octet-stream) body; JSON with one of
``image_base64``, ``url`` or ``path``; GET with ``url=`` or ``path=``. Options ``top_k``, ``x``,
``y``, ``crop`` come from the query string, form fields or JSON keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math

import orjson
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..errors import (
    InvalidInput,
    MalformedRequest,
    ModelhostError,
    RequestTimeout,
    UnsupportedMedia,
)
from ..inputs.sources import RemoteUrl, ServerPath, Source, Upload
from ..predictor import Call, PredictRequest
from ..types import Region
from .errors import request_id_of

MAX_TOP_K = 1000
_OPTION_NAMES = ("top_k", "x", "y", "crop")
_RAW_TYPES = ("application/octet-stream",)


def deadline_for(request: Request, timeout: float) -> float:
    """The request's deadline on the loop clock; ``X-Request-Timeout`` may only shorten it."""
    header = request.headers.get("x-request-timeout")
    if header is not None:
        try:
            asked = float(header)
        except ValueError:
            raise MalformedRequest("X-Request-Timeout must be a number of seconds") from None
        if not math.isfinite(asked) or asked <= 0:
            raise MalformedRequest("X-Request-Timeout must be a positive number of seconds")
        timeout = min(timeout, asked)
    return asyncio.get_running_loop().time() + timeout


def is_bench(request: Request) -> bool:
    """``X-Modelhost-Bench: 1`` (sent by ``modelhost bench``): load-test traffic."""
    return request.headers.get("x-modelhost-bench", "") == "1"


def call_of(request: Request, timeout: float) -> Call:
    """The request's one deadline, id, client and bench mark, for the body read and the
    predictor."""
    return Call(deadline_for(request, timeout), request_id_of(request), client_of(request),
                bench=is_bench(request), peer=peer_of(request))


async def read_body(request: Request, deadline: float) -> bytes:
    """The whole body, within the deadline (408 for a client too slow to send it)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await request.body()
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None


def peer_of(request: Request) -> str | None:
    """The client's address (sticky version routing for clients without an API key)."""
    return request.client.host if request.client else None


def client_of(request: Request) -> str | None:
    """The authenticated API key's name (set by the gate's key policy), if any."""
    return getattr(request.state, "api_key_name", None)


async def read_predict_request(request: Request, deadline: float) -> PredictRequest:
    """Parse the body within the deadline; a client too slow to send it gets 408."""
    try:
        async with asyncio.timeout_at(deadline):
            source, options = await _read_body(request)
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
    except ClientDisconnect:
        raise MalformedRequest("the client closed the connection before the body ended") from None
    merged = {k: v for k, v in request.query_params.items() if k in _OPTION_NAMES}
    merged.update(options)
    return PredictRequest(source=source, region=_region(merged), top_k=_top_k(merged),
                          client=client_of(request), bench=is_bench(request),
                          peer=peer_of(request))


def query_source(request: Request) -> PredictRequest:
    """GET form: ``?url=`` or ``?path=`` plus options."""
    params = request.query_params
    url, path = params.get("url"), params.get("path")
    if (url is None) == (path is None):
        raise InvalidInput("give exactly one of url= or path=")
    source: Source = RemoteUrl(url) if url is not None else ServerPath(path or "")
    options = {k: v for k, v in params.items() if k in _OPTION_NAMES}
    return PredictRequest(source=source, region=_region(options), top_k=_top_k(options),
                          client=client_of(request), bench=is_bench(request),
                          peer=peer_of(request))


async def _read_body(request: Request) -> tuple[Source, dict]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return await _read_multipart(request)
    if media == "application/json":
        return _read_json(await request.body())
    if media.startswith("image/") or media in _RAW_TYPES:
        body = await request.body()
        if not body:
            raise InvalidInput("the request body is empty; send the image bytes")
        return Upload(body), {}
    if not media:
        raise UnsupportedMedia("set Content-Type: multipart/form-data, image/* or application/json")
    raise UnsupportedMedia(f"content type {media[:80]!r} is not accepted here")


async def _read_multipart(request: Request) -> tuple[Source, dict]:
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=64 * 1024)
    except HTTPException as exc:
        raise MalformedRequest(f"bad multipart body: {exc.detail}") from None
    except ModelhostError:
        raise
    except Exception:
        raise MalformedRequest("bad multipart body") from None
    try:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        upload = form.get("image")
        if isinstance(upload, UploadFile):
            data = await upload.read()
            if not data:
                raise InvalidInput("the uploaded file 'image' is empty")
            source: Source = Upload(data)
        elif "url" in fields:
            source = RemoteUrl(fields["url"])
        elif "path" in fields:
            source = ServerPath(fields["path"])
        else:
            raise InvalidInput("send the image as a multipart file field named 'image'")
    finally:
        await form.close()
    return source, {k: v for k, v in fields.items() if k in _OPTION_NAMES}


def _read_json(body: bytes) -> tuple[Source, dict]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("the JSON body must be an object")
    given = [k for k in ("image_base64", "url", "path") if k in data]
    if len(given) != 1:
        raise InvalidInput("give exactly one of image_base64, url or path")
    value = data[given[0]]
    if not isinstance(value, str):
        raise InvalidInput(f"{given[0]} must be a string")
    options = {k: data[k] for k in _OPTION_NAMES if k in data and data[k] is not None}
    if given[0] == "url":
        return RemoteUrl(value), options
    if given[0] == "path":
        return ServerPath(value), options
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("image_base64 is not valid base64") from None
    if not raw:
        raise InvalidInput("image_base64 is empty")
    return Upload(raw), options


def _number(options: dict, name: str) -> float | None:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, str) and not value.strip():  # `?top_k=`: a mistake, not the default
        raise InvalidInput(f"{name} is empty; give a number or leave it out")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidInput(f"{name} must be a finite number")
    return number


def _region(options: dict) -> Region:
    x, y, crop = (_number(options, n) for n in ("x", "y", "crop"))
    if (x is None) != (y is None):
        raise InvalidInput("give both x and y, or neither")
    if x is not None and y is not None and (x < 0 or y < 0):
        raise InvalidInput("x and y must not be negative")
    if crop is not None and not 0 < crop <= 1:
        raise InvalidInput("crop must be a fraction in (0, 1]")
    return Region(x, y, crop)


def _top_k(options: dict) -> int | None:
    value = _number(options, "top_k")
    if value is None:
        return None
    if value != int(value) or not 1 <= value <= MAX_TOP_K:
        raise InvalidInput(f"top_k must be a whole number from 1 to {MAX_TOP_K}")
    return int(value)
