"""The one config loader of every command: a YAML file and/or ``key=value`` overrides → a typed model.

A command's settings are a pydantic model (``Settings``): every field has a type, a default and a one-line
``description``, which ``--help`` prints (``fields_help``) or turns into options (``add_field_options``).
Errors name where and what: ``train.yaml:7: lr: expected a number > 0, found -1`` (a file's line), or
``command line: seed: expected a valid integer, found 'abc'`` (an override). Named recipes are YAML files
shipped in a package (``recipe_path``).
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticUndefined

from pinlift.core.errors import InputError, input_error

COMMAND_LINE = "command line"


class Settings(BaseModel):
    """Base of every command's settings: unknown keys are errors, defaults are validated too, and a boolean
    is true or false (not 1 or 'maybe')."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _strict_bool(cls, value, info: ValidationInfo):
        if cls.model_fields[info.field_name].annotation is bool and not isinstance(value, bool):
            raise ValueError(f"expected a valid boolean, found {value!r}")
        return value


S = TypeVar("S", bound=BaseModel)


class ConfigSource:
    """The YAML node tree of a loaded file, to find the line of any field."""

    def __init__(self, path: Path | str, text: str):
        self.path = path
        try:
            self.root = yaml.compose(text)
        except yaml.YAMLError:
            self.root = None

    def line(self, loc: tuple) -> int:
        """1-based line of the deepest node of ``loc`` that exists."""
        node = self.root
        line = 1 if node is None else node.start_mark.line + 1
        for key in loc:
            child = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == str(key):
                        child, line = v, k.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                child = node.value[key]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line


def read_yaml(path: Path | str, what: str = "a mapping of settings") -> tuple[dict, ConfigSource]:
    """A YAML mapping (safe_load) and its node tree; syntax errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "file", "a YAML file", "no such file")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise input_error(f"{path}:{mark.line + 1 if mark is not None else 1}", "yaml", "valid YAML", problem) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise input_error(f"{path}:1", "file", what, type(data).__name__)
    return data, ConfigSource(path, text)


def parse_overrides(items: typing.Iterable[str]) -> dict:
    """``key=value`` strings (``a.b=v`` sets a nested key) → a nested dict; values are read as YAML."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise input_error(COMMAND_LINE, item, "key=value", repr(item))
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise input_error(COMMAND_LINE, key, "a YAML value", repr(raw)) from None
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise input_error(COMMAND_LINE, key, "a nested key under a mapping", repr(item))
        node[leaf] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _has(data: dict, loc: tuple) -> bool:
    node: Any = data
    for key in loc:
        if not isinstance(node, dict) or str(key) not in node:
            return False
        node = node[str(key)]
    return True


def clean_message(err: dict) -> tuple[str, str]:
    """(expected, found) phrases from one pydantic error."""
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "missing":
        return "a value", "nothing"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return "a known field", f"unknown field {err['loc'][-1]!r}"
    if kind in ("value_error", "assertion_error"):
        text = re.sub(r"^(Value|Assertion) error, ", "", msg)
        m = re.match(r"^expected (.*), found (.*)$", text, re.S)
        return (m.group(1), m.group(2)) if m else (text, repr(value))
    if kind == "literal_error":
        return f"one of {err['ctx']['expected']}", repr(value)
    if kind == "string_pattern_mismatch":
        return f"a name matching {err['ctx']['pattern']}", repr(value)
    text = re.sub(r"^Input should be ", "", msg).split(", unable to")[0]
    return text, repr(value) if not isinstance(value, dict) else "a mapping"


def validation_error(exc: ValidationError, where) -> InputError:
    """The first pydantic error as one line; ``where(loc)`` says where the field came from."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    expected, found = clean_message(err)
    return input_error(where(loc), ".".join(str(p) for p in loc) or "file", expected, found)


def load_settings(model: type[S], path: Path | str | None = None, overrides: typing.Iterable[str] | dict = (),
                  defaults: dict | None = None) -> S:
    """``model`` from ``defaults`` (a command's own, e.g. its flags), then the YAML file ``path``, then
    ``overrides`` (``key=value`` strings or a dict): later ones win. Raises InputError."""
    data, source = dict(defaults or {}), None
    if path is not None:
        file_data, source = read_yaml(path)
        data = _merge(data, file_data)
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    data = _merge(data, over)

    def where(loc: tuple) -> str:
        if _has(over, loc[:1]) or source is None:
            return COMMAND_LINE
        return f"{source.path}:{source.line(loc)}"

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, where) from None


def recipe_path(name_or_path: str, directory: Path, prefix: str = "") -> Path:
    """A YAML file given by path, or the recipe ``<directory>/<prefix><name>.yaml`` shipped in a package."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    recipe = directory / f"{prefix}{name_or_path}.yaml"
    if not recipe.is_file():
        known = sorted(p.stem.removeprefix(prefix) for p in directory.glob(f"{prefix}*.yaml"))
        raise input_error(COMMAND_LINE, "config", f"a YAML file or a recipe ({', '.join(known)})", repr(name_or_path))
    return recipe


# ---- help ---------------------------------------------------------------------------------------

def type_name(annotation) -> str:
    """A short readable name of a field's type: int, float, str | None, fp32 | bf16, dict ..."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]" if args else getattr(origin, "__name__", "")
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _show(value) -> str:
    if isinstance(value, BaseModel):
        return str(value.model_dump(mode="json", exclude_none=True))
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "[" + ", ".join(str(v.model_dump(mode="json", exclude_none=True)) for v in value) + "]"
    return repr(value)


def _default(info) -> str:
    if info.default is PydanticUndefined:
        return "required" if info.default_factory is None else _show(info.default_factory())
    return _show(info.default)


def fields_help(model: type[BaseModel], skip: typing.Container[str] = ()) -> str:
    """One line per field: name, type, default and its one-line help (for ``--help`` epilogs)."""
    rows = [(name, type_name(info.annotation), _default(info), info.description or "")
            for name, info in model.model_fields.items() if name not in skip]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    w2 = min(max(len(r[2]) for r in rows), 12)
    return "\n".join(f"  {n:<{w0}}  {t:<{w1}}  {d:<{w2}}  {h}" for n, t, d, h in rows)


def settings_parser(prog: str, description: str, model: type[BaseModel], skip: typing.Container[str] = (),
                    **kwargs) -> argparse.ArgumentParser:
    """An argparse parser whose epilog lists every key of ``model`` (type, default, help)."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"keys (key=value; type, default):\n{fields_help(model, skip)}", **kwargs)


def add_field_options(parser: argparse.ArgumentParser, model: type[BaseModel],
                      skip: typing.Container[str] = ()) -> None:
    """A ``--field-name VALUE`` option per field (value read as YAML, validated by the model); an option
    not given leaves the field to the file or the default."""
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"field:{name}", metavar=type_name(info.annotation),
                            default=argparse.SUPPRESS,
                            help=f"{info.description or ''} (default {_default(info)})".strip())


def given_fields(args: argparse.Namespace) -> list[str]:
    """The ``key=value`` overrides of the field options that were given on the command line."""
    return [f"{k.removeprefix('field:')}={v}" for k, v in vars(args).items() if k.startswith("field:")]


def dump_settings(settings: BaseModel) -> dict:
    """The resolved settings as plain JSON-able data."""
    return settings.model_dump(mode="json")
