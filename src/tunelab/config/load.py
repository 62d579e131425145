"""Typed configs: pydantic models loaded from YAML, with dotted `key=value` overrides.

    cfg = load_config(SFTConfig, "configs/sft.yaml", ["train.lr=1e-5", "adapter=lora"])

Unknown keys and wrong types are errors that name the key and suggest the closest valid one.
`dump_config(cfg)` is the resolved config (defaults filled in) that a run folder keeps.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tunelab.errors import TunelabError

C = TypeVar("C", bound=BaseModel)


class Section(BaseModel):
    """Base of every config block: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-5", "adapter=lora"]` -> `{"train": {"lr": 1e-5}, "adapter": "lora"}`.

    Values are parsed as YAML scalars, so `1e-5`, `true`, `[q_proj, v_proj]` and `null` work.
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TunelabError(f"Override '{item}' is not of the form key=value (e.g. train.lr=1e-5).")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        # YAML 1.1 reads "1e-5" as a string; pydantic turns numeric strings into floats where a float is due
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node.get(part), str):
                node[part] = {"name": node[part]}  # `model=x model.dropout=0.1`: a name is shorthand
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TunelabError(f"Override '{item}' sets a key inside '{part}', which is not a section.")
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), str):
            out[key] = {"name": out[key], **value}  # `model: x` in the file, `model.dropout=0.1` on the line
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the config section at `loc` (the parent of a bad key)."""
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _explain(cls: type[BaseModel], err: ValidationError, source: str) -> str:
    lines, seen = [], set()
    for e in err.errors():
        # union members show up in the location as tags like "literal[...]" or "list[...]": not keys
        loc = tuple(p for p in e["loc"] if isinstance(p, str) and "[" not in p)
        key = ".".join(loc) or "(top level)"
        if key in seen:  # a union reports once per member; the first says what was expected
            continue
        seen.add(key)
        if e["type"] == "extra_forbidden":
            valid = _fields_at(cls, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{'.'.join((*loc[:-1], close[0]))}'?" if close else ""
            lines.append(f"unknown key '{key}'.{hint} Valid keys here: {', '.join(valid)}.")
        else:
            got = e.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
            lines.append(f"'{key}': {e['msg'].lower()}{got_text}.")
    return f"Config error in {source}:\n  " + "\n  ".join(lines)


def _defaults(cls: type[BaseModel]) -> dict[str, Any]:
    try:
        return cls().model_dump(mode="python")
    except ValidationError:  # a config with required fields has no complete defaults
        return {}


def _read_yaml(p: Path) -> Any:
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TunelabError(
            f"Config file '{p}' is not UTF-8 (line {line}: byte {raw[exc.start : exc.start + 1]!r}); "
            "re-save it as UTF-8."
        ) from None
    try:
        twice = _key_set_twice(yaml.compose(text, Loader=yaml.SafeLoader))
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TunelabError(f"Config file '{p}' is not valid YAML: {exc}") from None
    if twice:
        raise TunelabError(f"Config file '{p}': {twice}; say it once.")
    return loaded


def _key_set_twice(node, path: tuple[str, ...] = ()) -> str | None:
    """PyYAML keeps the last of two equal keys without a word; name the first key set twice, if any."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in seen:
                return f"'{'.'.join((*path, key))}' appears twice (line {seen[key]} and line {line})"
            seen[key] = line
            found = _key_set_twice(value_node, (*path, key))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _key_set_twice(item, path)
            if found:
                return found
    return None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Read YAML (optional), apply dotted overrides, validate into `cls`."""
    data: dict[str, Any] = {}
    source = "the defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise TunelabError(f"Config file '{p}' does not exist. Pass a YAML file (see configs/) or none.")
        loaded = _read_yaml(p)
        if loaded is not None and not isinstance(loaded, dict):
            raise TunelabError(f"Config file '{p}' must hold a mapping of keys, not {type(loaded).__name__}.")
        data = loaded or {}
        source = str(p)
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        source += " + command-line overrides"
    # start from the stage's own defaults, so `train.lr=...` keeps e.g. RL's constant schedule
    data = _merge(_defaults(cls), data)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise TunelabError(_explain(cls, err, source)) from None


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, defaults included: what a run folder keeps."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
