"""Recognising and hiding secrets that are not API keys: auth headers, passwords in URLs, webhook tokens.

Used where such values could leak: the command line (`tiqo providers add -H`), `tiqo config show`, the systemd unit.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
# Header names whose value is a credential: Authorization, Proxy-Authorization, x-api-key, api-key, x-goog-api-key,
# Ocp-Apim-Subscription-Key, X-Auth-Token, Cookie, ...
_SECRET_NAME = re.compile(r"auth|key|token|secret|passw|cookie|session|signature|credential", re.IGNORECASE)
# Environment variables that hold one: FOO_API_KEY, FOO_TOKEN, FOO_PASSWORD (not TIQO_KEY_STRATEGY)
_SECRET_VAR = re.compile(r"(?:^|_)(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
# scheme://user:password@ inside any text
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/:@]*:)([^\s/@]+)(@)", re.IGNORECASE)
# "Authorization: Bearer x", "x-api-key=x" inside any text (a command line, say): the value, with its auth scheme
_HEADER_VALUE = re.compile(
    r"(\b[\w-]*(?:auth|key|token|secret|passw|cookie|session|signature|credential)[\w-]*\s*[:=]\s*)"
    r"((?:(?:Bearer|Basic|Token|Bot|Digest)\s+)?[^\s'\"]+)",
    re.IGNORECASE,
)


def is_secret_header(name: str) -> bool:
    """True for a header name that usually carries a credential."""
    return bool(_SECRET_NAME.search(name))


def redact_url(url: str) -> str:
    """A URL that may carry a secret, shown safely: the password, and any path or query (webhook tokens live there)
    are hidden; a short numeric path (a Redis database number) stays. Something that is not a URL is hidden whole."""
    text = url.strip()
    if not text:
        return text
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return HIDDEN
    if not parts.scheme:
        return HIDDEN
    if not parts.netloc:  # unix:///run/redis.sock: a path, no password
        return f"{parts.scheme}://{parts.path}" + ("?" + HIDDEN if parts.query else "")
    netloc = ("[" + host + "]" if ":" in host else host) + (f":{port}" if port else "")
    if parts.username is not None or parts.password is not None:
        netloc = f"{parts.username or ''}{':' + HIDDEN if parts.password is not None else ''}@{netloc}"
    path = parts.path if re.fullmatch(r"/?\d{0,3}", parts.path) else "/" + HIDDEN
    return urlunsplit((parts.scheme, netloc, path, HIDDEN if parts.query else "", ""))


def scrub(text: str) -> str:
    """``text`` with passwords in URLs and the values of credential headers hidden."""
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + HIDDEN + m.group(3), text)
    return _HEADER_VALUE.sub(lambda m: m.group(1) + HIDDEN, text)


def holds_secret(name: str, value: str) -> bool:
    """Whether an environment variable ``name=value`` should be kept out of files others may read."""
    return bool(_SECRET_VAR.search(name)) or scrub(value) != value
