"""Pre-training data: clean (each filter on a hand-made document), dedup (a known near-duplicate pair,
a paraphrase below the threshold), tokenize (round trip, boundaries, dtype), token blocks (order,
resume, shards), and raw text -> clean -> dedup -> tokenize -> pretrain end to end."""

from __future__ import annotations

import functools
import json
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import write_jsonl

from tunelab.data.prep import stream
from tunelab.data.prep.clean import clean_text, normalise, run_clean
from tunelab.data.prep.config import CleanConfig, DedupConfig
from tunelab.data.prep.dedup import run_dedup, shingles
from tunelab.data.prep.tokenize import documents, dtype_for, run_tokenize
from tunelab.data.token_blocks import TokenBlocks
from tunelab.models.load import load_tokenizer

GOOD = """The old lighthouse keeper climbed the stairs every evening to light the lamp.
He had done this for thirty years, and the ships that passed the rocky coast trusted him.
One winter night a storm broke the great window at the top of the tower.
Snow and wind rushed in while he worked to keep the flame alive with his coat.
By morning the sea was calm again, and a fishing boat came to the harbour safely.
Its captain walked up the hill with bread and coffee to thank him.
They sat together on the steps and watched the gulls circle over the water.
Nobody in the village forgot that night, and children still tell the story."""

NO_STOP_WORDS = """Cats chase mice across dusty barns every morning.
Farmers drive tractors through wide golden fields before noon.
Children build sandcastles near quiet beaches during summer holidays.
Bakers knead dough early, long before sunrise brightens narrow streets.
Musicians practice scales slowly, repeating difficult passages patiently.
Gardeners plant tulips, roses, lilies, daisies, ferns, herbs.
Sailors watch clouds gather over distant grey waves.
Teachers grade essays late into quiet evenings."""

GERMAN = """Der alte Leuchtturmwärter stieg jeden Abend die Treppe hinauf, um die Lampe anzuzünden.
Er hatte das dreißig Jahre lang getan, und die Schiffe an der felsigen Küste vertrauten ihm.
In einer Winternacht zerbrach ein Sturm das große Fenster oben im Turm.
Schnee und Wind drangen herein, während er mit seinem Mantel die Flamme schützte.
Am Morgen war das Meer wieder ruhig, und ein Fischerboot erreichte sicher den Hafen.
Der Kapitän ging mit Brot und Kaffee den Hügel hinauf, um ihm zu danken."""

LINES = GOOD.split("\n")
NAMES = ["anna", "bert", "carl", "dora", "emil", "fritz", "greta", "hans"]

# (reason, document, settings): each document fails exactly the filter named, the first in FILTERS order
FAILING = [
    ("empty", " \n\t \n", {}),
    ("too_short", "The cat sat on the mat, and that was all.", {}),
    ("too_long", GOOD, {"max_words": 60}),  # GOOD has ~120 words
    ("mean_word_length", " ".join(["internationalisation"] * 60) + ".", {}),  # 20 letters a word
    ("symbols", GOOD + "\n" + " ".join("#" + w for w in NAMES * 2), {}),  # 16 hashes / 136 words > 0.1
    ("digits", GOOD + "\n" + " ".join(str(100000 + 7 * i) for i in range(40)) + ".", {}),  # 240 digits
    ("alpha_words", GOOD + "\n" + " ".join(["|"] * 40), {}),  # 120 of 160 words hold a letter: 0.75
    ("bullet_lines", "\n".join("- " + line for line in LINES), {}),
    ("ellipsis_lines", "\n".join(line[:-1] + "..." if i % 2 else line for i, line in enumerate(LINES)), {}),
    ("stop_words", NO_STOP_WORDS, {}),  # none of the, be, to, of, and, that, have, with
    ("lorem_ipsum", GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", {}),
    ("no_punct_lines", "\n".join(line.rstrip(".") for line in LINES), {}),
    ("duplicate_lines", "\n".join(LINES + [LINES[0]] * 4), {}),  # 4 of 12 lines repeat: 0.33 > 0.3
    # "red apple" is 24 of ~112 words on distinct lines: the top 2-gram holds ~47% of the characters
    (
        "top_ngram",
        "\n".join(f"The red apple and the red apple and one more red apple for {n}." for n in NAMES),
        {},
    ),
    # the first five lines again, run together as one line: no repeated line, but repeated 5-grams
    ("duplicate_ngrams", GOOD + "\n" + NO_STOP_WORDS + "\n" + " ".join(LINES[:5]), {}),
    ("language", GERMAN, {"languages": ["en"], "min_stop_words": None}),
]


def test_a_good_document_passes_every_filter():
    text, reason, removed = clean_text(GOOD, CleanConfig(languages=["en"]))
    assert (text, reason, removed) == (GOOD, None, 0)


@pytest.mark.parametrize("reason, text, settings", FAILING, ids=[f[0] for f in FAILING])
def test_each_filter_drops_its_document(reason, text, settings):
    assert clean_text(text, CleanConfig(**settings))[1] == reason


@pytest.mark.parametrize(
    "reason, text, settings",
    [f for f in FAILING if f[0] != "empty"],
    ids=[f[0] for f in FAILING if f[0] != "empty"],
)
def test_each_filter_can_be_turned_off(reason, text, settings):
    """With the filter's thresholds off (or loosened), the same document passes that filter."""
    off = {
        "too_short": {"min_words": None},
        "too_long": {"max_words": None},
        "mean_word_length": {
            "max_mean_word_len": None,
            "max_top_ngram": {},
            "max_dup_ngrams": {},
            "max_no_punct_lines": None,
        },
        "symbols": {"max_symbol_ratio": None, "max_no_punct_lines": None},
        "digits": {"max_digit_ratio": None, "min_alpha_words": 0.5},
        "alpha_words": {"min_alpha_words": None},
        "bullet_lines": {"max_bullet_lines": None},
        "ellipsis_lines": {"max_ellipsis_lines": None},
        "stop_words": {"min_stop_words": None},
        "lorem_ipsum": {"drop_lorem_ipsum": False},
        "no_punct_lines": {"max_no_punct_lines": None},
        "duplicate_lines": {"max_dup_lines": None, "max_dup_line_chars": None, "max_dup_ngrams": {}},
        "top_ngram": {"max_top_ngram": {}, "max_dup_ngrams": {}},
        "duplicate_ngrams": {"max_dup_ngrams": {}},
        "language": {"languages": None},
    }[reason]
    assert clean_text(text, CleanConfig(**{**settings, **off}))[1] != reason


def test_normalise_repairs_unicode_spaces_and_boilerplate():
    raw = "Caf\u00c3\u00a9 au lait   is\tgood.\r\nPlease enable JavaScript to view this page.\r\n\r\n\r\n\r\n    indented  code\x07 line.\u200b"
    text, removed = normalise(raw, CleanConfig())
    assert text == "Café au lait is good.\n\n    indented code line."
    assert removed == 1  # the JavaScript line; a long line that mentions cookies would stay:
    long_line = "Cookies " + " ".join(["were baked in the old oven that morning"] * 4) + "."
    assert normalise(long_line, CleanConfig())[0] == long_line


def test_clean_counts_every_reason_and_keeps_fields(tmp_path):
    defaults = [(r, t) for r, t, s in FAILING if not s]
    rows = [{"text": GOOD, "url": "a"}] + [{"text": t} for _, t in defaults] + [{"text": GOOD, "url": "b"}]
    data = write_jsonl(tmp_path / "raw.jsonl", rows)
    report = run_clean([str(data)], tmp_path / "out", CleanConfig())
    assert report["dropped"] == {r: 1 for r, _ in defaults}
    assert report["docs_in"] == len(rows) and report["docs_out"] == 2
    assert report["examples"]["too_short"][0]["where"] == f"{data}:3"
    kept = [json.loads(x) for x in (tmp_path / "out" / "part-00000.jsonl").read_text().splitlines()]
    assert kept == [{"text": GOOD, "url": "a"}, {"text": GOOD, "url": "b"}]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["dropped"] == report["dropped"]


def test_clean_reads_text_and_gzip_and_writes_gzip_shards(tmp_path):
    (tmp_path / "raw.txt").write_text(GOOD + "\n\nToo short.\n\n" + GOOD + "\n")
    report = run_clean(
        [str(tmp_path / "raw.txt")], tmp_path / "c", CleanConfig(), compress=True, shard_mb=0.0005
    )
    assert report["docs_out"] == 2 and report["shards"] == ["part-00000.jsonl.gz", "part-00001.jsonl.gz"]
    again = run_clean([str(tmp_path / "c")], tmp_path / "c2", CleanConfig())  # .jsonl.gz shards read back
    assert again["docs_in"] == 2 and again["docs_out"] == 2


def test_bad_input_names_file_line_and_field(tmp_path, cli):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": GOOD}, {"body": "no text here"}])
    for action in ("clean", "dedup", "tokenize"):
        code, _, err = cli(
            "data",
            action,
            str(bad),
            "--out",
            str(tmp_path / action),
            "--workers",
            "1",
            "--model",
            "tiny:llama",
        )
        assert code == 2 and f"{bad}:2: field 'text': missing" in err and "Traceback" not in err
    code, _, err = cli("data", "clean", str(bad), "--out", str(tmp_path / "x"), "min_wordz=3")
    assert code == 2 and "Did you mean 'min_words'?" in err


# ---------------------------------------------------------------- dedup

BASE = GOOD + "\n" + NO_STOP_WORDS  # ~180 words
NEAR = BASE.replace("lighthouse keeper", "lighthouse warden")  # one word changed
PARAPHRASE = "\n".join(  # every sentence reworded at its start; the rest kept
    f"{prefix} {' '.join(line.split()[3:])}"
    for prefix, line in zip(["Long ago", "For decades", "Then once", "All night"] * 4, BASE.split("\n"))
)
EXACT = "  ".join(BASE.upper().replace(",", "").split())  # same words: other case, spacing, punctuation
OTHER = GERMAN


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = set(shingles(a, n)), set(shingles(b, n))
    return len(sa & sb) / len(sa | sb)


def test_dedup_finds_the_near_duplicate_and_keeps_the_paraphrase(tmp_path):
    assert jaccard(BASE, NEAR) > 0.9 and jaccard(BASE, PARAPHRASE) < 0.5  # the ground truth
    f1 = write_jsonl(tmp_path / "a.jsonl", [{"text": BASE, "id": 1}, {"text": OTHER, "id": 2}])
    f2 = write_jsonl(
        tmp_path / "b.jsonl", [{"text": t, "id": i} for i, t in [(3, NEAR), (4, PARAPHRASE), (5, EXACT)]]
    )
    report = run_dedup([str(f1), str(f2)], tmp_path / "d", DedupConfig(threshold=0.8))
    kept = [json.loads(x)["id"] for x in (tmp_path / "d" / "part-00000.jsonl").read_text().splitlines()]
    assert kept == [1, 2, 4]
    assert (report["removed_exact"], report["removed_near"], report["clusters"]) == (1, 1, 1)
    removed = [json.loads(x) for x in (tmp_path / "d" / "removed.jsonl").read_text().splitlines()]
    assert [(r["where"], r["duplicate_of"], r["reason"]) for r in removed] == [
        (f"{f2}:1", f"{f1}:1", "near"),
        (f"{f2}:3", f"{f1}:1", "exact"),
    ]
    assert removed[0]["similarity"] >= 0.8 and removed[1]["similarity"] == 1.0
    (cluster,) = report["examples"]
    assert cluster["size"] == 3 and cluster["kept"]["where"] == f"{f1}:1"
    assert cluster["removed"][0]["text"].startswith("The old lighthouse")


def test_dedup_threshold_is_configurable(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in (BASE, NEAR, EXACT)])
    strict = run_dedup([str(data)], tmp_path / "d", DedupConfig(threshold=0.98))
    assert (strict["removed_exact"], strict["removed_near"]) == (1, 0)  # J(BASE, NEAR) ~ 0.95 < 0.98
    no_exact = run_dedup([str(data)], tmp_path / "e", DedupConfig(exact=False, near=False))
    assert no_exact["docs_out"] == 3


# ---------------------------------------------------------------- tokenize and token blocks


def test_tokenize_round_trip_boundaries_and_dtype(tmp_path, tiny_llama, monkeypatch):
    from tunelab.data.render import render_text

    _, tok = tiny_llama
    texts = [GOOD, NO_STOP_WORDS, "A short one.", GERMAN]
    data = write_jsonl(
        tmp_path / "a.jsonl",
        [{"text": t} for t in texts[:2]] + [{"text": "  "}] + [{"text": t} for t in texts[2:]],
    )
    meta = run_tokenize([str(data)], tmp_path / "tok", load_tokenizer("tiny:llama"), model="tiny:llama")
    assert meta["dtype"] == "uint16" and meta["n_docs"] == 4 and meta["empty_docs_skipped"] == 1
    tokens, starts = documents(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokens.bin").stat().st_size == 2 * meta["n_tokens"]
    bounds = [*starts.tolist(), meta["n_tokens"]]
    for i, text in enumerate(texts):
        ids = tokens[bounds[i] : bounds[i + 1]].tolist()
        assert ids == render_text(tok, text).input_ids  # the same stream as pretraining on raw text
        assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
        assert tok.decode(ids[:-1]) == text
    # several worker processes, many small chunks: the same bytes
    monkeypatch.setattr(
        "tunelab.data.prep.tokenize.chunks", functools.partial(stream.chunks, chunk_chars=300)
    )
    run_tokenize([str(data)], tmp_path / "tok2", load_tokenizer("tiny:llama"), model="tiny:llama", workers=2)
    for name in ("tokens.bin", "docs.bin"):
        assert (tmp_path / "tok2" / name).read_bytes() == (tmp_path / "tok" / name).read_bytes()
    assert (dtype_for(65536), dtype_for(65537), dtype_for(151_646)) == ("uint16", "uint32", "uint32")


def fake_token_dir(path, n_tokens: int):
    """tokens.bin holding 0, 1, 2, ... so a block's content says where it came from."""
    path.mkdir()
    np.arange(n_tokens, dtype=np.uint16).tofile(path / "tokens.bin")
    np.array([0], dtype=np.uint64).tofile(path / "docs.bin")
    meta = {"format": "tunelab.tokens", "dtype": "uint16", "n_tokens": n_tokens, "n_docs": 1}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def starts_of(batches) -> list[int]:
    return [int(row[0]) for b in batches for row in b.input_ids]


def test_token_blocks_overlap_by_one_and_visit_every_block_once_per_epoch(tmp_path):
    folder = fake_token_dir(tmp_path / "t", 20)
    blocks = TokenBlocks(folder, block_len=8, batch_size=1)
    assert len(blocks) == 2  # [0..7], [7..14]; a third would need tokens up to 21
    rows = sorted(b.input_ids[0].tolist() for b in blocks.epoch(0))
    assert rows == [list(range(0, 8)), list(range(7, 15))]
    blocks = TokenBlocks(fake_token_dir(tmp_path / "u", 1000), block_len=10, batch_size=4, seed=3)
    assert len(blocks) == 111 and blocks.micro_batches_per_epoch == 28  # 27 full batches + 3 blocks
    epoch0, epoch1 = starts_of(blocks.epoch(0)), starts_of(blocks.epoch(1))
    assert sorted(epoch0) == sorted(epoch1) == [9 * i for i in range(111)]
    assert epoch0 != epoch1 and epoch0 == starts_of(blocks.epoch(0))  # seeded per epoch
    batch = next(iter(blocks.epoch(0)))
    assert batch.input_ids.dtype == torch.int64 and batch.input_ids.shape == (4, 10)
    # every token but a block's first is a target, predicted by the token before it
    assert torch.equal(batch.target_ids, batch.input_ids[:, 1:].flatten()) and batch.n_targets == 4 * 9


def test_token_blocks_resume_jumps_to_the_saved_micro_batch(tmp_path):
    blocks = TokenBlocks(fake_token_dir(tmp_path / "t", 500), block_len=8, batch_size=3, seed=1)
    whole = list(blocks.epoch(2))
    resumed = list(blocks.epoch(2, start=5))
    assert len(resumed) == len(whole) - 5
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(whole[5:], resumed, strict=True))


class FakeDist:
    def __init__(self, rank, world):
        self.rank, self.world = rank, world


def test_token_blocks_shards_are_disjoint_and_add_up_to_one_process(tmp_path):
    blocks = TokenBlocks(fake_token_dir(tmp_path / "t", 24 * 7 + 1), block_len=8, batch_size=2, seed=5)
    assert len(blocks) == 24
    one = TokenBlocks(blocks.folder, block_len=8, batch_size=6, seed=5)  # 1 process x batch 3*2
    ranks = [blocks.shard(FakeDist(r, 3)) for r in range(3)]
    assert {r.micro_batches_per_epoch for r in ranks} == {one.micro_batches_per_epoch} == {4}
    per_rank = [list(r.epoch(1)) for r in ranks]
    for step, together in enumerate(one.epoch(1)):
        shares = [starts_of([per_rank[r][step]]) for r in range(3)]
        assert [len(s) for s in shares] == [2, 2, 2]
        assert sum(shares, []) == starts_of([together])  # rank 0 the first share, and so on
    seen = [s for r in range(3) for s in starts_of(per_rank[r])]
    assert len(seen) == len(set(seen)) == 24  # every block once, on one rank
    assert blocks.rank == 0 and blocks.world == 1  # shard() is a view; the source is unchanged


def test_token_blocks_hold_out_disjoint_eval_blocks(tmp_path):
    folder = fake_token_dir(tmp_path / "t", 400)
    train = TokenBlocks(folder, block_len=8, batch_size=4, holdout_every=10)
    held = TokenBlocks(folder, block_len=8, batch_size=4, holdout_every=10, split="eval")
    assert set(train.ids) & set(held.ids) == set() and len(train) + len(held) == 57
    assert held.ids.tolist() == [0, 10, 20, 30, 40, 50]


# ---------------------------------------------------------------- end to end


def raw_corpus(path) -> dict:
    """A .txt of documents (blank-line separated): 24 good ones, junk, and duplicates of the first."""
    rng = random.Random(0)
    words = "the river runs past green hills and a small bird sings near the window of that old town".split()

    def doc():
        return "\n".join(" ".join(rng.choice(words) for _ in range(10)).capitalize() + "." for _ in range(9))

    good = [doc() for _ in range(24)]
    junk = [
        "Too short to keep.",
        "\n".join("2024 1999 3141 2718 1618 1414 1732" for _ in range(12)),
        "Please enable JavaScript.",
    ]
    near = good[0].replace("river", "stream", 1)
    path.write_text("\n\n".join(good + junk + [good[0], near]) + "\n")
    return {"good": 24, "junk": 3}


def test_raw_text_to_pretraining_end_to_end(tmp_path, cli):
    raw = tmp_path / "raw.txt"
    raw_corpus(raw)
    args = ["--workers", "1"]
    assert cli("data", "clean", str(raw), "--out", str(tmp_path / "clean"), *args)[0] == 0
    clean = json.loads((tmp_path / "clean" / "report.json").read_text())
    assert clean["docs_out"] == 26 and clean["dropped"] == {"empty": 1, "too_short": 1, "digits": 1}
    assert cli("data", "dedup", str(tmp_path / "clean"), "--out", str(tmp_path / "dedup"), *args)[0] == 0
    dedup = json.loads((tmp_path / "dedup" / "report.json").read_text())
    assert (dedup["docs_out"], dedup["removed_exact"], dedup["removed_near"]) == (24, 1, 1)
    code, _, err = cli(
        "data",
        "tokenize",
        str(tmp_path / "dedup"),
        "--out",
        str(tmp_path / "tok"),
        "--model",
        "tiny:llama",
        *args,
    )
    assert code == 0 and "tokens in 24 documents" in err

    run = tmp_path / "run"
    train = ["model=tiny:llama", f"data.train={tmp_path / 'tok'}", "train.max_len=32", "train.batch_size=4"]
    train += [
        "train.lr=3e-3",
        "train.max_steps=24",
        "train.warmup=0",
        "train.save_every=12",
        "train.keep_optimizer=true",  # resumed below from the finished run's step-12
        "data.eval_split=0.1",
    ]
    assert cli("pretrain", *train, f"out={run}")[0] == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-4:]) / 4
    assert last < 0.6 * first, (first, last)  # ~ln(384) at the start
    assert "eval_loss" in rows[-1] and "train tokens" in (run / "report.md").read_text()

    # resume from the step-12 checkpoint (its data position) and end exactly where the whole run did
    whole = {k: v.clone() for k, v in _final_weights(run).items()}
    state = json.loads((run / "checkpoints" / "step-12" / "state.json").read_text())
    assert state["step"] == 12 and "micro" in state and "epoch" in state
    shutil.rmtree(run / "checkpoints" / "step-24")
    shutil.rmtree(run / "final")
    code, _, err = cli("pretrain", *train, f"out={run}", "resume=auto")
    assert code == 0 and "resuming from" in err
    resumed_rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed_rows] == pytest.approx([r["loss"] for r in rows], abs=1e-5)
    for name, tensor in _final_weights(run).items():
        assert torch.allclose(tensor, whole[name], atol=1e-6), name


def _final_weights(run):
    from safetensors.torch import load_file

    return load_file(run / "final" / "model.safetensors")


def test_pretrain_refuses_tokens_from_another_tokenizer(tmp_path):
    from tunelab.config import load_config
    from tunelab.config.schema import PretrainConfig
    from tunelab.errors import TunelabError
    from tunelab.stages import pretrain

    data = write_jsonl(tmp_path / "a.jsonl", [{"text": GOOD}] * 3)
    run_tokenize([str(data)], tmp_path / "tok", load_tokenizer("tiny:gpt2"), model="tiny:gpt2")
    cfg = load_config(
        PretrainConfig, None, ["model=tiny:llama", f"data.train={tmp_path / 'tok'}", f"out={tmp_path / 'r'}"]
    )
    with pytest.raises(TunelabError, match="tokenised with tiny:gpt2"):
        pretrain.main(cfg)


def test_plan_says_what_the_data_can_train(tmp_path):
    from tunelab.plan import data_fit, data_tokens

    folder = fake_token_dir(tmp_path / "t", 2000)
    (tmp_path / "text.jsonl").write_text("x" * 4000)  # 4,000 bytes of text ~ 1,000 tokens
    assert data_tokens([str(folder)]) == (2000, "counted")
    tokens, how = data_tokens([str(folder), str(tmp_path / "text.jsonl")])
    assert tokens == 3000 and "estimated" in how
    # 2M tokens: 100K parameters at 20 tokens each; a 1M model wants 20M, so the data covers 10%
    fit = data_fit(2_000_000, 1_000_000)
    assert fit == {
        "optimal_params": 100_000,
        "tokens_needed": 20_000_000,
        "coverage": 0.1,
        "epochs_needed": 10.0,
    }
