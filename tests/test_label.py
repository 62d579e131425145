"""Labelling: statistics and export against cases worked out by hand, queue planning, project errors,
the HTTP API's security and validation, a load test, a SIGKILL test, and export -> `tunelab rm`."""

import json
import signal
import sqlite3
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers.label_server import ADMIN, running_server, token, two_answer_pairs, write_project

from tunelab.errors import TunelabError
from tunelab.label.db import Store
from tunelab.label.export import build_preferences, judgments, reliability
from tunelab.label.pairs import Item, load_items
from tunelab.label.project import ProjectConfig, Thresholds, load_project
from tunelab.label.queue import plan_queues
from tunelab.label.server import create_app
from tunelab.label.stats import (
    Label,
    agreement_with_others,
    cohen_kappa,
    cycle_edges,
    honeypot_accuracy,
    intransitive_triples,
    krippendorff_alpha,
    labels_per_hour,
    majority,
    position_bias,
    self_consistency,
    summarize,
)

# ---------------------------------------------------------------- statistics by hand


def test_a_perfectly_left_biased_assessor_has_bias_one_and_no_self_consistency():
    # always "left"; showing 4 repeats showing 1 with the sides swapped, so the answer flips
    clicks = [
        Label("bot", "i1", "left", left="a", assignment=1),
        Label("bot", "i2", "left", left="b", assignment=2),
        Label("bot", "i3", "left", left="a", assignment=3),
        Label("bot", "i1", "left", left="b", assignment=4, repeat_of=1),
        Label("bot", "i4", "tie", assignment=5),  # ties are not a side: left out of the bias
    ]
    assert position_bias(clicks) == (1.0, 4)
    assert self_consistency(clicks) == (0.0, 1)
    balanced = [Label("ann", f"i{i}", c, left="a") for i, c in enumerate(["left", "right", "right", "left"])]
    assert position_bias(balanced) == (0.5, 4)
    report = summarize(clicks, Thresholds(self_consistency=0.5, min_evidence=1))
    assert report["flagged"] == ["bot"]
    assert any("position bias 1.00" in f for f in report["assessors"][0]["flags"])
    assert any("self-consistency 0.00" in f for f in report["assessors"][0]["flags"])


def test_honeypot_accuracy_counts_ties_and_both_bad_as_wrong():
    gold = [
        Label("ann", "h1", "right", left="b", gold="a"),  # the gold answer was on the right: right
        Label("ann", "h2", "left", left="a", gold="a"),  # right
        Label("ann", "h3", "right", left="a", gold="a"),  # wrong
        Label("ann", "h4", "tie", gold="a"),  # wrong
        Label("ann", "i1", "left"),  # not a honeypot
    ]
    assert honeypot_accuracy(gold) == (0.5, 4)


def test_cohen_kappa_and_krippendorff_alpha_by_hand():
    # p_o = 3/4; p_e = .5 * .25 + .5 * .75 = .5 -> kappa = (.75 - .5) / (1 - .5) = .5
    assert cohen_kappa(list("aabb"), list("abbb")) == pytest.approx(0.5)
    assert cohen_kappa(list("aaaa"), list("aaaa")) is None  # chance agreement is total: undefined
    # units [a,a] [a,b] [b,b]: o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6
    # alpha = 1 - (n - 1) * (o_ab + o_ba) / (n_a n_b + n_b n_a) = 1 - 5 * 2 / 18 = 4/9
    assert krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"], ["a"]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha([["a", "a"], ["b", "b", "b"]]) == pytest.approx(1.0)


def test_agreement_with_others_weights_kappas_by_shared_items():
    votes = {
        f"i{i}": {"ann": a, "bob": b, "cat": c} for i, (a, b, c) in enumerate(zip("aabb", "aabb", "abbb"))
    }
    agree = agreement_with_others(votes)
    # ann-bob kappa 1 (4 items), ann-cat 0.5 (4), bob-cat 0.5 (4)
    assert agree["ann"] == (pytest.approx(0.75), 8)
    assert agree["cat"] == (pytest.approx(0.5), 8)


def test_majority_is_none_on_a_split_vote():
    assert majority({"ann": "a", "bob": "b"}) == (None, 0.5)
    assert majority({"ann": "a", "bob": "b", "cat": "a"}) == ("a", pytest.approx(2 / 3))
    assert majority({"ann": "a", "bob": "b"}, {"ann": 3.0, "bob": 1.0}) == ("a", 0.75)


def test_a_known_cycle_is_found_and_a_transitive_prompt_is_not():
    def vote(prompt, sa, sb, who, winner):  # winner "a" = sa wins
        return Label(who, f"{prompt}:{sa}{sb}", "left", left=winner, prompt=prompt, system_a=sa, system_b=sb)

    labels = []
    for who in ("ann", "bob", "cat"):
        # P: x > y, y > z, z > x (bob dissents on one pair; the majority still cycles)
        labels += [vote("P", "x", "y", who, "a"), vote("P", "y", "z", who, "a")]
        labels.append(vote("P", "z", "x", who, "b" if who == "bob" else "a"))
        # Q: x > y > z and x > z: no cycle
        labels += [
            vote("Q", "x", "y", who, "a"),
            vote("Q", "y", "z", who, "a"),
            vote("Q", "x", "z", who, "a"),
        ]
    report = summarize(labels, Thresholds())
    assert [p["prompt"] for p in report["cyclic_prompts"]] == ["P"]
    assert report["cyclic_prompts"][0]["intransitive_triples"] == [("x", "y", "z")]
    assert len(report["cyclic_prompts"][0]["cycle_edges"]) == 3
    # a 4-cycle a > b > c > d > a with a tie between a and c: a cycle without an intransitive triple
    square = {("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"), ("b", "d")}
    assert cycle_edges(square) == {("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"), ("b", "d")}
    assert intransitive_triples(square) == [("a", "b", "d")]
    assert cycle_edges({("a", "b"), ("b", "c"), ("a", "c")}) == set()


def test_labels_per_hour_caps_idle_gaps():
    # shown at -60, labelled at 0, 60, 120, 1120: active = 60 + 60 + 60 + min(1000, 300) = 480 s
    labels = [Label("ann", f"i{i}", "left", created_at=t) for i, t in enumerate([0, 60, 120, 1120])]
    labels[0] = Label("ann", "i0", "left", created_at=0, shown_at=-60)
    assert labels_per_hour(labels, idle_cap=300) == pytest.approx(4 / (480 / 3600))


# ---------------------------------------------------------------- export by hand


def _export_case():
    """ann (honeypots 2/2), bob (1/2), cat (none), dan (always left: flagged)."""
    items, labels = {}, []

    def item(key, prompt, sa="x", sb="y"):
        items[key] = Item(key, prompt, sa, f"{sa} answers {prompt}", sb, f"{sb} answers {prompt}")

    def lab(who, key, winner, n=[0]):  # noqa: B006 - a counter for showing ids
        n[0] += 1
        it = items[key]
        other = {"a": "b", "b": "a"}.get(winner, "a")
        if winner in ("tie", "both_bad"):
            choice, left = winner, "a"
        elif who == "dan" or n[0] % 2:  # dan always clicks left; the others click either side
            choice, left = "left", winner
        else:
            choice, left = "right", other
        labels.append(
            Label(
                who,
                key,
                choice,
                left=left,
                prompt=it.prompt,
                system_a=it.system_a,
                system_b=it.system_b,
                gold=it.gold,
                assignment=n[0],
            )
        )

    for key in ("h1", "h2", "h3", "h4"):
        items[key] = Item(key, "gold?", "gold-chosen", "right", "gold-rejected", "wrong", "a")
    lab("ann", "h1", "a"), lab("ann", "h2", "a"), lab("bob", "h3", "a"), lab("bob", "h4", "b")
    for i in range(1, 5):
        item(f"i{i}", f"P{i}")
    item("xy", "P6", "x", "y"), item("yz", "P6", "y", "z"), item("zx", "P6", "z", "x")
    for who, key, winner in [
        ("ann", "i1", "a"), ("bob", "i1", "a"), ("cat", "i1", "b"),
        ("ann", "i2", "a"), ("bob", "i2", "a"), ("cat", "i2", "a"),
        ("ann", "i3", "b"), ("cat", "i3", "b"),
        ("ann", "i4", "tie"), ("bob", "i4", "tie"),
        ("cat", "xy", "a"), ("cat", "yz", "a"), ("cat", "zx", "a"),  # x > y > z > x
        ("dan", "i1", "a"), ("dan", "i2", "b"), ("dan", "i3", "a"), ("dan", "i4", "b"),
    ]:  # fmt: skip
        lab(who, key, winner)
    return items, labels


def test_export_majority_weights_and_drops_by_hand():
    items, labels = _export_case()
    # dan always clicks left (his sides a, b, a, b): bias 1.0 -> flagged. Without him, cat's kappa is
    # (0.4 x 3 shared with ann + 0 x 2 with bob) / 5 = 0.24 >= 0.2: not flagged (with him it would be -0.15)
    cfg = ProjectConfig(pairs="p.jsonl", assessors={"ann": "t" * 12}, admin_token="a" * 12)
    report = summarize(labels, cfg.thresholds)
    assert report["flagged"] == ["dan"]
    assert next(a for a in report["assessors"] if a["assessor"] == "cat")["agreement_kappa"] == pytest.approx(
        0.24
    )
    # reliability = smoothed honeypot accuracy (hits + 1) / (n + 2): ann 3/4, bob 2/4, cat 1 (no honeypots)
    per = {w: [lb for lb in labels if lb.assessor == w] for w in ("ann", "bob", "cat")}
    assert [reliability(per[w]) for w in ("ann", "bob", "cat")] == [0.75, 0.5, 1.0]
    rows, dropped = build_preferences(labels, items, cfg)
    got = {(r["prompt"], r["chosen_system"]): r["weight"] for r in rows}
    assert got == {
        ("P2", "x"): pytest.approx(0.75),  # all three agree: agreement 1 x mean reliability (.75+.5+1)/3
        ("P3", "y"): pytest.approx(0.875),  # ann and cat pick b: (.75 + 1) / 2
        ("P6", "x"): pytest.approx(0.5),  # cat alone, but on a cycle: 1 x 1 x downweight .5
        ("P6", "y"): pytest.approx(0.5),
        ("P6", "z"): pytest.approx(0.5),
    }
    assert dropped == {
        "honeypot labels (measure assessors only)": 4,
        "labels of flagged assessor dan": 4,
        "agreement below 0.6": 1,  # P1: a has .75 + .5 = 1.25 of 2.25 = .556
        "majority tie": 1,  # P4
        "down-weighted: on a preference cycle (kept)": 3,
    }
    p2 = next(r for r in rows if r["prompt"] == "P2")
    assert (p2["chosen"], p2["rejected"]) == ("x answers P2", "y answers P2")
    # the other policies: keep low agreement down-weighted, drop cycles
    cfg.export.low_agreement, cfg.export.cyclic = "downweight", "drop"
    rows, dropped = build_preferences(labels, items, cfg)
    got = {r["prompt"]: r["weight"] for r in rows}
    assert got == {"P1": pytest.approx(1.25 / 2.25 * 0.625 * 0.5), "P2": 0.75, "P3": 0.875}
    assert dropped["on a preference cycle"] == 3
    battles = judgments(labels, {"dan"})
    assert len(battles) == 13 and {b["judge"] for b in battles} == {"ann", "bob", "cat"}
    assert {"model_a": "x", "model_b": "y", "winner": "tie", "judge": "ann", "prompt": "P4"} in battles


# ---------------------------------------------------------------- planning the queues


def test_queues_overlap_honeypots_and_swapped_repeats():
    import random

    items = [Item(f"i{i}", f"p{i}", "x", "1", "y", "2") for i in range(30)]
    gold = [Item(f"h{i}", f"g{i}", "c", "1", "r", "2", "a") for i in range(5)]
    kw = dict(overlap=2, honeypot_share=0.2, repeat_share=0.2, repeat_gap=3)
    queues = plan_queues(items, gold, ["a", "b", "c", "d"], rng=random.Random(1), **kw)
    again = plan_queues(items, gold, ["a", "b", "c", "d"], rng=random.Random(1), **kw)
    assert [[(s.item.key, s.left) for s in q] for q in queues.values()] == [
        [(s.item.key, s.left) for s in q] for q in again.values()
    ]
    holders: dict[str, set] = {}
    for who, queue in queues.items():
        firsts = [s for s in queue if s.repeat_of is None and s.item.gold is None]
        assert len(firsts) == 15  # 30 items x 2 / 4 assessors, balanced
        hps = [s.item.key for s in queue if s.item.gold]
        assert len(hps) == len(set(hps)) == 4  # round(0.2 / 0.8 * 15)
        repeats = [s for s in queue if s.repeat_of is not None]
        assert len(repeats) == 3  # round(0.2 * 15)
        for rep in repeats:
            first, later = queue.index(rep.repeat_of), queue.index(rep)
            assert rep.item is rep.repeat_of.item and rep.left != rep.repeat_of.left
            assert later - first > 3 or later == len(queue) - 1
        for s in firsts:
            holders.setdefault(s.item.key, set()).add(who)
    assert len(holders) == 30 and all(len(h) == 2 for h in holders.values())


def test_store_sync_adds_only_new_items(tmp_path):
    path = write_project(
        tmp_path, two_answer_pairs(6), ["ann", "bob"], overlap=2, honeypot_share=0, repeat_share=0
    )
    project = load_project(path)
    store = Store(project.db_path)
    assert store.sync(project, load_items(project)) == 6
    assert store.sync(project, load_items(project)) == 0
    assert store.progress("ann") == (0, 6)
    write_project(tmp_path, two_answer_pairs(8), ["ann", "bob"], overlap=2, honeypot_share=0, repeat_share=0)
    assert store.sync(project, load_items(project)) == 2
    assert store.progress("bob") == (0, 8)


# ---------------------------------------------------------------- mistakes in the project or pairs file


def test_project_errors_name_file_line_and_key(tmp_path, cli):
    write_project(tmp_path, two_answer_pairs(2), ["ann"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "pairs: pairs.jsonl\nassessors:\n  ann: ann-token-0123456789\nadmin_token: admin-token-0123456789\n"
        "overlpa: 2\nthresholds:\n  position_bias: 2\n"
    )
    with pytest.raises(TunelabError) as err:
        load_project(bad)
    assert f"{bad}:5: 'overlpa': unknown key" in str(err.value)
    assert f"{bad}:7: 'thresholds.position_bias': input should be less than or equal to 1" in str(err.value)
    code, out, stderr = cli("label", "stats", str(bad))
    assert code == 2 and "overlpa" in stderr and "Traceback" not in stderr
    bad.write_text("pairs: p.jsonl\nassessors: {ann: short}\nadmin_token: admin-token-0123456789\n")
    with pytest.raises(TunelabError, match="assessors.ann': a token needs at least 12"):
        load_project(bad)
    bad.write_text(
        "pairs: p.jsonl\nassessors: {ann: ann-token-0123456789}\nadmin_token: x-token-0123456789\noverlap: 2\n"
    )
    with pytest.raises(TunelabError, match="overlap 2 needs at least that many assessors"):
        load_project(bad)


def test_pairs_file_errors_name_line_and_field(tmp_path, cli):
    path = write_project(tmp_path, two_answer_pairs(1), ["ann"])
    (tmp_path / "pairs.jsonl").write_text(
        '{"prompt": "q", "answers": [{"system": "x", "text": "1"}, {"system": "y", "text": "2"}]}\n'
        '{"prompt": "q", "answers": [{"system": "x", "text": "1"}, {"system": "y"}]}\n'
        '{"prompt": "q", "answers": [{"system": "x", "text": "1"}]}\n'
        "not json\n"
    )
    with pytest.raises(TunelabError) as err:
        load_items(load_project(path))
    text = str(err.value)
    pairs = tmp_path / "pairs.jsonl"
    assert f"{pairs}:2: field 'answers[1].text': expected non-empty text" in text
    assert f"{pairs}:3: field 'answers': expected a list of 2 or more" in text
    assert f"{pairs}:4: is not valid JSON" in text and "1 row(s) were fine" in text
    code, _, stderr = cli("label", "serve", str(path), "--port", "1")
    assert code == 2 and "answers[1].text" in stderr and "Traceback" not in stderr


# ---------------------------------------------------------------- the HTTP API, in-process


@pytest.fixture
def api(tmp_path):
    gold = [{"prompt": f"gold {i}?", "chosen": f"right {i}", "rejected": f"wrong {i}"} for i in range(4)]
    path = write_project(
        tmp_path,
        two_answer_pairs(10),
        ["ann", "bob"],
        honeypots=gold,
        overlap=2,
        honeypot_share=0.25,
        repeat_share=0.2,
    )
    project = load_project(path)
    store = Store(project.db_path)
    store.sync(project, load_items(project))
    reasons = {k: v.reasons[0] for k, v in project.cfg.rulebook.criteria.items()}
    hours = iter(range(0, 10**9, 3600))  # an hour between calls: the brake on failed logins never holds
    return TestClient(create_app(project, store, clock=lambda: next(hours))), store, reasons


def auth(name):
    return {"Authorization": f"Bearer {token(name)}"}


def test_every_api_endpoint_needs_the_right_token(api):
    client, _, _ = api
    assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
    for method, path in [
        ("GET", "/api/me"),
        ("GET", "/api/next"),
        ("POST", "/api/labels"),
        ("POST", "/api/undo"),
        ("GET", "/api/labels"),
        ("GET", "/api/admin/stats"),
        ("GET", "/api/admin/export"),
    ]:
        assert client.request(method, path).status_code == 401, path
        assert (
            client.request(method, path, headers={"Authorization": "Bearer wrong-token-000000"}).status_code
            == 401
        )
        assert (
            client.request(method, path, headers={"Authorization": token("ann")}).status_code == 401
        )  # no scheme
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert client.get("/api/admin/stats", headers=auth("ann")).status_code == 403
    assert client.get("/api/next", headers=admin).status_code == 403
    assert client.get("/api/admin/stats", headers=admin).status_code == 200
    assert client.get("/api/admin/export", headers=admin).json() == {"rows": [], "dropped": {}}
    assert client.get("/openapi.json").status_code == 404  # no public schema


def test_assessors_see_only_their_own_queue_and_labels(api):
    client, store, reasons = api
    ann = client.get("/api/next", headers=auth("ann")).json()["showing"]
    bob_labels = {"assignment": ann["assignment"], "choice": "left", "reasons": reasons}
    assert client.post("/api/labels", headers=auth("bob"), json=bob_labels).status_code == 404
    assert client.post("/api/labels", headers=auth("ann"), json=bob_labels).status_code == 201
    assert client.get("/api/labels", headers=auth("bob")).json() == {"labels": []}
    mine = client.get("/api/labels", headers=auth("ann")).json()["labels"]
    assert [m["assignment"] for m in mine] == [ann["assignment"]]
    assert client.post("/api/undo", headers=auth("bob")).status_code == 404  # bob has nothing to undo


def test_the_gold_answer_and_system_names_never_reach_the_browser(api):
    client, store, reasons = api
    seen = []
    while (show := client.get("/api/next", headers=auth("ann")).json()["showing"]) is not None:
        assert set(show) == {"assignment", "prompt", "left", "right"}
        seen.append(show)
        r = client.post(
            "/api/labels",
            headers=auth("ann"),
            json={"assignment": show["assignment"], "choice": "right", "reasons": reasons},
        )
        assert r.status_code == 201
    gold = [s for s in seen if s["prompt"].startswith("gold")]
    assert len(gold) == 3  # round(0.25 / 0.75 * 10) honeypots among ann's showings
    body = json.dumps(seen)
    assert '"x"' not in body and "gold-chosen" not in body
    assert {s["left"].split()[0] for s in gold} | {s["right"].split()[0] for s in gold} == {"right", "wrong"}
    assert len(seen) == 15  # 10 items + 3 honeypots + 2 repeats


def test_bad_input_is_a_4xx_with_a_message_never_a_500(api):
    client, store, reasons = api
    first = client.get("/api/next", headers=auth("ann")).json()["showing"]["assignment"]
    good = {"assignment": first, "choice": "left", "reasons": reasons}
    h = {**auth("ann"), "content-type": "application/json"}
    cases = [
        ({**good, "choice": "A"}, 422, "choice"),
        ({**good, "assignment": 10**9}, 404, "not in your queue"),
        ({**good, "assignment": -1}, 422, "assignment"),
        ({**good, "assignment": 2**70}, 422, "assignment"),
        ({**good, "assignment": "1; DROP TABLE labels"}, 422, "assignment"),
        ({**good, "assignment": True}, 422, "assignment"),  # not read as showing 1
        ({**good, "assignment": 1.5}, 422, "assignment"),
        ({**good, "reasons": {"honest": reasons["honest"]}}, 422, "one reason for each"),
        ({**good, "reasons": {**reasons, "helpful": "because"}}, 422, "not in the rule book"),
        ({**good, "reasons": {**reasons, "helpful": 3}}, 422, "reasons"),
        ({**good, "extra": 1}, 422, "extra"),
        ([good], 422, "body"),
        ("text", 422, "body"),
        (None, 422, "body"),
    ]
    for body, status, words in cases:
        r = client.post("/api/labels", headers=h, json=body)
        assert r.status_code == status and words in r.json()["detail"], (body, r.text)
    for raw in (b"{", b"\xff\xfe", b'{"assignment": 1e999}', b""):
        r = client.post("/api/labels", headers=h, content=raw)
        assert 400 <= r.status_code < 500 and r.json()["detail"], raw
    big = json.dumps({**good, "reasons": {**reasons, "helpful": "x" * 20_000}})
    r = client.post("/api/labels", headers=h, content=big)
    assert r.status_code == 413 and "16384" in r.json()["detail"]
    r = client.post("/api/labels", headers=h, content=(b"x" * 4096 for _ in range(8)))  # chunked: no length
    assert r.status_code == 413
    r = client.get("/api/next", headers={**auth("ann"), "content-length": "abc"})
    assert r.status_code == 400 and "Content-Length" in r.json()["detail"]
    assert client.post("/api/labels", headers=h, json=good).status_code == 201
    assert client.post("/api/labels", headers=h, json=good).status_code == 409  # labelled already
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 1


def test_undo_withdraws_the_last_label_and_the_showing_comes_back(api):
    client, store, reasons = api
    shown = []
    for choice in ("left", "tie"):
        show = client.get("/api/next", headers=auth("ann")).json()["showing"]
        shown.append(show["assignment"])
        client.post(
            "/api/labels",
            headers=auth("ann"),
            json={"assignment": show["assignment"], "choice": choice, "reasons": reasons},
        )
    r = client.post("/api/undo", headers=auth("ann")).json()
    assert r["undone"] == shown[1] and r["done"] == 1
    assert client.get("/api/next", headers=auth("ann")).json()["showing"]["assignment"] == shown[1]
    client.post(
        "/api/labels",
        headers=auth("ann"),
        json={"assignment": shown[1], "choice": "both_bad", "reasons": reasons},
    )
    with sqlite3.connect(store.path) as db:
        rows = db.execute(
            "SELECT assignment_id, choice, undone_at IS NOT NULL FROM labels ORDER BY id"
        ).fetchall()
    assert rows == [(shown[0], "left", 0), (shown[1], "tie", 1), (shown[1], "both_bad", 0)]
    assert [(lb.assignment, lb.choice) for lb in store.labels()] == [
        (shown[0], "left"),
        (shown[1], "both_bad"),
    ]


# ---------------------------------------------------------------- the real server: load and SIGKILL


def test_load_20_assessors_post_50_labels_each_and_1000_are_stored(tmp_path):
    names = [f"a{i:02d}" for i in range(20)]
    path = write_project(tmp_path, two_answer_pairs(250), names, overlap=4, honeypot_share=0, repeat_share=0)
    reasons = {k: v.reasons[0] for k, v in load_project(path).cfg.rulebook.criteria.items()}
    acked: dict[str, list[int]] = {}
    errors: list[str] = []
    with running_server(path) as (url, _):

        def assessor(name):
            done = []
            with httpx.Client(base_url=url, headers=auth(name), timeout=60) as client:
                for i in range(50):
                    show = client.get("/api/next").json()["showing"]
                    r = client.post(
                        "/api/labels",
                        json={
                            "assignment": show["assignment"],
                            "choice": "left" if i % 3 else "tie",
                            "reasons": reasons,
                        },
                    )
                    if r.status_code != 201:
                        errors.append(f"{name}: {r.status_code} {r.text}")
                        return
                    done.append(show["assignment"])
                assert client.get("/api/next").json() == {"showing": None, "done": 50, "total": 50}
            acked[name] = done

        started = time.perf_counter()
        threads = [threading.Thread(target=assessor, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        took = time.perf_counter() - started
    assert not errors
    db = sqlite3.connect(tmp_path / "label.db")
    assert db.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 1000
    per = dict(
        db.execute("SELECT assessor, COUNT(DISTINCT assignment_id) FROM labels GROUP BY assessor").fetchall()
    )
    assert per == {n: 50 for n in names}
    print(f"\nload test: 20 assessors x 50 labels (2000 requests) in {took:.1f} s")


def test_a_killed_server_keeps_every_acknowledged_label(tmp_path):
    path = write_project(tmp_path, two_answer_pairs(200), ["ann"], honeypot_share=0, repeat_share=0)
    reasons = {k: v.reasons[0] for k, v in load_project(path).cfg.rulebook.criteria.items()}
    acked: list[int] = []
    stop = threading.Event()
    with running_server(path) as (url, proc):

        def label_until_killed():
            with httpx.Client(base_url=url, headers=auth("ann"), timeout=5) as client:
                while not stop.is_set():
                    try:
                        show = client.get("/api/next").json()["showing"]
                        r = client.post(
                            "/api/labels",
                            json={"assignment": show["assignment"], "choice": "right", "reasons": reasons},
                        )
                    except httpx.TransportError:
                        return  # the server is gone
                    if r.status_code == 201:
                        acked.append(show["assignment"])

        worker = threading.Thread(target=label_until_killed)
        worker.start()
        deadline = time.monotonic() + 60
        while len(acked) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-session: requests are in flight
        proc.wait()
        stop.set()
        worker.join(10)
    assert len(acked) >= 30
    with running_server(path) as (url, _):
        with httpx.Client(base_url=url, headers=auth("ann")) as client:
            stored = [lb["assignment"] for lb in client.get("/api/labels").json()["labels"]]
            assert set(acked) <= set(stored) and len(stored) - len(acked) <= 1  # at most the one in flight
            nxt = client.get("/api/next").json()
            assert nxt["done"] == len(stored) and nxt["showing"]["assignment"] not in stored


# ---------------------------------------------------------------- the commands, and export -> tunelab rm


def test_stats_and_export_commands_and_the_export_trains_a_reward_model(tmp_path, cli):
    gold = [{"prompt": f"gold {i}?", "chosen": f"right {i}", "rejected": f"wrong {i}"} for i in range(3)]
    path = write_project(
        tmp_path / "p",
        two_answer_pairs(12),
        ["ann", "bob", "dan"],
        honeypots=gold,
        overlap=3,
        honeypot_share=0.2,
        repeat_share=0.25,
    )
    project = load_project(path)
    store = Store(project.db_path)
    store.sync(project, load_items(project))
    reasons = {k: v.reasons[0] for k, v in project.cfg.rulebook.criteria.items()}
    items = store.items()
    for who in ("ann", "bob", "dan"):  # ann and bob prefer x's answer everywhere; dan always clicks left
        while (show := store.next_showing(who)) is not None:
            assignment = (
                store.conn()
                .execute("SELECT item_id, left_side FROM assignments WHERE id = ?", (show["assignment"],))
                .fetchone()
            )
            key = store.conn().execute("SELECT key FROM items WHERE id = ?", (assignment[0],)).fetchone()[0]
            x_wins = (
                items[key].gold or int(items[key].prompt.split()[1].rstrip("?")) % 2 == 0
            )  # x on even items
            best = "a" if x_wins else "b"
            choice = "left" if who == "dan" or assignment[1] == best else "right"
            store.add_label(who, show["assignment"], choice, reasons)
    code, out, err = cli("label", "stats", str(path), "--json", str(tmp_path / "stats.json"))
    assert code == 0, err
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["flagged"] == ["dan"] and "position bias 1.00" in out
    assert stats["krippendorff_alpha_unflagged"] == pytest.approx(1.0)  # ann and bob always agree
    by = {a["assessor"]: a for a in stats["assessors"]}
    assert by["ann"]["honeypot_accuracy"] == 1.0 and by["ann"]["self_consistency"] == 1.0
    assert by["ann"]["position_bias"] not in (0.0, 1.0)
    prefs = tmp_path / "prefs.jsonl"
    code, out, err = cli(
        "label", "export", str(path), "--out", str(prefs), "--judgments", str(tmp_path / "j.jsonl")
    )
    assert code == 0, err
    rows = [json.loads(line) for line in prefs.read_text().splitlines()]
    assert len(rows) == 12 and all(r["weight"] > 0 for r in rows)
    assert sorted(r["chosen"] for r in rows) == sorted(
        f"{'x' if i % 2 == 0 else 'y'} says {i}" for i in range(12)
    )
    assert "labels of flagged assessor dan" in out and "honeypot labels" in out
    code, _, err = cli("arena", str(tmp_path / "j.jsonl"), "--out", str(tmp_path / "arena"), "--rounds", "50")
    assert code == 0, err
    ratings = json.loads((tmp_path / "arena" / "ratings.json").read_text())["ratings"]
    assert sorted(r["system"] for r in ratings) == ["x", "y"] and ratings[0]["games"] == 24  # ann + bob
    # the exported file trains a reward model as it is
    code, _, err = cli(
        "rm",
        "model=tiny:llama",
        f"data.train={prefs}",
        f"out={tmp_path / 'rm'}",
        "train.max_steps=2",
        "train.batch_size=4",
    )
    assert code == 0, err
    metrics = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and (tmp_path / "rm" / "final").is_dir()


def test_stats_without_a_database_says_so(tmp_path, cli):
    path = write_project(tmp_path, two_answer_pairs(2), ["ann"])
    code, _, err = cli("label", "stats", str(path))
    assert code == 2 and "does not exist yet" in err and "Traceback" not in err


def test_pairs_sampled_from_two_models_are_written_once_and_queued(tmp_path):
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in "abc")
    )
    sample = {
        "prompts": "prompts.jsonl",
        "systems": {"llama": "tiny:llama", "qwen": "tiny:qwen2"},
        "max_new_tokens": 4,
        "temperature": 0,
    }
    path = write_project(tmp_path, [], ["ann"], honeypot_share=0, repeat_share=0, sample=sample)
    (tmp_path / "pairs.jsonl").unlink()  # write_project wrote an empty one: sampling fills it
    project = load_project(path)
    items = load_items(project)
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Say a.", "Say b.", "Say c."]
    assert all(
        [a["system"] for a in r["answers"]] == ["llama", "qwen"] and r["answers"][0]["text"] for r in rows
    )
    assert len(items) == 3 and {(it.system_a, it.system_b) for it in items} == {("llama", "qwen")}
    stamp = (tmp_path / "pairs.jsonl").stat().st_mtime_ns
    assert (
        load_items(project) == items and (tmp_path / "pairs.jsonl").stat().st_mtime_ns == stamp
    )  # not again


def test_help_of_label_and_arena_renders(capsys):
    import argparse

    from tunelab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "human preference labelling" in parser.format_help()  # a stray % in a help text breaks this
    assert (
        "--judgments" in sub.choices["label"].format_help()
        and "--prior" in sub.choices["arena"].format_help()
    )


def test_serve_on_a_port_in_use_is_a_message(tmp_path, cli):
    import socket

    path = write_project(tmp_path, two_answer_pairs(2), ["ann"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = cli("label", "serve", str(path), "--port", str(busy.getsockname()[1]))
    assert code == 2 and "Cannot listen on 127.0.0.1" in err and "Traceback" not in err
