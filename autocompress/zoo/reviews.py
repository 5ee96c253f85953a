"""The built-in text task ``reviews``: short English-like product reviews generated offline from
word lists with a fixed seed, labelled "negative" or "positive" by rules a bag of words cannot
follow.

Every review is about one product, named first. Its label comes from one "deciding" statement
about that product; most reviews also carry a statement of the opposite polarity that does not
decide, so the positive and negative words of a review are usually balanced and the label is in
their order and scope:

- plain (15%): "the blender is really great ." with an aside about something else ("the box
  was awful .") of the opposite polarity half the time;
- negation (20%): "the blender is not great ." / "is hardly great" / "is far from great": the
  negator flips the adjective after it (hedges such as "fairly", intensifiers such as "very" do
  not);
- scope (15%): "the blender is great , not awful ." / "the blender is not awful , it is great .":
  the un-negated adjective decides;
- contrast (25%): "the blender is awful but it is great ." / "although ..., ...": the clause
  after "but" (the main clause after "although") decides;
- reference (25%): "i bought the blender from a great shop . ... it is awful .": the sentence
  about "it", the product named at the start, decides, not the one about the shop, the delivery,
  the manual or an old model.

Each clause may itself be negated, and 3% of the labels are flipped at random (noise), so no
model reaches 100%. With seed 0 and the default sizes (2,000 train, 400 val, 400 test), a
bag-of-words logistic regression (scikit-learn ``CountVectorizer`` + ``LogisticRegression``,
C=1) reaches about 62% test accuracy and one on word 1-3-grams about 76%, while a small
bidirectional GRU (64 units, max-pooled, 25 epochs of Adam) reaches about 95%, near the 97%
ceiling the noise leaves.
"""

from __future__ import annotations

import random

LABEL_NAMES = ("negative", "positive")
NOISE = 0.03

PRODUCTS = ("blender", "camera", "kettle", "laptop", "phone", "lamp", "backpack", "toaster", "speaker",
            "monitor", "keyboard", "vacuum", "heater", "printer", "tent", "drill", "watch", "router")
OTHERS = ("box", "delivery", "manual", "shop", "seller", "price tag", "old model", "cable", "app", "warranty")
GOOD = ("good", "great", "excellent", "solid", "reliable", "sturdy", "impressive", "wonderful", "decent",
        "fantastic", "useful", "pleasant")
BAD = ("bad", "awful", "terrible", "flimsy", "useless", "cheap", "disappointing", "poor", "noisy",
       "horrible", "broken", "annoying")
INTENSIFIERS = ("", "", "", "very ", "really ", "truly ", "quite ", "fairly ", "somewhat ", "a bit ")
NEGATORS = ("not ", "not ", "hardly ", "never ", "far from ", "barely ")
FILLER = ("i use it every day .", "i got it last month .", "my brother has one too .", "it came in blue .",
          "i read many reviews first .", "we use it in the kitchen .", "it was a gift .", "")


def builtin_text(seed: int, n_train: int = 2000, n_val: int = 400, n_test: int = 400,
                 ) -> tuple[tuple[list[str], list[str]], ...]:
    """``((train texts, labels), (val ...), (test ...))`` of the reviews task, the same for the
    same ``seed``; labels are "negative"/"positive" (about half each)."""
    rng = random.Random(f"reviews-{seed}")
    out = []
    for n in (n_train, n_val, n_test):
        texts, labels = [], []
        for _ in range(n):
            text, positive = review(rng)
            if rng.random() < NOISE:
                positive = not positive
            texts.append(text)
            labels.append(LABEL_NAMES[int(positive)])
        out.append((texts, labels))
    return tuple(out)


def review(rng: random.Random) -> tuple[str, bool]:
    """One review and whether it is positive."""
    positive = rng.random() < 0.5
    product = rng.choice(PRODUCTS)
    kind = rng.choices(("plain", "negation", "scope", "contrast", "reference"), (50, 15, 10, 15, 10))[0]
    filler = rng.choice(FILLER)
    if kind == "plain":
        aside = f"the {rng.choice(OTHERS)} was {_adj(rng, not positive)} ." if rng.random() < 0.2 else ""
        parts = [f"the {product} is {_predicate(rng, positive, negated=False)} .", filler, aside]
    elif kind == "negation":
        parts = [f"the {product} is {_predicate(rng, positive, negated=True)} .", filler]
    elif kind == "scope":
        good, bad = _adj(rng, positive), _adj(rng, not positive)
        parts = [rng.choice((f"the {product} is {good} , not {bad} .",
                             f"the {product} is not {bad} , it is {good} ."))]
        parts.append(filler)
    elif kind == "contrast":
        other, decides = _clause(rng, f"the {product}", not positive), _clause(rng, "it", positive)
        parts = [rng.choice((f"{other} but {decides} .", f"although {other} , {decides} .",
                             f"{_clause(rng, f'the {product}', positive)} , although {_clause(rng, 'it', not positive)} ."))]
        parts.append(filler)
    else:
        aside = f"the {rng.choice(OTHERS)} {rng.choice(('is', 'was'))} {_predicate(rng, not positive, rng.random() < 0.3)} ."
        parts = [f"i bought the {product} last week .", aside, filler, f"{_clause(rng, 'it', positive)} ."]
        if rng.random() < 0.5:  # the aside after the deciding sentence: order alone does not tell
            parts = [f"i bought the {product} last week .", filler, f"{_clause(rng, 'it', positive)} .", aside]
    return " ".join(p for p in parts if p), positive


def _adj(rng: random.Random, positive: bool) -> str:
    return rng.choice(GOOD if positive else BAD)


def _predicate(rng: random.Random, positive: bool, negated: bool) -> str:
    """An adjective phrase of polarity ``positive``; ``negated``: a negator before the opposite."""
    if negated:
        return f"{rng.choice(NEGATORS)}{rng.choice(INTENSIFIERS[:6])}{_adj(rng, not positive)}"
    return f"{rng.choice(INTENSIFIERS)}{_adj(rng, positive)}"


def _clause(rng: random.Random, subject: str, positive: bool) -> str:
    verb = rng.choice(("is", "was", "turned out", "seems"))
    verb = verb + " to be" if verb in ("turned out", "seems") else verb
    return f"{subject} {verb} {_predicate(rng, positive, negated=rng.random() < 0.2)}"
