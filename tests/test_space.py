"""The search space: dimensions, levels, ranges, frozen blocks, groups, BASE, and its errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lib_mbw.blocks import BLOCKS, present_blocks
from lib_mbw.recipe import Recipe
from lib_mbw.search.space import SearchSpace, SearchSpaceError


def test_default_space_is_27_blocks_at_steps_of_005():
    space = SearchSpace()
    assert space.names == BLOCKS
    assert space.ndim == 27 and space.levels == 21
    assert space.size == 21**27
    assert list(space.dimensions[0].values()) == [round(0.05 * i, 6) for i in range(21)]
    assert space.dimensions[0].value(3) == 0.15  # not 0.15000000000000002


def test_sdxl_searches_only_its_blocks():
    space = SearchSpace(family="sdxl")
    assert space.names == present_blocks("sdxl")
    assert "IN09" not in space.names and "OUT11" not in space.names
    recipe = space.recipe([0] * space.ndim)
    assert set(recipe.weights) == set(present_blocks("sdxl"))


@pytest.mark.parametrize("levels", [2, 3, 21, 101, 1001])
def test_levels_span_the_range_and_round_trip(levels):
    space = SearchSpace(levels=levels, ranges={"M00": (0.2, 0.6)})
    m00 = space.dimensions[space.names.index("M00")]
    assert m00.value(0) == 0.2 and m00.value(levels - 1) == 0.6
    rng = np.random.default_rng(levels)
    for point in space.random_points(rng, 20):
        point = tuple(int(v) for v in point)
        recipe = space.recipe(point)
        assert space.point_of(recipe) == point
        assert space.contains(recipe)


def test_snap_moves_off_grid_weights_to_the_nearest_level_and_clips_to_the_range():
    space = SearchSpace(ranges={"IN00": (0.2, 0.6)})
    recipe = Recipe.uniform(0.52).replace(weights={**Recipe.uniform(0.52).weights, "IN00": 0.9, "OUT": 0.024})
    snapped = space.snap(recipe)
    assert snapped.weight("IN01") == 0.5
    assert snapped.weight("IN00") == 0.6  # outside its range: the nearest end
    assert snapped.weight("OUT") == 0.0
    assert not space.contains(recipe) and space.contains(snapped)


def test_frozen_blocks_are_not_dimensions_but_set_in_every_recipe():
    space = SearchSpace(frozen={"IN00": 1.0, "OUT": 0.25})
    assert "IN00" not in space.names and "OUT" not in space.names and space.ndim == 25
    recipe = space.recipe([10] * 25)
    assert recipe.weight("IN00") == 1.0 and recipe.weight("OUT") == 0.25 and recipe.weight("M00") == 0.5


def test_group_is_one_dimension_that_sets_all_its_blocks():
    space = SearchSpace(groups=[("IN00", "IN01", "IN02")], ranges={"IN00": (0, 0.5), "IN01": (0, 0.5), "IN02": (0, 0.5)})
    assert space.ndim == 25 and space.names[0] == "IN00+IN01+IN02"
    recipe = space.recipe([20] + [0] * 24)
    assert recipe.weight("IN00") == recipe.weight("IN01") == recipe.weight("IN02") == 0.5
    mixed = recipe.replace(weights={**recipe.weights, "IN00": 0.1, "IN01": 0.2, "IN02": 0.3})
    assert space.point_of(mixed)[0] == 8  # mean 0.2 on 21 levels over [0, 0.5]


def test_base_weight_as_a_dimension_or_frozen():
    searched = SearchSpace(search_base=True, ranges={"BASE": (0.0, 0.5)})
    assert searched.names[-1] == "BASE" and searched.ndim == 28
    recipe = searched.recipe([0] * 27 + [20])
    assert recipe.base == 0.5
    assert searched.point_of(recipe)[-1] == 20
    with pytest.raises(SearchSpaceError, match="no BASE weight"):
        searched.point_of(Recipe.uniform(0.5))
    frozen = SearchSpace(frozen={"BASE": 0.3})
    assert frozen.ndim == 27 and frozen.recipe([0] * 27).base == 0.3
    assert SearchSpace().recipe([0] * 27).base is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ranges": {"IN99": (0, 1)}}, "unknown block 'IN99'"),
        ({"family": "sdxl", "frozen": {"IN10": 0.5}}, "sdxl has no block IN10"),
        ({"ranges": {"M00": (0.8, 0.2)}}, "min 0.8 > max 0.2"),
        ({"ranges": {"M00": (0.4, 0.4)}}, "freeze the block"),
        ({"ranges": {"M00": (0.0, 1.5)}}, "between 0"),
        ({"frozen": {"M00": 1.2}}, "between 0"),
        ({"frozen": {"M00": "half"}}, "must be a number"),
        ({"frozen": {"M00": 0.5}, "ranges": {"M00": (0, 1)}}, "both frozen and given a range"),
        ({"groups": [("IN00", "IN01"), ("IN01", "IN02")]}, "IN01 is in group 1 and in group 2"),
        ({"groups": [("IN00", "IN00")]}, "twice in group 1"),
        ({"groups": [("IN00",)]}, "at least two blocks"),
        ({"groups": ["IN00"]}, "must be a list of blocks"),
        ({"groups": [("IN00", "IN01")], "frozen": {"IN01": 0.5}}, "IN01 is frozen and in group 1"),
        ({"groups": [("IN00", "IN01")], "ranges": {"IN00": (0, 0.5)}}, "different ranges"),
        ({"groups": [("IN00", "BASE")]}, "BASE cannot share"),
        ({"frozen": {"BASE": 0.5}, "search_base": True}, "frozen and searched"),
        ({"frozen": {b: 0.5 for b in BLOCKS}}, "nothing to search"),
        ({"levels": 1}, "levels must be from 2 to 1001"),
        ({"levels": 1002}, "levels must be from 2 to 1001"),
        ({"levels": 2.5}, "whole number"),
        ({"family": "sd3"}, "unknown architecture"),
    ],
)
def test_bad_settings_get_clear_errors(settings, message):
    with pytest.raises(SearchSpaceError, match=message):
        SearchSpace(**settings)


def test_points_outside_the_space_are_refused():
    space = SearchSpace(levels=5)
    with pytest.raises(SearchSpaceError, match="27 coordinates"):
        space.recipe([0, 1])
    with pytest.raises(SearchSpaceError, match="level 5 is outside 0..4"):
        space.recipe([5] + [0] * 26)


def test_settings_round_trip_through_dict_and_pickle():
    space = SearchSpace(
        family="sdxl", levels=11, ranges={"M00": (0.1, 0.9)}, frozen={"OUT": 0.0}, groups=[("IN00", "IN01")], search_base=True
    )
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert pickle.loads(pickle.dumps(space)) == space
    assert "frozen OUT=0" in space.describe() and "IN00+IN01" in space.describe()


def test_grid_and_vertex_points():
    space = SearchSpace()
    grid = space.grid_points(3)
    assert [space.recipe(p).weight("M00") for p in grid] == [0.5, 0.25, 0.75]
    assert all(len(set(p)) == 1 for p in grid)
    corners = space.vertex_points(np.random.default_rng(0), 4)
    assert set(corners[0]) == {0} and set(corners[1]) == {20}
    assert set(np.unique(corners)) <= {0, 20}
