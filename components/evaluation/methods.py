"""The names of the methods the evaluation compares, and how names of zoo entries' methods parse.

The seed papers' comparisons are built from one trained learned optimizer (:data:`LEARNED_KINDS`);
each zoo entry adds its own family under the names ``zoo.<entry>``, ``zoo.<entry>.hub`` and
``zoo.<entry>.lgl2o`` (:func:`zoo_method_names`). :func:`family_variants` says which optimizers are
not each other's competitors in "beats all". :mod:`components.evaluation.experiment` runs them.
"""

__all__ = [
    "LEARNED_KINDS",
    "LONG",
    "REFERENCE",
    "SAFEGUARDS",
    "VARIANTS",
    "ZOO_METHODS",
    "base_method",
    "family_variants",
    "zoo_method_names",
]

REFERENCE = "adam"
# the methods of the seed papers built from the one trained learned optimizer: name -> kind
LEARNED_KINDS = {
    "learned": "learned",
    "hub": "hybrid",
    "hub_inverted": "hybrid",
    "lgl2o": "safeguarded",
    "gl2o": "safeguarded",
}
SAFEGUARDS = ("lgl2o", "gl2o")
# run at k x the horizon for the stability table (inverted HUB, a fine-tuning variant, is left out)
LONG = ("learned", "hub", "lgl2o", "gl2o")
# not each other's competitors in "beats all"
VARIANTS = {"hub": ("hub_inverted",), "hub_inverted": ("hub",)}
# what a zoo entry is evaluated as beside the fresh learned optimizer: alone, in HUB, under LGL2O (issue 19 item 5)
ZOO_METHODS = ("learned", "hub", "lgl2o")
_ZOO = "zoo"


def zoo_method_names(entries, methods=tuple(LEARNED_KINDS)) -> list[str]:
    """The optimizer names of zoo ``entries``: ``zoo.<entry>`` (alone), ``zoo.<entry>.hub``, ``zoo.<entry>.lgl2o``.

    Only the :data:`ZOO_METHODS` also in ``methods`` (so a run without HUB evaluates no zoo HUB either).
    Entry names hold no ``.`` (:data:`components.optimizers.zoo.NAME_PATTERN`), so names parse back.
    """
    return [
        f"{_ZOO}.{e}" if m == "learned" else f"{_ZOO}.{e}.{m}" for e in entries for m in ZOO_METHODS if m in methods
    ]


def base_method(name: str) -> str | None:
    """The method of the learned family an optimizer name is (``zoo.x.hub`` -> ``hub``), ``None`` for baselines."""
    if name in LEARNED_KINDS:
        return name
    parts = name.split(".")
    if parts[0] == _ZOO and len(parts) == 2 and parts[1]:
        return "learned"
    if parts[0] == _ZOO and len(parts) == 3 and parts[1] and parts[2] in LEARNED_KINDS:
        return parts[2]
    return None


def _family_of(name: str) -> str:
    return name.split(".")[1] if name.startswith(f"{_ZOO}.") else ""


def family_variants(names) -> dict[str, tuple[str, ...]]:
    """ "Beats all" non-competitors: :data:`VARIANTS`, and the members of *other* learned families (the fresh
    one, each zoo entry's), so adding zoo entries leaves the fresh family's "beats all" as the papers define it:
    against the tuned baselines and its own family. The ranking of every learned optimizer is by speedup."""
    learned = [o for o in names if base_method(o) is not None]
    out = {}
    for o in learned:
        others = tuple(p for p in learned if _family_of(p) != _family_of(o))
        own = tuple(f"{_ZOO}.{_family_of(o)}.{v}" if _family_of(o) else v for v in VARIANTS.get(base_method(o), ()))
        if others or own:
            out[o] = (*own, *others)
    return out
