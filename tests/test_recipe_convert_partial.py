"""``recipe convert``/``show`` refuse an incomplete recipe, naming the missing blocks, as ``merge`` does; ``--fill W``
completes it explicitly (on main ``recipe convert "IN00:0.5"`` silently filled 26 blocks with 0)."""

from __future__ import annotations

import pytest

from lib_mbw.cli import main

MISSING = ("IN01, IN02, IN03, IN04, IN05, IN06, IN07, IN08, IN09, IN10, IN11, M00, OUT00, OUT01, OUT02, OUT03, OUT04, "
           "OUT05, OUT06, OUT07, OUT08, OUT09, OUT10, OUT11, TIME_EMBED, OUT")


@pytest.mark.parametrize("action", [["convert"], ["convert", "--to", "canonical"], ["convert", "--to", "preset"], ["show"]])
def test_partial_recipe_is_refused_naming_the_missing_blocks(action: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", action[0], "IN00:0.5", *action[1:]]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"error: recipe text: no weight for {MISSING} (26 of 27 sd1 blocks); give every block, or pass --fill W to set the missing ones to W\n"
    )


def test_fill_completes_the_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "convert", "IN00:0.5, OUT:1", "--fill", "0.25", "--to", "canonical"]) == 0
    assert capsys.readouterr().out.strip() == "0.5," + "0.25," * 25 + "1"


def test_sdxl_needs_only_its_own_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    from lib_mbw.blocks import present_blocks

    text = ",".join(f"{b}:0.5" for b in present_blocks("sdxl"))
    assert main(["recipe", "convert", text, "--family", "sdxl", "--to", "preset"]) == 0
    assert main(["recipe", "convert", text, "--family", "sd1"]) == 2
    assert "no weight for IN09, IN10, IN11, OUT09, OUT10, OUT11 (6 of 27 sd1 blocks)" in capsys.readouterr().err
