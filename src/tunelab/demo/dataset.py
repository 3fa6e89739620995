"""The demo's own datasets: short stories about a requested name and animal (sft), preference pairs and
labelled answers built from them (rm, dpo, orpo, simpo, kto), and the bare prompts with the requested name
for the RL stages (grpo, rloo, ppo).

The embedded model only knows simple English stories, so the task is one it can learn in seconds:
"Write a story about NAME and a ANIMAL." answered by a story that uses both. Held-out prompts pair
names and animals that never appear together in training, so the score measures following the
request, not recall.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Lily", "Tim", "Ben", "Sue", "Tom", "Max", "Anna", "Mia", "Sam", "Lucy", "Jack", "Sara", "Bob",
         "Amy", "Kate", "Joe", "Zoe", "Leo", "Ella", "Jane"]
ANIMALS = ["dog", "cat", "bird", "fish", "frog", "bunny", "duck", "bear", "lion", "mouse", "horse", "cow"]
STORIES = [
    "Once upon a time, there was a kid named {name}. {name} had a little {animal}. "
    "Every day, {name} and the {animal} played in the park. They were very happy.",
    "One day, {name} went to the park and saw a {animal}. The {animal} was sad. "
    "{name} gave the {animal} a hug. The {animal} was happy and they became friends.",
    "{name} wanted to play with the {animal}. {name} ran to the {animal} and said, \"Let's play!\" "
    "The {animal} said yes. {name} and the {animal} played all day.",
]
PROMPT = "Write a story about {name} and a {animal}."


def _record(name: str, animal: str, rng: random.Random) -> dict[str, str]:
    story = rng.choice(STORIES).format(name=name, animal=animal)
    return {"instruction": PROMPT.format(name=name, animal=animal), "input": "", "output": story}


def build(seed: int = 0, held_out: int = 24) -> tuple[list[dict], list[dict]]:
    """(train, held-out) alpaca records; held-out name/animal pairs never occur in train."""
    rng = random.Random(seed)
    pairs = [(name, animal) for name in NAMES for animal in ANIMALS]
    rng.shuffle(pairs)
    test_pairs, train_pairs = pairs[:held_out], pairs[held_out:]
    return [_record(n, a, rng) for n, a in train_pairs], [_record(n, a, rng) for n, a in test_pairs]


def build_preferences(seed: int = 1, held_out: int = 24) -> tuple[list[dict], list[dict]]:
    """(train, held-out) preference pairs: chosen tells the story about the requested name, rejected the same
    story about another name. Held-out pairs use name/animal combinations that train never has, so a rise in
    held-out preference accuracy means the model learned to prefer following the request."""
    rng = random.Random(seed)
    pairs = [(name, animal) for name in NAMES for animal in ANIMALS]
    rng.shuffle(pairs)

    def pair(name: str, animal: str) -> dict[str, str]:
        story = rng.choice(STORIES)
        other = rng.choice([n for n in NAMES if n != name])
        return {"instruction": PROMPT.format(name=name, animal=animal),
                "chosen": story.format(name=name, animal=animal), "rejected": story.format(name=other, animal=animal)}

    return [pair(n, a) for n, a in pairs[held_out:]], [pair(n, a) for n, a in pairs[:held_out]]


def build_kto(seed: int = 2) -> list[dict]:
    """Unpaired labelled answers (KTO): the preference pairs split into a desirable and an undesirable row."""
    train, _ = build_preferences(seed)
    rows = []
    for index, record in enumerate(train):
        side = "chosen" if index % 2 == 0 else "rejected"  # one answer per prompt, desirable and not alternating
        rows.append({"prompt": record["instruction"], "completion": record[side], "label": side == "chosen"})
    return rows


def build_rl_prompts(seed: int = 3, held_out: int = 24) -> tuple[list[dict], list[dict]]:
    """(train, held-out) RL prompts with the requested name and animal as extra columns, which reward functions
    read (``examples/rewards/story_rewards.py``: does the story use the requested name?)."""
    rng = random.Random(seed)
    pairs = [(name, animal) for name in NAMES for animal in ANIMALS]
    rng.shuffle(pairs)

    def prompt(name: str, animal: str) -> dict[str, str]:
        return {"instruction": PROMPT.format(name=name, animal=animal), "name": name, "animal": animal}

    return [prompt(n, a) for n, a in pairs[held_out:]], [prompt(n, a) for n, a in pairs[:held_out]]


def write(folder: Path) -> None:
    """Write the demo datasets (sft, held-out, plain text) and their dataset_info.json registry."""
    train, test = build()
    folder.mkdir(parents=True, exist_ok=True)
    pref_train, pref_test = build_preferences()
    rl_train, rl_test = build_rl_prompts()
    for file_name, records in (("demo_stories.json", train), ("demo_stories_heldout.json", test),
                               ("demo_preferences.json", pref_train), ("demo_preferences_heldout.json", pref_test),
                               ("demo_kto.json", build_kto()), ("demo_rl_prompts.json", rl_train),
                               ("demo_rl_prompts_heldout.json", rl_test)):
        (folder / file_name).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    # The same stories as plain text, one per line, for continued pretraining (stage pt).
    (folder / "demo_stories.txt").write_text("".join(r["output"] + "\n" for r in train), encoding="utf-8")
    registry_path = folder / "dataset_info.json"
    registry = json.loads(registry_path.read_text(encoding="utf-8")) if registry_path.exists() else {}
    registry.update({"demo_stories": {"file_name": "demo_stories.json"},
                     "demo_stories_heldout": {"file_name": "demo_stories_heldout.json"},
                     "demo_stories_text": {"file_name": "demo_stories.txt"},
                     "demo_preferences": {"file_name": "demo_preferences.json"},
                     "demo_preferences_heldout": {"file_name": "demo_preferences_heldout.json"},
                     "demo_kto": {"file_name": "demo_kto.json"},
                     "demo_rl_prompts": {"file_name": "demo_rl_prompts.json"},
                     "demo_rl_prompts_heldout": {"file_name": "demo_rl_prompts_heldout.json"}})
    registry_path.write_text(json.dumps(registry, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write(Path(__file__).resolve().parents[3] / "examples" / "data")
