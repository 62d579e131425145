"""The embedded task: pull three fields out of a short product note and answer with one line of JSON.

    rows = make_rows(400, seed=0)    # [{"prompt": "...", "completion": '{"name": ..., "price": ..., "color": ...}'}]

SmolLM2-135M-Instruct cannot do it zero-shot in the exact format, and learns it from a few hundred
examples with LoRA in minutes on a CPU: a task where the ladder's rungs differ visibly.
"""

from __future__ import annotations

import json
import random

from tunelab.tasks.metrics import json_equal

NAMES = [
    "Aero Lamp",
    "Brio Kettle",
    "Cobalt Chair",
    "Delta Desk",
    "Ember Mug",
    "Fjord Backpack",
    "Gale Fan",
    "Halo Clock",
    "Iris Vase",
    "Juno Blender",
    "Kite Scarf",
    "Lumen Torch",
    "Mesa Rug",
    "Nova Pen",
    "Orbit Speaker",
    "Pico Camera",
    "Quill Notebook",
    "Ridge Boots",
    "Sol Umbrella",
    "Tide Bottle",
]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "orange", "purple", "grey", "pink"]
TEMPLATES = [
    "The {name} comes in {color} and costs {price} dollars.",
    "Now on sale: {name}, {color}, only {price} dollars!",
    "For {price} dollars you get the {color} {name}.",
    "Our {color} {name} is priced at {price} dollars.",
    "{name} ({color}) - {price} dollars, free shipping.",
]
INSTRUCTION = 'Extract the product name, price and color as JSON with keys "name", "price", "color".'
RULES = [
    "Answer with a single line of JSON and nothing else: no code fences, no explanation.",
    'Use exactly the keys "name", "price" and "color".',
    '"name" is the product name only, as written in the note, without the colour.',
    '"price" is a whole number, without currency or quotes.',
    '"color" is the colour in lower case.',
]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, color, price = rng.choice(NAMES), rng.choice(COLORS), rng.randint(5, 500)
        note = rng.choice(TEMPLATES).format(name=name, color=color, price=price)
        answer = json.dumps({"name": name, "price": price, "color": color})
        rows.append({"prompt": f"{INSTRUCTION}\n{note}", "completion": answer})
    return rows


def exact_match(completion: str, reference: str) -> float:
    """1.0 when the completion parses to the same JSON object as the reference."""
    return json_equal(completion.strip(), reference)
