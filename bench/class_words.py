"""Issue 21: how much of the explained class a heatmap field's name keeps in the FiftyOne App's
sidebar (camcore.identity.sidebar_px against SIDEBAR_PX), today and under candidate rules.

Classes: the demo's, i.e. EfficientNet-Lite0's top-3 on the demo images (computed once with the
explorer's model: astronaut jersey/dumbbell/bulletproof vest, grace_hopper military uniform/suit/bow
tie, cameraman tripod/binoculars/microphone, chelsea Egyptian cat/tiger cat/tabby, horse flat-coated
retriever/curly-coated retriever/Saluki, coffee espresso/cup/coffee mug, rocket missile/projectile/
space shuttle, motorcycle moped/motor scooter/disk brake), and all 1000 ImageNet classes. Heads: every
method x layer of EfficientNet-Lite0 (plain maps). No model runs: names only, a few seconds.

Rules compared (a name never depends on what else the dataset holds):
  today     the first name, cut to fit (camcore.identity._shortened): "Egyptian cat" -> egypt / egy
  words     today's cut when it keeps a whole word, else the leading words' initials and the last
            word ("e_cat"), else today's cut
  codes     today's rule with shorter codes for the demo's model and its default layer (effl0 -> el0,
            head -> hd): every px a code gives up goes to the class

"whole word": the class part is the whole first name or holds one of its words (3+ letters) whole.

    .venv/bin/python bench/class_words.py
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camcore.identity import SIDEBAR_PX, _first_name, codes, sanitise, sidebar_px  # noqa: E402
from camcore.methods import METHODS  # noqa: E402
from camcore.models import BUILTIN_MODELS  # noqa: E402

DEMO = ("jersey", "dumbbell", "bulletproof vest", "military uniform", "suit", "bow tie", "tripod", "binoculars",
        "microphone", "Egyptian cat", "tiger cat", "tabby", "flat-coated retriever", "curly-coated retriever",
        "Saluki", "espresso", "cup", "coffee mug", "missile", "projectile", "space shuttle", "moped",
        "motor scooter", "disk brake")
SPEC = BUILTIN_MODELS["efficientnet_lite0"]


def _fit(text: str, room: float) -> str:
    k = 0
    while k < len(text) and sidebar_px(text[k]) <= room:
        room -= sidebar_px(text[k])
        k += 1
    return text[:k].rstrip("_")


def _words(cls: str) -> list[str]:
    return [w for w in sanitise(_first_name(cls)).split("_") if w]


def today(cls: str, room: float) -> str:
    whole = sanitise(_first_name(cls), 20)
    return whole if sidebar_px(whole) <= room else _fit(whole, room)


def by_words(cls: str, room: float) -> str:
    cut = today(cls, room)
    words = _words(cls)
    if cut == sanitise(_first_name(cls), 20) or any(w in cut.split("_") and len(w) >= 3 for w in words):
        return cut
    if len(words) > 1:
        initials = "".join(w[0] for w in words[:-1]) + "_" + words[-1]
        if sidebar_px(initials) <= room:
            return initials
    return cut


def _whole_word(part: str, cls: str) -> bool:
    words = _words(cls)
    return part == "_".join(words) or any(w in part.split("_") and len(w) >= 3 for w in words)


def rooms(short_codes: bool) -> dict[str, float]:
    """head of the name -> px left for ``_<class>``."""
    out = {}
    for method in METHODS.values():
        if method.unsupported_reason(SPEC.task, SPEC.family) is not None:
            continue
        for layer in SPEC.layers:
            c = codes(SPEC, method, layer.name)
            layer_code, model_code = c["layer_code"], c["model_code"]
            if short_codes:
                layer_code, model_code = ("hd" if layer_code == "head" else layer_code), "el0"
            head = f"cam_{c['method_code']}_{layer_code}_{model_code}"
            out[head] = SIDEBAR_PX - sidebar_px(head) - sidebar_px("_")
    return out


def main() -> None:
    classes = {"demo": DEMO, "imagenet": tuple(SPEC.class_names())}
    for short in (False, True):
        r = rooms(short)
        spread = f"{min(r.values()):.1f} / {statistics.median(r.values()):.1f} / {max(r.values()):.1f}"
        print(f"{'shorter codes' if short else 'codes as today'}: {len(r)} heads, room for the class "
              f"{spread} px (min/median/max)")
    print("| classes | rule | whole word kept | whole class | letters kept | distinct per head |")
    print("|---|---|---|---|---|---|")
    for label, cls_list in classes.items():
        for name, rule, short in (("today", today, False), ("words", by_words, False), ("codes", today, True),
                                  ("codes + words", by_words, True)):
            r = rooms(short)
            parts = [(c, rule(c, room)) for room in r.values() for c in cls_list]
            word = sum(_whole_word(p, c) for c, p in parts) / len(parts)
            whole = sum(p == sanitise(_first_name(c), 20) for c, p in parts) / len(parts)
            letters = statistics.mean(len(p.replace("_", "")) for _c, p in parts)
            distinct = statistics.mean(len({rule(c, room) for c in cls_list}) for room in r.values())
            print(f"| {label} ({len(cls_list)}) | {name} | {100 * word:.0f}% | {100 * whole:.0f}% | {letters:.1f} | "
                  f"{distinct:.1f} |")
    grad = rooms(False)["cam_grad_head_effl0"]
    print("cam_grad_head_effl0_<class> today -> words:",
          ", ".join(f"{today(c, grad)}->{by_words(c, grad)}" for c in DEMO if today(c, grad) != by_words(c, grad)))


if __name__ == "__main__":
    main()
