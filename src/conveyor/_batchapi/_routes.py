"""The HTTP side: ``/v1/files`` and ``/v1/batches`` on an aiohttp request.

Routes and shapes as https://platform.openai.com/docs/api-reference/files and
https://platform.openai.com/docs/api-reference/batch document them: upload (multipart
``file`` + ``purpose``), list (``{object: "list", data, first_id, last_id, has_more}``,
cursor ``after``, ``limit``), retrieve, content, delete (``{id, object, deleted}``);
batches create, list, retrieve, cancel. Unknown ids answer 404 with the API's error
body. Authentication is the caller's (each server has its own keys).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web

from ._errors import ApiError, json_object, not_found
from ._objects import FILE_PURPOSES

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._service import BatchService

__all__ = ["dispatch", "is_batch_path"]

_PATH = re.compile(r"\A/v1/(files|batches)(?:/([^/]+))?(?:/(content|cancel))?/?\Z")
_READ = 1 << 16


def is_batch_path(path: str) -> bool:
    return (
        path == "/v1/files"
        or path == "/v1/batches"
        or path.startswith(("/v1/files/", "/v1/batches/"))
    )


def _json(payload: Any, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=200, body=orjson.dumps(payload), headers=headers, content_type="application/json"
    )


def _method(request: web.BaseRequest, *allowed: str) -> None:
    if request.method not in allowed:
        raise ApiError(
            405,
            f"Method {request.method} is not allowed on {request.path}; "
            f"use {' or '.join(allowed)}.",
        )


def _int_query(request: web.BaseRequest, name: str, default: int, upper: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= upper:
        raise ApiError(
            400,
            f"Invalid '{name}': {raw!r}. It must be an integer from 1 to {upper}.",
            param=name,
            code="invalid_value",
        )
    return int(raw)


def _page(
    items: Sequence[Any], request: web.BaseRequest, *, default: int, upper: int, kind: str
) -> dict[str, Any]:
    """A cursor page: the items after ``after`` (an id), at most ``limit`` of them."""
    limit = _int_query(request, "limit", default, upper)
    after = request.query.get("after")
    start = 0
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise not_found(kind, after)
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return {
        "object": "list",
        "data": [item.to_api() for item in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": start + limit < len(items),
    }


async def _upload(request: web.BaseRequest, service: BatchService) -> dict[str, Any]:
    limit = service.limits.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + _READ:
        raise ApiError(
            413,
            f"The upload is {request.content_length:,} bytes, more than the {limit:,}-byte "
            "limit of this server; split it into smaller files.",
            param="file",
            code="file_too_large",
        )
    if not request.content_type.startswith("multipart/"):
        raise ApiError(
            400, "Upload a file as multipart/form-data with fields 'file' and 'purpose'."
        )
    reader = await request.multipart()
    purpose: str | None = None
    writer = None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read(decode=True)).decode("utf-8", "replace").strip()
            elif part.name == "file" and writer is None:
                name = part.filename or "upload"
                writer = service.store.new_file(filename=name, purpose="", limit=limit)
                while chunk := await part.read_chunk(_READ):
                    writer.write(chunk)
            else:
                await part.release()
        if purpose is None:
            raise ApiError(
                400,
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose not in FILE_PURPOSES:
            raise ApiError(
                400,
                f"{purpose!r} is not one of {list(FILE_PURPOSES)} - 'purpose'",
                param="purpose",
                code="invalid_value",
            )
        if writer is None:
            raise ApiError(
                400,
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        if purpose == "batch" and not writer.record.filename.endswith(".jsonl"):
            # The real answer to a batch upload that is not .jsonl (BerriAI/litellm#37527).
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        writer.record.purpose = purpose
        return writer.commit().to_api()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise


async def _create_batch(request: web.BaseRequest, service: BatchService) -> dict[str, Any]:
    body = json_object(await request.read())
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise ApiError(
                400,
                f"Missing required parameter: '{name}'.",
                param=name,
                code="missing_required_parameter",
            )
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        raise ApiError(
            400,
            "Invalid 'metadata': at most 16 string keys (64 characters) and string values "
            "(512 characters).",
            param="metadata",
            code="invalid_value",
        )
    batch = service.create(
        input_file_id=body["input_file_id"],
        endpoint=body["endpoint"],
        completion_window=body["completion_window"],
        metadata=metadata,
    )
    return batch.to_api()


async def dispatch(
    request: web.BaseRequest, service: BatchService, headers: dict[str, str]
) -> web.StreamResponse:
    """Answer one ``/v1/files*`` or ``/v1/batches*`` request; `ApiError` for errors."""
    match = _PATH.match(request.path)
    if match is None:
        raise ApiError(404, f"Invalid URL ({request.method} {request.path})")
    kind, object_id, action = match.groups()
    store = service.store
    if kind == "files":
        if object_id is None:
            _method(request, "GET", "POST")
            if request.method == "POST":
                return _json(await _upload(request, service), headers)
            # A copy: a batch being finalized (in a worker thread) may add files meanwhile.
            files = sorted(store.files.copy().values(), key=lambda f: f.created_at)
            if request.query.get("order", "desc") != "asc":
                files.reverse()
            if (purpose := request.query.get("purpose")) is not None:
                files = [f for f in files if f.purpose == purpose]
            return _json(_page(files, request, default=10_000, upper=10_000, kind="File"), headers)
        if action == "content":
            _method(request, "GET")
            path = store.content_path(object_id)
            if path is not None:
                return web.FileResponse(
                    path, headers={**headers, "Content-Type": "application/octet-stream"}
                )
            return web.Response(
                body=store.content(object_id),
                headers=headers,
                content_type="application/octet-stream",
            )
        if action is not None:
            raise ApiError(404, f"Invalid URL ({request.method} {request.path})")
        _method(request, "GET", "DELETE")
        if request.method == "DELETE":
            store.delete_file(object_id)
            return _json({"id": object_id, "object": "file", "deleted": True}, headers)
        return _json(store.file(object_id).to_api(), headers)
    if object_id is None:
        _method(request, "GET", "POST")
        if request.method == "POST":
            return _json(await _create_batch(request, service), headers)
        batches = list(reversed(store.batches.copy().values()))
        return _json(_page(batches, request, default=20, upper=100, kind="Batch"), headers)
    if action == "cancel":
        _method(request, "POST")
        return _json(service.cancel(object_id).to_api(), headers)
    if action is not None:
        raise ApiError(404, f"Invalid URL ({request.method} {request.path})")
    _method(request, "GET")
    return _json(store.batch(object_id).to_api(), headers)
