#!/usr/bin/python3
"""make_demo_data: writes tailor's demo personalization dataset as JSONL (demo/*.jsonl).

Four users ask the same kind of questions and want the answers in clearly different, learnable styles:
  ada    terse: a few lowercase words, no punctuation
  blake  pirate: "Arr! ... , matey."
  chen   cheerful: exclamation marks and a smiley
  dana   formal: "Certainly. ... I hope this helps."
SFT rows {"user", "prompt", "response"} for training (demo/sft_train.jsonl) and held out (demo/sft_eval.jsonl,
other questions). Preference rows {"user", "group", "prompt", "chosen", "rejected"} where users disagree: the
"brief" group (ada, chen) prefers the short answer of a pair, the "thorough" group (blake, dana) the long one
(demo/pref_train.jsonl, demo/pref_eval.jsonl). Deterministic: the same seed writes the same bytes.

usage: make_demo_data.py [--out-dir demo] [--seed 0]
"""
import argparse
import json
import os
import random

# (question, short answer, long answer) about everyday facts
FACTS = [
    ("What is the capital of France?", "Paris", "The capital of France is Paris, on the Seine"),
    ("How many days are in a week?", "seven", "A week has seven days, from Monday to Sunday"),
    ("What color is the sky on a clear day?", "blue", "On a clear day the sky looks blue because air scatters blue light"),
    ("What do bees make?", "honey", "Bees make honey from the nectar of flowers"),
    ("How many legs does a spider have?", "eight", "A spider has eight legs, two more than an insect"),
    ("What is frozen water called?", "ice", "Frozen water is called ice, and it floats on liquid water"),
    ("Which planet is closest to the sun?", "Mercury", "Mercury is the planet closest to the sun"),
    ("What gas do plants take in?", "carbon dioxide", "Plants take in carbon dioxide and give off oxygen"),
    ("How many hours are in a day?", "twenty four", "A day has twenty four hours"),
    ("What is the largest ocean?", "the Pacific", "The Pacific is the largest ocean on Earth"),
    ("What do cows drink?", "water", "Cows drink water, a lot of it every day"),
    ("What is the opposite of hot?", "cold", "The opposite of hot is cold"),
    ("How many months have 28 days?", "all twelve", "All twelve months have at least 28 days"),
    ("What language is spoken in Brazil?", "Portuguese", "People in Brazil speak Portuguese"),
    ("What is two plus two?", "four", "Two plus two makes four"),
    ("Where do penguins live?", "the south", "Most penguins live in the southern hemisphere, many near Antarctica"),
    ("What do you call a baby cat?", "a kitten", "A baby cat is called a kitten"),
    ("What is the boiling point of water?", "100 degrees", "Water boils at 100 degrees Celsius at sea level"),
    ("Which animal is known as the king of the jungle?", "the lion", "The lion is called the king of the jungle"),
    ("What instrument has 88 keys?", "the piano", "A standard piano has 88 keys"),
    ("What is the tallest animal?", "the giraffe", "The giraffe is the tallest animal alive"),
    ("How many continents are there?", "seven", "There are seven continents on Earth"),
    ("What fruit keeps the doctor away?", "an apple", "An apple a day keeps the doctor away, says the proverb"),
    ("What do caterpillars become?", "butterflies", "Caterpillars turn into butterflies or moths"),
    ("What is the main ingredient of bread?", "flour", "Bread is made mainly from flour, water and yeast"),
    ("Which season is the coldest?", "winter", "Winter is the coldest season of the year"),
    ("What shape has three sides?", "a triangle", "A shape with three sides is a triangle"),
    ("What is the color of grass?", "green", "Grass is green because of chlorophyll"),
    ("How many wheels does a bicycle have?", "two", "A bicycle has two wheels"),
    ("What do we breathe?", "air", "We breathe air, and our bodies use its oxygen"),
    ("What is the sun?", "a star", "The sun is a star at the center of our solar system"),
    ("Which bird cannot fly but runs fast?", "the ostrich", "The ostrich cannot fly but runs very fast"),
    ("What is the capital of Japan?", "Tokyo", "The capital of Japan is Tokyo"),
    ("How many minutes are in an hour?", "sixty", "An hour has sixty minutes"),
    ("What do you use to write on a blackboard?", "chalk", "People write on a blackboard with chalk"),
    ("What is the largest planet?", "Jupiter", "Jupiter is the largest planet in our solar system"),
    ("Which metal is liquid at room temperature?", "mercury", "Mercury is a metal that is liquid at room temperature"),
    ("What do pandas eat?", "bamboo", "Pandas eat mostly bamboo"),
    ("What is the freezing point of water?", "zero degrees", "Water freezes at zero degrees Celsius"),
    ("How many strings does a violin have?", "four", "A violin has four strings"),
    ("What do you call a group of wolves?", "a pack", "A group of wolves is called a pack"),
    ("What is the capital of Italy?", "Rome", "The capital of Italy is Rome"),
    ("Which organ pumps blood?", "the heart", "The heart pumps blood through the body"),
    ("What is the hardest natural material?", "diamond", "Diamond is the hardest natural material"),
    ("How many sides does a hexagon have?", "six", "A hexagon has six sides"),
    ("What falls from clouds when it rains?", "water", "When it rains, drops of water fall from the clouds"),
    ("What is the longest river in Africa?", "the Nile", "The Nile is the longest river in Africa"),
    ("What animal says moo?", "a cow", "A cow says moo"),
]

STYLES = {
    "ada": lambda s, l: s.lower(),
    "blake": lambda s, l: f"Arr! {l}, matey.",
    "chen": lambda s, l: f"{l}!! :)",
    "dana": lambda s, l: f"Certainly. {l}. I hope this helps.",
}
GROUPS = {"ada": "brief", "chen": "brief", "blake": "thorough", "dana": "thorough"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="demo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    facts = FACTS[:]
    rng.shuffle(facts)
    train, held = facts[:36], facts[36:]
    os.makedirs(args.out_dir, exist_ok=True)

    def write(name, rows):
        with open(os.path.join(args.out_dir, name), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return len(rows)

    def sft(part):
        rows = []
        for user, style in STYLES.items():
            for q, s, l in part:
                rows.append({"user": user, "prompt": f"Question: {q}\nAnswer:", "response": " " + style(s, l)})
        rng.shuffle(rows)
        return rows

    def pref(part):
        rows = []
        for user in STYLES:
            for q, s, l in part:
                short, long_ = f" {s}.", f" {l}, and that is the whole story in a few more words."
                chosen, rejected = (short, long_) if GROUPS[user] == "brief" else (long_, short)
                rows.append({"user": user, "group": GROUPS[user], "prompt": f"Question: {q}\nAnswer:",
                             "chosen": chosen, "rejected": rejected})
        rng.shuffle(rows)
        return rows

    n = [write("sft_train.jsonl", sft(train)), write("sft_eval.jsonl", sft(held)),
         write("pref_train.jsonl", pref(train)), write("pref_eval.jsonl", pref(held))]
    print(f"make_demo_data: {args.out_dir}/: {n[0]} SFT training and {n[1]} held-out rows, {n[2]} preference "
          f"training and {n[3]} held-out pairs, users {', '.join(STYLES)}")


if __name__ == "__main__":
    main()
