"""HTML forms over dicom_node.configuration's schemas: form fields to the schema's data, the
schema's errors back to the fields that caused them. No validation happens here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

# "select": one of a list of options; "password": written, never shown (the input is always empty).
Widget = Literal["text", "number", "checkbox", "csv", "choices", "select", "password"]
GENERAL = "__all__"


@dataclass(frozen=True)
class FormField:
    # A dotted path into the schema's data ("filters.min_slices"); also the input's name.
    name: str
    label: str
    widget: Widget = "text"
    help: str = ""
    # An empty input means None ("no value"), not "".
    optional: bool = False
    # For "choices" and "select": which list of options the page supplies.
    choices: str = ""


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


def _get(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def form_to_data(fields: list[FormField], form: FormData) -> dict[str, Any]:
    """The schema's input from a posted form. Text is passed as typed (the schema decides);
    empty optional fields become None."""
    data: dict[str, Any] = {}
    for f in fields:
        if f.widget == "checkbox":
            value: Any = f.name in form
        elif f.widget == "choices":
            value = [str(v) for v in form.getlist(f.name)]
        elif f.widget == "csv":
            value = [v.strip() for v in str(form.get(f.name, "")).split(",") if v.strip()]
        else:
            raw = str(form.get(f.name, ""))
            value = None if (raw == "" and f.optional) else raw
        _set(data, f.name, value)
    return data


def shown_values(fields: list[FormField], data: dict[str, Any]) -> dict[str, Any]:
    """What each input shows: strings for text, lists for choices, bools for checkboxes."""
    out: dict[str, Any] = {}
    for f in fields:
        value = _get(data, f.name)
        if f.widget == "checkbox":
            out[f.name] = bool(value)
        elif f.widget == "choices":
            out[f.name] = [str(v) for v in value or []]
        elif f.widget == "csv":
            out[f.name] = ", ".join(str(v) for v in value or [])
        elif f.widget == "password":
            out[f.name] = ""
        else:
            out[f.name] = "" if value is None else str(value)
    return out


def field_for(fields: list[FormField], loc: tuple[Any, ...]) -> str:
    """The form field an error location belongs to (the longest matching name)."""
    parts = [str(p) for p in loc]
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if any(f.name == name for f in fields):
            return name
    return GENERAL


def validate(
    schema: type[BaseModel], fields: list[FormField], data: dict[str, Any]
) -> tuple[BaseModel | None, dict[str, str]]:
    """(the parsed input, {}) or (None, {field: reason}) with every error at its field."""
    try:
        return schema.model_validate(data), {}
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for err in exc.errors():
            name = field_for(fields, tuple(err["loc"]))
            msg = str(err["msg"]).removeprefix("Value error, ")
            if name == GENERAL and err["loc"]:
                msg = f"{'.'.join(map(str, err['loc']))}: {msg}"
            errors.setdefault(name, msg)
        return None, errors
