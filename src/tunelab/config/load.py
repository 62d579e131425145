"""Typed configs: pydantic models loaded from YAML, with dotted `key=value` overrides.

    cfg = load_config(SFTConfig, "configs/sft.yaml", ["train.lr=1e-5", "adapter=lora"])

Unknown keys and wrong types are errors that name the key and suggest the closest valid one.
Every number in every section is finite (no `.inf`, `nan`, `1e999`) and fits in 64 bits; fields say
their own range. YAML from users is read by `read_yaml_text`: bounded in size, depth and alias
expansion (an alias bomb is refused before it is expanded), and a key set twice is an error.
`dump_config(cfg)` is the resolved config (defaults filled in) that a run folder keeps.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tunelab.errors import TunelabError

C = TypeVar("C", bound=BaseModel)


INT_MAX = 2**63 - 1  # what torch and numpy take as an integer
SEED_MAX = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32)


class Section(BaseModel):
    """Base of every config block: unknown keys are errors, assignments are validated, and no number
    is infinite, NaN or wider than 64 bits (in lists and mappings too)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False
    )

    @field_validator("*", mode="after")
    @classmethod
    def _ints_fit(cls, value: Any) -> Any:
        if _too_wide(value):
            raise ValueError(f"a number out of range (at most {INT_MAX} in size)")
        return value


def _too_wide(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) > INT_MAX
    if isinstance(value, (list, tuple)):
        return any(_too_wide(v) for v in value)
    if isinstance(value, dict):
        return any(_too_wide(k) or _too_wide(v) for k, v in value.items())
    return False


# limits on YAML from users: config and project files are small; these leave room and stop bombs
MAX_YAML_CHARS = 1_000_000
MAX_YAML_NODES = 100_000  # after expanding every alias where it is used
MAX_YAML_DEPTH = 50


def read_yaml_text(text: str, source: str) -> Any:
    """YAML text -> Python values, or a TunelabError naming `source` and the line. Refused: invalid
    YAML, more than MAX_YAML_CHARS characters, nesting deeper than MAX_YAML_DEPTH, aliases that would
    expand to more than MAX_YAML_NODES nodes, and a key set twice in one mapping (PyYAML would keep
    the last without a word). Checked on the node graph, where an alias is one shared node: linear time."""
    try:
        return _bounded_yaml(text, source)
    except yaml.YAMLError as exc:
        raise TunelabError(f"{source} is not valid YAML: {exc}") from None


def _bounded_yaml(text: str, source: str) -> Any:
    if len(text) > MAX_YAML_CHARS:
        raise TunelabError(f"{source}: over {MAX_YAML_CHARS:,} characters; a config is much smaller.")
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise TunelabError(f"{source}: nested deeper than {MAX_YAML_DEPTH} levels.") from None
        if node is None:
            return None
        problem = _check_nodes(node)
        if problem:
            raise TunelabError(f"{source}: {problem}.")
        try:
            return loader.construct_document(node)
        except ValueError:  # Python refuses int() of over 4,300 digits
            raise TunelabError(
                f"{source}: holds a number with thousands of digits; no setting takes one."
            ) from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node) -> str | None:
    """What is wrong with a composed YAML tree (too deep, too large once expanded, a key twice), or None.
    Each distinct node is visited once; `size` memoises its expanded size, so aliases cost nothing."""
    size: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being walked: meeting one again is a cycle
    stack: list[tuple[yaml.Node, int, tuple[str, ...], bool]] = [(root, 1, (), False)]
    while stack:
        node, depth, path, children_done = stack.pop()
        if id(node) in size and not children_done:
            continue
        if depth > MAX_YAML_DEPTH:
            return f"line {node.start_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels"
        kids = _children(node)
        if children_done:
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size[id(k)] for k, _ in kids)
            if size[id(node)] > MAX_YAML_NODES:
                return (
                    f"line {node.start_mark.line + 1}: its aliases expand to over {MAX_YAML_NODES:,} values "
                    "(an alias bomb?); write the values out"
                )
            continue
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode) and key in seen:
                    where = ".".join((*path, key))
                    return f"'{where}' appears twice (line {seen[key]} and line {line}); say it once"
                seen[key] = line
        stack.append((node, depth, path, True))
        open_.add(id(node))
        for kid, name in kids:
            if id(kid) in open_:
                return f"line {kid.start_mark.line + 1}: an alias refers to a value that holds it"
            if id(kid) not in size:
                stack.append((kid, depth + 1, (*path, name) if name else path, False))
    return None


def _children(node: yaml.Node) -> list[tuple[yaml.Node, str | None]]:
    if isinstance(node, yaml.MappingNode):
        return [
            pair
            for key_node, value_node in node.value
            for pair in ((key_node, None), (value_node, str(key_node.value)[:40]))
        ]
    if isinstance(node, yaml.SequenceNode):
        return [(item, None) for item in node.value]
    return []


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
            value = _bounded_yaml(raw, f"Override '{key}'") if raw.strip() else ""
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
        if e["type"] == "extra_forbidden" and e["loc"] and loc[-1:] != (e["loc"][-1],):
            loc = (*loc, str(e["loc"][-1]))  # the unknown key itself, whatever characters it holds
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
            got_text = f" (got {_short(got)})" if not isinstance(got, dict) else ""
            msg = e["msg"].lower().removeprefix("value error, ")
            lines.append(f"'{key}': {msg}{got_text}.")
    return f"Config error in {source}:\n  " + "\n  ".join(lines)


def _short(value: Any) -> str:
    """repr of a user's value, cut to 80 characters (a 5,000-digit integer has no repr at all)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _defaults(cls: type[BaseModel]) -> dict[str, Any]:
    try:
        return cls().model_dump(mode="python")
    except ValidationError:  # a config with required fields has no complete defaults
        return {}


def _read_yaml(p: Path) -> Any:
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise TunelabError(f"Config file '{p}' cannot be read: {exc.strerror or exc}.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TunelabError(
            f"Config file '{p}' is not UTF-8 (line {line}: byte {raw[exc.start : exc.start + 1]!r}); "
            "re-save it as UTF-8."
        ) from None
    return read_yaml_text(text, f"Config file '{p}'")


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
