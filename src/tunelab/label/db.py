"""The labelling store: SQLite in WAL mode, every statement parameterised.

    store = Store("label.db")
    store.sync(project, items)                    # new items -> planned, stored queues
    show = store.next_showing("ann")              # the first unlabelled showing of ann's queue
    store.add_label("ann", show["assignment"], "left", {"honest": "no difference", ...})

A label is acknowledged only after its transaction committed with `synchronous=FULL`, so a server
killed at any moment keeps every label it answered 201 for. Writes take the write lock up front
(`BEGIN IMMEDIATE`): two read-then-write transactions can then never deadlock on upgrading their lock.
Undo does not delete: it stamps `undone_at`, and a partial unique index allows one live label per showing.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunelab.label.pairs import Item
from tunelab.label.project import Project
from tunelab.label.queue import Showing, plan_queues
from tunelab.label.stats import Label

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, prompt TEXT NOT NULL,
    system_a TEXT NOT NULL, text_a TEXT NOT NULL, system_b TEXT NOT NULL, text_b TEXT NOT NULL,
    gold TEXT CHECK (gold IN ('a', 'b')), source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    id INTEGER PRIMARY KEY, assessor TEXT NOT NULL, position INTEGER NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items (id),
    left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')),
    repeat_of INTEGER REFERENCES assignments (id), shown_at REAL,
    UNIQUE (assessor, position));
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY, assignment_id INTEGER NOT NULL REFERENCES assignments (id),
    assessor TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'both_bad')),
    left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')),
    reasons TEXT NOT NULL, created_at REAL NOT NULL, undone_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_label ON labels (assignment_id) WHERE undone_at IS NULL;
CREATE INDEX IF NOT EXISTS labels_by_assessor ON labels (assessor, undone_at);
"""


class NotFound(LookupError):
    """No such showing in this assessor's queue (or nothing to undo)."""


class Conflict(Exception):
    """The showing already has a label, or was never served to this assessor."""


def db_problem(err: sqlite3.Error, path: Path) -> str:
    """One sentence for the user about a database error: a full disk, a damaged file, or something else."""
    text = str(err)
    if "full" in text:
        return f"the label database {path} cannot grow: the disk is full ({text}); free some space. Labels acknowledged before are safe."
    if isinstance(err, sqlite3.DatabaseError) and ("malformed" in text or "not a database" in text):
        return (
            f"the label database {path} is damaged ({text}); restore it from a backup, or move it away to "
            "start a new one (its labels are then lost)."
        )
    return f"the label database {path} failed: {text}. Labels acknowledged before are safe."


@contextmanager
def db_errors(path: Path) -> Iterator[None]:
    """For commands: a database error becomes a TunelabError with db_problem's sentence."""
    from tunelab.errors import TunelabError

    try:
        yield
    except sqlite3.Error as err:
        raise TunelabError(db_problem(err, path)) from None


class Store:
    """One SQLite file; one connection per thread (the server answers from a thread pool)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with db_errors(self.path):  # a damaged file says so before anything is served
            conn = self.conn()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            (health,) = conn.execute("PRAGMA quick_check(1)").fetchone()
            if health != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {health}")

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # ------------------------------------------------------------ planning

    def sync(self, project: Project, items: list[Item]) -> int:
        """Store items not seen before and queue them; returns how many new items were queued."""
        cfg = project.cfg
        with self.write() as conn:
            known = {r["key"] for r in conn.execute("SELECT key FROM items")}
            new = [it for it in items if it.key not in known]
            for it in new:
                conn.execute(
                    "INSERT INTO items (key, prompt, system_a, text_a, system_b, text_b, gold, source)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (it.key, it.prompt, it.system_a, it.text_a, it.system_b, it.text_b, it.gold, it.source),
                )
            regular = [it for it in new if it.gold is None]
            if not regular:
                return 0
            batch = int(self._meta(conn, "batches", "0"))
            ids = {r["key"]: r["id"] for r in conn.execute("SELECT id, key FROM items")}
            loads = dict(
                conn.execute(
                    "SELECT assessor, COUNT(*) FROM assignments a JOIN items i ON i.id = a.item_id"
                    " WHERE a.repeat_of IS NULL AND i.gold IS NULL GROUP BY assessor"
                ).fetchall()
            )
            honeypots = [it for it in items if it.gold is not None]
            queues = plan_queues(
                regular,
                honeypots,
                list(cfg.assessors),
                overlap=cfg.overlap,
                honeypot_share=cfg.honeypot_share,
                repeat_share=cfg.repeat_share,
                repeat_gap=cfg.repeat_gap,
                rng=random.Random(f"{cfg.seed}:{batch}"),
                loads=loads,
            )
            for assessor, queue in queues.items():
                self._insert_queue(conn, assessor, queue, ids)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('batches', ?)", (str(batch + 1),))
            return len(regular)

    def _insert_queue(self, conn: sqlite3.Connection, assessor: str, queue: list[Showing], ids: dict) -> None:
        start = conn.execute(
            "SELECT COALESCE(MAX(position), -1) + 1 FROM assignments WHERE assessor = ?", (assessor,)
        ).fetchone()[0]
        rowid: dict[int, int] = {}  # id(showing) -> assignment id; an original is always inserted first
        for pos, show in enumerate(queue, start):
            cur = conn.execute(
                "INSERT INTO assignments (assessor, position, item_id, left_side, repeat_of) VALUES (?, ?, ?, ?, ?)",
                (
                    assessor,
                    pos,
                    ids[show.item.key],
                    show.left,
                    rowid[id(show.repeat_of)] if show.repeat_of else None,
                ),
            )
            rowid[id(show)] = cur.lastrowid

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str, default: str) -> str:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    # ------------------------------------------------------------ an assessor's side

    def progress(self, assessor: str) -> tuple[int, int]:
        """(labelled, total) showings of this assessor's queue."""
        conn = self.conn()
        total = conn.execute("SELECT COUNT(*) FROM assignments WHERE assessor = ?", (assessor,)).fetchone()[0]
        done = conn.execute(
            "SELECT COUNT(*) FROM labels WHERE assessor = ? AND undone_at IS NULL", (assessor,)
        ).fetchone()[0]
        return done, total

    def next_showing(self, assessor: str) -> dict | None:
        """The first unlabelled showing in the queue, as the page shows it (no system names, no gold)."""
        conn = self.conn()
        row = conn.execute(
            "SELECT a.id, a.left_side, a.shown_at, i.prompt, i.text_a, i.text_b FROM assignments a"
            " JOIN items i ON i.id = a.item_id WHERE a.assessor = ? AND NOT EXISTS"
            " (SELECT 1 FROM labels l WHERE l.assignment_id = a.id AND l.undone_at IS NULL)"
            " ORDER BY a.position LIMIT 1",
            (assessor,),
        ).fetchone()
        if row is None:
            return None
        if row["shown_at"] is None:  # first showing starts the clock for labels/hour
            with self.write() as w:
                w.execute(
                    "UPDATE assignments SET shown_at = ? WHERE id = ? AND shown_at IS NULL",
                    (time.time(), row["id"]),
                )
        left, right = (
            (row["text_a"], row["text_b"]) if row["left_side"] == "a" else (row["text_b"], row["text_a"])
        )
        return {"assignment": row["id"], "prompt": row["prompt"], "left": left, "right": right}

    def add_label(self, assessor: str, assignment: int, choice: str, reasons: dict[str, str]) -> int:
        """Store one label; NotFound when the showing is not this assessor's, Conflict when it is labelled
        already or was never served to them (by next_showing)."""
        with self.write() as conn:
            row = conn.execute(
                "SELECT left_side, shown_at FROM assignments WHERE id = ? AND assessor = ?",
                (assignment, assessor),
            ).fetchone()
            if row is None:
                raise NotFound(f"showing {assignment} is not in your queue")
            if row["shown_at"] is None:  # a label is an answer to what was shown, never a guess ahead
                raise Conflict(
                    f"showing {assignment} has not been served to you yet; /api/next serves the next one"
                )
            if conn.execute(
                "SELECT 1 FROM labels WHERE assignment_id = ? AND undone_at IS NULL", (assignment,)
            ).fetchone():
                raise Conflict(f"showing {assignment} is already labelled (undo it first)")
            cur = conn.execute(
                "INSERT INTO labels (assignment_id, assessor, choice, left_side, reasons, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    assignment,
                    assessor,
                    choice,
                    row["left_side"],
                    json.dumps(reasons, sort_keys=True),
                    time.time(),
                ),
            )
            return int(cur.lastrowid)

    def undo_last(self, assessor: str) -> int:
        """Withdraw the assessor's latest live label; returns its showing (NotFound when none)."""
        with self.write() as conn:
            row = conn.execute(
                "SELECT id, assignment_id FROM labels WHERE assessor = ? AND undone_at IS NULL"
                " ORDER BY id DESC LIMIT 1",
                (assessor,),
            ).fetchone()
            if row is None:
                raise NotFound("nothing to undo")
            conn.execute("UPDATE labels SET undone_at = ? WHERE id = ?", (time.time(), row["id"]))
            return int(row["assignment_id"])

    def own_labels(self, assessor: str) -> list[dict]:
        """This assessor's live labels, oldest first, as they chose them (left/right)."""
        rows = (
            self.conn()
            .execute(
                "SELECT l.id, l.assignment_id, l.choice, l.reasons, l.created_at, i.prompt FROM labels l"
                " JOIN assignments a ON a.id = l.assignment_id JOIN items i ON i.id = a.item_id"
                " WHERE l.assessor = ? AND l.undone_at IS NULL ORDER BY l.id",
                (assessor,),
            )
            .fetchall()
        )
        return [
            {
                "id": r["id"],
                "assignment": r["assignment_id"],
                "choice": r["choice"],
                "reasons": json.loads(r["reasons"]),
                "created_at": r["created_at"],
                "prompt": r["prompt"],
            }
            for r in rows
        ]

    # ------------------------------------------------------------ the admin's side

    def labels(self) -> list[Label]:
        """Every live label with what stats and export need about its showing."""
        rows = (
            self.conn()
            .execute(  # each column is named after its Label field
                'SELECT l.assessor, i.key AS item, l.choice, l.left_side AS "left", i.prompt, i.system_a,'
                " i.system_b, i.gold, a.id AS assignment, a.repeat_of, l.created_at, a.shown_at, l.reasons"
                " FROM labels l JOIN assignments a ON a.id = l.assignment_id JOIN items i ON i.id = a.item_id"
                " WHERE l.undone_at IS NULL ORDER BY l.id"
            )
            .fetchall()
        )
        return [Label(**{**dict(r), "reasons": json.loads(r["reasons"])}) for r in rows]

    def items(self) -> dict[str, Item]:
        rows = self.conn().execute("SELECT * FROM items").fetchall()
        return {
            r["key"]: Item(
                r["key"],
                r["prompt"],
                r["system_a"],
                r["text_a"],
                r["system_b"],
                r["text_b"],
                r["gold"],
                r["source"],
            )
            for r in rows
        }
