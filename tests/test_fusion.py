"""Hybrid fusion's guarantee: a document missing from a list never gets as much credit from it as any document
in it, for every method and normalisation; and bounded fusion's scores stay in [0, 1]."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kb
from kb.client import EmbeddedClient
from kb.fusion import (
    DEFAULT_FUSION,
    NORMALISATIONS,
    fuse,
    fusion_settings,
    linear_of,
    missing_credit,
    normalised,
    rrf_of,
)
from kb_base.search import SearchRequest
from tests.conftest import FAKE_MODEL_ID

# Look-alike pages: the dense list barely tells them apart; one page holds the code the query names.
LOOK_ALIKES = [(f"p{i:03d}", 0.42 - i * 0.0005) for i in range(100)]


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_a_lone_keyword_match_outranks_pages_the_dense_list_cannot_tell_apart(normalisation: str) -> None:
    """The issue's case: one page matches the keyword query. Before, with every normalisation, it got the same
    keyword credit as the pages without the term (it *was* the list's lowest): tied with 99 pages of the same
    cosine, it came wherever its id sorted."""
    same = [(f"p{i:03d}", 0.42) for i in range(100)]
    fused = linear_of(same, [("p050", 7.3)], weight=0.5, normalisation=normalisation)
    assert fused[0][0] == "p050" and fused[0][1] > fused[1][1]


@pytest.mark.parametrize("position", [0, 37, 99])
@pytest.mark.parametrize("weight", [0.5, DEFAULT_FUSION["weight"]])
def test_with_bounded_fusion_a_lone_match_wins_from_anywhere_in_the_dense_list(position: int, weight: float) -> None:
    """Bounded normalisation keeps the dense list's small differences between look-alikes small (cosine 0.42 to
    0.37 is 1 to 0.96), where min-max and z-score stretch them over the whole scale."""
    match = LOOK_ALIKES[position][0]
    fused = linear_of(LOOK_ALIKES, [(match, 7.3)], weight=weight, normalisation="bounded")
    assert fused[0][0] == match and fused[0][1] > fused[1][1]


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_the_weakest_of_a_few_matches_stays_above_the_pages_without_the_term(normalisation: str) -> None:
    """Two or three matches: before, the weakest was pulled down to the level of pages without the term."""
    matches = [("p050", 9.0), ("p010", 8.5), ("p080", 4.0)]
    fused = dict(linear_of(LOOK_ALIKES, matches, weight=0.5, normalisation=normalisation))
    for page, _ in LOOK_ALIKES:
        if page not in dict(matches) and LOOK_ALIKES[int(page[1:])][1] <= LOOK_ALIKES[80][1]:
            assert fused["p080"] > fused[page], (normalisation, page)


def test_a_keyword_only_match_is_not_sunk_by_its_missing_dense_score() -> None:
    """A match beyond the dense list's depth is taken to sit just below the list's last, not at cosine -1."""
    fused = dict(linear_of(LOOK_ALIKES, [("beyond", 5.0)], weight=0.6, normalisation="bounded"))
    assert fused["beyond"] > fused["p000"]  # 0.6 * ~0.999 + 0.4 * 1 against 0.6 * 1 + 0.4 * 0
    assert missing_credit(list(normalised(LOOK_ALIKES, "bounded", "dense").values()), "bounded") > 0.9


def test_bounded_normalisation_scales_from_the_theoretical_floor_to_the_best() -> None:
    dense = normalised([("a", 0.6), ("b", 0.2), ("c", -1.0000001)], "bounded", "dense")
    assert dense == pytest.approx({"a": 1.0, "b": 1.2 / 1.6, "c": 0.0})
    keyword = normalised([("a", 12.0), ("b", 3.0)], "bounded", "keyword")
    assert keyword == pytest.approx({"a": 1.0, "b": 0.25})
    assert missing_credit(list(keyword.values()), "bounded", "keyword") == 0.0  # BM25's floor: none of the terms
    # a lone hit is 1, whatever its BM25 (the min-max of one score was 1 too, but so was the floor)
    assert normalised([("k", 0.01)], "bounded", "keyword") == {"k": 1.0}
    assert missing_credit([0.0], "bounded", "dense") < 0.0  # cosine exactly -1: still strictly below


ids = st.sampled_from([f"d{i}" for i in range(30)])
# Scores from small sets, so that documents often tie in one list and differ only in the other.
cosines = st.sampled_from([-0.2, 0.0, 0.1, 0.3, 0.3, 0.5, 0.8, 1.0])
bm25 = st.sampled_from([0.4, 2.0, 2.0, 5.5, 11.0])


def _ranked(pairs: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(pairs.items(), key=lambda item: (-item[1], item[0]))


@settings(max_examples=300, deadline=None)
@given(dense=st.dictionaries(ids, cosines, max_size=20), keyword=st.dictionaries(ids, bm25, max_size=20),
       weight=st.floats(0.05, 0.95), normalisation=st.sampled_from(NORMALISATIONS))
def test_being_in_a_list_always_earns_more_than_missing_from_it(dense: dict[str, float], keyword: dict[str, float],
                                                                weight: float, normalisation: str) -> None:
    """Two documents treated alike by one list (the same score, or both missing) are ordered by the other list:
    the one in it above the one missing from it, for every normalisation and weight."""
    lists = {"dense": dense, "keyword": keyword}
    fused = dict(linear_of(_ranked(dense), _ranked(keyword), weight, normalisation))
    for kind, other in (("dense", "keyword"), ("keyword", "dense")):
        for inside in lists[kind]:
            for outside in fused.keys() - lists[kind].keys():
                if lists[other].get(inside) == lists[other].get(outside):  # alike in the other list
                    assert fused[inside] > fused[outside], (kind, inside, outside)
    if normalisation == "bounded":
        assert all(0.0 <= score <= 1.0 for score in fused.values())


def test_rrf_gives_a_document_nothing_from_a_list_it_is_missing_from() -> None:
    dense, keyword = [("a", 0.9), ("b", 0.8)], [("c", 3.0), ("b", 1.0)]
    rrf = dict(rrf_of([dense, keyword], rank_constant=60))
    assert rrf == pytest.approx({"a": 1 / 61, "b": 1 / 62 + 1 / 62, "c": 1 / 61})


def test_the_default_fusion_is_bounded_and_its_scores_are_readable() -> None:
    assert DEFAULT_FUSION["method"] == "linear" and DEFAULT_FUSION["normalisation"] == "bounded"
    fused = fuse([("a", 0.9), ("b", -0.4)], [("c", 12.0), ("b", 1.0)], fusion_settings(None))
    assert all(0.0 <= score <= 1.0 for _, score in fused)


def test_fusion_settings_name_what_is_wrong() -> None:
    assert fusion_settings(None, SearchRequest(query="x", normalisation="bounded"))["normalisation"] == "bounded"
    with pytest.raises(kb.InvalidInputError, match="unknown score normalisation 'tmm'; choose one of bounded"):
        fusion_settings({"normalisation": "tmm"})
    with pytest.raises(kb.InvalidInputError, match=r"unknown fusion setting\(s\) 'k'; the settings are method"):
        fusion_settings({"method": "rrf", "k": 7})  # rank_constant misspelt: not silently ignored
    for bad in ("x", 0, True, 1.5):
        with pytest.raises(kb.InvalidInputError, match="rank_constant must be an integer between 1 and 10000"):
            fusion_settings({"method": "rrf", "rank_constant": bad})
    assert fusion_settings({"method": "rrf", "rank_constant": 7})["rank_constant"] == 7


def test_the_python_api_refuses_search_settings_a_search_could_not_use(client: EmbeddedClient) -> None:
    """Saved settings are checked as over REST: a bad fusion setting never reaches a later search."""
    project = client.get_default_project()
    handle = project.create_knowledge_bank("checked", embedding_llm_id=FAKE_MODEL_ID)
    settings = handle.get_settings()
    settings.set_search_settings({"fusion": {"method": "rrf", "k": 7}})
    with pytest.raises(kb.InvalidInputError, match=r"unknown fusion setting\(s\) 'k'"):
        settings.save()
    settings.set_search_settings({"default_search_type": "semantic_hybrid"})
    with pytest.raises(kb.InvalidInputError, match="semantic_hybrid needs a search.reranker"):
        settings.save()
    assert project.get_knowledge_bank(handle.id).get_settings().get_raw().get("search") in (None, {})
    with pytest.raises(kb.InvalidInputError, match="unknown search setting 'fusoin'"):
        project.create_knowledge_bank("unchecked", embedding_llm_id=FAKE_MODEL_ID,
                                      settings={"search": {"fusoin": {}}})
