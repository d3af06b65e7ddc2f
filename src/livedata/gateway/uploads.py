"""Request bodies of routes that take a file: multipart, plain text or JSON, bounded."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from livedata.errors import InputError

M = TypeVar("M", bound=BaseModel)


async def upload_text(request: Request, limit: int, what: str) -> tuple[str | None, str] | None:
    """``(file name, text)`` of a multipart or plain-text upload; ``None`` for JSON.

    Multipart: exactly one file part, at most ``limit`` bytes (the parser stops at it).
    Text is UTF-8 (a BOM is dropped), else Windows-1252 as DBC editors write it.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("", "application/json"):
        return None
    if ctype == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4, max_part_size=limit) as form:
            files = [v for v in form.values() if isinstance(v, UploadFile)]
            if len(files) != 1:
                raise InputError(f"send one {what} file in the form ({len(files)} found)")
            data = await files[0].read(limit + 1)
            name = files[0].filename
    elif ctype.startswith("text/") or ctype == "application/octet-stream":
        data, name = await request.body(), None
    else:
        raise InputError(f"unsupported Content-Type {ctype!r}: send {what} as multipart or text")
    if len(data) > limit:
        raise InputError(f"the {what} file is larger than {limit // 1024} KiB")
    try:
        return name, data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return name, data.decode("cp1252", errors="replace")


async def json_body(request: Request, model: type[M]) -> M:
    """The JSON body of a route that also takes uploads, checked against ``model``."""
    try:
        return model.model_validate_json(await request.body() or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{where}: {first['msg']}" if where else first["msg"]) from None
