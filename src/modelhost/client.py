"""Python clients for modelhost's native API: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio), both on httpx.

    >>> with modelhost.Client("http://127.0.0.1:8000") as client:
    ...     best = client.predict("dog.jpg", model="cats_dogs").labels[0]

Failures raise the server's own error classes (:mod:`modelhost.errors`), so ``except
modelhost.errors.NotFound`` works the same in a client and in the server; each carries the
server's ``code``, HTTP ``status``, ``request_id`` and, for 429/503, ``retry_after``. Network
failures are httpx's own exceptions.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from .errors import ModelhostError, from_code
from .types import Label, Prediction, Timings

Image = str | os.PathLike | bytes | BinaryIO  # a path, an http(s) URL, bytes or a file object
_DEFAULT_URL = "http://127.0.0.1:8000"


def _options(top_k: int | None, x: float | None, y: float | None,
             crop: float | None) -> dict[str, Any]:
    given = {"top_k": top_k, "x": x, "y": y, "crop": crop}
    return {k: v for k, v in given.items() if v is not None}


def _request(image: Image, options: dict[str, Any]) -> dict[str, Any]:
    """httpx arguments for one image: JSON for a URL, a multipart upload for anything else."""
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        return {"json": {"url": image, **options}}
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return {"files": {"image": (path.name, path.read_bytes())}, "params": options}
    if isinstance(image, bytes | bytearray | memoryview):
        return {"files": {"image": ("image", bytes(image))}, "params": options}
    if isinstance(image, io.IOBase) or hasattr(image, "read"):
        return {"files": {"image": ("image", image.read())}, "params": options}
    raise TypeError(f"cannot send a {type(image).__name__} as an image; give a path, a URL, "
                    "bytes or a binary file")


def _prediction(body: dict) -> Prediction:
    timings = Timings(**{k: float(v) for k, v in body.get("timings_ms", {}).items()
                         if k in Timings.__dataclass_fields__})
    labels = [Label(p["label"], int(p["index"]), float(p["score"]))
              for p in body["predictions"]]
    return Prediction(body["id"], body["model"], body["version"], labels, timings)


def _checked(response: httpx.Response) -> Any:
    """The JSON body of a success, or the server's error raised as its ModelhostError."""
    if response.is_success:
        return response.json()
    try:
        detail = response.json().get("error")
    except ValueError:
        detail = None
    if not isinstance(detail, dict):
        detail = {"code": "", "message": detail or response.reason_phrase}
    raise _error_from(response, detail)


def _error_from(response: httpx.Response, detail: dict) -> ModelhostError:
    error = from_code(str(detail.get("code", "")), str(detail.get("message", "")))
    error.status = response.status_code
    error.request_id = detail.get("request_id") or response.headers.get("x-request-id")
    retry = response.headers.get("retry-after")
    error.retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    return error


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _feedback_body(label: str | None, correct: bool | None) -> dict[str, Any]:
    if label is None and correct is None:
        raise ValueError("give label= or correct=")
    return {k: v for k, v in (("label", label), ("correct", correct)) if v is not None}


class Client:
    """A blocking client; thread-safe, reuses connections. Use it as a context manager or call
    :meth:`close`."""

    def __init__(self, url: str = _DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float = 30.0, **httpx_options: Any) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=_headers(api_key),
                                  **httpx_options)

    def predict(self, image: Image, model: str, *, top_k: int | None = None,
                x: float | None = None, y: float | None = None,
                crop: float | None = None) -> Prediction:
        """Classify one image; ``x``/``y`` (pixels) and ``crop`` (fraction) pick a region."""
        response = self._http.post(f"/api/models/{model}/predict",
                                   **_request(image, _options(top_k, x, y, crop)))
        return _prediction(_checked(response))

    def predict_many(self, images: Iterable[Image], model: str, *, concurrency: int = 8,
                     return_exceptions: bool = False, **options: Any
                     ) -> list[Prediction | ModelhostError]:
        """Classify many images with up to ``concurrency`` requests in flight; results in
        input order. A failure raises, or is returned in its place with
        ``return_exceptions``."""
        def one(image: Image) -> Prediction | ModelhostError:
            try:
                return self.predict(image, model, **options)
            except ModelhostError as exc:
                if return_exceptions:
                    return exc
                raise

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            return list(pool.map(one, images))

    def models(self) -> list[dict[str, Any]]:
        """The served models as ``GET /api/models`` describes them."""
        return _checked(self._http.get("/api/models"))["models"]

    def model(self, name: str) -> dict[str, Any]:
        """One model's metadata, labels and preprocessing."""
        return _checked(self._http.get(f"/api/models/{name}"))

    def feedback(self, prediction_id: str, label: str | None = None, *,
                 correct: bool | None = None) -> dict[str, Any]:
        """Tell the server which label was right for a prediction (or only whether its top-1
        was)."""
        return _checked(self._http.post(f"/api/predictions/{prediction_id}/feedback",
                                        json=_feedback_body(label, correct)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient:
    """The asyncio client; same methods as :class:`Client`, awaited."""

    def __init__(self, url: str = _DEFAULT_URL, api_key: str | None = None, *,
                 timeout: float = 30.0, **httpx_options: Any) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout,
                                       headers=_headers(api_key), **httpx_options)

    async def predict(self, image: Image, model: str, *, top_k: int | None = None,
                      x: float | None = None, y: float | None = None,
                      crop: float | None = None) -> Prediction:
        arguments = await asyncio.to_thread(_request, image, _options(top_k, x, y, crop))
        response = await self._http.post(f"/api/models/{model}/predict", **arguments)
        return _prediction(_checked(response))

    async def predict_many(self, images: Sequence[Image], model: str, *, concurrency: int = 8,
                           return_exceptions: bool = False, **options: Any
                           ) -> list[Prediction | ModelhostError]:
        limit = asyncio.Semaphore(max(1, concurrency))

        async def one(image: Image) -> Prediction:
            async with limit:
                return await self.predict(image, model, **options)

        results = await asyncio.gather(*(one(i) for i in images),
                                       return_exceptions=return_exceptions)
        answers: list[Prediction | ModelhostError] = []
        for result in results:
            if not isinstance(result, Prediction | ModelhostError):
                raise result
            answers.append(result)
        return answers

    async def models(self) -> list[dict[str, Any]]:
        return _checked(await self._http.get("/api/models"))["models"]

    async def model(self, name: str) -> dict[str, Any]:
        return _checked(await self._http.get(f"/api/models/{name}"))

    async def feedback(self, prediction_id: str, label: str | None = None, *,
                       correct: bool | None = None) -> dict[str, Any]:
        return _checked(await self._http.post(f"/api/predictions/{prediction_id}/feedback",
                                              json=_feedback_body(label, correct)))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
