"""ComCLIP's grounding by an open-vocabulary detector (a tiny OWLv2 with random weights, saved
and loaded by path as a user's local checkpoint is) and by a detector output file (labels
matched by words, or by an LLM on a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import csv
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from zeroshot_plus import ComCLIPMatcher, InputError
from zeroshot_plus.cli import main
from zeroshot_plus.errors import ModelLoadError
from zeroshot_plus.methods.comclip import PairExplanation, SubImage, draw_explanation
from zeroshot_plus.text.labels import LLMLabelMatcher, match_labels

CAPTION = "a red dog chases a ball"


@pytest.fixture
def images(tmp_path, make_image):
    return [make_image(tmp_path / f"im{i}.png", i, size) for i, size in
            enumerate([(40, 30), (36, 48), (40, 40)])]


def save_tiny_owl(folder, family="Owlv2"):
    """A tiny OWLv2 or OWL-ViT (random weights, a byte-level vocabulary) saved with its
    processor."""
    transformers = pytest.importorskip("transformers")
    import torch

    vocab = {chr(c): c - 33 for c in range(33, 127)}
    vocab.update({chr(c) + "</w>": 94 + c - 33 for c in range(33, 127)})
    vocab.update({"<|startoftext|>": 188, "<|endoftext|>": 189})
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = getattr(transformers, f"{family}Config")(
        text_config=dict(small, vocab_size=190, max_position_embeddings=16, bos_token_id=188,
                         eos_token_id=189, pad_token_id=189),
        vision_config=dict(small, image_size=64, patch_size=16), projection_dim=32,
        initializer_factor=0.1)  # scores spread over (0, 1) rather than saturated
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, f"{family}ForObjectDetection")(config)
    square = {"height": 64, "width": 64}
    processor = getattr(transformers, f"{family}Processor")(
        image_processor=getattr(transformers, f"{family}ImageProcessor")(size=square,
                                                                         crop_size=square),
        tokenizer=transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def owl_folder(tmp_path_factory):
    return save_tiny_owl(tmp_path_factory.mktemp("owl"))


def blackout(path, boxes):
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    keep = np.zeros(pixels.shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        keep[y0:y1, x0:x1] = True
    pixels[~keep] = 0
    return Image.fromarray(pixels)


def by_hand(backbone, path, caption, regions, words):
    """ComCLIP's normalised score of the given sub-image regions, from the encoders."""
    sub = backbone.encode_images([blackout(path, r) for r in regions])
    s = np.einsum("kd,kd->k", sub, backbone.encode_texts(words))
    w = np.maximum(s, 0) / np.maximum(s, 0).sum() if (s > 0).any() else np.full(len(s), 1 / len(s))
    v = backbone.encode_images([path])[0] + w @ sub
    return float(v @ backbone.encode_texts([caption])[0] / np.linalg.norm(v))


def owl_boxes(folder, path, query, keep, iou=0.3, padded=True):
    """The test's own reading of the detector: sigmoid scores of one query, boxes in pixels
    of the image (OWLv2 pads to a square, OWL-ViT stretches), greedy suppression, the best
    ``keep``."""
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    picture = Image.open(path).convert("RGB")
    inputs = AutoProcessor.from_pretrained(folder)(text=[[query]], images=picture,
                                                   return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    scores = 1 / (1 + np.exp(-out.logits[0, :, 0].numpy().astype(np.float64)))
    cx, cy, w, h = out.pred_boxes[0].numpy().T.astype(np.float64)
    width, height = picture.size
    scale = [max(width, height)] * 4 if padded else [width, height, width, height]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * scale
    boxes = np.minimum(np.maximum(boxes, 0), [width, height, width, height])
    inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[inside], scores[inside]
    kept = []
    for k in np.argsort(-scores, kind="stable"):
        def overlap(other):
            a, b = boxes[k], boxes[other]
            inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            return inter / union
        if all(overlap(o) <= iou for o in kept):
            kept.append(k)
    out = []
    for k in kept[:keep]:
        x0, y0, x1, y1 = boxes[k]
        box = [max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
               min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))]
        if box[2] > box[0] and box[3] > box[1]:
            out.append((box, float(scores[k])))
    return out


def owl_detector(folder):
    from zeroshot_plus.encoders.detector import Detector

    return Detector(folder, device="cpu", progress=False)


# ---------------------------------------------------------------------- the detector


def test_detector_queries_entity_words_and_unions_its_boxes(backbone, images, owl_folder):
    detector = owl_detector(owl_folder)
    detector.load()
    sent = []
    tokenizer = detector._processor.tokenizer
    detector._model.owlv2.text_model.register_forward_pre_hook(
        lambda module, args, kwargs: sent.extend(
            tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=True)),
        with_kwargs=True)
    path = images[2]
    matcher = ComCLIPMatcher(backbone, grounding="detector", detector=detector,
                             box_threshold=0.0, max_boxes=2)
    explanation, = matcher.explain([path], [CAPTION])
    assert sorted(q.replace(" ", "") for q in sent) == ["ball", "reddog"]  # one pass, both
    dog, ball = owl_boxes(owl_folder, path, "red dog", 2), owl_boxes(owl_folder, path, "ball", 2)
    assert len(dog) == 2 and len(ball) == 2
    subs = explanation.subimages
    assert [(s.kind, s.text, s.source) for s in subs] == [
        ("entity", "red dog", "detector"), ("entity", "ball", "detector"),
        ("relation", "chases", "union")]
    assert subs[0].region == [b for b, _ in dog] and subs[1].region == [b for b, _ in ball]
    np.testing.assert_allclose(subs[0].scores, [s for _, s in dog], atol=1e-5)
    union = list(dict.fromkeys(map(tuple, subs[0].region + subs[1].region)))
    assert subs[2].region == [list(b) for b in union] and len(subs[2].scores) == len(union)
    expected = by_hand(backbone, path, CAPTION, [subs[0].region, subs[1].region, union],
                       ["red dog", "ball", "chases"])
    assert explanation.score == pytest.approx(expected, abs=1e-5)


def test_threshold_and_max_boxes(backbone, images, owl_folder):
    detector = owl_detector(owl_folder)
    path = images[0]  # 40x30: OWLv2's last row of boxes lies in the padding and is dropped
    best = owl_boxes(owl_folder, path, "dog", 16)
    assert len(best) == 12 and all(box[3] <= 30 for box, _ in best)
    one, = ComCLIPMatcher(backbone, grounding="detector", detector=detector, max_boxes=1,
                          box_threshold=0.0, components=("entities",)).explain([path], ["a dog"])
    assert one.subimages[0].region == [best[0][0]]
    middle = (best[1][1] + best[2][1]) / 2  # two boxes score above it
    two, = ComCLIPMatcher(backbone, grounding="detector", detector=detector, max_boxes=5,
                          box_threshold=middle, components=("entities",)).explain([path], ["a dog"])
    assert two.subimages[0].region == [b for b, _ in best[:2]]
    none, = ComCLIPMatcher(backbone, grounding="detector", detector=detector,
                           box_threshold=1.0, components=("entities",)).explain([path], ["a dog"])
    assert (none.subimages[0].source, none.subimages[0].region) == ("full image", [[0, 0, 40, 30]])
    assert none.subimages[0].scores == []
    # a user box still wins over the detector
    user, = ComCLIPMatcher(backbone, grounding="detector", detector=detector,
                           components=("entities",)).explain([path], ["a dog"],
                                                             boxes=[{"dog": (1, 2, 10, 20)}])
    assert (user.subimages[0].source, user.subimages[0].region) == ("user", [[1, 2, 10, 20]])


def test_owl_vit_boxes_are_scaled_by_width_and_height(images, tmp_path):
    folder = save_tiny_owl(tmp_path / "owlvit", "OwlViT")
    found, = owl_detector(folder).detect([images[1]], [["dog"]], ["im1"], max_boxes=4)
    expected = owl_boxes(folder, images[1], "dog", 4, padded=False)
    assert len(expected) == 4 and max(b[3] for b, _ in expected) > 36  # not in a 36 x 36 square
    assert [[int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))]
            for (x0, y0, x1, y1), _ in found["dog"]] == [box for box, _ in expected]
    np.testing.assert_allclose([s for _, s in found["dog"]], [s for _, s in expected], atol=1e-5)


def test_detections_are_cached_per_image_and_query(backbone, images, owl_folder, tmp_path,
                                                   monkeypatch):
    store = tmp_path / "store"
    first = ComCLIPMatcher(backbone, grounding="detector", detector=owl_detector(owl_folder),
                           cache=store)
    scores = first.decision_function(images, [CAPTION, "a small cat"])
    assert len(list(store.rglob("detections/*.json"))) == 1

    from zeroshot_plus.encoders.detector import Detector

    def refuse(*args, **kwargs):
        raise AssertionError("a stored detection was run again")

    monkeypatch.setattr(Detector, "_run", refuse)
    again = owl_detector(owl_folder)
    rescored = ComCLIPMatcher(backbone, grounding="detector", detector=again, cache=store)
    np.testing.assert_array_equal(rescored.decision_function(images, [CAPTION, "a small cat"]),
                                  scores)
    # other captions with the same entities, and a lower threshold: still no detection,
    # and the detector was never loaded
    ComCLIPMatcher(backbone, grounding="detector", detector=again, cache=store,
                   box_threshold=0.0).score_pairs(images[:2], ["the ball and a red dog", "a small cat"])
    assert again._model is None
    monkeypatch.undo()
    # a new entity is detected, alone, once
    asked = []
    original = Detector._run
    monkeypatch.setattr(Detector, "_run", lambda self, picture, queries, k:
                        asked.append(queries) or original(self, picture, queries, k))
    ComCLIPMatcher(backbone, grounding="detector", detector=again, cache=store).score_pairs(
        images[:1], ["a dog near a ball"])
    assert asked == [["dog"]]
    # a damaged shard is set aside and its detections run again
    shard, = [p for p in store.rglob("detections/*.json") if p.stat().st_size > 200][:1]
    shard.write_text("{not json")
    ComCLIPMatcher(backbone, grounding="detector", detector=again, cache=store).score_pairs(
        images[:1], [CAPTION])
    assert list(store.rglob("detections/*.damaged"))


def test_detector_errors_are_one_sentence(backbone, owl_folder, tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such"
    with pytest.raises(ModelLoadError, match=f"detector folder '{missing}' does not exist."):
        ComCLIPMatcher(backbone, grounding="detector", detector=missing).fit()
    # a hub id that is not cached: unreachable hub (here) or no such model (with network)
    with pytest.raises(ModelLoadError, match="load detector 'zeroshot-plus-tests/no-such-owl'"):
        owl_detector("zeroshot-plus-tests/no-such-owl").load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="could not load detector '.*empty'"):
        owl_detector(tmp_path / "empty").load()
    for params, pattern in (({"grounding": "dino"}, "grounding must be one of"),
                            ({"box_threshold": 1.5}, "box_threshold"),
                            ({"box_threshold": "high"}, "box_threshold"),
                            ({"max_boxes": 0}, "max_boxes"), ({"max_boxes": 2.0}, "max_boxes"),
                            ({"label_matcher": "llm"}, "label_matcher"),
                            ({"grounding": "detector", "detector": 3}, "detector must be")):
        with pytest.raises(InputError, match=pattern):
            ComCLIPMatcher(backbone, **params).fit()
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    with pytest.raises(InputError, match=r"pip install 'zeroshot_plus\[detect\]'\.$"):
        ComCLIPMatcher(backbone, grounding="detector", detector=owl_folder).fit()
    ComCLIPMatcher(backbone).fit()  # the grid needs no transformers


# ---------------------------------------------------------------------- a detector file

GRIT = {"a brown dog lying on the grass": [[0, 0, 20, 25], [22.4, 0, 30, 10.5]],
        "red ball": [[15.5, 10.2, 40, 40]], "green tree in the distance": [[0, 0, 5, 5]]}


def test_file_labels_are_matched_by_words_and_unioned(backbone, images):
    assert match_labels(CAPTION, "red dog", list(GRIT)) == ["a brown dog lying on the grass"]
    assert match_labels(CAPTION, "ball", list(GRIT)) == ["red ball"]
    assert match_labels(CAPTION, "red ball", ["Red  Ball", "ball"]) == ["Red  Ball"]
    assert match_labels(CAPTION, "cat", list(GRIT)) == []
    path = images[2]
    explanation, = ComCLIPMatcher(backbone, grounding="file").explain([path], [CAPTION], [GRIT])
    dog = [[0, 0, 20, 25], [22, 0, 30, 11]]   # float corners: floor x0, y0 and ceil x1, y1
    ball = [[15, 10, 40, 40]]
    subs = explanation.subimages
    assert [(s.source, s.region) for s in subs] == [("file", dog), ("file", ball),
                                                   ("union", dog + ball)]
    assert subs[0].labels == ["a brown dog lying on the grass"] * 2
    assert subs[2].labels == [*subs[0].labels, "red ball"] and subs[2].scores == []
    assert explanation.score == pytest.approx(
        by_hand(backbone, path, CAPTION, [dog, ball, dog + ball], ["red dog", "ball", "chases"]),
        abs=1e-5)
    # an entity no label refers to is the full image, and so is its relation
    cat, = ComCLIPMatcher(backbone, grounding="file").explain([path], ["a cat on a ball"], [GRIT])
    assert [s.source for s in cat.subimages] == ["full image", "file", "full image"]


class LabelServer:
    """A chat-completions endpoint answering {"labels": [...]} from ``answers[entity]`` (a
    list: one answer per request, the last repeated); it records the entities asked."""

    def __init__(self, answers: dict[str, list]):
        self.answers, self.asked = answers, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][-1]["content"]
                entity = next(e for e in fake.answers if f'name the "{e}"' in text)
                fake.asked.append(entity)
                queue = fake.answers[entity]
                answer = queue.pop(0) if len(queue) > 1 else queue[0]
                payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                      "model": "m", "choices": [{
                                          "index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant",
                                                      "content": json.dumps(answer)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def label_server():
    servers = []

    def start(answers):
        servers.append(LabelServer(answers))
        return servers[-1]

    yield start
    for server in servers:
        server.server.shutdown()
        server.server.server_close()


def test_llm_label_matching_is_checked_cached_and_used(backbone, images, tmp_path, label_server):
    server = label_server({
        "red dog": [{"labels": ["a dog"]},                       # not a listed label: asked again
                    {"labels": ["a brown dog lying on the grass", "green tree in the distance"]}],
        "ball": [{"labels": []}]})
    matcher = LLMLabelMatcher(base_url=server.url, model="m", cache_dir=tmp_path / "llm",
                              max_attempts=3, timeout=5)
    explanation, = ComCLIPMatcher(backbone, grounding="file", label_matcher=matcher).explain(
        images[2:], [CAPTION], [GRIT])
    assert server.asked == ["red dog", "red dog", "ball"]
    dog = explanation.subimages[0]
    assert dog.labels == ["a brown dog lying on the grass"] * 2 + ["green tree in the distance"]
    assert dog.region == [[0, 0, 20, 25], [22, 0, 30, 11], [0, 0, 5, 5]]
    assert explanation.subimages[1].source == "full image"   # the LLM found no ball
    # every answer is cached: a second run asks nothing
    again = LLMLabelMatcher(base_url=server.url, model="m", cache_dir=tmp_path / "llm")
    assert again(CAPTION, "red dog", list(GRIT)) == dog.labels[1:]
    assert len(server.asked) == 3
    # an endpoint that never answers validly: nothing cached, the word matcher is used
    bad = label_server({"red dog": [{"labels": "everything"}], "ball": [{"labels": ["x"]}]})
    fallback = LLMLabelMatcher(base_url=bad.url, model="m", cache_dir=tmp_path / "llm2",
                               max_attempts=2, timeout=5)
    assert fallback(CAPTION, "ball", list(GRIT)) == ["red ball"]
    assert len(bad.asked) == 2 and not list((tmp_path / "llm2").rglob("*.json"))
    with pytest.raises(InputError, match="no valid labels for 'ball'"):
        LLMLabelMatcher(base_url=bad.url, model="m", cache_dir=tmp_path / "llm2",
                        max_attempts=1, timeout=5, fallback=False)(CAPTION, "ball", list(GRIT))


# ---------------------------------------------------------------------- drawing and the CLI


def test_drawn_explanations_show_detector_scores(images, tmp_path):
    sub = SubImage("entity", "dog", [[2, 2, 30, 28]], "detector", 0.2, 1.0, [0.87])
    with_score = PairExplanation("im", "a dog", 0.3, 0.2, ["dog"], [], [sub])
    without = PairExplanation("im", "a dog", 0.3, 0.2, ["dog"], [],
                              [SubImage("entity", "dog", [[2, 2, 30, 28]], "user", 0.2, 1.0)])
    draw_explanation(images[2], with_score, tmp_path / "a.png")
    draw_explanation(images[2], without, tmp_path / "b.png")
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    differs = np.argwhere((a != b).any(axis=2))
    assert len(differs) and differs[:, 0].min() >= 28 - 12 and differs[:, 0].max() < 28  # bottom


def test_cli_match_detector_and_file_grounding(backbone, images, owl_folder, tiny_config,
                                              tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("".join(f"{p.name},{CAPTION}\n" for p in images[:2]))
    model = ["--model", tiny_config, "--pretrained", "none", "--no-progress"]
    out, drawn = tmp_path / "s.jsonl", tmp_path / "new" / "png"
    assert main(["match", str(pairs), *model, "--grounding", "detector", "--detector",
                 str(owl_folder), "--box-threshold", "0", "--max-boxes", "2", "--out", str(out),
                 "--explain-dir", str(drawn), "--cache", str(tmp_path / "store")]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    matcher = ComCLIPMatcher(backbone, grounding="detector", detector=owl_detector(owl_folder),
                             box_threshold=0.0, max_boxes=2)
    expected = matcher.explain(images[:2], [CAPTION] * 2, pairs=[(0, 0), (1, 1)])
    for record, explanation in zip(records, expected):
        assert record["score"] == pytest.approx(explanation.score, abs=1e-5)
        assert [s["region"] for s in record["subimages"]] == [s.region for s in explanation.subimages]
        assert record["subimages"][0]["source"] == "detector" and record["subimages"][0]["scores"]
    assert sorted(p.name for p in drawn.iterdir()) == ["pair1.png", "pair2.png"]
    assert list((tmp_path / "store").rglob("detections/*.json"))
    # GRiT's layout: a folder of <image stem>.json
    grit = tmp_path / "grit"
    grit.mkdir()
    (grit / "im0.json").write_text(json.dumps(GRIT))
    csv_out = tmp_path / "s.csv"
    assert main(["match", str(pairs), *model, "--grounding", "file", "--boxes", str(grit),
                 "--out", str(csv_out)]) == 0
    expected = ComCLIPMatcher(backbone, grounding="file").score_pairs(
        images[:2], [CAPTION] * 2, [GRIT, None])
    np.testing.assert_allclose([float(r["score"]) for r in csv.DictReader(csv_out.open())],
                               expected, atol=1e-5)
    capsys.readouterr()
    for extra, message in (
            (["--detector", str(owl_folder)], "--detector is used only with --grounding detector."),
            (["--box-threshold", "0.5"], "--box-threshold is used only with --grounding detector."),
            (["--grounding", "file"], "--grounding file needs --boxes"),
            (["--label-matcher", "llm"], "--label-matcher is used only with --grounding file."),
            (["--grounding", "detector", "--detector", str(tmp_path / "none")],
             f"detector folder '{tmp_path / 'none'}' does not exist.")):
        assert main(["match", str(pairs), *model, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
