"""Request bodies read strictly: form fields as text only, JSON as one object of finite values.

Whatever a client sends, these answer with a `BadRequest` (400, one sentence saying what
is wrong) rather than letting odd input travel on: a file where a text field belongs, a
field sent twice, more fields than any form has, malformed multipart data; JSON that
does not parse, is not an object, holds ``NaN``/``Infinity`` or a number too large for
a float; text holding a lone surrogate (``"\\ud800"``: not Unicode, cannot be stored or
sent back). NUL characters are dropped from form text (no page has a use for them, and
PostgreSQL refuses to store them), so a respondent who pasted one can still save.

The size of a body is limited before this, by `valign.web.limits.BodyLimitMiddleware`.

Example:
    >>> has_lone_surrogate({"a": ["ok", "\\ud800"]}), has_lone_surrogate("ok ☺")
    (True, False)
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["BadRequest", "read_form", "read_json_object", "has_lone_surrogate", "openapi_form", "openapi_json", "MAX_FORM_FIELDS"]

MAX_FORM_FIELDS = 200  # a survey page has a few dozen; the chat page a handful


class BadRequest(HTTPException):
    """A malformed request body (400) and the sentence that says what is wrong.

    Example:
        >>> BadRequest("The request body is not valid JSON.").status_code
        400
    """

    def __init__(self, sentence: str) -> None:
        super().__init__(400, sentence)


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string, or any string inside lists and dicts, holds a UTF-16 surrogate
    on its own (which no UTF-8 text can carry)."""
    if isinstance(value, str):
        return not value.isascii() and any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    return False


def _named(name: str) -> str:
    """A client-sent field name, fit to quote in a message (or a neutral stand-in)."""
    return f"'{name}'" if len(name) <= 40 and name.isprintable() and not has_lone_surrogate(name) else "a field"


async def read_form(request: Request, *, max_fields: int = MAX_FORM_FIELDS) -> dict[str, str]:
    """The form's fields as text, each sent once; NUL characters removed.

    A body that is not a form (another content type, or none) gives no fields, so the
    caller's own checks (the CSRF token first) say what is missing.
    """
    from starlette.formparsers import MultiPartException

    try:
        # Files are refused below, by name; at most a few are taken before that, each
        # within the body limit, so that a stray file is named rather than counted.
        form = await request.form(max_files=4, max_fields=max_fields)
    except MultiPartException as e:  # outside an app, Starlette raises it unconverted
        raise BadRequest(f"The form could not be read: {e.message}") from None
    except HTTPException as e:
        if e.status_code != 400:
            raise
        raise BadRequest(f"The form could not be read: {e.detail}") from None
    try:
        fields: dict[str, str] = {}
        for name, value in form.multi_items():
            if not isinstance(value, str):
                raise BadRequest(f"The field {_named(name)} was sent as a file; this form takes text only.")
            if has_lone_surrogate(name) or has_lone_surrogate(value):
                raise BadRequest("The form holds text that is not valid Unicode (a lone surrogate); send it as UTF-8.")
            if name in fields:
                raise BadRequest(f"The field {_named(name)} was sent more than once; send each field once.")
            fields[name] = value.replace("\x00", "")
        return fields
    finally:
        await form.close()


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:20]} is too large")
    return number


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object whose numbers are all finite and whose text is valid Unicode."""
    body = await request.body()
    try:
        data = json.loads(body, parse_float=_finite, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BadRequest("The request body is not UTF-8 text; send JSON encoded as UTF-8.") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"The request body is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
    except RecursionError:
        raise BadRequest("The JSON is nested too deeply; send a flat object.") from None
    except ValueError as e:
        raise BadRequest(f"The request body is not JSON this server accepts: {e}.") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object, e.g. {\"n\": 10}.")
    if has_lone_surrogate(data):
        raise BadRequest("The JSON holds text that is not valid Unicode (a lone surrogate such as \\ud800); send real characters.")
    return data


# -- what the OpenAPI schema says of these bodies --------------------------------------------
# A route that reads its body by hand (so that it can check cookies first) has no body
# FastAPI can see; these describe it in the route's ``openapi_extra``, so the schema (and
# the fuzzer that reads it) knows the fields.


def _object(properties: dict[str, Any], required: list[str], additional: bool) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "additionalProperties": {"type": "string"} if additional else False}
    return {**schema, "required": required} if required else schema


def openapi_form(properties: dict[str, Any], required: list[str] | None = None, additional: bool = False) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads a form with `read_form` (URL-encoded or multipart).

    Example:
        >>> body = openapi_form({"csrf": {"type": "string"}}, required=["csrf"])["requestBody"]
        >>> sorted(body["content"]), body["content"]["multipart/form-data"]["schema"]["required"]
        (['application/x-www-form-urlencoded', 'multipart/form-data'], ['csrf'])
    """
    schema = _object(properties, required or [], additional)
    return {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}, "multipart/form-data": {"schema": schema}}}}


def openapi_json(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads a JSON object with `read_json_object` (or the same fields as a form).

    Example:
        >>> sorted(openapi_json({"n": {"type": "integer"}})["requestBody"]["content"])
        ['application/json', 'application/x-www-form-urlencoded']
    """
    schema = _object(properties, required or [], False)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}, "application/x-www-form-urlencoded": {"schema": schema}}}}
