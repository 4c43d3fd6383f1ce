"""What every params section shares: the strict frozen base model, reading a params file,
one-line errors naming the file and the dotted key, and loading only the sections a caller
reads.

Sections are named after the stages that read them (``ingest``, ``convert-dicom``, ...);
hyphenated section names are aliases of snake_case attributes (``params.convert_dicom``).
Each section's schema lives in its own module of this package, so that a stage's import
closure, and so its DVC dependencies, holds the schemas of the sections it reads and no
others: changing the predict section's schema re-runs predict alone.

Loading validates every key of the sections loaded: an unknown or mistyped key, or a value
of the wrong type, raises :class:`ConfigError` naming the params file and the dotted key as
spelt in the file (``params.yaml: train-per-condition.training.epochs: expected an integer,
got 'five'``), so a typo never silently falls back to a default. Keys a file leaves out take
the defaults. Validation is strict: no string is read as a number, no number as a boolean.
A top-level key that names no section is refused by every loader.

Built in Python, the models take their attribute names as keyword arguments
(``TrainPerConditionConfig(training=TrainingConfig(epochs=1))``); invalid values raise pydantic's
``ValidationError`` (a ``ValueError``) there, and the loaders turn every such error into a
one-line :class:`ConfigError`.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from spinegrade.core.errors import ConfigError

# Validation context set by the loaders: checks that only hold for a whole params file.
PARAMS_FILE = "params_file"

# Every top-level key of params.yaml, in the file's order (one module of this package each).
SECTIONS = (
    "data",
    "synthesize",
    "ingest",
    "convert-dicom",
    "crop-rois",
    "split-folds",
    "train-per-condition",
    "train-localizer",
    "engine",
    "evaluate",
    "predict",
    "mlflow",
)

_T = TypeVar("_T")
_M = TypeVar("_M", bound=BaseModel)


def _list_to_tuple(value: Any) -> Any:
    """YAML has lists, not tuples: take a list where a tuple is expected (strict mode
    otherwise insists on a tuple); the items are still validated strictly."""
    return tuple(value) if isinstance(value, list) else value


# A tuple field that a YAML list fills: ``FromList[tuple[int, ...]]``.
FromList = Annotated[_T, BeforeValidator(_list_to_tuple)]


class Section(BaseModel):
    """Every params model: unknown keys rejected, immutable, no type coercion.

    ``key``: the section's top-level key in params.yaml (empty for nested models).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    key: ClassVar[str] = ""


def attribute(key: str) -> str:
    """A section's attribute name: ``convert-dicom`` -> ``convert_dicom``."""
    return key.replace("-", "_")


# --------------------------------------------------------------------------- errors

# pydantic error type -> what the key expected (strict mode's type errors).
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "model_type": "a mapping",
}


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: one dotted key per value, as ``-S`` and MLflow params
    name them (lists and empty mappings are values)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _dotted(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location -> ``train-per-condition.training.folds[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _annotation_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> Any:
    """The type expected at ``loc`` below ``model`` (None if the path leaves the schema)."""
    tp: Any = model
    for part in loc:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = tp.model_fields
            tp = next((f.annotation for n, f in fields.items() if part in (n, f.alias)), None)
        elif origin in (Mapping, dict) and len(args) == 2:
            tp = args[1]
        elif origin is tuple and isinstance(part, int):
            tp = args[0] if args[1:] == (Ellipsis,) else args[part] if part < len(args) else None
        else:
            return None
    return tp


def _format_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """All of a ValidationError on one line, each error naming its dotted YAML key:
    ``crop-rois.slices: expected an integer, got 'three'``.

    Unknown keys come first, per section, with the keys the section accepts; a
    validator's own message is kept as it is (prefixed with its key unless it names it).
    """
    unknown: dict[tuple[int | str, ...], list[str]] = {}
    parts: list[str] = []
    for err in exc.errors(include_url=False):
        loc, kind, got = tuple(err["loc"]), err["type"], err.get("input")
        if kind == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(_dotted(loc))
            continue
        if loc and loc[-1] == "[key]":  # loc is (..., mapping, bad key, "[key]")
            parts.append(f"{_dotted(loc[:-2])}: keys must be strings, got {got!r}")
            continue
        if kind == "missing" and loc and isinstance(loc[-1], int):
            loc, kind = loc[:-1], "too_short"  # a fixed-length list an item short
        key, tp = _dotted(loc), _annotation_at(model, loc)
        if kind in ("value_error", "assertion_error") and "error" in err.get("ctx", {}):
            msg = str(err["ctx"]["error"])
            keyed = not key or msg.startswith((f"{key}.", f"{key}:", f"{key} "))
            parts.append(msg if keyed else f"{key}: {msg}")
            continue
        if kind == "literal_error" and typing.get_origin(tp) is Literal:
            expected = f"one of {list(typing.get_args(tp))}"
        elif kind in ("too_short", "too_long") and typing.get_origin(tp) is tuple:
            expected = f"{len(typing.get_args(tp))} values"
        else:
            expected = _EXPECTED.get(kind, "")
        shown = repr(list(got) if isinstance(got, tuple) else got)  # as the YAML list
        what = f"expected {expected}" if expected else err["msg"]
        parts.append(f"{key}: {what}, got {shown}")
    for section, keys in reversed(unknown.items()):
        fields = _annotation_at(model, section).model_fields
        accepted = sorted(f.alias or n for n, f in fields.items())
        parts.insert(0, f"unknown key(s) {', '.join(keys)} (expected some of {accepted})")
    return "; ".join(parts)


def read_params(path: str | Path) -> Mapping[str, Any]:
    """The parsed params file, its top-level keys checked against :data:`SECTIONS`.

    Raises:
        ConfigError: no such file, unreadable, not YAML, not a mapping, or an unknown
            top-level key (``params.yaml: unknown key(s) crop_rois (expected some of [...])``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}not valid YAML: {problem}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def validate(path: str | Path, raw: Mapping[str, Any], model: type[_M]) -> _M:
    """``raw`` (a params file's mapping) as ``model``, every error as one ConfigError line.

    ``model`` rejects keys it lacks; a top-level key of another section is not an error
    when ``model`` holds only some sections (those are dropped before validation)."""
    fields = {f.alias or n for n, f in model.model_fields.items()}
    unknown = [k for k in raw if k not in SECTIONS]
    picked = {k: v for k, v in raw.items() if k in fields or k in unknown}
    try:
        # by_name=False: the file must use the YAML spellings (convert-dicom, not
        # convert_dicom), so each key has one name there.
        return model.model_validate(
            picked, by_alias=True, by_name=False, context={PARAMS_FILE: str(path)}
        )
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_format_validation_error(exc, model)}") from None


@functools.cache
def sections_model(*sections: type[Section]) -> type[Section]:
    """A frozen model holding ``sections`` as attributes (``convert_dicom``), each filled
    from its YAML key (``convert-dicom``) or its defaults."""
    if not sections or any(s.key not in SECTIONS for s in sections):
        raise ValueError(f"not params sections: {sections}")
    fields: dict[str, Any] = {
        attribute(s.key): (s, Field(default_factory=s, alias=s.key)) for s in sections
    }
    name = "Params[" + ", ".join(s.key for s in sections) + "]"
    return create_model(name, __base__=Section, **fields)


def load_sections(path: str | Path, *sections: type[Section]) -> Any:
    """Read ``path`` and validate only ``sections`` (their models, e.g. ``ConvertConfig``);
    the result has one attribute per section (``.convert_dicom``).

    A stage loads the sections it reads and nothing more: another section's schema is
    not in its import closure, and that section's values are not its business (DVC
    re-runs it only for the params it declares).

    Raises:
        ConfigError: in one line naming the file and the dotted key
            (``params.yaml: convert-dicom.workers: expected an integer, got 'two'``).
    """
    return validate(path, read_params(path), sections_model(*sections))
