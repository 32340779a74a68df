"""Tables (CSV/JSONL with an image path first), atomic output files, the embeddings file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zeroshot_plus import InputError, load_embeddings, save_embeddings
from zeroshot_plus.cli import main
from zeroshot_plus.data.files import atomic_output
from zeroshot_plus.data.tables import image_prompts, read_table
from zeroshot_plus.data.tables import read_pairs


# ---------------------------------------------------------------------- tables


@pytest.mark.parametrize("name, text", [
    ("header.csv", "path,score,caption\nimgs/0.png,1,a dog\n/abs/1.png,2,a cat\n"),
    ("image_header.csv", "image,caption\nimgs/0.png,a dog\n/abs/1.png,a cat\n"),
    ("plain.csv", "imgs/0.png, a dog \n\n/abs/1.png,a cat\n"),
    ("lines.jsonl", '{"path": "imgs/0.png", "caption": "a dog"}\n\n'
                    '{"image": "/abs/1.png", "caption": "a cat"}\n'),
])
def test_read_table_header_optional_paths_relative_to_the_table(tmp_path, name, text):
    table = tmp_path / name
    table.write_text(text)
    rows = read_table(table, ("caption",), what="pairs file", required=("caption",))
    assert [row.path for row in rows] == [tmp_path / "imgs" / "0.png", Path("/abs/1.png")]
    assert [row.values for row in rows] == [("a dog",), ("a cat",)]


def test_read_table_optional_column_is_none_when_empty(tmp_path):
    table = tmp_path / "set.csv"
    table.write_text("a.png,x\nb.png,\nc.png\n")
    assert [row.values for row in read_table(table, ("label",), what="manifest")] == [
        ("x",), (None,), (None,)]


@pytest.mark.parametrize("name, text, fragment", [
    ("noprompt.csv", "path,caption\na.png,x\n", "has a header without a 'prompt' column"),
    ("row.csv", "a.png,a dog\nb.png,\n", "data row 2 needs an image path and a prompt"),
    ("nopath.csv", "path,prompt\n,a dog\n", "data row 1 needs an image path"),
    ("line.jsonl", '{"path": "a.png", "prompt": "x"}\n\n{"path": "b.png"}\n',
     "line 3 needs an image path and a prompt"),
    ("notjson.jsonl", '{"path": "a.png", "prompt": "x"}\n[1, 2]\n', "line 2 is not a JSON object"),
    ("empty.csv", "path,prompt\n\n", "lists no images"),
    ("binary.csv", b"\xff\xfe\x00bad", "is not UTF-8 text (byte 0xff on line 1)"),
    ("list.jsonl", '{"path": "a.png", "prompt": ["x"]}\n', 'line 1: "prompt" is ["x"], not a '
                                                              'string'),
    ("number.jsonl", '{"path": 5, "prompt": "x"}\n', 'line 1: "path" is 5, not a string'),
    ("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "line 1 is not a JSON object"),
    ("twice.csv", "a.png,a dog\nb.png,a cat\n./a.png,a bird\n",
     "gives image 'TABLE/a.png' two different prompts"),
])
def test_read_table_errors_are_one_sentence_naming_file_and_row(tmp_path, name, text, fragment):
    table = tmp_path / name
    (table.write_bytes if isinstance(text, bytes) else table.write_text)(text)
    with pytest.raises(InputError) as info:
        image_prompts(table, [tmp_path / "a.png", tmp_path / "b.png"], what="--prompts")
    message = str(info.value)
    assert fragment.replace("TABLE", str(tmp_path)) in message and str(table) in message
    assert message.endswith(".") and "\n" not in message
    with pytest.raises(InputError, match="does not exist|No such file"):
        read_table(tmp_path / "absent.csv", ("prompt",), what="--prompts")


def test_image_prompts_match_resolved_paths(tmp_path):
    table = tmp_path / "sub" / "prompts.csv"
    table.parent.mkdir()
    table.write_text("path,prompt\n../a.png,a dog\nb.png,a cat\n")
    images = [tmp_path / "sub" / "b.png", tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    assert image_prompts(table, images) == ["a cat", "a dog", "a cat"]
    with pytest.raises(InputError, match=r"1 image\(s\) have no prompt in prompts file '.*"
                                         r"prompts.csv', e.g. '.*c.png'"):
        image_prompts(table, images + [tmp_path / "c.png"])


def test_pairs_file_reads_csv_and_jsonl(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"image": "x.png", "caption": "a dog"}\n')
    assert read_pairs(tmp_path / "pairs.jsonl") == ([str(tmp_path / "x.png")], ["a dog"])
    (tmp_path / "pairs.csv").write_text("path,caption,extra\nx.png,a dog,1\n")
    assert read_pairs(tmp_path / "pairs.csv") == ([str(tmp_path / "x.png")], ["a dog"])


# ---------------------------------------------------------------------- atomic output


def test_atomic_output_appears_only_once_complete(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_output(target) as handle:
        handle.write("half")
        assert not target.exists()
    assert target.read_text() == "half"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as handle:
            handle.write("broken")
            raise RuntimeError("interrupted")
    assert target.read_text() == "half"  # the earlier file stays, no partial file is left
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(InputError, match="output folder '.*missing' does not exist"):
        with atomic_output(tmp_path / "missing" / "out.txt"):
            pass


# ---------------------------------------------------------------------- embeddings file


def test_embeddings_file_round_trip(tmp_path):
    path = tmp_path / "e.npz"
    embeddings = np.eye(3, 4, dtype=np.float32)
    save_embeddings(path, embeddings, ["a.png", "b.png", "c.png"], "fp-1", labels=["x", "y", "x"])
    loaded = load_embeddings(path)
    np.testing.assert_array_equal(loaded.embeddings, embeddings)
    assert loaded.paths == ["a.png", "b.png", "c.png"] and loaded.fingerprint == "fp-1"
    assert loaded.labels.tolist() == ["x", "y", "x"]
    save_embeddings(path, embeddings[:1], ["a.png"], "fp-1")
    assert load_embeddings(path).labels is None
    with pytest.raises(InputError, match=r"the numbers of embeddings \(3\), paths \(2\) differ"):
        save_embeddings(path, embeddings, ["a.png", "b.png"], "fp-1")


def test_embeddings_file_errors(tmp_path, backbone):
    np.save(tmp_path / "array.npy", np.ones(3))
    (tmp_path / "text.npz").write_text("not an archive")
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    for name in ("array.npy", "text.npz", "other.npz"):
        with pytest.raises(InputError, match=f"'{tmp_path / name}' is not an embeddings file"):
            load_embeddings(tmp_path / name)
    with pytest.raises(InputError, match="'.*absent.npz' does not exist"):
        load_embeddings(tmp_path / "absent.npz")
    save_embeddings(tmp_path / "e.npz", np.ones((1, 32), np.float32), ["a.png"], "other model")
    with pytest.raises(InputError, match="was made with another model"):
        load_embeddings(tmp_path / "e.npz", backbone)


def test_embed_command_writes_what_load_embeddings_reads(labelled_folder, backbone, tiny_config,
                                                         tmp_path, capsys):
    out = tmp_path / "e.npz"
    assert main(["embed", str(labelled_folder), "--out", str(out), "--model", tiny_config,
                 "--pretrained", "none", "--no-progress"]) == 0
    loaded = load_embeddings(out, backbone)
    np.testing.assert_allclose(loaded.embeddings, backbone.encode_images(loaded.paths), atol=1e-6)
    assert loaded.labels.tolist() == [Path(p).parent.name for p in loaded.paths]


def test_a_saved_classifier_is_written_atomically(tmp_path):
    from zeroshot_plus import GDAClassifier

    X = np.eye(4, dtype=np.float32)
    classifier = GDAClassifier(alpha=1.0).fit(X, ["a", "a", "b", "b"])
    with pytest.raises(InputError, match="output folder '.*missing' does not exist"):
        classifier.save(tmp_path / "missing" / "gda.npz")
    classifier.save(tmp_path / "gda.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["gda.npz"]
    assert GDAClassifier.load(tmp_path / "gda.npz").classes_.tolist() == ["a", "b"]


def test_edit_reads_the_embeddings_file_before_building_a_model(tiny_config, tmp_path, capsys,
                                                                 monkeypatch):
    import zeroshot_plus.encoders.backbone as backbone_module

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("a.png,a dog\n")
    argv = ["edit", "--prompts", str(prompts), "--out", str(tmp_path / "out.npz"),
            "--model", tiny_config, "--pretrained", "none", "--no-progress"]
    (tmp_path / "bad.npz").write_text("not an archive")
    with monkeypatch.context() as patch:
        patch.setattr(backbone_module.Backbone, "__init__",
                      lambda *a, **k: pytest.fail("built a backbone"))
        assert main([*argv, "--embeddings", str(tmp_path / "bad.npz")]) == 2
        assert f"'{tmp_path / 'bad.npz'}' is not an embeddings file" in capsys.readouterr().err
    save_embeddings(tmp_path / "e.npz", np.ones((1, 32), np.float32), [str(tmp_path / "a.png")],
                    "another model")
    assert main([*argv, "--embeddings", str(tmp_path / "e.npz")]) == 2
    assert "was made with another model" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()
