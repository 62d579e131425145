"""What a tuned model should not forget: general text (perplexity) and a second task it was good at.

    GENERAL_TEXT                 # plain encyclopedic prose, written for tunelab
    capitals_task()              # "What is the capital of France?" -> "Paris"; SmolLM2 gets most right

The ladder measures both before and after each training rung: full fine-tuning is known to move
these more than parameter-efficient tuning does.
"""

from __future__ import annotations

from tunelab.tasks.base import Task

GENERAL_TEXT = """\
Water boils at a lower temperature on a mountain than at sea level, because the air pressure is lower \
there. Cooks at high altitude often add time to recipes for pasta and eggs for this reason.

The heart of an adult human beats about seventy times a minute at rest. Each beat pushes blood through \
the arteries to the organs, and the veins carry it back to the heart and the lungs.

Bees collect nectar from flowers and turn it into honey inside the hive. While they move from flower \
to flower, they carry pollen with them, which helps many plants produce fruit and seeds.

A library lends books, newspapers and films to the people of a town. Many libraries also offer quiet \
rooms for study, computers with internet access, and reading hours for young children.

The moon takes about twenty-seven days to travel once around the earth. Its light is sunlight \
reflected from its surface, and the shape we see changes as the angle between the sun, the earth and \
the moon changes.

Trains were among the first machines to carry large numbers of people over long distances. Railway \
lines connected cities and ports, and towns grew quickly around the new stations.

Rain forms when water vapour in the air cools and condenses into droplets. When the droplets grow \
heavy enough, they fall to the ground; in cold air they may fall as snow instead.

A healthy diet includes vegetables, fruit, whole grains and enough water. Doctors also recommend \
regular exercise and sleep, which help the body recover and keep the mind alert.

Maps show places from above, reduced to a scale that fits on paper or a screen. A compass rose marks \
north, and the legend explains the symbols used for roads, rivers, forests and towns.

Coffee is made from the roasted seeds of a plant that grows in warm regions. The beans are picked, \
dried and roasted, then ground and mixed with hot water to make the drink.

Volcanoes form where molten rock from deep inside the earth reaches the surface. Some erupt with \
great force, while others release lava slowly for many years.

Music is written in notes that tell a player the pitch and the length of each sound. An orchestra \
brings together strings, woodwinds, brass and percussion under the direction of a conductor.

Glass is made by heating sand until it melts and then letting it cool. Adding other minerals changes \
its colour and strength, which is why bottles, windows and lenses are made from different kinds.

Children usually begin to speak their first words at around one year of age. By the time they start \
school, most of them use thousands of words and can tell simple stories.

The ocean covers most of the surface of the earth. Its currents move heat from the warm regions near \
the equator towards the poles, which affects the weather on land.

Bread is made from flour, water, salt and yeast. The yeast produces gas that makes the dough rise, \
and baking sets the structure and gives the crust its colour.
"""

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("the United Kingdom", "London"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"),
    ("Thailand", "Bangkok"),
]


def capitals_task() -> Task:
    rows = [
        {"prompt": f"What is the capital of {country}? Answer with the city name only.", "answer": city}
        for country, city in CAPITALS
    ]
    return Task(
        name="capitals", train=[], eval=rows, metrics=["contains"], extract="strip", max_new_tokens=16
    )
