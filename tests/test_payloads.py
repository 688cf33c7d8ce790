"""Payload files: validation, WebUI field names, folder operations, seeds and wildcard expansion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_mbw.errors import OutputExistsError, PayloadError
from lib_mbw.payloads import (
    Payload,
    delete_payload,
    duplicate_payload,
    expand_payload,
    fix_seeds,
    list_payloads,
    load_payload,
    load_payloads,
    payload_from_dict,
    payload_from_record,
    prepare_payloads,
    preview_expansions,
    save_payload,
    validate_payloads,
)

REPO = Path(__file__).resolve().parent.parent


def write(folder: Path, name: str, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture()
def wildcards(tmp_path: Path) -> Path:
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "color.txt").write_text("red\ngreen\nblue\n")
    (folder / "animal.txt").write_text("cat\n__color__ dog\n")
    return folder


def test_example_payloads_in_the_repository_are_valid() -> None:
    payloads = load_payloads(REPO / "payloads")
    assert len(payloads) >= 3
    concrete = prepare_payloads(payloads, REPO / "payloads" / "wildcards", seed=0)
    assert all("__" not in p.prompt and p.seed >= 0 for p in concrete)


def test_webui_field_names_and_unknown_fields() -> None:
    data = {
        "prompt": "a cat",
        "negative_prompt": "dog",
        "sampler_name": "DPM++ 2M",
        "cfg_scale": 5,
        "n_iter": 2,
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "x.vae.pt"},
        "enable_hr": False,
        "restore_faces": True,
    }
    payload = payload_from_dict(data, "cat")
    assert (payload.sampler, payload.cfg_scale, payload.variants, payload.clip_skip) == ("DPM++ 2M", 5.0, 2, 2)
    assert payload.extra == {"override_settings": {"sd_vae": "x.vae.pt"}, "enable_hr": False, "restore_faces": True}
    body = payload.to_webui()
    assert body["sampler_name"] == "DPM++ 2M" and body["restore_faces"] is True and body["n_iter"] == 1
    assert body["override_settings"] == {"sd_vae": "x.vae.pt", "CLIP_stop_at_last_layers": 2}


def test_error_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "portrait", {"prompt": "x", "steps": "20x"})
    with pytest.raises(PayloadError) as error:
        load_payload(path)
    assert str(error.value) == f"{path}: steps must be an integer between 1 and 500 (every image of every evaluation is rendered with this many steps; samplers converge long before 500), got '20x'"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prompt", "  ", "prompt must not be empty"),
        ("steps", 0, "steps must be an integer between 1 and 500"),
        ("steps", True, "steps must be an integer"),
        ("cfg_scale", "7", "cfg_scale must be a number > 0"),
        ("width", 500, "width must be a multiple of 8"),
        ("height", 4, "height must be an integer between 8"),
        ("seed", -2, "seed must be an integer between -1"),
        ("batch_size", 0, "batch_size must be an integer between 1"),
        ("clip_skip", 13, "clip_skip must be an integer between 1 and 12"),
        ("weight", -1, "weight must be a number ≥ 0"),
        ("expansion", "jinja2", "expansion must be one of none, random, combinatorial"),
        ("variants", 0, "variants must be an integer between 1"),
    ],
)
def test_each_bad_field_is_named(field: str, value: object, message: str) -> None:
    data = {"prompt": "a cat", field: value}
    with pytest.raises(PayloadError, match="^p.json: .*" + message):
        payload_from_dict(data, "p", "p.json")


def test_all_problems_of_a_file_are_reported_together() -> None:
    with pytest.raises(PayloadError) as error:
        payload_from_dict({"prompt": "", "steps": -1, "width": 3}, "p")
    text = str(error.value)
    assert "prompt" in text and "steps" in text and "width" in text


def test_folder_with_bad_files_reports_all_of_them(tmp_path: Path) -> None:
    write(tmp_path, "good", {"prompt": "ok"})
    write(tmp_path, "bad1", {"prompt": "x", "steps": "20x"})
    write(tmp_path, "bad2", "{not json")
    write(tmp_path, "bad3", ["a list"])
    with pytest.raises(PayloadError) as error:
        load_payloads(tmp_path)
    text = str(error.value)
    assert text.startswith("3 bad payload file(s)")
    for name in ("bad1.json", "bad2.json", "bad3.json"):
        assert name in text
    assert "line 1" in text  # where the JSON broke
    report = validate_payloads(tmp_path)
    assert report["good"] == "" and all(report[n] for n in ("bad1", "bad2", "bad3"))


def test_missing_payload_names_the_available_ones(tmp_path: Path) -> None:
    write(tmp_path, "alpha", {"prompt": "ok"})
    with pytest.raises(PayloadError) as error:
        load_payloads(tmp_path, ["alpha", "beta"])
    assert "beta.json: payload not found" in str(error.value) and "available: alpha" in str(error.value)
    with pytest.raises(PayloadError, match="no payload files"):
        load_payloads(tmp_path / "empty")


def test_save_duplicate_delete_are_safe(tmp_path: Path) -> None:
    payload = Payload(name="cat", prompt="a cat", seed=5, extra={"enable_hr": False})
    path = save_payload(tmp_path, payload)
    assert load_payload(path) == payload
    with pytest.raises(OutputExistsError):
        save_payload(tmp_path, Payload(name="cat", prompt="other"))
    assert load_payload(path).prompt == "a cat"  # nothing lost
    save_payload(tmp_path, Payload(name="cat", prompt="other"), overwrite=True)
    duplicate_payload(tmp_path, "cat", "cat copy")
    assert list_payloads(tmp_path) == ["cat", "cat copy"]
    with pytest.raises(OutputExistsError):
        duplicate_payload(tmp_path, "cat", "cat copy")
    with pytest.raises(PayloadError, match="not allowed"):
        save_payload(tmp_path, Payload(name="../evil", prompt="x"))
    delete_payload(tmp_path, "cat")
    assert list_payloads(tmp_path) == ["cat copy"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(PayloadError, match="not found"):
        delete_payload(tmp_path, "cat")


def test_seed_minus_one_is_fixed_deterministically() -> None:
    payloads = [Payload(name="a", prompt="x", seed=-1), Payload(name="b", prompt="y", seed=7)]
    first = fix_seeds(payloads, seed=3)
    assert first == fix_seeds(payloads, seed=3)
    assert first[0].seed != -1 and first[1].seed == 7
    assert fix_seeds(payloads, seed=4)[0].seed != first[0].seed


def test_random_expansion_is_seeded_and_uses_wildcards(wildcards: Path) -> None:
    payload = Payload(name="p", prompt="a {big|small} __animal__", seed=11, batch_size=2, variants=4)
    first = expand_payload(payload, wildcards)
    assert [p.variant for p in first] == [0, 1, 2, 3]
    assert [p.seed for p in first] == [11, 13, 15, 17]  # WebUI batch-count seeds: seed + images before
    assert first == expand_payload(payload, wildcards)  # same prompts every time: scores compare
    for p in first:
        assert "__" not in p.prompt and "{" not in p.prompt
        assert p.prompt.startswith(("a big", "a small"))
    assert first[0].key == "p" and first[1].key == "p#1"


def test_combinatorial_expansion_lists_every_combination(wildcards: Path) -> None:
    payload = Payload(name="p", prompt="{a|b} __color__", seed=0, expansion="combinatorial")
    prompts = sorted(p.prompt for p in expand_payload(payload, wildcards))
    assert prompts == sorted(f"{x} {c}" for x in "ab" for c in ("red", "green", "blue"))
    capped = Payload(name="p", prompt="{a|b} __color__", seed=0, expansion="combinatorial", variants=2)
    assert len(expand_payload(capped, wildcards)) == 2


def test_missing_wildcard_file_fails_naming_the_file(wildcards: Path) -> None:
    payload = Payload(name="p", prompt="a __colour__ cat", seed=1)
    with pytest.raises(PayloadError) as error:
        expand_payload(payload, wildcards)
    assert str(wildcards / "colour.txt") in str(error.value)


def test_missing_nested_wildcard_fails(wildcards: Path) -> None:
    (wildcards / "pet.txt").write_text("__breed__ dog\n")
    with pytest.raises(PayloadError, match="breed.txt"):
        expand_payload(Payload(name="p", prompt="__pet__", seed=1), wildcards)


def test_wildcards_without_folder_fail() -> None:
    with pytest.raises(PayloadError, match="no wildcard folder"):
        expand_payload(Payload(name="p", prompt="__color__", seed=1), None)


def test_prepare_collects_every_payload_problem(wildcards: Path) -> None:
    payloads = [Payload(name="a", prompt="__nope__", seed=1), Payload(name="b", prompt="__gone__", seed=1)]
    with pytest.raises(PayloadError) as error:
        prepare_payloads(payloads, wildcards, seed=0)
    assert "nope.txt" in str(error.value) and "gone.txt" in str(error.value)
    with pytest.raises(PayloadError, match="used twice"):
        prepare_payloads([Payload(name="a", prompt="x"), Payload(name="a", prompt="y")], wildcards, 0)


def test_preview_and_manifest_record_round_trip(wildcards: Path) -> None:
    payload = Payload(name="p", prompt="__color__ sky", seed=-1)
    previews = preview_expansions(payload, wildcards, count=5)
    assert len(previews) == 5 and all(p.endswith(" sky") and "__" not in p for p in previews)
    concrete = prepare_payloads([payload], wildcards, seed=9)[0]
    assert payload_from_record(json.loads(json.dumps(concrete.to_record()))) == concrete
    assert concrete.digest() == payload_from_record(concrete.to_record()).digest()
