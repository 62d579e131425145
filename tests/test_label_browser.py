"""The labelling page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright): log in,
label three pairs with the keyboard, undo one, and the database holds exactly what was pressed.
The screenshot is kept in tests/artifacts/label_page.png."""

import json
import shutil
import sqlite3
from pathlib import Path

from helpers.label_server import running_server, token, write_project

ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_label_three_pairs_with_the_keyboard_and_undo_one(tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "make setup installs Debian's chromium"
    from playwright.sync_api import expect, sync_playwright

    pairs = [
        {
            "prompt": f"What is {i} + {i}?",
            "answers": [
                {"system": "good", "text": f"{i} + {i} = {2 * i}."},
                {"system": "bad", "text": f"{i} + {i} = {2 * i + 1}. <b>not bold</b>"},
            ],
        }
        for i in range(1, 5)
    ]
    path = write_project(tmp_path, pairs, ["ann"], honeypot_share=0, repeat_share=0)
    db = tmp_path / "label.db"
    pressed = []  # (showing, what it should store)
    with running_server(path) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(30_000)  # a busy 2-core machine: generous waits, never a timing assertion
        expect.set_options(timeout=30_000)
        page.goto(url)
        page.fill("#token", "wrong-token-000000")
        page.press("#token", "Enter")
        expect(page.locator("#login-error")).to_contain_text("not an assessor's token")
        page.fill("#token", token("ann"))
        page.press("#token", "Enter")
        expect(page.locator("#progress")).to_have_text("0 / 4")
        expect(page.locator("#who")).to_have_text("ann")
        expect(page.locator("#rules")).to_contain_text("honest, harmless and helpful")
        # 1: A better, with the "helpful" reason moved on once (key 3); 2: B better (arrow); 3: tie
        for n, (keys, choice) in enumerate(
            [(["3", "a"], "left"), (["ArrowRight"], "right"), (["t"], "tie")], 1
        ):
            showing = int(page.locator("#work").get_attribute("data-assignment"))
            left = page.locator("#left").text_content()
            assert "<b>" in left or "<b>" in page.locator("#right").text_content()  # HTML shown as text
            for key in keys:
                page.keyboard.press(key)
            pressed.append((showing, choice, "3" in keys))
            expect(page.locator("#progress")).to_have_text(f"{n} / 4")
        page.keyboard.press("u")  # undo the tie
        expect(page.locator("#progress")).to_have_text("2 / 4")
        expect(page.locator("#message")).to_contain_text("undone")
        assert int(page.locator("#work").get_attribute("data-assignment")) == pressed[2][0]
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "label_page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    print(f"\nscreenshot: {shot}")
    assert shot.stat().st_size > 10_000

    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT assignment_id, choice, reasons, undone_at IS NOT NULL FROM labels ORDER BY id"
    ).fetchall()
    helpful = json.loads(rows[0][2])["helpful"]
    assert helpful == "A answers the request better"  # the second reason: key 3 moved it on once
    assert [(r[0], r[1], r[3]) for r in rows] == [
        (pressed[0][0], "left", 0),
        (pressed[1][0], "right", 0),
        (pressed[2][0], "tie", 1),  # undone: kept for the record, not a live label
    ]
    assert all(json.loads(r[2])["honest"] == "no difference" for r in rows)
    assert json.loads(rows[1][2])["helpful"] == "no difference"  # reasons reset for every pair
