"""Classification by description: prompt rules, file matching, scores, explanations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zeroshot_plus import GDAClassifier, InputError, Predictor, ZeroShotClassifier
from zeroshot_plus.text.descriptors import descriptor_prompts, match_descriptors
from zeroshot_plus.methods.descriptions import DescriptionClassifier

DESCRIPTORS = {
    "tench": ["a freshwater fish", "olive green or brown in color", "has a long body"],
    "goldfish": ["orange scales", "a small fish", "often kept in a bowl", "fins"],
    "great_white_shark": ["typically grey on top", "sharp teeth"],
}


def _embeddings(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------- prompt rules

MENON_CASES = [
    # (descriptor, prompt) as the reference's make_descriptor_sentence builds them
    ("a freshwater fish", "tench, which is a freshwater fish"),
    ("an oval body", "tench, which is an oval body"),
    ("antlers", "tench, which is antlers"),                       # quirk: any word with 'a'
    ("arched back", "tench, which is arched back"),               # quirk
    ("has a long body", "tench, which has a long body"),
    ("hasty swimmer", "tench, which hasty swimmer"),              # quirk: prefix, not word
    ("often found in ponds", "tench, which often found in ponds"),
    ("typically greenish", "tench, which typically greenish"),
    ("may have barbels", "tench, which may have barbels"),
    ("can be large", "tench, which can be large"),
    ("canopy of weeds", "tench, which canopy of weeds"),          # quirk: 'can' prefix
    ("used as bait", "tench, which is used as bait"),
    ("olive green or brown in color", "tench, which has olive green or brown in color"),
    ("An oval body", "tench, which has An oval body"),            # case-sensitive
    ("", "tench, which has "),                                    # empty descriptor
]


@pytest.mark.parametrize("descriptor, prompt", MENON_CASES)
def test_menon_rule_reproduces_reference_strings(descriptor, prompt):
    assert descriptor_prompts("tench", [descriptor], "menon") == [prompt]


@pytest.mark.parametrize("descriptor, prompt", [
    ("antlers", "tench, which has antlers"),
    ("arched back", "tench, which has arched back"),
    ("canopy of weeds", "tench, which has canopy of weeds"),
    ("hasty swimmer", "tench, which has hasty swimmer"),
    ("An oval body", "tench, which is An oval body"),
    ("a freshwater fish", "tench, which is a freshwater fish"),
    ("can be large", "tench, which can be large"),
    ("used as bait", "tench, which is used as bait"),
])
def test_corrected_rule_matches_whole_first_word(descriptor, prompt):
    assert descriptor_prompts("tench", [descriptor], "corrected") == [prompt]


def test_other_styles_class_wording_and_suffix():
    assert descriptor_prompts("great_white_shark", ["sharp teeth"], "menon", ".") == [
        "great white shark, which has sharp teeth."]
    assert descriptor_prompts("great_white_shark", ["sharp teeth", "a fin"], "plain") == [
        "great white shark, sharp teeth", "great white shark, a fin"]
    assert descriptor_prompts("tench", ["A tench is a fish."], "sentences") == ["A tench is a fish."]
    with pytest.raises(InputError, match="prompt style 'fancy'"):
        descriptor_prompts("tench", ["x"], "fancy")


# The reference's string rules with its other settings (loading_helpers.load_gpt_descriptions):
#   prepend:  before_text + wordify(k) + between_text + m(d) + after_text
#   append:   m(d) + between_text + wordify(k)               (before/after_text not used)
#   neither:  m(d)
# m(d) = make_descriptor_sentence(d), or d itself when apply_descriptor_modification is False
# ("plain"). Each expected string below is written out from that rule.
REFERENCE_SETTINGS = [
    # (style, position, prefix, between, suffix, class, descriptor, reference string)
    ("menon", "prepend", "", ", ", ".", "great_white_shark", "sharp teeth",
     "great white shark, which has sharp teeth."),                # ImageNet: after_text '.'
    ("menon", "prepend", "a photo of a ", " ", " which is a type of bird.", "jay",
     "a blue crest", "a photo of a jay which is a blue crest which is a type of bird."),
    ("menon", "prepend", "", "", "", "jay", "has wings", "jaywhich has wings"),
    ("menon", "append", "", ", ", "", "jay", "a blue crest", "which is a blue crest, jay"),
    ("menon", "append", "a photo of a ", " ", ".", "great_white_shark", "often grey",
     "which often grey great white shark"),                        # append ignores before/after
    ("plain", "append", "", ", ", "", "jay", "a blue crest", "a blue crest, jay"),
    ("plain", "prepend", "", " ", ".", "jay", "blue crest", "jay blue crest."),
    ("menon", "none", "a photo of ", ", ", ".", "jay", "used in logos", "which is used in logos"),
    ("plain", "none", "", ", ", "", "jay", "blue crest", "blue crest"),
    ("corrected", "append", "", ", ", "", "jay", "antennae", "which has antennae, jay"),
    ("menon", "prepend", "", ", ", ".", "jay", "", "jay, which has ."),   # [""] with '.'
]


@pytest.mark.parametrize("style, position, prefix, between, suffix, name, descriptor, prompt",
                         REFERENCE_SETTINGS)
def test_reference_settings_reproduce_its_strings(style, position, prefix, between, suffix,
                                                  name, descriptor, prompt):
    assert descriptor_prompts(name, [descriptor], style, suffix, prefix=prefix, between=between,
                              position=position) == [prompt]


def test_sentences_ignore_the_name_settings():
    assert descriptor_prompts("tench", ["A tench is a fish."], "sentences", ".", prefix="x ",
                              between=" ", position="append") == ["A tench is a fish."]


def test_classifier_builds_the_reference_prompts(backbone):
    clf = DescriptionClassifier(backbone, classnames=["jay", "great_white_shark"],
                                descriptors={"jay": ["a blue crest", "has wings"],
                                             "great_white_shark": ["sharp teeth"]},
                                name_position="append", between=" ").fit()
    assert clf.prompts_.tolist() == ["which is a blue crest jay", "which has wings jay",
                                     "which has sharp teeth great white shark"]
    assert clf.descriptors_.tolist() == ["a blue crest", "has wings", "sharp teeth"]


def test_imagenet_settings_on_the_released_file(shared_data, backbone):
    # the reference on ImageNet: after_text = label_after_text = '.'
    path = shared_data / "descriptors" / "descriptors_imagenet.json"
    clf = DescriptionClassifier(backbone, classnames=["tench", "goldfish"], descriptors=str(path),
                                suffix=".").fit()
    assert clf.prompts_[:3].tolist() == ["tench, which is a freshwater fish.",
                                         "tench, which has olive green or brown in color.",
                                         "tench, which is a dark bar on the side of the body."]
    assert clf.prompts_[7] == "goldfish, which is a fish with a bright orange or yellow color."


def test_blank_descriptor_for_an_empty_list_is_the_reference_prompt(backbone):
    descriptors = {"tench": ["fins"], "ray": []}
    clf = DescriptionClassifier(backbone, classnames=["tench", "ray"], descriptors=descriptors,
                                suffix=".", empty_descriptors="blank").fit()
    assert clf.prompts_.tolist() == ["tench, which has fins.", "ray, which has ."]
    assert clf.report_["without_descriptors"] == ["ray"]
    X = _embeddings(4, clf.n_features_in_, seed=9)
    blank = backbone.encode_texts(["ray, which has ."])[0]
    np.testing.assert_allclose(clf.logits(X)[:, list(clf.classes_).index("ray")],
                               100 * X @ blank, atol=1e-4)
    # a class missing from the file (allow_missing) gets the same blank descriptor
    missing = DescriptionClassifier(backbone, classnames=["tench", "ray"],
                                    descriptors={"tench": ["fins"]}, suffix=".",
                                    empty_descriptors="blank", allow_missing=True).fit()
    assert missing.prompts_.tolist() == clf.prompts_.tolist()
    # the released Food-101 file has empty lists: one prompt each, "k, which has "
    assert DescriptionClassifier(backbone, classnames=["ray"], descriptors={"ray": []},
                                 empty_descriptors="blank").fit().prompts_.tolist() == [
        "ray, which has "]


@pytest.fixture
def aggregations(backbone) -> dict[str, DescriptionClassifier]:
    return {a: DescriptionClassifier(backbone, descriptors=DESCRIPTORS, aggregation=a,
                                     logit_scale=1.0).fit() for a in ("mean", "max", "sum")}


def _brute_force(backbone, X: np.ndarray, reduce) -> np.ndarray:
    """The reference's loop: per class, its (N, n_k) similarities reduced over descriptors."""
    columns = []
    for name in sorted(DESCRIPTORS):   # classes_ are sorted
        prompts = [f"{name.replace('_', ' ')}, {phrase}" for phrase in {
            "tench": ["which is a freshwater fish", "which has olive green or brown in color",
                      "which has a long body"],
            "goldfish": ["which has orange scales", "which is a small fish",
                         "which often kept in a bowl", "which has fins"],
            "great_white_shark": ["which typically grey on top", "which has sharp teeth"],
        }[name]]
        columns.append(reduce(X @ backbone.encode_texts(prompts).T, axis=1))
    return np.stack(columns, axis=1)


def test_max_aggregation_equals_a_brute_force_loop_across_blocks(aggregations, backbone,
                                                                 monkeypatch):
    from zeroshot_plus.methods import descriptions

    monkeypatch.setattr(descriptions, "_ROWS", 4)   # 11 images: blocks of 4, 4 and 3
    X = _embeddings(11, aggregations["max"].n_features_in_, seed=10)
    expected = _brute_force(backbone, X, np.max)
    np.testing.assert_allclose(aggregations["max"].decision_function(X), expected, atol=1e-5)
    assert list(aggregations["max"].predict(X)) == list(
        aggregations["max"].classes_[expected.argmax(axis=1)])


def test_sum_is_the_mean_times_the_descriptor_count(aggregations, backbone):
    X = _embeddings(6, aggregations["sum"].n_features_in_, seed=11)
    counts = np.array([len(DESCRIPTORS[c]) for c in aggregations["sum"].classes_])
    np.testing.assert_allclose(aggregations["sum"].decision_function(X),
                               aggregations["mean"].decision_function(X) * counts, atol=1e-5)
    np.testing.assert_allclose(aggregations["sum"].decision_function(X),
                               _brute_force(backbone, X, np.sum), atol=1e-5)
    np.testing.assert_allclose(aggregations["mean"].decision_function(X),
                               _brute_force(backbone, X, np.mean), atol=1e-5)
    # the text head is the mean ensemble whatever the aggregation
    np.testing.assert_array_equal(aggregations["max"].text_head_, aggregations["mean"].text_head_)


def test_max_aggregation_survives_save_and_load(aggregations, backbone, tmp_path):
    X = _embeddings(5, aggregations["max"].n_features_in_, seed=12)
    aggregations["max"].save(tmp_path / "max.npz")
    loaded = Predictor.load(tmp_path / "max.npz", backbone)
    assert loaded.aggregation == "max"
    np.testing.assert_array_equal(loaded.decision_function(X),
                                  aggregations["max"].decision_function(X))


@pytest.mark.parametrize("params, message", [
    ({"aggregation": "median"},
     "DescriptionClassifier: aggregation must be 'mean', 'max' or 'sum', got 'median'."),
    ({"name_position": "middle"},
     "DescriptionClassifier: name_position must be 'prepend', 'append' or 'none', got 'middle'."),
    ({"empty_descriptors": "skip"},
     "DescriptionClassifier: empty_descriptors must be 'name' or 'blank', got 'skip'."),
    ({"suffix": 1}, "DescriptionClassifier: suffix must be a string, got 1."),
    ({"between": None}, "DescriptionClassifier: between must be a string, got None."),
])
def test_bad_reference_settings_are_one_sentence(backbone, params, message):
    with pytest.raises(InputError) as info:
        DescriptionClassifier(backbone, descriptors=DESCRIPTORS, **params).fit()
    assert str(info.value) == message


def test_text_weights_take_only_the_mean(fitted):
    with pytest.raises(InputError, match="aggregation 'max' needs the descriptors' embeddings"):
        DescriptionClassifier(text_weights=fitted.text_head_, aggregation="max").fit()
    given = DescriptionClassifier(text_weights=fitted.text_head_).fit()
    given.set_params(aggregation="sum")
    with pytest.raises(InputError, match="aggregation 'sum' needs descriptors"):
        given.logits(_embeddings(2, fitted.n_features_in_))


# ---------------------------------------------------------------------- matching


def test_matching_reports_and_tolerates_spelling_variants():
    match = match_descriptors({**DESCRIPTORS, "eel": []},
                              ["Great White Shark", "tench", "eel"])
    assert match.descriptors[0] == DESCRIPTORS["great_white_shark"]
    report = match.report()
    assert report["renamed"] == {"Great White Shark": "great_white_shark"}
    assert report["unused"] == ["goldfish"]
    assert report["without_descriptors"] == ["eel"]
    assert report["n_with_descriptors"] == 2
    assert report["descriptors_per_class"] == {"min": 0, "mean": 5 / 3, "max": 3}


def test_missing_class_error_names_it_and_suggests_the_close_key():
    with pytest.raises(InputError) as info:
        match_descriptors(DESCRIPTORS, ["tench", "goldfsh", "zebra"])
    message = str(info.value)
    assert "2 of the 3 classes" in message
    assert "'goldfsh' (did you mean 'goldfish'?)" in message
    assert "'zebra'" in message and "zebra' (did" not in message
    assert "\n" not in message
    match = match_descriptors(DESCRIPTORS, ["tench", "zebra"], allow_missing=True)
    assert match.descriptors[1] == [] and match.report()["missing"] == ["zebra"]


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('["tench"]', "must be a JSON object"),
    ('{"tench": "a fish"}', "class 'tench' maps to"),
    ('{"tench": ["a fish", 3]}', "class 'tench' maps to"),
    ("{}", "names no classes"),
])
def test_bad_descriptor_files(tmp_path, content, fragment):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(InputError, match=fragment):
        match_descriptors(path)
    with pytest.raises(InputError, match="does not exist"):
        match_descriptors(tmp_path / "absent.json")


def test_released_descriptor_files_load(shared_data):
    folder = shared_data / "descriptors"
    # counts from the METHODS.md §2.3 table (classes, min / max descriptors per class)
    expected = {"imagenet": (1000, 2, 11), "cub": (200, 4, 9), "food101": (101, 0, 12),
                "places365": (365, 0, 13), "eurosat": (10, 1, 4)}
    for name, (n, low, high) in expected.items():
        report = match_descriptors(folder / f"descriptors_{name}.json").report()
        assert report["n_classes"] == n
        assert (report["descriptors_per_class"]["min"], report["descriptors_per_class"]["max"]) == (low, high)
    imagenet = match_descriptors(folder / "descriptors_imagenet.json")
    assert imagenet.classnames[:3] == ["tench", "goldfish", "great white shark"]
    food = match_descriptors(folder / "descriptors_food101.json").report()
    assert 0 < len(food["without_descriptors"]) < 101
    # a user's class list with a typo fails with a suggestion
    with pytest.raises(InputError, match="'goldfsh' \\(did you mean 'goldfish'\\?\\)"):
        match_descriptors(folder / "descriptors_imagenet.json", ["tench", "goldfsh"])


def test_released_cupl_sentences_as_whole_prompts(shared_data, backbone):
    path = shared_data / "cupl" / "cifar10_prompts_full.json"
    raw = json.loads(path.read_text())
    clf = DescriptionClassifier(backbone, classnames=["cat", "dog"], descriptors=str(path),
                                prompt_style="sentences").fit()
    assert clf.counts_.tolist() == [len(raw["cat"]), len(raw["dog"])]
    assert clf.prompts_[0] == raw["cat"][0].strip()
    # CuPL's class weight: normalised mean of normalised sentence embeddings (§2.4)
    cat = backbone.encode_texts(raw["cat"]).mean(axis=0)
    np.testing.assert_allclose(clf.text_head_[0], cat / np.linalg.norm(cat), atol=1e-5)


# ---------------------------------------------------------------------- scores


@pytest.fixture
def fitted(backbone) -> DescriptionClassifier:
    return DescriptionClassifier(backbone, descriptors=DESCRIPTORS).fit()


def test_segment_mean_equals_a_per_class_loop(fitted, backbone):
    X = _embeddings(7, fitted.n_features_in_)
    expected = np.empty((7, 3))
    names = sorted(DESCRIPTORS)  # classes_ are sorted, as scikit-learn's are
    for k, name in enumerate(names):   # the reference's loop
        prompts = [descriptor_prompts(name, [d])[0] for d in DESCRIPTORS[name]]
        expected[:, k] = (X @ backbone.encode_texts(prompts).T).mean(axis=1)
    np.testing.assert_allclose(fitted.decision_function(X), 100 * expected, atol=1e-4)
    assert list(fitted.classes_) == names
    assert list(fitted.predict(X)) == [names[k] for k in expected.argmax(axis=1)]


def test_one_pass_encoding_in_class_order(backbone, monkeypatch):
    calls = []
    original = type(backbone).encode_texts

    def spy(self, texts, **kwargs):
        calls.append(list(texts))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(type(backbone), "encode_texts", spy)
    clf = DescriptionClassifier(backbone, descriptors=DESCRIPTORS).fit()
    assert len(calls) == 1 and len(calls[0]) == 9
    given = [list(DESCRIPTORS).index(c) for c in clf.classes_]  # column -> descriptor order
    assert clf.offsets_.tolist() == [[0, 3, 7][i] for i in given]
    assert clf.counts_.tolist() == [[3, 4, 2][i] for i in given]


def test_equal_single_descriptor_is_the_zero_shot_classifier(backbone):
    names = ["tench", "goldfish", "eel", "ray"]
    desc = DescriptionClassifier(backbone, classnames=names,
                                 descriptors={n: ["black fur"] for n in names}).fit()
    zero = ZeroShotClassifier(backbone, classnames=names,
                              templates=["{}, which has black fur"]).fit()
    X = _embeddings(20, desc.n_features_in_, seed=1)
    np.testing.assert_allclose(desc.decision_function(X), zero.decision_function(X), atol=1e-4)
    assert (desc.predict(X) == zero.predict(X)).all()


def test_equal_descriptor_lists_are_zero_shot_up_to_the_mean_norm(backbone):
    names = ["tench", "goldfish", "eel"]
    items = ["a fish", "fins", "scales"]
    desc = DescriptionClassifier(backbone, classnames=names,
                                 descriptors={n: items for n in names}).fit()
    templates = ["{}, which is a fish", "{}, which has fins", "{}, which has scales"]
    zero = ZeroShotClassifier(backbone, classnames=names, templates=templates).fit()
    np.testing.assert_allclose(desc.text_head_, zero.text_head_, atol=1e-5)
    norms = np.array([np.linalg.norm(backbone.encode_texts([t.format(n) for t in templates])
                                     .mean(axis=0)) for n in desc.classes_])
    X = _embeddings(10, desc.n_features_in_, seed=2)
    np.testing.assert_allclose(desc.decision_function(X), zero.decision_function(X) * norms,
                               atol=1e-4)


def test_class_without_descriptors_falls_back_to_its_name(backbone):
    clf = DescriptionClassifier(backbone, classnames=["tench", "ray"],
                                descriptors={"tench": ["fins"], "ray": []},
                                suffix=".").fit()
    assert clf.prompts_.tolist() == ["tench, which has fins.", "ray."]
    X = _embeddings(4, clf.n_features_in_, seed=3)
    name = backbone.encode_texts(["ray."])[0]
    ray = list(clf.classes_).index("ray")
    np.testing.assert_allclose(clf.logits(X)[:, ray], 100 * X @ name, atol=1e-4)
    missing = DescriptionClassifier(backbone, classnames=["tench", "ray"],
                                    descriptors={"tench": ["fins"]},
                                    suffix=".", allow_missing=True).fit()
    np.testing.assert_allclose(missing.decision_function(X), clf.decision_function(X), atol=1e-6)
    assert missing.report_["missing"] == ["ray"]
    with pytest.raises(InputError, match="'ray'"):
        DescriptionClassifier(backbone, classnames=["tench", "ray"],
                              descriptors={"tench": ["fins"]}).fit()


def test_probabilities_and_scale(fitted):
    X = _embeddings(5, fitted.n_features_in_, seed=4)
    raw = DescriptionClassifier(fitted.backbone, descriptors=DESCRIPTORS, logit_scale=1.0).fit()
    np.testing.assert_allclose(fitted.decision_function(X), 100 * raw.decision_function(X), atol=1e-4)
    proba = raw.predict_proba(X)
    logits = raw.decision_function(X)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba, expected, atol=1e-6)


def test_explain_lists_the_predicted_class_descriptors_by_similarity(fitted, backbone):
    X = _embeddings(12, fitted.n_features_in_, seed=5)
    explanations = fitted.explain(X, top=2)
    predicted = fitted.predict(X)
    for x, label, explanation in zip(X, predicted, explanations):
        items = DESCRIPTORS[label]
        sims = backbone.encode_texts(descriptor_prompts(label, items)) @ x
        order = np.argsort(-sims)[:2]
        assert explanation.label == label
        assert explanation.descriptors == [items[j] for j in order]
        np.testing.assert_allclose(explanation.similarities, sims[order], atol=1e-5)
    # top beyond a class's descriptor count gives all of them
    assert all(len(e.descriptors) == len(DESCRIPTORS[e.label])
               for e in fitted.explain(X, top=50))
    with pytest.raises(InputError, match="top"):
        fitted.explain(X, top=0)


def test_text_head_serves_as_gda_prior(fitted):
    X = _embeddings(30, fitted.n_features_in_, seed=6)
    y = np.array(list(DESCRIPTORS))[np.arange(30) % 3]
    gda = GDAClassifier(text_weights=fitted.text_head_, classnames=list(fitted.classes_),
                        alpha=0.0).fit(X, y)
    logits = 100 * X @ fitted.text_head_.T
    assert (gda.predict(X) == fitted.classes_[logits.argmax(axis=1)]).all()


def test_save_and_load_round_trip(fitted, backbone, tmp_path):
    X = _embeddings(6, fitted.n_features_in_, seed=7)
    fitted.save(tmp_path / "desc.npz")
    loaded = Predictor.load(tmp_path / "desc.npz", backbone)
    assert isinstance(loaded, DescriptionClassifier)
    np.testing.assert_array_equal(loaded.decision_function(X), fitted.decision_function(X))
    assert loaded.explain(X) == fitted.explain(X)
    assert loaded.report_ == fitted.report_


def test_scikit_learn_clone_refits_the_same(fitted):
    from sklearn.base import clone

    copy = clone(fitted)
    assert copy.get_params()["descriptors"] == DESCRIPTORS and not hasattr(copy, "classes_")
    X = _embeddings(3, fitted.n_features_in_, seed=8)
    np.testing.assert_array_equal(copy.fit().decision_function(X), fitted.decision_function(X))


def test_bad_parameters_and_inputs(backbone, fitted):
    with pytest.raises(InputError, match="backbone and descriptors"):
        DescriptionClassifier(backbone).fit()
    with pytest.raises(InputError, match="prompt style 'menon2'"):
        DescriptionClassifier(backbone, descriptors=DESCRIPTORS, prompt_style="menon2").fit()
    with pytest.raises(InputError, match="features"):
        fitted.decision_function(np.ones((2, fitted.n_features_in_ + 1), np.float32))
    zero = fitted.explain(np.zeros((1, fitted.n_features_in_), np.float32))[0]
    assert zero.similarities == [0.0] * len(zero.descriptors)  # cosine 0 to everything


# ---------------------------------------------------------------------- command line

PETS = {"cat": ["whiskers", "a small animal", "pointed ears"], "dog": ["a wagging tail", "fur"],
        "fish": []}


@pytest.fixture
def cli_setup(tmp_path, tiny_config, labelled_folder):
    path = tmp_path / "pets.json"
    path.write_text(json.dumps(PETS))
    return labelled_folder, path, ["--model", tiny_config, "--pretrained", "none", "--no-progress"]


def test_cli_predict_with_explanations(cli_setup, backbone, tmp_path):
    from zeroshot_plus.cli import main

    folder, path, model = cli_setup
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(folder), "--method", "descriptions", "--descriptors", str(path),
                 "--explain", "2", "--top-k", "1", "--out", str(out), *model]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    clf = DescriptionClassifier(backbone, descriptors=PETS).fit()   # classes from the file
    X = backbone.encode_images(sorted(folder.rglob("*.*")))
    assert [r["labels"][0] for r in rows] == list(clf.predict(X))
    for row, expected in zip(rows, clf.explain(X, top=2)):
        assert [e["descriptor"] for e in row["explanation"]] == expected.descriptors
        if row["labels"][0] == "fish":   # no descriptors: explained by its name
            assert row["explanation"][0]["descriptor"] == "fish"
    csv_out = tmp_path / "p.csv"
    assert main(["predict", str(folder), "--classes", "dog,cat", "--method", "descriptions",
                 "--descriptors", str(path), "--explain", "--top-k", "2", "--out", str(csv_out),
                 *model]) == 0
    header, *lines = [line.split(",") for line in csv_out.read_text().splitlines()]
    assert header == ["path", "label1", "prob1", "label2", "prob2", "descriptor1", "similarity1",
                      "descriptor2", "similarity2", "descriptor3", "similarity3"]
    assert len(lines) == 12 and all(len(line) == len(header) for line in lines)
    assert all(line[5] in PETS[line[1]] for line in lines)


def test_cli_evaluate_descriptions_reports_explanations(cli_setup, tmp_path, capsys):
    from zeroshot_plus.cli import main

    folder, path, model = cli_setup
    out = tmp_path / "e.json"
    assert main(["evaluate", str(folder), "--method", "descriptions", "--descriptors", str(path),
                 "--explain", "1", "--out", str(out), *model]) == 0
    summary = json.loads(out.read_text())
    assert summary["method"] == "descriptions"
    assert summary["descriptors"]["without_descriptors"] == ["fish"]
    assert len(summary["explanations"]) == 12
    assert {e["label"] for e in summary["explanations"]} == {"cat", "dog", "fish"}


def test_cli_description_errors(cli_setup, capsys):
    from zeroshot_plus.cli import main

    folder, path, model = cli_setup
    cases = [
        (["--method", "descriptions"], "needs --descriptors"),
        (["--method", "descriptions", "--descriptors", str(path), "--classes", "cat,dgo"],
         "'dgo' (did you mean 'dog'?)"),
        (["--classes", "cat,dog", "--explain"], "--explain needs --method descriptions"),
    ]
    for extra, fragment in cases:
        assert main(["predict", str(folder), *extra, *model]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err


def test_cli_reference_settings_reach_the_estimator(cli_setup, tmp_path, monkeypatch, backbone):
    from zeroshot_plus.cli import main

    folder, path, model = cli_setup
    seen = []
    original = DescriptionClassifier.fit

    def spy(self, X=None, y=None):
        seen.append(self.get_params(deep=False))
        return original(self, X, y)

    monkeypatch.setattr(DescriptionClassifier, "fit", spy)
    out = tmp_path / "e.json"
    settings = {"name_position": "append", "prefix": "a photo of ", "between": " ",
                "suffix": ".", "empty_descriptors": "blank", "aggregation": "max"}
    options = [v for name, value in settings.items()
               for v in (f"--{name.replace('_', '-')}", value)]
    assert main(["evaluate", str(folder), "--method", "descriptions", "--descriptors", str(path),
                 *options, "--out", str(out), *model]) == 0
    assert {name: seen[0][name] for name in settings} == settings
    summary = json.loads(out.read_text())
    assert {name: summary[name] for name in settings} == settings
    # the defaults when the options are left out
    assert main(["predict", str(folder), "--method", "descriptions", "--descriptors", str(path),
                 "--out", str(tmp_path / "p.csv"), *model]) == 0
    assert {name: seen[1][name] for name in settings} == {
        "name_position": "prepend", "prefix": "", "between": ", ", "suffix": "",
        "empty_descriptors": "name", "aggregation": "mean"}


def test_cli_reference_setting_errors(cli_setup, capsys):
    from zeroshot_plus.cli import main

    folder, path, model = cli_setup
    cases = [
        (["--classes", "cat,dog", "--suffix", "."],
         "--suffix needs --method descriptions; --method zeroshot does not use it."),
        (["--classes", "cat,dog", "--aggregation", "max"],
         "--aggregation needs --method descriptions"),
    ]
    for extra, fragment in cases:
        assert main(["predict", str(folder), *extra, *model]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    for option, value in (("--aggregation", "median"), ("--name-position", "middle"),
                          ("--empty-descriptors", "skip")):
        with pytest.raises(SystemExit) as info:   # argparse: usage, then one error line
            main(["predict", str(folder), "--method", "descriptions", "--descriptors",
                  str(path), option, value, *model])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert f"argument {option}: invalid choice: '{value}'" in err[-1], err
