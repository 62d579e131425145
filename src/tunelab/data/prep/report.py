"""What `tunelab data clean|dedup|tokenize` print at the end: counts, speed, and examples of what was
removed (the whole report is in DIR/report.json or DIR/meta.json)."""

from __future__ import annotations

from pathlib import Path


def _speed(report: dict) -> str:
    return f"{report['mb_in']:,.1f} MB of text in {report['seconds']:,.1f} s ({report['mb_per_s']:,.1f} MB/s)"


def _snippet(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def show_clean(report: dict, out: Path, console) -> None:
    from rich.table import Table

    n_in = max(report["docs_in"], 1)
    console.print(
        f"clean: kept {report['docs_out']:,} of {report['docs_in']:,} documents "
        f"({report['mb_out']:,.1f} MB in {len(report['shards'])} shard(s) in {out}); {_speed(report)}; "
        f"{report['boilerplate_lines']:,} boilerplate lines removed"
    )
    if not report["dropped"]:
        return
    table = Table(title="dropped, by the first filter that failed")
    for col in ("reason", "documents", "share", "example"):
        table.add_column(col, overflow="fold")
    for reason, count in report["dropped"].items():
        shown = report["examples"].get(reason) or [{"where": "", "text": ""}]
        table.add_row(
            reason, f"{count:,}", f"{count / n_in:.1%}", f"{shown[0]['where']}: {_snippet(shown[0]['text'])}"
        )
    console.print(table)


def show_dedup(report: dict, out: Path, console) -> None:
    console.print(
        f"dedup: kept {report['docs_out']:,} of {report['docs_in']:,} documents; removed "
        f"{report['removed_exact']:,} exact and {report['removed_near']:,} near duplicates in "
        f"{report['clusters']:,} clusters (threshold {report['config']['threshold']}, "
        f"{report['bands']} bands x {report['rows_per_band']} rows); {_speed(report)}. "
        f"Every removed document: {out / 'removed.jsonl'}"
    )
    for i, cluster in enumerate(report["examples"], 1):
        kept = cluster["kept"]
        console.print(
            f"[bold]cluster {i}[/bold] ({cluster['size']} documents) kept {kept['where']}: {_snippet(kept['text'])}"
        )
        for r in cluster["removed"]:
            console.print(
                f"   removed {r['where']} ({r['reason']}, similarity {r['similarity']:.2f}): {_snippet(r['text'])}"
            )


def show_tokenize(meta: dict, out: Path, console) -> None:
    console.print(
        f"tokenize: {meta['n_tokens']:,} tokens in {meta['n_docs']:,} documents -> {out / 'tokens.bin'} "
        f"({meta['dtype']}, vocabulary {meta['vocab_size']:,}, {meta['chars_per_token']:.2f} characters per "
        f"token); {_speed(meta)}. Train on it: tunelab pretrain data.train={out} model={meta['tokenizer']}"
    )


SHOW = {"clean": show_clean, "dedup": show_dedup, "tokenize": show_tokenize}


def show(step: str, report: dict, out: Path, console) -> None:
    SHOW[step](report, out, console)
