"""The JSON response class: orjson encoding (FastAPI's ORJSONResponse is deprecated).

A JSONResponse subclass, so that FastAPI documents response models in the OpenAPI document."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSON(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
