"""Class names, template sets, prompt lists, and the ensemble text head."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zeroshot_plus import InputError
from zeroshot_plus.text.classnames import (closest_name, display_name, match_key,
                                           parse_classnames, validate_classnames)
from zeroshot_plus.text.templates import available_template_sets, class_prompts, load_templates
from zeroshot_plus.text.heads import class_weights, l2_normalise, segment_mean

# ---------------------------------------------------------------------- class names


def test_classnames_from_comma_list_and_sequence():
    assert parse_classnames("cat, dog ,fish") == ["cat", "dog", "fish"]
    assert parse_classnames(["cat", " dog "]) == ["cat", " dog "]  # a sequence: as given
    assert parse_classnames(" \\x20a\\x09 ,b") == [" a\t", "b"]
    assert parse_classnames("single") == ["single"]


def test_classnames_from_files(tmp_path):
    text = tmp_path / "classes.txt"
    text.write_text("# animals\ncat\n\n  dog  \nsea lion\n\\x20spaced\\u3000\n",
                    encoding="utf-8")
    assert parse_classnames(text) == ["cat", "dog", "sea lion", " spaced\u3000"]
    assert parse_classnames(str(text)) == ["cat", "dog", "sea lion", " spaced\u3000"]
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps(["a", "b"]))
    assert parse_classnames(listed) == ["a", "b"]


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ('{"a": 1}', "JSON list"),
    ("[]", "empty"),
])
def test_bad_json_class_files(tmp_path, content, message):
    path = tmp_path / "classes.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        parse_classnames(path)
    assert "classes.json" in str(info.value)


def test_duplicate_class_names_are_an_error(tmp_path):
    with pytest.raises(InputError, match="'cat' more than once"):
        parse_classnames("cat,dog,cat")
    path = tmp_path / "dups.txt"
    path.write_text("cat\ndog\ncat\n")
    with pytest.raises(InputError, match="dups.txt") as info:
        parse_classnames(path)
    assert "'cat'" in str(info.value)


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("a,,b", "position 2"),
    ([], "empty"),
])
def test_empty_class_names(spec, message):
    with pytest.raises(InputError, match=message):
        parse_classnames(spec)


def test_missing_class_file_is_named(tmp_path):
    missing = tmp_path / "classes.txt"
    with pytest.raises(InputError, match="classes.txt"):
        parse_classnames(str(missing))


def test_validate_classnames_keeps_names_as_given_and_refuses_blank_ones():
    assert validate_classnames([" a", "b "]) == [" a", "b "]
    with pytest.raises(InputError, match="empty class name at position 2"):
        validate_classnames(["a", " \t"])


def test_display_name_match_key_and_closest_name():
    assert display_name("great_white__shark") == "great white  shark"  # only '_' changes
    assert match_key(" Great_White\t  SHARK ") == "great white shark"
    assert match_key("Straße") == match_key("STRASSE")  # case folded, not just lowered
    # compared by match key; of two keys with the same match key the first is returned
    assert closest_name("goldfsh", ["tench", "Gold_Fish", "gold fish"]) == "Gold_Fish"
    assert closest_name("zebra", ["tench", "goldfish"]) is None


# ---------------------------------------------------------------------- templates


def test_named_template_sets():
    openai = load_templates("openai_imagenet")
    simple = load_templates("simple_imagenet")
    assert len(openai) == 80 and len(simple) == 7
    assert all(t.count("{}") == 1 for t in openai + simple)
    assert load_templates("photo") == ["a photo of a {}."]
    assert {"openai_imagenet", "simple_imagenet", "photo"} <= set(available_template_sets())


def test_templates_from_file_and_list(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# comment\na {} in the wild.\n\nart of the {}.\n")
    assert load_templates(path) == ["a {} in the wild.", "art of the {}."]
    assert load_templates(str(path)) == ["a {} in the wild.", "art of the {}."]
    assert load_templates(["x {}", "{} y"]) == ["x {}", "{} y"]


def test_unknown_template_set():
    with pytest.raises(InputError, match="'no_such_set'") as info:
        load_templates("no_such_set")
    assert "openai_imagenet" in str(info.value)


@pytest.mark.parametrize("templates", [["a photo of a {}.", "a photo"], ["{} and {}"],
                                       ["{} and {c}"], ["{c}, {c}"]])
def test_template_without_exactly_one_placeholder(templates):
    with pytest.raises(InputError, match=r"\{\}"):
        load_templates(templates)


def test_template_file_without_placeholder(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a photo of a {}.\na photo of something\n")
    with pytest.raises(InputError, match="bad.txt") as info:
        load_templates(path)
    assert "template 2" in str(info.value) and "a photo of something" in str(info.value)


def test_empty_template_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing\n\n")
    with pytest.raises(InputError, match="empty.txt"):
        load_templates(path)


def test_class_prompts_use_names_as_given():
    prompts = class_prompts(["golden_retriever", "cat"], ["a photo of a {}.", "{}!"])
    assert prompts == [["a photo of a golden_retriever.", "golden_retriever!"],
                       ["a photo of a cat.", "cat!"]]


def test_clip_benchmark_templates():
    # CLIP_benchmark's templates name the class {c}; open_clip's use {}
    assert load_templates(["a photo of a {c}.", "art of the {}."]) == ["a photo of a {}.",
                                                                      "art of the {}."]
    prompts = class_prompts(["sea_lion"], load_templates(["a bad photo of the {c}."]))
    assert prompts == [["a bad photo of the sea_lion."]]


def test_class_prompts_allow_repeated_names():
    # open_clip's ImageNet list names "missile" twice; refusing repeats is the class list's call
    assert class_prompts(["missile", "missile"], ["a {}."]) == [["a missile."], ["a missile."]]


@pytest.mark.parametrize("form", ["open_clip", "clip_benchmark"])
def test_text_head_equals_open_clip_zero_shot_classifier(backbone, form):
    from open_clip import OPENAI_IMAGENET_TEMPLATES, build_zero_shot_classifier

    classnames = ["great_white_shark", "tench", "missile", "sea lion"]
    if form == "open_clip":  # open_clip's own callables
        reference_templates, ours = OPENAI_IMAGENET_TEMPLATES, "openai_imagenet"
    else:  # CLIP_benchmark's strings, filled as template.format(c=name)
        ours = [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
        reference_templates = [lambda c, t=t: t.format(c=c) for t in ours]
    expected = build_zero_shot_classifier(backbone.model, backbone.tokenizer, classnames,
                                          reference_templates, num_classes_per_batch=None).T
    weights = class_weights(backbone, class_prompts(classnames, load_templates(ours)))
    np.testing.assert_allclose(weights, expected.numpy(), atol=1e-6)  # 0.15 with "_" -> " "


# ---------------------------------------------------------------------- text head maths


def test_l2_normalise():
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    out = l2_normalise(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, -1.0]], atol=1e-7)


def test_segment_mean_equals_a_per_class_loop():
    rng = np.random.default_rng(0)
    counts = [3, 1, 5, 2, 1]
    rows = rng.normal(size=(sum(counts), 6))
    expected, start = [], 0
    for count in counts:
        expected.append(rows[start:start + count].sum(axis=0) / count)
        start += count
    np.testing.assert_allclose(segment_mean(rows, counts), np.array(expected), atol=1e-12)
    np.testing.assert_allclose(segment_mean(np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 5.0]]), [2, 1]),
                               [[2.0, 4.0], [5.0, 5.0]])


def test_ensemble_is_mean_of_normalised_prompt_embeddings_renormalised(backbone):
    prompts = [["a photo of a cat.", "a drawing of a cat.", "a cat."],
               ["a dog."],
               ["a photo of a fish.", "a blurry photo of a fish."]]
    weights = class_weights(backbone, prompts)
    assert weights.shape == (3, 32) and weights.dtype == np.float32
    for c, group in enumerate(prompts):
        each = np.stack([backbone.encode_texts([p])[0].astype(np.float64) for p in group])
        each /= np.linalg.norm(each, axis=1, keepdims=True)
        mean = each.mean(axis=0)
        np.testing.assert_allclose(weights[c], mean / np.linalg.norm(mean), atol=1e-5)
    # a single-prompt class is that prompt's embedding
    np.testing.assert_allclose(weights[1], backbone.encode_texts(["a dog."])[0], atol=1e-6)


def test_ensemble_with_prompt_cache(backbone, tmp_path):
    prompts = [["a {} photo".replace("{}", c), f"the {c}"] for c in ("cat", "dog")]
    cached = class_weights(backbone, prompts, cache=tmp_path)
    again = class_weights(backbone, prompts, cache=tmp_path)
    np.testing.assert_array_equal(cached, again)
    np.testing.assert_allclose(cached, class_weights(backbone, prompts), atol=1e-6)


def test_class_without_prompts(backbone):
    with pytest.raises(InputError, match="class 1"):
        class_weights(backbone, [["a cat"], []])
