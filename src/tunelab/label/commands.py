"""`tunelab label serve|stats|export`: what each prints and writes (the parser lives in tunelab.cli).

tunelab label stats project.yaml --json stats.json
tunelab label export project.yaml --out prefs.jsonl --judgments battles.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.label.project import Project, load_project


def _store(project: Project):
    from tunelab.label.db import Store

    if not project.db_path.is_file():
        raise TunelabError(
            f"{project.path}: the database {project.db_path} does not exist yet; `tunelab label serve` creates it."
        )
    return Store(project.db_path)


def _write(path: str, text: str, what: str) -> None:
    """Write a file the user asked for, or say why it could not be written (a full disk, no permission)."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise TunelabError(f"could not write {what} to {path}: {exc.strerror or exc}.") from None


def _num(value: float | None, n: int | None = None, fmt: str = ".2f") -> str:
    if value is None:
        return "-"
    return f"{value:{fmt}}" + (f" ({n})" if n is not None else "")


def _side(item: dict) -> str:
    winner = item["majority"]
    if winner in ("a", "b"):
        return item["systems"][0 if winner == "a" else 1]
    return {"tie": "tie", "both_bad": "both bad"}.get(winner, "none (split vote)")


def serve(path: str, host: str | None, port: int | None) -> int:
    from tunelab.label.server import serve as run_server

    project = load_project(path)
    run_server(
        project, host or project.cfg.server.host, port if port is not None else project.cfg.server.port
    )
    return 0


def stats(path: str, json_out: str | None, worst: int) -> int:
    from tunelab.console import table as console_table
    from tunelab.console import table_console
    from tunelab.label.db import db_errors
    from tunelab.label.stats import summarize

    project = load_project(path)
    with db_errors(project.db_path):
        report = summarize(_store(project).labels(), project.cfg.thresholds)
    console = table_console()
    table = console_table(
        f"assessors of '{project.cfg.name}': {report['labels']} labels (count in brackets)",
        (
            "assessor",
            "labels",
            "honeypot acc.",
            "self-consistency",
            "left share",
            "kappa",
            "labels/h",
            "flags",
        ),
        left=("assessor", "flags"),
    )
    for a in report["assessors"]:
        table.add_row(
            a["assessor"],
            str(a["labels"]),
            _num(a["honeypot_accuracy"], a["honeypots"]),
            _num(a["self_consistency"], a["repeats"]),
            _num(a["position_bias"], a["side_picks"]),
            _num(a["agreement_kappa"], a["shared_items"]),
            _num(a["labels_per_hour"], fmt=".0f"),
            "; ".join(a["flags"]) or "ok",
        )
    console.print(table)
    multi = [it for it in report["items"] if it["votes"] >= 2]
    alpha = report["krippendorff_alpha"]
    console.print(
        f"Krippendorff's alpha (nominal) over {len(multi)} item(s) with 2+ votes: {_num(alpha, fmt='.3f')}"
        + (f"; mean majority share {sum(it['agreement'] for it in multi) / len(multi):.2f}" if multi else "")
        + (
            f"; without flagged assessors {_num(report['krippendorff_alpha_unflagged'], fmt='.3f')}"
            if report["flagged"]
            else ""
        )
    )
    for it in sorted(multi, key=lambda it: it["agreement"])[:worst]:
        console.print(
            f"  low agreement: {it['prompt'][:50]!r} ({' vs '.join(it['systems'])}): "
            f"{it['agreement']:.2f} of {it['votes']} votes, majority {_side(it)}"
        )
    console.print(f"Prompts whose majority preferences form a cycle: {len(report['cyclic_prompts'])}")
    for p in report["cyclic_prompts"]:
        triples = (
            ", ".join(f"{x} > {y} > {z} > {x}" for x, y, z in p["intransitive_triples"]) or "longer cycle"
        )
        console.print(f"  {p['prompt'][:70]!r}: {triples}")
    if report["flagged"]:
        console.print(f"Flagged assessors (left out of `label export`): {', '.join(report['flagged'])}")
    if json_out:
        _write(json_out, json.dumps(report, indent=1) + "\n", "the statistics")
        console.print(f"wrote {json_out}")
    return 0


def export(path: str, out: str, judgments_out: str | None) -> int:
    from tunelab.label.db import db_errors
    from tunelab.label.export import build_preferences, judgments
    from tunelab.label.stats import summarize

    project = load_project(path)
    with db_errors(project.db_path):
        store = _store(project)
        labels = store.labels()
        items = store.items()
    rows, dropped = build_preferences(labels, items, project.cfg)
    _write(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "the preference pairs")
    print(f"wrote {len(rows)} preference pair(s) to {out} from {len(labels)} label(s)")
    for reason, n in sorted(dropped.items()):
        print(f"  {n:6d}  {reason}")
    if not dropped:
        print("  nothing dropped or down-weighted")
    if judgments_out:
        flagged = set(summarize(labels, project.cfg.thresholds)["flagged"])
        battles = judgments(labels, flagged)
        _write(
            judgments_out, "".join(json.dumps(b, ensure_ascii=False) + "\n" for b in battles), "the judgments"
        )
        print(f"wrote {len(battles)} judgment(s) for `tunelab arena` to {judgments_out}")
    if not rows:
        raise TunelabError(f"No preference pair survived (see the counts above); {out} is empty.")
    return 0
