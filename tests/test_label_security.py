"""The labelling service as an attacker and a careless admin would try it (issue 21, item 1): roles from
tokens, look-alike names, labels only for what was served, exposure off loopback, a brake on guessing
tokens, duplicate keys, a damaged database or a full disk, and user text that reaches the console."""

import resource
import signal
import sqlite3

import pytest
from fastapi.testclient import TestClient
from helpers.label_server import ADMIN, token, two_answer_pairs, write_project

from tunelab.errors import TunelabError
from tunelab.label.auth import RESERVED_NAMES, confusable_names
from tunelab.label.db import Store
from tunelab.label.pairs import load_items
from tunelab.label.project import load_project
from tunelab.label.server import PUBLISHED_TOKENS, create_app, exposure_warnings


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def app_for(tmp_path, assessors=("ann", "bob"), n=6, **options):
    path = write_project(tmp_path, two_answer_pairs(n), list(assessors), **options)
    project = load_project(path)
    store = Store(project.db_path)
    store.sync(project, load_items(project))
    reasons = {k: v.reasons[0] for k, v in project.cfg.rulebook.criteria.items()}
    clock = Clock()
    return TestClient(create_app(project, store, clock=clock)), store, reasons, clock


def auth(name):
    return {"Authorization": f"Bearer {token(name)}"}


@pytest.mark.parametrize(
    "name", ["admin", "Admin", "ADMIN", "adm1n", "ad_min", "a.d.m.i.n", "root", "System"]
)
def test_an_assessor_may_not_be_called_like_the_admin(tmp_path, name):
    write_project(tmp_path, two_answer_pairs(1), [name])
    with pytest.raises(TunelabError, match=f"assessor name '{name}' looks like"):
        load_project(tmp_path / "project.yaml")


@pytest.mark.parametrize(
    "names", [["ann", "Ann"], ["bob", "b0b"], ["al", "a1"], ["jo_e", "joe"], ["ann", "ann."]]
)
def test_assessor_names_too_alike_to_tell_apart_are_refused(tmp_path, names):
    write_project(tmp_path, two_answer_pairs(1), names)
    with pytest.raises(TunelabError, match="too alike to tell apart"):
        load_project(tmp_path / "project.yaml")
    assert confusable_names(["ann", "bob", "cat", "dan"]) is None
    assert "admin" in RESERVED_NAMES


def test_the_admin_is_whoever_holds_the_admin_token_never_a_name(tmp_path):
    # 'boss' and 'administrators' are fine names; neither gets the admin's rights from it
    client, *_ = app_for(tmp_path, assessors=("boss", "administrators"))
    for name in ("boss", "administrators"):
        assert client.get("/api/admin/export", headers=auth(name)).status_code == 403
        assert client.get("/api/admin/stats", headers=auth(name)).status_code == 403
        assert client.get("/api/me", headers=auth(name)).json()["assessor"] == name
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert client.get("/api/admin/export", headers=admin).status_code == 200
    assert client.get("/api/me", headers=admin).status_code == 403  # and the admin has no queue


def test_a_label_is_taken_only_for_a_showing_served_to_that_assessor_and_not_yet_labelled(tmp_path):
    client, store, reasons, _ = app_for(tmp_path, n=12)
    queue = [
        r[0]
        for r in store.conn().execute("SELECT id FROM assignments WHERE assessor = 'ann' ORDER BY position")
    ]

    def label(assignment, who="ann"):
        body = {"assignment": assignment, "choice": "left", "reasons": reasons}
        return client.post("/api/labels", headers=auth(who), json=body)

    ahead = label(queue[5])  # never served: a script labelling ahead of the page
    assert ahead.status_code == 409 and "has not been served to you yet" in ahead.json()["detail"]
    first = client.get("/api/next", headers=auth("ann")).json()["showing"]["assignment"]
    assert first == queue[0]
    assert label(queue[1]).status_code == 409  # the next one is not served before it is asked for
    assert label(first, who="bob").status_code == 404  # served to ann, not to bob
    assert label(first).status_code == 201
    assert label(first).status_code == 409  # labelled already
    assert client.post("/api/undo", headers=auth("ann")).status_code == 200
    assert label(first).status_code == 201  # undone: served and unlabelled again
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM labels WHERE undone_at IS NULL").fetchone()[0] == 1


def test_repeated_failed_logins_are_slowed_down_and_a_success_clears_them(tmp_path):
    client, _, _, clock = app_for(tmp_path)
    wrong = {"Authorization": "Bearer guess-000000000000"}
    assert [client.get("/api/me", headers=wrong).status_code for _ in range(5)] == [401] * 5
    held = client.get("/api/me", headers=wrong)
    assert held.status_code == 429 and held.headers["retry-after"] == "1"
    assert client.get("/api/me", headers=auth("ann")).status_code == 429  # no guess is checked while held
    clock.now += 1.5
    assert client.get("/api/me", headers=wrong).status_code == 401  # the 6th failure: now 2 s
    clock.now += 1.0
    assert client.get("/api/me", headers=wrong).status_code == 429
    clock.now += 1.5
    assert client.get("/api/me", headers=auth("ann")).status_code == 200  # a success clears the count
    assert [client.get("/api/me", headers=wrong).status_code for _ in range(5)] == [401] * 5
    clock.now += 61  # failures older than a minute are forgotten
    assert client.get("/api/me", headers=wrong).status_code == 401


def test_serving_off_loopback_refuses_example_tokens_and_warns_without_tls(tmp_path, cli):
    shipped = load_project("examples/label/project.yaml")
    assert set(shipped.tokens) | {shipped.admin_token} <= PUBLISHED_TOKENS  # kept in step with the example
    for host in ("0.0.0.0", "192.168.1.5", "::", "labels.example.org"):
        with pytest.raises(TunelabError, match=f"refusing to serve on {host}.*example tokens"):
            exposure_warnings(shipped, host)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert exposure_warnings(shipped, host) == []
    code, _, err = cli("label", "serve", "examples/label/project.yaml", "--host", "0.0.0.0", "--port", "0")
    assert code == 2 and "example tokens (ann, bob, cat, admin_token)" in " ".join(err.split())
    own = load_project(write_project(tmp_path / "own", two_answer_pairs(1), ["ann"]))
    [warning] = exposure_warnings(own, "0.0.0.0")
    assert "plain HTTP" in warning and "server.tls_proxy" in warning
    behind = load_project(
        write_project(tmp_path / "tls", two_answer_pairs(1), ["ann"], server={"tls_proxy": True})
    )
    assert exposure_warnings(behind, "0.0.0.0") == []
    write_project(tmp_path / "half", two_answer_pairs(1), ["ann"], server={"tls_cert": "c.pem"})
    with pytest.raises(TunelabError, match="tls_cert and server.tls_key go together"):
        load_project(tmp_path / "half" / "project.yaml")


def test_a_key_set_twice_in_a_project_file_is_refused(tmp_path):
    write_project(tmp_path, two_answer_pairs(1), ["ann"])
    path = tmp_path / "dup.yaml"
    path.write_text(
        "pairs: pairs.jsonl\nassessors:\n  ann: ann-token-0123456789\n  ann: evil-token-0123456789\n"
        f"admin_token: {ADMIN}\n"
    )
    with pytest.raises(TunelabError, match=r"'assessors.ann' appears twice \(line 3 and line 4\)"):
        load_project(path)


def test_a_damaged_database_is_a_message_on_the_command_line_and_json_over_http(tmp_path, cli):
    client, store, reasons, _ = app_for(tmp_path)
    first = client.get("/api/next", headers=auth("ann")).json()["showing"]["assignment"]
    with sqlite3.connect(store.path) as db:  # the file damaged under the running server
        db.execute("DROP TABLE labels")
    r = client.post(
        "/api/labels", headers=auth("ann"), json={"assignment": first, "choice": "left", "reasons": reasons}
    )
    assert r.status_code == 503 and "the label database" in r.json()["detail"]
    assert client.get("/api/next", headers=auth("ann")).status_code == 503
    with sqlite3.connect(store.path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000)  # overwritten bytes
    for side in ("-wal", "-shm"):
        store.path.with_name(store.path.name + side).unlink(missing_ok=True)
    for command in (["stats"], ["export", "--out", str(tmp_path / "p.jsonl")]):
        code, _, err = cli("label", *command, str(tmp_path / "project.yaml"))
        assert code == 2 and "Traceback" not in err
        assert f"the label database {store.path} is damaged" in " ".join(err.split())


def test_a_full_disk_while_labelling_is_a_json_503_and_loses_no_acknowledged_label(tmp_path):
    client, store, reasons, _ = app_for(tmp_path, n=30)
    body = lambda a: {"assignment": a, "choice": "left", "reasons": reasons}  # noqa: E731
    first = client.get("/api/next", headers=auth("ann")).json()["showing"]["assignment"]
    assert client.post("/api/labels", headers=auth("ann"), json=body(first)).status_code == 201
    second = client.get("/api/next", headers=auth("ann")).json()["showing"]["assignment"]
    old_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, old_limit[1]))  # every write now fails as on a full disk
    try:
        r = client.post("/api/labels", headers=auth("ann"), json=body(second))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_signal)
    assert r.status_code == 503 and "detail" in r.json()
    assert "disk is full" in r.json()["detail"] or "failed" in r.json()["detail"]
    assert (
        client.post("/api/labels", headers=auth("ann"), json=body(second)).status_code == 201
    )  # space again
    assert [lab["assignment"] for lab in client.get("/api/labels", headers=auth("ann")).json()["labels"]] == [
        first,
        second,
    ]


def test_label_stats_prints_prompts_with_markup_as_they_are(tmp_path, cli):
    prompts = ["[/INST] close a tag that is not open", "[link=https://evil.example]click[/link] here"]
    pairs = [
        {"prompt": p, "answers": [{"system": "x", "text": "one"}, {"system": "y", "text": "two"}]}
        for p in prompts
    ]
    path = write_project(tmp_path, pairs, ["ann", "bob"], overlap=2, repeat_share=0)
    project = load_project(path)
    store = Store(project.db_path)
    store.sync(project, load_items(project))
    reasons = {k: v.reasons[0] for k, v in project.cfg.rulebook.criteria.items()}
    for who, choice in (("ann", "left"), ("bob", "right")):  # they disagree: both prompts are listed
        while (show := store.next_showing(who)) is not None:
            store.add_label(who, show["assignment"], choice, reasons)
    code, out, err = cli("label", "stats", str(path))
    assert code == 0, err
    flat = " ".join(out.split())
    assert "[/INST] close a tag" in flat and "[link=https://evil.example]click[/link]" in flat
    assert "\x1b]8;" not in out  # no hyperlink escape sequence


def test_create_app_reads_in_one_screen():
    import inspect

    from tunelab.label import server

    assert len(inspect.getsource(server.create_app).splitlines()) < 60
