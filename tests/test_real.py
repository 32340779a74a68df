"""REAL: synonym tables, REAL-Prompt, FTS5 frequency mining, REAL-Linear, the CLI."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from zeroshot_plus import (GDAClassifier, InputError, RealLinearClassifier, RealPromptClassifier,
                           ZeroShotClassifier)
from zeroshot_plus.text import frequency
from zeroshot_plus.cli import main
from zeroshot_plus.text.frequency import CaptionIndex, build_index, most_common_name
from zeroshot_plus.methods.base import Predictor
from zeroshot_plus.text.synonyms import load_synonyms

NAMES = ["cat", "dog", "jay"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]
SYNONYM_MAP = {"cat": "kitty", "dog": "puppy", "jay": "blue jay"}


def embeddings(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metrics_row(name: str, chosen: str, **alternates: int) -> dict:
    return {"name": name, "alternates": alternates or {name: 1}, "most_common_name": chosen,
            "actual_freq": 1}


# ---------------------------------------------------------------------- REAL-Prompt


def test_identity_synonyms_give_the_zero_shot_logits(backbone):
    X = embeddings(12, backbone.embed_dim)
    zero_shot = ZeroShotClassifier(backbone, classnames=NAMES, templates=TEMPLATES).fit()
    as_map = RealPromptClassifier(backbone, classnames=NAMES, synonyms={n: n for n in NAMES},
                                  templates=TEMPLATES).fit()
    as_metrics = RealPromptClassifier(
        backbone, classnames=NAMES,
        synonyms={str(i): metrics_row(n, n) for i, n in enumerate(NAMES)},
        templates=TEMPLATES).fit()
    for real in (as_map, as_metrics):
        np.testing.assert_array_equal(real.decision_function(X), zero_shot.decision_function(X))
        assert list(real.classes_) == NAMES


def test_synonyms_replace_the_name_in_every_template_and_classes_keep_the_names(backbone):
    real = RealPromptClassifier(backbone, classnames=NAMES,
                                synonyms={"cat": "kitty", "DOG": "puppy", "jay": "blue jay"},
                                templates=TEMPLATES).fit()
    renamed = ZeroShotClassifier(backbone, classnames=["kitty", "puppy", "blue jay"],
                                 templates=TEMPLATES).fit()
    rows = [list(renamed.classes_).index(n) for n in real.prompt_names_]  # both sorted by name
    np.testing.assert_array_equal(real.text_head_, renamed.text_head_[rows])
    assert list(real.classes_) == NAMES
    assert list(real.prompt_names_) == ["kitty", "puppy", "blue jay"]
    X = embeddings(5, backbone.embed_dim)
    assert set(real.predict(X)) <= set(NAMES)


def test_metrics_rows_are_ordered_by_integer_class_id(tmp_path, backbone):
    # JSON order "10", "2", "0", ...: neither file order nor string order is the label order.
    names = [f"class{i}" for i in range(11)]
    data = {k: metrics_row(f"class{k}", f"synonym{k}") for k in ["10", "2", "0", "1", "3", "4",
                                                                "5", "6", "7", "8", "9"]}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    table = load_synonyms(path)
    assert table.classes == names
    assert table.chosen == [f"synonym{i}" for i in range(11)]
    real = RealPromptClassifier(backbone, synonyms=str(path), templates=TEMPLATES).fit()
    assert list(real.classes_) == sorted(names)  # sorted as scikit-learn's classes_ are
    assert real.prompt_names_[list(real.classes_).index("class10")] == "synonym10"
    # given class names are matched to the rows by id
    given = RealPromptClassifier(backbone, classnames=[f"n{i}" for i in range(11)],
                                 synonyms=str(path), templates=TEMPLATES).fit()
    assert given.prompt_names_[list(given.classes_).index("n2")] == "synonym2"


def test_most_common_name_is_taken_as_written_not_recomputed():
    data = {"0": metrics_row("partridge", "partridge (bird)", partridge=12641,
                             **{"partridge (bird)": 54})}
    assert load_synonyms(data).chosen == ["partridge (bird)"]


def test_real_prompt_head_serves_as_the_gda_prior(backbone):
    real = RealPromptClassifier(backbone, classnames=NAMES,
                                synonyms={"cat": "kitty", "dog": "puppy", "jay": "jay"},
                                templates=TEMPLATES).fit()
    X = embeddings(9, backbone.embed_dim, seed=1)
    gda = GDAClassifier(text_weights=real.text_head_, classnames=list(real.classes_), alpha=0.0)
    gda.fit(X, np.array(NAMES * 3))
    np.testing.assert_array_equal(gda.predict(X), real.predict(X))


def test_save_and_load_round_trip(tmp_path, backbone):
    real = RealPromptClassifier(backbone, classnames=NAMES,
                                synonyms={"cat": "kitty", "dog": "puppy", "jay": "jay"},
                                templates=TEMPLATES).fit()
    real.save(tmp_path / "real.npz")
    loaded = Predictor.load(tmp_path / "real.npz", backbone)
    X = embeddings(4, backbone.embed_dim)
    assert isinstance(loaded, RealPromptClassifier)
    np.testing.assert_array_equal(loaded.decision_function(X), real.decision_function(X))


# ---------------------------------------------------------------------- REAL-Prompt variants


def _spy_texts(backbone, monkeypatch) -> list[list[str]]:
    """Every list of texts the backbone is asked to encode, in call order."""
    calls = []
    original = type(backbone).encode_texts

    def spy(self, texts, **kwargs):
        calls.append(list(texts))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(type(backbone), "encode_texts", spy)
    return calls


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_alternates_with_one_synonym_is_most_common_name(backbone):
    metrics = {str(i): metrics_row(n, chosen, **{chosen: 5})
               for i, (n, chosen) in enumerate(zip(NAMES, ["kitty", "puppy", "blue jay"]))}
    heads = [RealPromptClassifier(backbone, synonyms=metrics, templates=TEMPLATES,
                                  name_type=t).fit().text_head_
             for t in ("alternates", "most_common_name")]
    np.testing.assert_array_equal(*heads)


def test_alternates_average_every_synonym_in_every_template(backbone, monkeypatch):
    metrics = {"0": metrics_row("cat", "cat", cat=9, kitty=4, **{"house cat": 2}),
               "1": metrics_row("jay", "blue jay", **{"blue jay": 7})}
    calls = _spy_texts(backbone, monkeypatch)
    real = RealPromptClassifier(backbone, synonyms=metrics, templates=TEMPLATES,
                                name_type="alternates").fit()
    # prompt_maker: synonym by synonym (alternates as written), each in every template
    cat = ["a photo of a cat.", "a drawing of a cat.", "a photo of a kitty.",
           "a drawing of a kitty.", "a photo of a house cat.", "a drawing of a house cat."]
    jay = ["a photo of a blue jay.", "a drawing of a blue jay."]
    assert calls[-1] == cat + jay
    for row, prompts in zip(real.text_head_, (cat, jay)):   # classes_ cat, jay
        np.testing.assert_allclose(row, _unit(backbone.encode_texts(prompts).mean(axis=0)),
                                   atol=1e-6)
    assert not hasattr(real, "prompt_names_")


def test_name_type_name_is_the_zero_shot_classifier_of_the_class_names(backbone):
    X = embeddings(8, backbone.embed_dim, seed=4)
    real = RealPromptClassifier(backbone, classnames=NAMES, synonyms=SYNONYM_MAP,
                                templates=TEMPLATES, name_type="name").fit()
    zero_shot = ZeroShotClassifier(backbone, classnames=NAMES, templates=TEMPLATES).fit()
    np.testing.assert_array_equal(real.decision_function(X), zero_shot.decision_function(X))
    assert list(real.prompt_names_) == NAMES


def test_dclip_prompts_have_the_class_name_replaced(backbone, monkeypatch):
    descriptors = {"cat": ["whiskers"], "dog": [], "jay": ["a blue crest", "jay-like call"]}
    calls = _spy_texts(backbone, monkeypatch)
    real = RealPromptClassifier(backbone, classnames=NAMES, synonyms=SYNONYM_MAP,
                                prompt_style="dclip", descriptors=descriptors).fit()
    # DCLIP's prompt "k, which ... d", then str.replace(k, chosen): inside words too; an
    # empty list gives "A photo of a {chosen}"
    assert calls[-1] == ["kitty, which has whiskers", "A photo of a puppy",
                         "blue jay, which is a blue crest",
                         "blue jay, which has blue jay-like call"]
    assert list(real.prompt_names_) == ["kitty", "puppy", "blue jay"]
    named = RealPromptClassifier(backbone, classnames=NAMES, synonyms=SYNONYM_MAP,
                                 name_type="name", prompt_style="dclip",
                                 descriptors=descriptors).fit()
    assert calls[-1] == ["cat, which has whiskers", "A photo of a dog",
                         "jay, which is a blue crest", "jay, which has jay-like call"]
    assert list(named.prompt_names_) == NAMES


def test_cupl_sentences_have_the_class_name_replaced_case_sensitively(backbone, monkeypatch):
    sentences = {"cat": ["A cat is a small pet.", "Cats purr.", "cat"], "dog": ["A dog."],
                 "JAY": ["The jay is loud."]}   # a key matched up to case keeps its spelling
    calls = _spy_texts(backbone, monkeypatch)
    RealPromptClassifier(backbone, classnames=NAMES, synonyms=SYNONYM_MAP, prompt_style="cupl",
                         descriptors=sentences).fit()
    assert calls[-1] == ["A kitty is a small pet.", "Cats purr.", "kitty", "A puppy.",
                         "The jay is loud."]


PET_NAMES = {"Bengal cat": "Bengal", "Bombay cat": "Bombay", "boxer dog": "boxer",
             "newfoundland dog": "newfoundland", "Persian cat": "Persian",
             "siamese cat": "Siamese"}   # REAL's names -> the DCLIP / CuPL keys that differ


def test_released_pets_files_with_laion2b_names(shared_data, backbone, monkeypatch):
    metrics = shared_data / "real" / "oxford_pets" / "metrics-LAION2B.json"
    cupl = shared_data / "cupl" / "pets_prompts_full.json"
    dclip = shared_data / "descriptors" / "descriptors_pets.json"
    for path in (metrics, cupl, dclip):
        if not path.is_file():
            pytest.skip(f"{path} not found")
    rows = json.loads(metrics.read_text())
    names = [PET_NAMES.get(rows[str(i)]["name"], rows[str(i)]["name"]) for i in range(len(rows))]
    calls = _spy_texts(backbone, monkeypatch)
    real = RealPromptClassifier(backbone, classnames=names, synonyms=str(metrics),
                                prompt_style="cupl", descriptors=str(cupl)).fit()
    assert real.prompt_names_[list(real.classes_).index("saint bernard")] == "st. bernard"
    texts = calls[-1]
    assert "A st. bernard looks like a large, powerful dog with a thick coat of fur." in texts
    assert "A saint bernard looks like a large, powerful dog with a thick coat of fur." not in texts
    assert ("Most Saint Bernard dogs are between 24 and 27 inches tall and weigh between 140 "
            "and 260 pounds.") in texts                                  # case-sensitive
    RealPromptClassifier(backbone, classnames=names, synonyms=str(metrics), prompt_style="dclip",
                         descriptors=str(dclip)).fit()
    assert {"st. bernard, which has four-legged animal", "st. bernard, which is a short tail",
            "Abyssinian, which has black, grey, or brown fur"} <= set(calls[-1])
    assert not any(t.startswith("saint bernard") for t in calls[-1])


@pytest.mark.parametrize("params, message", [
    ({"name_type": "synonym"}, "RealPromptClassifier: name_type must be 'most_common_name', "
                               "'name' or 'alternates', got 'synonym'."),
    ({"prompt_style": "hand_engineered"}, "RealPromptClassifier: prompt_style must be "
                                          "'templates', 'dclip' or 'cupl', got 'hand_engineered'."),
    ({"prompt_style": "dclip"}, "RealPromptClassifier: prompt_style 'dclip' needs descriptors "
                                "(a descriptor file or dict)."),
    ({"descriptors": {"cat": ["fur"]}}, "RealPromptClassifier: descriptors are used only with "
                                        "prompt_style 'dclip' or 'cupl', not 'templates'."),
    ({"prompt_style": "cupl", "descriptors": {"cat": ["A cat."]}, "name_type": "alternates"},
     "RealPromptClassifier: prompt_style 'cupl' replaces the class name by one name; use "
     "name_type 'most_common_name' or 'name', not 'alternates'."),
])
def test_bad_variant_settings_are_one_sentence(backbone, params, message):
    with pytest.raises(InputError) as info:
        RealPromptClassifier(backbone, classnames=NAMES, synonyms=SYNONYM_MAP,
                             templates=TEMPLATES, **params).fit()
    assert str(info.value) == message


def test_cupl_file_missing_a_class_names_it(backbone):
    with pytest.raises(InputError, match="no entry for 1 of the 3 classes: 'jay'"):
        RealPromptClassifier(backbone, classnames=NAMES, synonyms=SYNONYM_MAP,
                             prompt_style="cupl", descriptors={"cat": ["A cat."],
                                                               "dog": ["A dog."]}).fit()


def test_cli_real_variants_reach_the_estimator(tmp_path, labelled_folder, tiny_config,
                                               monkeypatch, capsys):
    seen = []
    original = RealPromptClassifier.fit

    def spy(self, X=None, y=None):
        seen.append(self.get_params(deep=False))
        return original(self, X, y)

    monkeypatch.setattr(RealPromptClassifier, "fit", spy)
    synonyms, sentences = tmp_path / "s.json", tmp_path / "cupl.json"
    synonyms.write_text(json.dumps({"cat": "kitty", "dog": "puppy", "fish": "trout"}))
    sentences.write_text(json.dumps({"cat": ["A cat."], "dog": ["A dog."], "fish": []}))
    base = ["evaluate", str(labelled_folder), "--method", "real", "--synonyms", str(synonyms),
            "--model", tiny_config, "--pretrained", "none", "--no-progress"]
    out = tmp_path / "e.json"
    assert main([*base, "--real-prompts", "cupl", "--descriptors", str(sentences),
                 "--name-type", "name", "--out", str(out)]) == 0
    assert (seen[0]["prompt_style"], seen[0]["name_type"], seen[0]["descriptors"]) == (
        "cupl", "name", str(sentences))
    summary = json.loads(out.read_text())
    assert (summary["real_prompts"], summary["name_type"]) == ("cupl", "name")
    assert main([*base, "--name-type", "alternates"]) == 0
    assert (seen[1]["prompt_style"], seen[1]["name_type"], seen[1]["descriptors"]) == (
        "templates", "alternates", None)
    assert main(base) == 0
    assert (seen[2]["prompt_style"], seen[2]["name_type"]) == ("templates", "most_common_name")
    capsys.readouterr()
    cases = [
        (["--real-prompts", "dclip"], "--real-prompts dclip needs --descriptors FILE (the DCLIP "
                                      "descriptors)."),
        (["--descriptors", str(sentences)],
         "--descriptors with --method real needs --real-prompts dclip or cupl."),
        (["--real-prompts", "cupl", "--descriptors", str(sentences), "--name-type", "alternates"],
         "--real-prompts cupl replaces each class name by one name: use --name-type "
         "most_common_name or name, not alternates."),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"zeroshot-plus: error: {message}"], err
    for option, value in (("--name-type", "name"), ("--real-prompts", "cupl")):
        assert main(["evaluate", str(labelled_folder), option, value, "--model", tiny_config,
                     "--pretrained", "none", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"zeroshot-plus: error: {option} needs --method real; --method zeroshot "
                       f"does not use it."], err


# ---------------------------------------------------------------------- released files

CHANGED = {  # METHODS.md §3.4: classes whose most_common_name != name (case-insensitive)
    "imagenet_1k/metrics-LAION400M.json": 118, "imagenet_1k/metrics-LAION2B.json": 135,
    "flowers102/metrics-LAION400M.json": 31, "flowers102/metrics-LAION2B.json": 33,
    "dtd/metrics-LAION400M.json": 13, "dtd/metrics-LAION2B.json": 13,
    "fgvc_aircraft/metrics-LAION400M.json": 11, "fgvc_aircraft/metrics-LAION2B.json": 11,
    "cub2011/metrics-LAION400M.json": 4, "cub2011/metrics-LAION2B.json": 4,
    "food101/metrics-LAION400M.json": 3, "food101/metrics-LAION2B.json": 2,
    "oxford_pets/metrics-LAION400M.json": 0, "oxford_pets/metrics-LAION2B.json": 1,
    "stanford_cars/metrics-LAION400M.json": 194, "stanford_cars/metrics-LAION2B.json": 196,
    "stanford_cars/metrics-LAION400M-coarse.json": 2, "stanford_cars/metrics-LAION2B-coarse.json": 2,
    "eurosat/metrics-LAION400M-satellite.json": 2, "eurosat/metrics-LAION2B-satellite.json": 2,
}


def test_released_metrics_files_load_in_label_order(shared_data):
    import open_clip

    root = shared_data / "real"
    # open_clip names two classes "missile" (and the metrics files two "sunglasses")
    imagenet_names = [n if n not in open_clip.IMAGENET_CLASSNAMES[:i] else f"{n} ({i})"
                      for i, n in enumerate(open_clip.IMAGENET_CLASSNAMES)]
    if not root.is_dir():
        pytest.skip(f"REAL metrics not found at {root}")
    for name, changed in CHANGED.items():
        path = root / name
        classnames = imagenet_names if name.startswith("imagenet") else None
        table = load_synonyms(path, classnames)
        differ = sum(c.lower() != s.lower() for c, s in zip(table.classes, table.chosen))
        if classnames is not None:  # compare with the file's own names
            raw = json.loads(path.read_text())
            differ = sum(raw[str(i)]["name"].lower() != s.lower()
                         for i, s in enumerate(table.chosen))
        assert differ == changed, name
    imagenet = load_synonyms(root / "imagenet_1k/metrics-LAION400M.json", imagenet_names)
    assert [imagenet.chosen[i] for i in (17, 83, 86, 103)] == [
        "blue jay", "prairie chicken", "partridge (bird)", "duck billed platypus"]
    assert imagenet.classes[17] == "jay"
    # its names repeat ("missile" twice): usable, rows told apart by id (classes_ 0..999)
    by_id = load_synonyms(root / "imagenet_1k/metrics-LAION400M.json")
    assert by_id.classes.count("missile") == 2 and by_id.chosen == imagenet.chosen


# ---------------------------------------------------------------------- synonym input errors


def test_bad_synonym_inputs_raise_one_clear_error(tmp_path, backbone):
    with pytest.raises(InputError, match=r"no entry for 1 class\(es\): 'cat' \(did you mean 'kat'\?\)"):
        load_synonyms({"kat": "kitty", "dog": "puppy", "jay": "jay"}, NAMES)
    with pytest.raises(InputError, match="candidate synonyms but no chosen name"):
        RealPromptClassifier(backbone, classnames=NAMES, synonyms={n: [n, "x"] for n in NAMES},
                             templates=TEMPLATES).fit()
    with pytest.raises(InputError, match="class id 'ten', which is not an integer"):
        load_synonyms({"0": metrics_row("a", "a"), "ten": metrics_row("b", "b")})
    with pytest.raises(InputError, match="id 1 is missing"):
        load_synonyms({"0": metrics_row("a", "a"), "2": metrics_row("b", "b")})
    with pytest.raises(InputError, match="has 1 classes but 3 class names"):
        load_synonyms({"0": metrics_row("a", "a")}, NAMES)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_synonyms(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_synonyms(tmp_path / "missing.json")
    with pytest.raises(InputError, match="needs synonyms"):
        RealPromptClassifier(backbone, classnames=NAMES, templates=TEMPLATES).fit()


# ---------------------------------------------------------------------- frequency mining

WORDS = ["blue", "Jay", "jays", "bird", "blue-jay", "BLUE", "jay's", "cat", "house_cat",
         "(bird)", "jay.", "a", "on", "the", "tree", "Blue/Jay", "\"jay\"", "x-ray", "ray"]
PHRASES = ["jay", "blue jay", "blue jay bird", "jay blue", "jay jay", "house cat",
           "jay's", "blue-jay", "Blue Jay (bird)", "x ray", "ray", "cat", "the tree"]


def brute_tokens(text: str) -> list[str]:
    """The matching rules of the REAL parser + FTS5 unicode61, written out for ASCII text."""
    text = text.replace('"', "").replace("'", "").replace("-", " ").replace("_", " ")
    return re.findall(r"[a-z0-9]+", text.lower())


def brute_matches(phrase: str, captions: list[str]) -> list[int]:
    target = brute_tokens(phrase)
    found = []
    for i, caption in enumerate(captions):
        tokens = brute_tokens(caption)
        if any(tokens[s:s + len(target)] == target for s in range(len(tokens) - len(target) + 1)):
            found.append(i)
    return found


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = np.random.default_rng(7)
    return [" ".join(rng.choice(WORDS, size=rng.integers(0, 9))) for _ in range(3000)]


def test_fts5_counts_equal_a_brute_force_count(corpus):
    with CaptionIndex() as index:
        assert index.add(corpus) == len(corpus)
        for phrase in PHRASES:
            expected = brute_matches(phrase, corpus)
            assert index.count(phrase) == len(expected), phrase
            np.testing.assert_array_equal(index.match(phrase), expected)
        union = set(brute_matches("blue jay", corpus)) | set(brute_matches("house cat", corpus))
        assert index.count(["blue jay", "house cat"]) == len(union)
        both = set(brute_matches("jay", corpus)) & set(brute_matches("tree", corpus))
        assert index.count("jay", require="tree") == len(both)
    assert len(brute_matches("blue jay", corpus)) > 50  # the corpus exercises the phrases


def test_relaxed_strategy_passes_over_a_less_specific_synonym():
    counts = {"Honda Accord": 10, "Honda": 9000, "2012 Honda Accord": 500, "Accord sedan": 40}
    assert most_common_name("Honda Accord", counts) == "2012 Honda Accord"
    assert most_common_name("Honda Accord", counts, "max") == "Honda"
    assert most_common_name("jay", {"jay": 5, "blue jay": 5}) == "jay"  # ties keep the name
    assert most_common_name("jay", {"jay": 5, "blue jay": 6}) == "blue jay"


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_index_is_built_once_and_reused(tmp_path, corpus, monkeypatch):
    first = write_lines(tmp_path / "a.txt", corpus[:2000])
    second = write_lines(tmp_path / "b.txt", corpus[2000:])
    index_path = tmp_path / "captions.sqlite"
    with build_index([first], index_path, progress=False) as index:
        assert len(index) == 2000
    read = []
    real_read = frequency.read_captions
    monkeypatch.setattr(frequency, "read_captions",
                        lambda path, column: read.append(path) or real_read(path, column))
    with build_index([first], index_path, progress=False) as index:
        assert read == [] and len(index) == 2000
    with build_index([first, second], index_path, progress=False) as index:  # extended
        assert [p.endswith("b.txt") for p in read] == [True]
        assert index.count("blue jay") == len(brute_matches("blue jay", corpus))
    write_lines(first, corpus[:10])  # changed: rebuilt
    with build_index([first, second], index_path, progress=False) as index:
        assert len(index) == 10 + 1000
        assert index.count("jay") == len(brute_matches("jay", corpus[:10] + corpus[2000:]))


def test_csv_captions_and_caption_file_errors(tmp_path):
    table = tmp_path / "pool.csv"
    table.write_text('url,caption\nu1,"a Blue-Jay, on a tree"\nu2,cat\n', encoding="utf-8")
    with build_index([table], tmp_path / "i.sqlite", progress=False) as index:
        assert index.count("blue jay") == 1 and len(index) == 2
    with pytest.raises(InputError, match=r"has no 'text' column \(columns: url, caption\)"):
        build_index([table], tmp_path / "j.sqlite", column="text", progress=False)
    empty = write_lines(tmp_path / "empty.txt", [])
    empty.write_text("")
    with pytest.raises(InputError, match="hold no captions"):
        build_index([empty], tmp_path / "k.sqlite", progress=False)
    with pytest.raises(InputError, match="nope.txt' does not exist"):
        build_index([tmp_path / "nope.txt"], tmp_path / "l.sqlite", progress=False)
    with pytest.raises(InputError, match="no letters or digits"):
        CaptionIndex().count("--")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "p.parquet").write_bytes(b"PAR1")
        with pytest.raises(InputError, match="needs pyarrow"):
            build_index([tmp_path / "p.parquet"], tmp_path / "m.sqlite", progress=False)


def test_frequency_command_writes_metrics_that_real_prompt_uses(tmp_path, corpus, backbone,
                                                                capsys):
    captions = write_lines(tmp_path / "captions.txt", corpus)
    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps({"jay": ["blue jay", "jay bird"], "cat": ["house cat"]}))
    out = tmp_path / "metrics.json"
    assert main(["frequency", "--captions", str(captions), "--synonyms", str(candidates),
                 "--out", str(out), "--no-progress"]) == 0
    assert (tmp_path / "captions.txt.fts5.sqlite").is_file()
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["0", "1"]
    jay = metrics["0"]
    expected = {s: len(brute_matches(s, corpus)) for s in ("jay", "blue jay", "jay bird")}
    assert jay["alternates"] == expected and jay["name"] == "jay"
    assert jay["actual_freq"] == len(set().union(*(brute_matches(s, corpus) for s in expected)))
    best = max(expected, key=lambda s: (expected[s], s == "jay"))
    assert jay["most_common_name"] == best
    real = RealPromptClassifier(backbone, synonyms=str(out), templates=TEMPLATES).fit()
    assert list(real.classes_) == ["cat", "jay"]  # sorted; the file lists jay first
    assert list(real.prompt_names_) == [metrics["1"]["most_common_name"], best]
    assert main(["frequency", "--captions", str(captions), "--synonyms", str(candidates),
                 "--classes", "jay,dog", "--out", str(out), "--no-progress"]) == 2
    assert "no entry for 1 class(es): 'dog'" in capsys.readouterr().err


# ---------------------------------------------------------------------- REAL-Linear

SYNONYMS = {"cat": "kitty", "dog": "puppy", "jay": "blue jay"}


@pytest.fixture(scope="module")
def pool(backbone):
    """60 pool pairs: captions mention the synonyms; images near their class's text."""
    rng = np.random.default_rng(3)
    words = ["kitty", "cat", "puppy", "dog", "blue jay", "jay"]
    captions = [f"my {words[i % 6]} at home {i}" for i in range(60)]
    real = RealPromptClassifier(backbone, classnames=NAMES, synonyms=SYNONYMS,
                                templates=TEMPLATES).fit()
    labels = np.arange(60) % 6 // 2
    X = real.text_head_[labels] + 0.5 * rng.normal(size=(60, backbone.embed_dim))
    return X.astype(np.float32), captions, labels, real.text_head_


def linear(backbone, **params):
    return RealLinearClassifier(backbone, classnames=NAMES, synonyms=SYNONYMS,
                                templates=TEMPLATES, **{"random_state": 0, **params})


def test_zero_steps_keep_the_real_prompt_head_and_wise_zero_is_the_zero_shot_head(backbone, pool):
    X, captions, _, W_zs = pool
    untrained = linear(backbone, max_iter=0, wise_alpha=1.0).fit(X, captions=captions)
    np.testing.assert_array_equal(untrained.linear_weights_, W_zs)
    np.testing.assert_array_equal(untrained.text_head_, W_zs)
    trained = linear(backbone, max_iter=30, wise_alpha=0.0).fit(X, captions=captions)
    assert not np.allclose(trained.linear_weights_, W_zs)
    np.testing.assert_array_equal(trained.text_head_, W_zs)
    half = linear(backbone, max_iter=30).fit(X, captions=captions)
    np.testing.assert_allclose(half.text_head_, (half.linear_weights_ + W_zs) / 2, rtol=1e-6)


def test_linear_name_type_sets_the_zero_shot_head_and_the_prompt_samples(backbone, pool,
                                                                       monkeypatch):
    X, captions, _, _ = pool
    alternates = RealPromptClassifier(backbone, classnames=NAMES, synonyms=SYNONYMS,
                                      templates=TEMPLATES, name_type="alternates").fit()
    calls = _spy_texts(backbone, monkeypatch)
    untrained = linear(backbone, max_iter=0, name_type="alternates").fit(X, captions=captions)
    np.testing.assert_array_equal(untrained.zeroshot_weights_, alternates.text_head_)
    # the prompt samples: every (synonym, template) prompt, the class name first (a map's
    # alternates are the class name and its synonym)
    assert calls[1] == ["a photo of a cat.", "a drawing of a cat.", "a photo of a kitty.",
                        "a drawing of a kitty.", "a photo of a dog.", "a drawing of a dog.",
                        "a photo of a puppy.", "a drawing of a puppy.", "a photo of a jay.",
                        "a drawing of a jay.", "a photo of a blue jay.",
                        "a drawing of a blue jay."]
    with pytest.raises(InputError, match="RealLinearClassifier: name_type must be"):
        linear(backbone, name_type="synonyms").fit(X, captions=captions)


def test_learning_rate_warms_up_then_follows_a_cosine(backbone, pool):
    X, captions, _, _ = pool
    model = linear(backbone, max_iter=200).fit(X, captions=captions)
    rates = model.learning_rates_
    assert len(rates) == 200 == model.n_iter_ == len(model.loss_curve_)
    assert rates[0] == 1e-5                                   # step 0: the warm-up floor
    assert rates[1] == pytest.approx(1e-4 / 50) and rates[25] == pytest.approx(0.5e-4)
    assert rates[50] == pytest.approx(1e-4)                   # warm-up done: the cosine's top
    assert rates[150] == pytest.approx(1e-4 * (1 + math.cos(math.pi * 100 / 200)) / 2)
    assert np.all(np.diff(rates[1:50]) > 0) and np.all(np.diff(rates[50:]) < 0)
    small = linear(backbone, max_iter=3, lr=5e-5).fit(X, captions=captions)
    assert small.learning_rates_[0] == 5e-6


def test_training_lowers_the_loss_and_is_deterministic(backbone, pool):
    X, captions, labels, _ = pool
    model = linear(backbone, max_iter=300, lr=1e-3).fit(X, captions=captions)
    assert model.loss_curve_[-20:].mean() < 0.8 * model.loss_curve_[:20].mean()
    again = linear(backbone, max_iter=300, lr=1e-3).fit(X, captions=captions)
    np.testing.assert_array_equal(again.text_head_, model.text_head_)
    other = linear(backbone, max_iter=300, lr=1e-3, random_state=1).fit(X, captions=captions)
    assert not np.array_equal(other.text_head_, model.text_head_)
    # the trained head separates the retrieved images better than the zero-shot head does
    X_unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    trained = np.mean(np.argmax(X_unit @ model.linear_weights_.T, axis=1) == labels)
    zero_shot = np.mean(np.argmax(X_unit @ model.zeroshot_weights_.T, axis=1) == labels)
    assert trained >= 0.9 > zero_shot
    assert model.decision_function(X).shape == (60, 3)


def test_auto_iterations_follow_the_paper(backbone, pool):
    X, captions, _, _ = pool
    model = linear(backbone, n_samples=4).fit(X, captions=captions)
    assert model.n_iter_ == int(4 * 3 * 10 / 32)  # min(32000, n_samples * C * 10 / 32)


def test_retrieval_keeps_the_best_scored_mentions(backbone, pool):
    X, captions, _, _ = pool
    caption_embeddings = embeddings(60, backbone.embed_dim, seed=9)
    model = linear(backbone, max_iter=0, n_samples=3).fit(
        X, captions=captions, caption_embeddings=caption_embeddings)
    for c, name in enumerate(NAMES):
        # candidates: captions with the class name or its synonym (caption i says words[i % 6])
        candidates = np.array([i for i in range(60) if i % 6 in (2 * c, 2 * c + 1)])
        heads = ZeroShotClassifier(backbone, classnames=[name, SYNONYMS[name]],
                                   templates=TEMPLATES).fit()
        r = caption_embeddings[candidates] @ heads.text_head_.T.mean(axis=1)  # mean_a cos
        ranked = candidates[np.argsort(-r)]
        expected = ranked[np.sort(r)[::-1] >= 0][:3]
        np.testing.assert_array_equal(model.samples_[model.sample_labels_ == c], expected)
    np.testing.assert_array_equal(model.sample_counts_, np.bincount(model.sample_labels_))
    with pytest.raises(InputError, match="no pool caption qualifies"):
        linear(backbone, max_iter=0).fit(X, captions=["nothing here"] * 60)
    with pytest.raises(InputError, match="60 pool images but 2 captions"):
        linear(backbone, max_iter=0).fit(X, captions=["a", "b"])
    with pytest.raises(InputError, match="max_iter must be 'auto' or an integer"):
        linear(backbone, max_iter=-1).fit(X, captions=captions)


def test_retrieval_with_a_metrics_file_uses_its_alternates_as_written(backbone, pool):
    X, captions, _, _ = pool
    metrics = {"0": metrics_row("cat", "kitty", kitty=3), "1": metrics_row("dog", "puppy", puppy=2),
               "2": metrics_row("jay", "blue jay", **{"blue jay": 9})}  # the names not among them
    model = RealLinearClassifier(backbone, classnames=NAMES, synonyms=metrics,
                                 templates=TEMPLATES, max_iter=0,
                                 mention="synonym").fit(X, captions=captions)
    words = [re.sub(r"^my (.*) at home \d+$", r"\1", c) for c in captions]
    for c, synonym in enumerate(["kitty", "puppy", "blue jay"]):
        rows = model.samples_[model.sample_labels_ == c]
        assert len(rows) and {words[i] for i in rows} == {synonym}
    everything = RealLinearClassifier(backbone, classnames=NAMES, synonyms=metrics,
                                      templates=TEMPLATES, max_iter=0,
                                      mention="any", n_samples=60).fit(X, captions=captions)
    assert everything.sample_counts_.max() > 10  # every caption is a candidate of every class


def test_a_full_disk_while_indexing_keeps_the_indexed_files(tmp_path):
    """The index's unit is SQLite's transaction: a file whose insert fails (RLIMIT_FSIZE in a
    child, like a full disk) is rolled back with one sentence, and the next run resumes."""
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("a blue jay\n")
    large.write_text("".join(f"a photo of a blue jay, number {i}, in a park\n"
                             for i in range(5000)))
    index = tmp_path / "captions.db"
    code = f"""
        import resource, signal
        from zeroshot_plus import InputError
        from zeroshot_plus.text.frequency import build_index
        build_index([{str(small)!r}], {str(index)!r}, progress=False).close()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
        try:
            build_index([{str(small)!r}, {str(large)!r}], {str(index)!r}, progress=False)
        except InputError as exc:
            print(exc)
        """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cannot write the caption index '{index}': the disk "
                                    f"refused a write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.db", "large.txt", "small.txt"]
    with CaptionIndex(index) as captions:
        assert len(captions) == 1 and list(captions.sources()) == [str(small.resolve())]
    with build_index([small, large], index, progress=False) as captions:
        assert len(captions) == 5001 and captions.count("blue jay") == 5001
    with pytest.raises(InputError, match="it is a directory"):
        CaptionIndex(tmp_path)
