"""Reading OpenAI's multipart forms (audio, image edits, videos): text fields, and uploads by field name."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from starlette.datastructures import UploadFile

from tiqo.core.errors import BadRequest, TiqoError

Fields = dict[str, str | list[str]]
N = TypeVar("N", int, float)


async def read_form(
    request: Request, *, max_files: int = 1, hint: str = "send a multipart/form-data upload"
) -> tuple[dict[str, list[UploadFile]], Fields]:
    """The form's uploads (by field name, ``name[]`` folded into ``name``) and its text fields."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise BadRequest(f"expected multipart/form-data, got {ctype or 'no content type'}", hint=hint)
    try:
        form = await request.form(max_files=max_files, max_fields=64)
    except TiqoError:
        raise
    except Exception as exc:  # starlette's MultiPartException and parser errors
        raise BadRequest(f"could not read the form: {exc}", hint=hint) from None
    uploads: dict[str, list[UploadFile]] = {}
    fields: Fields = {}
    for name, value in form.multi_items():
        key = name.removesuffix("[]")
        if isinstance(value, UploadFile):
            uploads.setdefault(key, []).append(value)
        elif name.endswith("[]") or key in fields:
            previous = fields.get(key, [])
            fields[key] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            fields[key] = value
    return uploads, fields


def one(fields: Fields, name: str) -> str | None:
    value = fields.get(name)
    if isinstance(value, list):
        return value[-1] if value else None
    return value


def number(fields: Fields, name: str, kind: type[N]) -> N | None:
    value = one(fields, name)
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {value!r}", param=name) from None


def flag(fields: Fields, name: str) -> bool | None:
    value = one(fields, name)
    return None if value is None else value.strip().lower() in ("1", "true", "yes", "on")
