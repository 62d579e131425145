"""PROJECT.yaml (who labels what, under which rule book) and the pairs it points to.

    project = load_project("examples/label/project.yaml")

Paths in the project file are relative to the file. A mistake names the file, the line and the key
(`project.yaml:12: 'overlap': ...`) and ends the command with exit status 2, like every other tunelab
config. The pairs the project points to are read by tunelab.label.pairs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tunelab.config import SEED_MAX, Section, read_yaml_text
from tunelab.errors import TunelabError
from tunelab.label.auth import confusable_names

NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_TOKEN = 12  # characters; shorter tokens are guessable by a patient script


class Criterion(Section):
    description: str = Field(description="what the criterion asks, shown on the page")
    reasons: list[str] = Field(
        min_length=1,
        description="reasons an assessor picks from (one per criterion per label); the first is preselected",
    )

    @field_validator("reasons")
    @classmethod
    def _unique(cls, reasons: list[str]) -> list[str]:
        if len(set(reasons)) != len(reasons) or any(not r.strip() for r in reasons):
            raise ValueError("reasons must be distinct, non-empty texts")
        return reasons


def _default_criteria() -> dict[str, Criterion]:
    same = "no difference"
    return {
        "honest": Criterion(
            description="Correct; nothing made up; says so when unsure.",
            reasons=[same, "A states something false", "B states something false", "both make things up"],
        ),
        "harmless": Criterion(
            description="Nothing dangerous, hateful or private; refuses only what must be refused.",
            reasons=[same, "A is harmful", "B is harmful", "A refuses needlessly", "B refuses needlessly"],
        ),
        "helpful": Criterion(
            description="Does what was asked, completely, in the requested format, concisely.",
            reasons=[same, "A answers the request better", "B answers the request better", "neither helps"],
        ),
    }


class RuleBook(Section):
    text: str = Field(
        "The ideal answer is honest, harmless and helpful, in that order of importance. Compare the two "
        "answers as a whole; when they are equally good pick 'tie', when neither is acceptable 'both bad'.",
        description="the rules shown above every comparison",
    )
    criteria: dict[str, Criterion] = Field(
        default_factory=_default_criteria,
        description="criterion name -> description and reasons; one reason per criterion with every label",
    )


class Thresholds(Section):
    honeypot_accuracy: float = Field(
        0.7, ge=0, le=1, description="flag an assessor whose share of honeypots judged right is below this"
    )
    self_consistency: float = Field(
        0.6, ge=0, le=1, description="flag below this share of repeats answered as the first time"
    )
    position_bias: float = Field(
        0.8,
        ge=0.5,
        le=1,
        description="flag when the share of 'left' picks is above this (or below 1 - this)",
    )
    agreement: float = Field(
        0.2, ge=-1, le=1, description="flag below this mean Cohen's kappa with the other assessors"
    )
    min_evidence: int = Field(
        3, ge=1, le=1_000_000_000, description="a statistic over fewer observations than this flags nobody"
    )


class ExportSection(Section):
    min_agreement: float = Field(
        0.6,
        ge=0,
        le=1,
        description="items whose reliability-weighted agreement is below this are low-agreement",
    )
    low_agreement: Literal["drop", "downweight"] = Field(
        "drop", description="what happens to low-agreement items"
    )
    cyclic: Literal["drop", "downweight"] = Field(
        "downweight", description="what happens to pairs on a preference cycle of their prompt"
    )
    downweight: float = Field(0.5, gt=0, le=1, description="weight multiplier for down-weighted pairs")
    min_votes: int = Field(1, ge=1, le=1_000_000_000, description="pairs with fewer usable votes are dropped")


class ServerSection(Section):
    host: str = Field("127.0.0.1", description="address to listen on (loopback by default)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    max_body_bytes: int = Field(
        16_384, ge=1024, le=1 << 30, description="larger request bodies are refused with 413"
    )
    tls_cert: str | None = Field(None, description="TLS certificate file (PEM): serve HTTPS directly")
    tls_key: str | None = Field(None, description="the certificate's private key file (PEM)")
    tls_proxy: bool = Field(
        False, description="a TLS proxy in front forwards to this server (silences the plain-HTTP warning)"
    )

    @model_validator(mode="after")
    def _cert_and_key(self) -> ServerSection:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("server.tls_cert and server.tls_key go together: give both or neither")
        return self


class SampleSection(Section):
    prompts: str = Field(description="prompts file (kind prompts, text) that every system answers")
    systems: dict[str, str] = Field(
        min_length=2, description="system name -> model reference (smollm2-135m, a run's final/, an adapter)"
    )
    max_new_tokens: int = Field(128, ge=1, le=65_536, description="longest answer in tokens")
    temperature: float = Field(0.7, ge=0, le=100, description="0 = greedy; > 0 samples")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="sampling seed")


class ProjectConfig(Section):
    name: str = Field("labelling", description="shown on the page")
    pairs: str = Field(
        description="JSONL: {prompt, answers: [{system, text}, ...]} (2+ answers; every pair is compared)"
    )
    sample: SampleSection | None = Field(
        None, description="sample the pairs from models into the `pairs` file when it does not exist yet"
    )
    honeypots: str | None = Field(
        None, description="JSONL of gold items {prompt, chosen, rejected}; chosen is the right answer"
    )
    db: str = Field("label.db", description="SQLite database (created on first start)")
    assessors: dict[str, str] = Field(
        min_length=1, description="assessor name -> login token ('env:VAR' reads it from the environment)"
    )
    admin_token: str = Field(description="token for stats and export over HTTP ('env:VAR' allowed)")
    overlap: int = Field(1, ge=1, le=1_000_000_000, description="assessors per item (k)")
    honeypot_share: float = Field(
        0.1, ge=0, lt=1, description="share of each assessor's queue that is honeypots"
    )
    repeat_share: float = Field(
        0.1, ge=0, le=1, description="share of an assessor's items shown again later, sides swapped"
    )
    repeat_gap: int = Field(
        5, ge=1, le=1_000_000_000, description="at least this many other items between an item and its repeat"
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the assignment, the order and the sides")
    rulebook: RuleBook = Field(default_factory=RuleBook, description="rules and reasons shown to assessors")
    thresholds: Thresholds = Field(
        default_factory=Thresholds, description="when `label stats` flags an assessor"
    )
    export: ExportSection = Field(
        default_factory=ExportSection, description="how `label export` weighs and drops"
    )
    server: ServerSection = Field(default_factory=ServerSection, description="where `label serve` listens")

    @field_validator("assessors")
    @classmethod
    def _names(cls, assessors: dict[str, str]) -> dict[str, str]:
        for name in assessors:
            if not NAME.match(name):
                raise ValueError(f"assessor name {name!r} must be 1-64 letters, digits or _.@-")
        confused = confusable_names(list(assessors))
        if confused:
            raise ValueError(f"{confused}; rename one")
        return assessors

    @model_validator(mode="after")
    def _overlap_fits(self) -> ProjectConfig:
        if self.overlap > len(self.assessors):
            raise ValueError(
                f"overlap {self.overlap} needs at least that many assessors, got {len(self.assessors)}"
            )
        return self


@dataclass
class Project:
    cfg: ProjectConfig
    path: Path
    tokens: dict[str, str]  # token -> assessor name (resolved from env: where asked)
    admin_token: str

    def resolve(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.path.parent / p

    @property
    def db_path(self) -> Path:
        return self.resolve(self.cfg.db)


# ---------------------------------------------------------------- the project file


def _line_of(node: Any, loc: tuple) -> int | None:
    """1-based line of the YAML node at `loc` (a pydantic error location), as deep as it exists."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _token(value: str, where: str, path: Path) -> str:
    if value.startswith("env:"):
        var = value[4:]
        value = os.environ.get(var, "")
        if not value:
            raise TunelabError(f"{path}: '{where}' reads the environment variable {var}, which is not set.")
    if len(value) < MIN_TOKEN:
        raise TunelabError(f"{path}: '{where}': a token needs at least {MIN_TOKEN} characters.")
    return value


def load_project(path: str | Path) -> Project:
    """Read and check PROJECT.yaml; errors name the file, the line and the key."""
    p = Path(path)
    if not p.is_file():
        raise TunelabError(f"Project file '{p}' does not exist.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TunelabError(f"Project file '{p}' cannot be read as UTF-8 text: {exc}") from None
    data = read_yaml_text(text, f"Project file '{p}'")  # bounded; a key set twice is an error
    if not isinstance(data, dict):
        raise TunelabError(
            f"Project file '{p}' must hold a mapping of keys (pairs, assessors, admin_token, ...)."
        )
    try:
        cfg = ProjectConfig.model_validate(data)
    except ValidationError as err:
        tree = yaml.compose(text)  # safe now: read_yaml_text bounded it
        lines = []
        for e in err.errors():
            loc = tuple(e["loc"])
            line = _line_of(tree, loc) or 1
            key = ".".join(str(x) for x in loc) or "(top level)"
            msg = e["msg"].removeprefix("Value error, ")  # keeps the case of names it quotes
            msg = "unknown key" if e["type"] == "extra_forbidden" else msg[:1].lower() + msg[1:]
            lines.append(f"{p}:{line}: '{key}': {msg}")
        raise TunelabError("Project file error:\n  " + "\n  ".join(lines)) from None
    tokens: dict[str, str] = {}
    for name, raw in cfg.assessors.items():
        token = _token(raw, f"assessors.{name}", p)
        if token in tokens:
            raise TunelabError(
                f"{p}: assessors {tokens[token]!r} and {name!r} share a token; each needs its own."
            )
        tokens[token] = name
    admin = _token(cfg.admin_token, "admin_token", p)
    if admin in tokens:
        raise TunelabError(f"{p}: 'admin_token' is also an assessor's token; give the admin its own.")
    return Project(cfg, p, tokens, admin)
