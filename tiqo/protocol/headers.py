"""Names in ``x-tiqo-user`` / ``x-tiqo-tier`` headers: UTF-8, percent-encoded where they are not plain ASCII.

HTTP header values are bytes; ASGI servers and Starlette read them as latin-1, so a raw UTF-8 ``josé`` would arrive as
``josÃ©``, miss its ``[users.NAME]`` table and get another tier. The client percent-encodes (``jos%C3%A9``); the
daemon reads the bytes as UTF-8, then percent-decodes, so raw UTF-8 works too. A literal ``%`` is sent as ``%25``.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from tiqo.core.errors import BadRequest

# printable ASCII stays as it is (ASCII names are sent unchanged); '%', control characters and non-ASCII are encoded
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def encode_name(name: str) -> str:
    """``name`` as a header value: ASCII as is, the rest percent-encoded UTF-8."""
    return quote(name, safe=_SAFE)


def decode_name(value: str, header: str) -> str:
    """A header value as Starlette gives it (latin-1 text of the raw bytes) back to the name it carries."""
    try:
        return unquote(value.encode("latin-1").decode("utf-8"), errors="strict")
    except UnicodeError:
        raise BadRequest(
            f"{header} is neither UTF-8 nor percent-encoded UTF-8",
            param=header,
            hint=f"percent-encode the name as UTF-8, e.g. `{header}: jos%C3%A9` for josé",
        ) from None


NAME_HEADERS = ("x-tiqo-user", "x-tiqo-tier")


def encode_name_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    """``headers`` with the names in x-tiqo-user / x-tiqo-tier encoded (``encode_name``); the rest as they are."""
    if not headers:
        return headers
    return {k: encode_name(v) if k.lower() in NAME_HEADERS else v for k, v in headers.items()}
