"""Names of the compared methods: zoo entries' method names parse back, and "beats all" skips other families."""

from components.evaluation.methods import LEARNED_KINDS, VARIANTS, base_method, family_variants, zoo_method_names


def test_zoo_method_names_parse_back_to_their_method():
    names = zoo_method_names(["celo", "small_fc_lopt"])
    assert names == [
        "zoo.celo",
        "zoo.celo.hub",
        "zoo.celo.lgl2o",
        "zoo.small_fc_lopt",
        "zoo.small_fc_lopt.hub",
        "zoo.small_fc_lopt.lgl2o",
    ]
    assert [base_method(n) for n in names] == ["learned", "hub", "lgl2o"] * 2


def test_zoo_method_names_only_for_methods_the_run_has():
    assert zoo_method_names(["celo"], methods=("learned", "lgl2o")) == ["zoo.celo", "zoo.celo.lgl2o"]


def test_base_method_of_baselines_and_malformed_names_is_none():
    for name in ("adam", "sgdm", "zoo", "zoo.", "zoo.celo.adam", "zoo.celo.hub.x", "celo.hub"):
        assert base_method(name) is None, name
    assert {n: base_method(n) for n in LEARNED_KINDS} == {n: n for n in LEARNED_KINDS}


def test_family_variants_excludes_other_families_and_own_variants():
    names = ["adam", "learned", "hub", "hub_inverted", "zoo.celo", "zoo.celo.hub"]
    out = family_variants(names)
    assert "adam" not in out
    # the fresh family: its own HUB variant, then every zoo member (another family)
    assert out["hub"] == (*VARIANTS["hub"], "zoo.celo", "zoo.celo.hub")
    assert out["learned"] == ("zoo.celo", "zoo.celo.hub")
    # a zoo entry's HUB: its own family's variant name, then the fresh family
    assert out["zoo.celo.hub"] == ("zoo.celo.hub_inverted", "learned", "hub", "hub_inverted")
    assert out["zoo.celo"] == ("learned", "hub", "hub_inverted")


def test_no_variants_without_other_families():
    assert family_variants(["adam", "learned", "lgl2o"]) == {}
