"""What ARNS costs per nickname: microseconds per `name_keys` call.

    python bench/arns.py [--calls 20000] [--rounds 7]

Every `name` a client sends, every ban, protection and page check computes a
name's keys, so this is on the reactor thread. Names are 100 characters (the
longest allowed, the worst case) in four kinds: Latin (ASCII), Vietnamese
(precomposed letters with tones), emoji (with variation selectors and
joiners, which ARNS drops), and Latin capitals mixed with Cyrillic, Greek
and Cherokee look-alikes (the case the third key is for). Each round
computes the keys of `--calls` distinct names of one kind (distinct, so no
cache of whole names in a caller could help), and the figure is the median
round's time per call. Run it on two checkouts (PYTHONPATH=CHECKOUT) to
compare them. Prints a Markdown table, then one JSON line.
"""

import argparse
import json
import statistics
import time

from chatbox.chat.arns import MAX_NAME_LENGTH, name_keys

KINDS = {
    "latin": "Nguyen Van Anh and Bob Smith ",
    "vietnamese": "Nguyễn Thị Ánh Hồng Đức Trường Phượng Ưng ",
    "emoji": "😀❤️👍🏽👨‍👩‍👧🎉🇻🇳 ",
    "homoglyph capitals": "МS LAΝ ΑDМIN ᏞAN СНATBOX ТЕАСНЕR ",
}


def names(kind: str, count: int) -> list[str]:
    """`count` distinct valid names of MAX_NAME_LENGTH characters: the
    kind's text repeated, ended by a number."""
    text = KINDS[kind] * MAX_NAME_LENGTH
    made = []
    for number in range(count):
        tail = f" {number}"
        made.append(text[: MAX_NAME_LENGTH - len(tail)] + tail)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    figures = {}
    for kind in KINDS:
        batch = names(kind, args.calls)
        name_keys(batch[0])  # first call outside the figures
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for name in batch:
                name_keys(name)
            rounds.append((time.perf_counter() - start) / len(batch) * 1e6)
        figures[kind] = round(statistics.median(rounds), 2)
    print("| names (100 characters) | µs per name_keys |")
    print("|---|---|")
    for kind, micros in figures.items():
        print(f"| {kind} | {micros} |")
    print(json.dumps({"us_per_call": figures}))


if __name__ == "__main__":
    main()
