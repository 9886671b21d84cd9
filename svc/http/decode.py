"""Typed requests: a JSON body, the query parameters or the path parameters into msgspec types, explicitly.

    async def create_note(request: Request) -> Response:
        note = await decode_body(request, NoteIn)    # 415, 400, 413 or 422, else a NoteIn
        ...

    page = decode_query(request, Page)               # 422, else a Page
    key = decode_path(request, NoteKey)              # 422, else a NoteKey

A 422 lists every invalid part at once (up to `svc.errors.MAX_ERRORS`), each with a `detail` in
plain words that never repeats what the client sent, and where it is: a JSON Pointer into the body
(`"pointer": "#/items/0/name"`, wire names, RFC 6901 escaping, as a URI fragment) or the parameter's
name (`"parameter": "limit"`). A member or parameter name the client chose (an unknown field, a key of
a `dict`) appears only there, cut to `MAX_NAME` characters.

The valid path costs one msgspec decode or conversion; the walk that finds every invalid part runs
only when that fails.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import re
import types
from collections.abc import Callable, Iterable, Mapping, MutableMapping, MutableSequence, MutableSet, Sequence
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, Literal, NewType, TypeVar, Union, cast, get_args, get_origin
from urllib.parse import quote

import msgspec
from starlette.datastructures import Headers
from starlette.requests import Request

from svc.errors import MAX_ERRORS, BadRequest, FieldError, UnprocessableContent, UnsupportedMediaType

__all__ = ["MAX_NAME", "decode_body", "decode_path", "decode_query"]

T = TypeVar("T")

#: Characters of a name the client chose (an unknown member, a `dict` key, an unknown parameter) kept in an error.
MAX_NAME = 64
# Struct nesting the walk follows member by member; anything deeper reports its first error only. Bounds the
# walk's Python recursion whatever the type (a tree of Structs) and the body (nested up to msgspec's own limit).
_MAX_DEPTH = 32

_JSON_DETAIL = "The request body must be JSON: Content-Type application/json or application/*+json, in UTF-8."
_ENCODING_DETAIL = "The request body must not be compressed or otherwise encoded (Content-Encoding)."
_SEQUENCES = (list, tuple, set, frozenset, Sequence, MutableSequence, AbstractSet, MutableSet)
_MAPPINGS = (dict, Mapping, MutableMapping)
_UNIONS = (Union, types.UnionType)


# --- Body ---------------------------------------------------------------------------------------------------------


async def decode_body(request: Request, type_: type[T]) -> T:
    """The request's JSON body as a `type_` (a msgspec Struct, or any type msgspec decodes).

    Raises, for the edge to render:
    - `UnsupportedMediaType` (415) unless the Content-Type is `application/json` or `application/*+json`
      (`+json` types such as `application/merge-patch+json` are JSON too), with no `charset` but UTF-8,
      and the body has no Content-Encoding (then with `Accept-Encoding: identity`, RFC 9110 section 15.5.16);
    - `BadRequest` (400) when the body is not JSON (empty, malformed, not UTF-8, nested too deeply);
    - `ContentTooLarge` (413) from reading a body over `MAX_BODY_BYTES` (the edge's limit);
    - `UnprocessableContent` (422) listing every invalid member: missing, of the wrong type, outside its
      `msgspec.Meta` constraints, unknown where the Struct has `forbid_unknown_fields`; inside nested Structs,
      lists, tuples, sets and dicts too. Unions of several object types, dataclasses and the like report their
      first error. A `__post_init__` that raises is reported as "Invalid value" (its message may quote the
      input): check rules across fields in the handler and raise `UnprocessableContent` there.
    """
    _require_json(request.headers)
    body = await request.body()
    try:
        try:
            return cast(T, _decoder(type_).decode(body))
        except msgspec.ValidationError as exc:
            first = exc
        except msgspec.DecodeError as exc:
            raise _malformed(exc, body) from None
        # Invalid: read it as plain JSON (a validation error can come before a syntax error) and walk it.
        try:
            data = _integral(msgspec.json.decode(body))
        except msgspec.DecodeError as exc:
            raise _malformed(exc, body) from None
        with contextlib.suppress(msgspec.ValidationError):
            return msgspec.convert(data, type_)  # valid once integral numbers are ints (325.0, 1e3)
        walk = _Walk()
        walk.check(data, type_, (), 0)
        if not walk.errors:  # what the walk does not look into: a __post_init__, a custom type
            detail, at = _describe(first, type_, got=True)
            walk.errors.append(FieldError(detail, pointer=_pointer(at)))
        raise UnprocessableContent(walk.errors)
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.") from None
    except UnicodeDecodeError:  # msgspec's error for a string that is not UTF-8
        raise BadRequest("The request body is not valid JSON: it is not UTF-8.") from None


def _integral(value: Any) -> Any:
    """Decoded JSON with every number that has no fractional part an int: JSON has one number type, and its
    integers include 325.0 and 1e3 (as JSON Schema's do), which msgspec's `int` refuses."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _require_json(headers: Headers) -> None:
    media, *parameters = headers.get("content-type", "").split(";")
    media = media.strip().lower()
    major, _, minor = media.partition("/")
    if major != "application" or not (minor == "json" or (len(minor) > 5 and minor.endswith("+json"))):
        raise UnsupportedMediaType(_JSON_DETAIL)
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        # RFC 8259 section 8.1: JSON between systems is UTF-8; a charset naming anything else cannot be honoured.
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(_JSON_DETAIL)
    if headers.get("content-encoding", "identity").strip().lower() != "identity":
        raise UnsupportedMediaType(_ENCODING_DETAIL, headers={"Accept-Encoding": "identity"})


# msgspec's syntax errors name a fixed reason and an offset, never the input: safe to pass on.
_SYNTAX = re.compile(r"JSON is malformed: ([\w ',:\[\]{}\"-]+) \(byte (\d+)\)")


def _malformed(exc: msgspec.DecodeError, body: bytes) -> BadRequest:
    if not body:
        return BadRequest("The request body is empty: a JSON value is required.")
    if match := _SYNTAX.fullmatch(str(exc)):
        return BadRequest(f"The request body is not valid JSON: {match[1]} at byte {match[2]}.")
    return BadRequest("The request body is not valid JSON: it ends too soon.")  # "Input data was truncated"


# One decoder per type, made on first use (each builds msgspec's plan for the type once).
_decoder: Callable[[Any], msgspec.json.Decoder[Any]] = functools.lru_cache(maxsize=256)(msgspec.json.Decoder)

Path = tuple[str | int, ...]


class _Walk:
    """Every reason plain JSON does not convert to a type, part by part, as `errors` (at most `MAX_ERRORS`)."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    @property
    def full(self) -> bool:
        return len(self.errors) >= MAX_ERRORS

    def check(self, value: Any, annotation: Any, at: Path, depth: int) -> None:
        if self.full:
            return
        inner, metas = _unwrap(annotation)
        origin, args = get_origin(inner) or inner, get_args(inner)
        if depth >= _MAX_DEPTH:  # deeper: its first error only, and the recursion bounded
            self.leaf(value, annotation, at)
        elif _is_struct(origin) and not origin.__struct_config__.array_like:
            self.struct(value, inner, at, depth)
        elif args and origin in _SEQUENCES and isinstance(value, list):
            self.array(value, inner, metas, at, depth)
        elif args and origin in _MAPPINGS and isinstance(value, dict):
            self.leaf(value, _annotated(dict[args[0], Any], metas), at)  # type: ignore[valid-type]  # keys, length
            for key, item in value.items():
                self.check(item, args[1], (*at, key[:MAX_NAME]), depth + 1)
        elif origin in _UNIONS and value is not None and not metas and len(members := _optional(args)) == 1:
            self.check(value, members[0], at, depth)  # `X | None`, `X | UnsetType`: as X
        else:
            self.leaf(value, annotation, at)

    def array(self, value: list[Any], inner: Any, metas: tuple[Any, ...], at: Path, depth: int) -> None:
        """A list, set or tuple: its own limits, then each item."""
        args = get_args(inner)
        if get_origin(inner) is tuple and (len(args) != 2 or args[1] is not Ellipsis):  # tuple[int, str]
            if self.leaf(value, _annotated(tuple[tuple(Any for _ in args)], metas), at):  # type: ignore[misc]
                for index, (item, item_type) in enumerate(zip(value, args, strict=True)):
                    self.check(item, item_type, (*at, index), depth + 1)
            return
        self.leaf(value, _annotated(list[Any], metas), at)  # its length limits, whatever the items
        for index, item in enumerate(value):
            self.check(item, args[0], (*at, index), depth + 1)

    def struct(self, value: Any, struct: Any, at: Path, depth: int) -> None:
        """Each field by its wire name: missing, invalid, or (with `forbid_unknown_fields`) not the Struct's."""
        if not isinstance(value, dict):
            self.leaf(value, struct, at)  # "Expected an object, got an array"
            return
        config = (get_origin(struct) or struct).__struct_config__
        known = set()
        for field in _fields(struct):
            name = field.encode_name
            known.add(name)
            if name in value:
                self.check(value[name], field.type, (*at, name), depth + 1)
            elif field.required:
                self.errors.append(FieldError("Required field is missing", pointer=_pointer((*at, name))))
        if config.tag_field is not None:
            known.add(config.tag_field)
            if config.tag_field in value:
                self.leaf(value[config.tag_field], Literal[config.tag], (*at, config.tag_field))
        if config.forbid_unknown_fields:
            for name in value:
                if self.full:
                    break
                if name not in known:
                    self.errors.append(FieldError("Unknown field", pointer=_pointer((*at, name[:MAX_NAME]))))

    def leaf(self, value: Any, annotation: Any, at: Path) -> bool:
        """Convert `value` to `annotation` as a whole; on failure note its first error and answer False."""
        try:
            msgspec.convert(value, annotation)
        except msgspec.ValidationError as exc:
            detail, where = _describe(exc, annotation, got=True)
            self.errors.append(FieldError(detail, pointer=_pointer((*at, *where))))
            return False
        return True


def _pointer(at: Iterable[str | int]) -> str:
    """An RFC 6901 JSON Pointer in its URI fragment form (section 6): `#/items/0/name`."""
    return "#" + "".join(
        "/" + quote(str(part).replace("~", "~0").replace("/", "~1"), safe="!$&'()*+,;=:@?~") for part in at
    )


# --- Query and path parameters ------------------------------------------------------------------------------------


def decode_query(request: Request, type_: type[T]) -> T:
    """The query parameters as a `type_` (a msgspec Struct of scalars and of lists, tuples or sets of them).

    Parameters are named by the fields' wire names and converted from their text (`"20"` to 20, `"true"` to
    True, as `msgspec.convert(strict=False)` does); a list, tuple or set field takes every occurrence
    (`?tag=a&tag=b`), any other field exactly one. Missing fields take their defaults; parameters the Struct
    does not name are ignored unless it has `forbid_unknown_fields`. Raises `UnprocessableContent` (422) with
    one entry per invalid parameter (`"parameter": "limit"`): missing, repeated, unknown, or not convertible.
    """
    params = request.query_params
    data: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for field in _fields(type_):
        name = field.encode_name
        values = params.getlist(name)
        if not values:
            continue
        if _takes_many(field.type):
            data[name] = values
        elif len(values) == 1:
            data[name] = values[0]
        else:
            problems[name] = f"Expected one value, got {len(values)}"
    if type_.__struct_config__.forbid_unknown_fields:  # type: ignore[attr-defined]
        names = {field.encode_name for field in _fields(type_)}
        for name in params:
            if name not in names:
                problems[name[:MAX_NAME]] = "Unknown parameter"
    return _parameters(type_, data, problems)


def decode_path(request: Request, type_: type[T]) -> T:
    """The path parameters (`request.path_params`, already converted by the route's convertors) as a `type_`
    (a msgspec Struct), converted as `decode_query` converts; parameters the Struct does not name are ignored.

    Raises `UnprocessableContent` (422) with one entry per invalid parameter. A required field the route's path
    does not declare is a mistake in the service, not in the request: `LookupError` (a 500).
    """
    params = request.path_params
    data: dict[str, Any] = {}
    for field in _fields(type_):
        if field.encode_name in params:
            data[field.encode_name] = params[field.encode_name]
        elif field.required:
            raise LookupError(f"{type_.__qualname__}.{field.name}: the route's path has no {field.encode_name!r}")
    return _parameters(type_, data, {})


def _parameters(type_: type[T], data: dict[str, Any], problems: dict[str, str]) -> T:
    """`data` (wire name to text or texts) as a `type_`; else `UnprocessableContent` with `problems` (parameter
    to detail, found already) and every other field that is missing or does not convert, in the fields' order."""
    whole: msgspec.ValidationError | None = None
    if not problems:
        try:
            return msgspec.convert(data, type_, strict=False)
        except msgspec.ValidationError as exc:
            whole = exc
    errors: list[FieldError] = []
    for field in _fields(type_):
        name = field.encode_name
        detail = problems.pop(name, None)
        if detail is None and name in data:
            try:
                msgspec.convert(data[name], field.type, strict=False)
            except msgspec.ValidationError as exc:
                detail = _describe(exc, field.type, got=False)[0]
        elif detail is None and field.required:
            detail = "Required parameter is missing"
        if detail is not None:
            errors.append(FieldError(detail, parameter=name))
    errors += [FieldError(detail, parameter=name) for name, detail in problems.items()]  # unknown parameters
    if not errors and whole is not None:  # only the Struct as a whole failed (a __post_init__)
        errors.append(FieldError(_describe(whole, type_, got=False)[0]))
    raise UnprocessableContent(errors)


@functools.lru_cache(maxsize=1024)
def _takes_many(annotation: Any) -> bool:
    inner, _ = _unwrap(annotation)
    if get_origin(inner) in _UNIONS:
        return any(_takes_many(member) for member in get_args(inner))
    return get_origin(inner) in _SEQUENCES


# --- Types --------------------------------------------------------------------------------------------------------


# A Struct's fields (a `TypeError` for anything else); cached: msgspec resolves the annotations on each call.
_fields: Callable[[Any], tuple[msgspec.structs.FieldInfo, ...]] = functools.lru_cache(maxsize=256)(
    msgspec.structs.fields
)


def _is_struct(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, msgspec.Struct)


def _unwrap(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """`annotation` without `Annotated` and `NewType`, and the `Annotated` metadata (the `msgspec.Meta`s)."""
    metas: tuple[Any, ...] = ()
    while True:
        if get_origin(annotation) is Annotated:
            annotation, *more = get_args(annotation)
            metas = (*metas, *more)
        elif isinstance(annotation, NewType):
            annotation = annotation.__supertype__
        else:
            return annotation, metas


def _optional(members: tuple[Any, ...]) -> list[Any]:
    """A union's members but None and `msgspec.UnsetType` (never in JSON input)."""
    return [member for member in members if member not in (types.NoneType, msgspec.UnsetType)]


def _annotated(annotation: Any, metas: tuple[Any, ...]) -> Any:
    return Annotated[(annotation, *metas)] if metas else annotation


# --- Messages -----------------------------------------------------------------------------------------------------

# msgspec's words for JSON types, in plain words.
_NOUNS = {
    "int": "an integer",
    "float": "a number",
    "decimal": "a number",
    "str": "a string",
    "bool": "a boolean",
    "null": "null",
    "array": "an array",
    "object": "an object",
    "bytes": "a base64-encoded string",
    "datetime": "an RFC 3339 date-time",
    "date": "an RFC 3339 date",
    "time": "an RFC 3339 time",
    "duration": "an ISO 8601 duration",
    "uuid": "a UUID",
}
_UNITS = {"str": "characters", "bytes": "bytes", "array": "items", "object": "members"}
_COMPARISONS = {
    ">=": "greater than or equal to",
    ">": "greater than",
    "<=": "less than or equal to",
    "<": "less than",
    "that's a multiple of": "that is a multiple of",
}
_FIXED = {
    "Invalid RFC3339 encoded datetime": "Expected an RFC 3339 date-time",
    "Invalid RFC3339 encoded date": "Expected an RFC 3339 date",
    "Invalid RFC3339 encoded time": "Expected an RFC 3339 time",
    "Invalid ISO8601 duration": "Expected an ISO 8601 duration",
    "Only units 'D', 'H', 'M', and 'S' are supported when parsing ISO8601 durations": "Expected an ISO 8601 "
    "duration in days, hours, minutes and seconds",
    "Duration is out of range": "The duration is out of range",
    "Invalid UUID": "Expected a UUID",
    "Invalid base64 encoded string": "Expected a base64-encoded string",
    "Invalid decimal string": "Expected a decimal number",
    "Invalid epoch timestamp": "Expected a valid timestamp",
    "Integer value out of range": "The number is out of range",
    "Number out of range": "The number is out of range",
}
_TYPE = re.compile(r"Expected `([\w |]+)`, got `([\w |]+)`")
_LENGTH = re.compile(r"Expected `(str|bytes|array|object)` of length (<=|>=) (\d+)")
_BOUND = re.compile(r"Expected `(int|float)` (>=|>|<=|<|that's a multiple of) ([\w.+-]+)")
_PATTERN = re.compile(r"Expected `str` matching regex (.+)")
_TIMEZONE = re.compile(r"Expected `(datetime|time)` with (a|no) timezone component")
_ARRAY = re.compile(r"Expected `array` of (at least |at most |)length (\d+ to \d+|\d+)(?:, got \d+)?")
_CHOICE = re.compile(r"Invalid (?:enum )?value .*", re.DOTALL)
_MISSING = re.compile(r"Object missing required field `(.*)`", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`", re.DOTALL)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _describe(exc: msgspec.ValidationError, annotation: Any, *, got: bool) -> tuple[str, Path]:
    """msgspec's error in plain words that never quote the input, and the path below `annotation` it names.

    Only messages recognised here are reworded (from their fixed parts and the type's own limits); anything
    else, such as a `__post_init__`'s message, is "Invalid value". `got` adds the type that came instead.
    """
    message, _, where = str(exc).rpartition(" - at `")
    if not message:  # at the top: no location
        message, where = where, ""
    at = _steps(where.rstrip("`"))
    if message in _FIXED:
        return _FIXED[message], at
    if match := _TYPE.fullmatch(message):
        expected, actual = _nouns(match[1]), _nouns(match[2])
        if expected is None:
            return "Invalid value", at
        return (f"Expected {expected}, got {actual}" if got and actual else f"Expected {expected}"), at
    if match := _LENGTH.fullmatch(message):
        limit = "at most" if match[2] == "<=" else "at least"
        unit = _UNITS[match[1]] if match[3] != "1" else _UNITS[match[1]][:-1]  # "1 character"
        return f"Expected {_NOUNS[match[1]]} of {limit} {match[3]} {unit}", at
    if match := _BOUND.fullmatch(message):
        return f"Expected {_NOUNS[match[1]]} {_COMPARISONS[match[2]]} {match[3]}", at
    if match := _PATTERN.fullmatch(message):
        return f"Expected a string matching the regular expression {match[1]}", at
    if match := _TIMEZONE.fullmatch(message):
        which = "with" if match[2] == "a" else "without"
        return f"Expected {_NOUNS[match[1]]} {which} a time zone", at
    if match := _ARRAY.fullmatch(message):
        return f"Expected an array of {match[1]}{match[2]} item{'' if match[2] == '1' else 's'}", at
    if _CHOICE.fullmatch(message):  # the value may be the client's: say what is allowed instead
        return (_choices(annotation) if not at else "Expected one of the allowed values"), at
    if match := _MISSING.fullmatch(message):  # the name is the type's own wire name
        return "Required field is missing", (*at, match[1])
    if match := _UNKNOWN.fullmatch(message):
        return "Unknown field", (*at, match[1][:MAX_NAME])
    return "Invalid value", at


def _nouns(names: str) -> str | None:
    words = [_NOUNS.get(name) for name in names.split(" | ")]
    return None if None in words else " or ".join(cast(list[str], words))


def _steps(where: str) -> Path:
    """`$.items[0].name` as `("items", 0, "name")`, up to the first step it cannot read (`[...]`: a dict's key)."""
    steps: list[str | int] = []
    position = 1
    while match := _STEP.match(where, position):
        steps.append(match[1] if match[1] is not None else int(match[2]))
        position = match.end()
    return tuple(steps)


def _choices(annotation: Any) -> str:
    """What a Literal or an Enum allows (the type's own values, never the input's)."""
    inner, _ = _unwrap(annotation)
    values: list[Any] = []
    if get_origin(inner) is Literal:
        values = list(get_args(inner))
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        values = [member.value for member in inner]
    if not values:
        return "Expected one of the allowed values"
    return "Expected one of: " + ", ".join(msgspec.json.encode(value).decode() for value in values)
