"""TPT / DiffTPT: the prompt learner, the closed-form step, selection, loss, and the classifier."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax
from scipy.stats import entropy as scipy_entropy

from zeroshot_plus import Backbone, EncodeReport, InputError, TPTClassifier
import zeroshot_plus.methods.tpt as tpt_module
from zeroshot_plus.methods.tpt import (PromptLearner, adamw_first_step, confident_views,
                                       cosine_confident_views, marginal_entropy)

from conftest import synthetic_image

CLASSES = ["cat", "golden retriever", "a rather long class name with many words", "x"]


def _full_length_features(model, tokenizer, prompts, n_ctx, ctx):
    """The reference path: all 77 tokens, positions 1..n_ctx replaced by ctx (n_ctx, W)."""
    tokens = tokenizer(prompts)
    with torch.no_grad():
        x = model.token_embedding(tokens)
        x[:, 1:1 + n_ctx] = ctx
        x = model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)
        x = model.ln_final(x)[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def _classifier(backbone, **kwargs) -> TPTClassifier:
    params = dict(n_views=7, selection_p=0.3, batch_images=1)
    params.update(kwargs)
    return TPTClassifier(backbone, classnames=CLASSES, **params).fit()


def _images(n: int, start: int = 0):
    return [synthetic_image(seed, (48, 40)) for seed in range(start, start + n)]


# ---------------------------------------------------------------------- prompt learner


def test_truncated_prompts_equal_full_77_token_features(backbone):
    learner = PromptLearner(backbone, CLASSES, "a photo of a", 4, 0)
    assert learner.n_ctx == 4 and int(learner.lengths.max()) < 77
    ctx = torch.randn(2, 4, learner.ctx_init.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = learner.text_features(ctx, chunk=3)  # chunks that straddle the two contexts
    prompts = [f"a photo of a {name}." for name in CLASSES]
    for b in range(2):
        expected = _full_length_features(backbone.model, backbone.tokenizer, prompts, 4, ctx[b])
        torch.testing.assert_close(ours[b], expected, atol=2e-6, rtol=1e-5)
    # the initial context reproduces the plain prompt "a photo of a {name}."
    with torch.no_grad():
        initial = learner.text_features(learner.ctx_init[None], chunk=64)[0].numpy()
    np.testing.assert_allclose(initial, backbone.encode_texts(prompts), atol=2e-6)


def test_prompt_learner_uses_class_names_as_given(backbone):
    # as open_clip's zero-shot weights: "sea_lion" is not read as "sea lion"
    learner = PromptLearner(backbone, ["sea_lion", "cat"], "a photo of a", 4, 0)
    prompts = ["a photo of a sea_lion.", "a photo of a cat."]
    with torch.no_grad():
        initial = learner.text_features(learner.ctx_init[None], chunk=64)[0].numpy()
    np.testing.assert_allclose(initial, backbone.encode_texts(prompts), atol=2e-6)


@pytest.mark.parametrize("min_positions", [1, 40, 10_000])
def test_length_sorted_pieces_equal_full_features_and_gradients(backbone, monkeypatch, min_positions):
    # names of 1..6 words: prompts of many lengths, cut into pieces of various sizes
    names = [" ".join(["bird"] * (1 + i % 6)) + f" {i}" for i in range(30)]
    monkeypatch.setattr(tpt_module, "_MIN_POSITIONS", min_positions)
    learner = PromptLearner(backbone, names, "a photo of a", 4, 0)
    ctx = torch.randn(2, 4, learner.ctx_init.shape[1], generator=torch.Generator().manual_seed(2),
                      requires_grad=True)
    ours = learner.text_features(ctx, chunk=25)
    prompts = [f"a photo of a {name}." for name in names]
    for b in range(2):
        expected = _full_length_features(backbone.model, backbone.tokenizer, prompts, 4, ctx[b].detach())
        torch.testing.assert_close(ours[b].detach(), expected, atol=2e-6, rtol=1e-5)
    # the gradient through the pieces equals the gradient through one 77-token pass
    probe = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3))
    grad = torch.autograd.grad((ours * probe).sum(), ctx)[0]
    tokens = backbone.tokenizer(prompts)
    model = backbone.model
    full_ctx = ctx.detach().clone().requires_grad_(True)
    total = 0
    for b in range(2):
        x = model.token_embedding(tokens)
        x = torch.cat([x[:, :1], full_ctx[b].expand(len(names), -1, -1), x[:, 5:]], dim=1)
        x = model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)
        x = model.ln_final(x)[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection
        total = total + (F.normalize(x, dim=-1) * probe[b]).sum()
    torch.testing.assert_close(grad, torch.autograd.grad(total, full_ctx)[0], atol=1e-5, rtol=1e-4)


def test_template_context_and_random_init(backbone):
    learner = PromptLearner(backbone, CLASSES, "a photo of my big {}, a kind of thing.", 4, 0)
    context_tokens = backbone.tokenizer(["a photo of my big"])[0]
    assert learner.n_ctx == int((context_tokens != 0).sum()) - 2  # between [SOS] and [EOS]
    with torch.no_grad():
        initial = learner.text_features(learner.ctx_init[None], chunk=64)[0].numpy()
    expected = backbone.encode_texts([f"a photo of my big {name}, a kind of thing." for name in CLASSES])
    np.testing.assert_allclose(initial, expected, atol=2e-6)
    random = PromptLearner(backbone, CLASSES, None, 6, 3)
    assert random.ctx_init.shape[0] == 6 and abs(float(random.ctx_init.std()) - 0.02) < 0.005


def test_unsupported_text_tower(tmp_path, tiny_config):
    config = json.loads(open(tiny_config).read())
    config["text_cfg"].update(no_causal_mask=True, pool_type="last")  # a SigLIP-style tower
    path = tmp_path / "zsp-tiny-bidirectional.json"
    path.write_text(json.dumps(config))
    other = Backbone(str(path), "none", progress=False)
    with pytest.raises(InputError, match="zsp-tiny-bidirectional.*not supported"):
        TPTClassifier(other, classnames=CLASSES).fit()


# ---------------------------------------------------------------------- maths


def test_closed_form_first_step_equals_torch_adamw():
    generator = torch.Generator().manual_seed(0)
    param = torch.randn(3, 4, 64, generator=generator)
    grad = torch.randn(3, 4, 64, generator=generator) * torch.logspace(-12, 1, 64)
    grad[0, 0, :5] = 0.0
    for lr in (5e-3, 0.1):
        reference = param.clone().requires_grad_(True)
        optimiser = torch.optim.AdamW([reference], lr=lr)  # defaults: betas, eps, wd 0.01
        reference.grad = grad.clone()
        optimiser.step()
        ours = adamw_first_step(param, grad, lr)
        torch.testing.assert_close(ours, reference.detach(), rtol=1e-6, atol=1e-9)
        # and the textbook form: p (1 - lr wd) - lr g / (|g| + eps)
        textbook = param.double() * (1 - lr * 0.01) - lr * grad.double() / (grad.double().abs() + 1e-8)
        torch.testing.assert_close(ours.double(), textbook, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n_views, p, expected", [(64, 0.1, 6), (128, 0.3, 38), (10, 0.05, 1)])
def test_selection_keeps_the_lowest_entropy_views(n_views, p, expected):
    logits = torch.randn(n_views, 5, generator=torch.Generator().manual_seed(n_views)) * 3
    chosen = confident_views(logits, p).numpy()
    assert len(chosen) == expected
    entropies = scipy_entropy(softmax(logits.double().numpy(), axis=1), axis=1)
    assert set(chosen) == set(np.argsort(entropies)[:expected])


def test_loss_is_the_entropy_of_the_mean_probabilities():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) * 4
    mean = softmax(logits.double().numpy(), axis=1).mean(axis=0)
    assert float(marginal_entropy(logits)) == pytest.approx(scipy_entropy(mean), rel=1e-5)
    # not the mean entropy, which is smaller
    assert scipy_entropy(softmax(logits.numpy(), axis=1), axis=1).mean() < scipy_entropy(mean)


def test_difftpt_selection_on_synthetic_views():
    # view 0: the original, confident in class 0. Views 1-4 agree with it (decreasing
    # confidence); views 5-7 are very confident in other classes (lowest entropy of all);
    # views 8-9 are flat.
    rows = [[5, 0, 0, 0], [6, 0, 0, 0], [4, 1, 0, 0], [3, 1, 1, 0], [2, 1, 1, 1],
            [0, 12, 0, 0], [0, 0, 12, 0], [0, 0, 0, 12], [1, 1, 1, 1.1], [1, 1.1, 1, 1]]
    logits = torch.tensor(rows, dtype=torch.float32)
    # plain TPT (p = 0.3 of 10 views = 3) picks the three wrong but confident views
    assert set(confident_views(logits, 0.3).tolist()) == {5, 6, 7}
    # DiffTPT: cosine to the original keeps int(0.5 * 9) = 4 views (1, 2, 3, 4), the
    # original is prepended, then int(0.6 * 5) = 3 of lowest entropy among them
    chosen = cosine_confident_views(logits, 0.5, 0.6).tolist()
    assert sorted(chosen) == [0, 1, 2]


# ---------------------------------------------------------------------- the classifier


def test_tuning_lowers_the_entropy_of_the_selected_views(backbone):
    clf = _classifier(backbone, n_views=15, selection_p=0.2)
    features = [torch.from_numpy(clf.backbone.encode_pixels(clf_views))
                for clf_views in [_views(clf, image) for image in _images(3)]]
    selected = [f[clf._select(clf._learner.logit_scale * f @ clf._init_weights.T)] for f in features]
    assert all(len(s) == 3 for s in selected)  # int(0.2 * 16)
    ctx = clf._learner.ctx_init.expand(3, -1, -1).clone()
    before, grad = clf._loss_and_grad(ctx, selected)
    after, _ = clf._loss_and_grad(adamw_first_step(ctx, grad, 5e-3), selected)
    assert float(after) < float(before)
    # per image too: each context moves only its own image's loss
    for b in range(3):
        loss_before, grad_b = clf._loss_and_grad(ctx[b:b + 1], selected[b:b + 1])
        loss_after, _ = clf._loss_and_grad(adamw_first_step(ctx[b:b + 1], grad_b, 5e-3),
                                           selected[b:b + 1])
        assert float(loss_after) < float(loss_before)
        torch.testing.assert_close(grad_b[0], grad[b], atol=1e-6, rtol=1e-4)


def _views(clf, image):
    from zeroshot_plus.methods.tpt import AugmentedViews
    return AugmentedViews(clf.backbone, clf.n_views, clf.augmix, clf.random_state).render(image)


def test_tuning_changes_the_prediction_scores(backbone):
    images = _images(2)
    tuned = _classifier(backbone).decision_function(images)
    untuned = _classifier(backbone, lr=0.0).decision_function(images)
    with torch.no_grad():
        originals = torch.stack([backbone.preprocess(image) for image in images])
    scale = float(backbone.model.logit_scale.exp())
    zero_shot = scale * backbone.encode_pixels(originals) @ backbone.encode_texts(
        [f"a photo of a {name}." for name in sorted(CLASSES)]).T  # columns follow classes_
    np.testing.assert_allclose(untuned, zero_shot, rtol=1e-4, atol=1e-4)
    assert np.abs(tuned - untuned).max() > 1e-3


def test_context_is_reset_between_images_and_order_does_not_matter(backbone):
    images = _images(4)
    clf = _classifier(backbone)
    forward = clf.decision_function(images)
    backward = clf.decision_function(images[::-1])[::-1]
    np.testing.assert_allclose(forward, backward, atol=1e-5)
    alone = clf.decision_function([images[2]])
    np.testing.assert_allclose(alone[0], forward[2], atol=1e-5)


def test_batched_tuning_equals_one_by_one(backbone):
    images = _images(3)
    one_by_one = _classifier(backbone, batch_images=1).decision_function(images)
    batched = _classifier(backbone, batch_images=3).decision_function(images)
    chunked = _classifier(backbone, batch_images=3, text_batch=5).decision_function(images)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    np.testing.assert_allclose(chunked, one_by_one, atol=1e-4)
    # several AdamW steps, batched and chunked, against one image at a time
    np.testing.assert_allclose(
        _classifier(backbone, steps=3, batch_images=3, text_batch=5).decision_function(images),
        _classifier(backbone, steps=3).decision_function(images), atol=1e-4)


def test_random_state_takes_a_numpy_generator(backbone):
    images = _images(2)
    a, b = (_classifier(backbone, random_state=np.random.default_rng(4)).decision_function(images)
            for _ in range(2))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="^TPTClassifier: random_state must be None, an int"):
        _classifier(backbone, random_state="four")


def test_augmix_views_are_seeded(backbone):
    images = _images(2)
    a = _classifier(backbone, augmix=True, random_state=1).decision_function(images)
    b = _classifier(backbone, augmix=True, random_state=1).decision_function(images[::-1])[::-1]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_difftpt_views_from_a_folder_or_a_callable(backbone, tmp_path, make_image):
    paths = [make_image(tmp_path / "test" / f"img{i}.png", i, (48, 40)) for i in range(2)]
    generated = tmp_path / "generated"
    for i in range(2):
        for j in range(5):
            make_image(generated / f"img{i}_{j}.jpg", 100 + 10 * i + j, (48, 40))
    make_image(generated / "img10_0.jpg", 99)  # another image's variation: not picked up
    calls = []

    def variations(image):
        calls.append(image.size)
        index = len(calls) - 1
        from PIL import Image
        return [Image.open(generated / f"img{index}_{j}.jpg") for j in range(5)]

    params = dict(n_views=8, selection_p=0.3, steps=2, cosine_p=0.8)
    from_folder = _classifier(backbone, diffusion_views=generated, **params)
    assert len(tpt_module.generated_images(from_folder.diffusion_views, paths[1], None)) == 5
    by_folder = from_folder.decision_function(paths)
    by_callable = _classifier(backbone, diffusion_views=variations, **params).decision_function(paths)
    np.testing.assert_allclose(by_folder, by_callable, atol=1e-5)
    assert len(calls) == 2
    # the generated views take part: the same selection without them gives other scores
    without = _classifier(backbone, diffusion_views=lambda image: [], **params)
    assert np.abs(by_folder - without.decision_function(paths)).max() > 1e-4


def test_undecodable_image_is_skipped_and_reported(backbone, tmp_path, make_image):
    good = [make_image(tmp_path / f"ok{i}.png", i) for i in range(2)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    clf = _classifier(backbone)
    report = EncodeReport()
    parts = list(clf.iter_decision_function([good[0], broken, good[1]], on_error="skip",
                                            report=report))
    assert np.concatenate([p for p, _ in parts]).tolist() == [0, 2]
    assert [f.name for f in report.failures] == [str(broken)]
    np.testing.assert_allclose(np.concatenate([z for _, z in parts]),
                               clf.decision_function(good), atol=1e-5)
    with pytest.raises(InputError, match="broken.jpg"):
        clf.decision_function([good[0], broken])


def test_bad_parameters_name_themselves(backbone):
    with pytest.raises(InputError, match="selection_p"):
        TPTClassifier(backbone, classnames=CLASSES, selection_p=0).fit()
    with pytest.raises(InputError, match="n_views"):
        TPTClassifier(backbone, classnames=CLASSES, n_views=-1).fit()
    with pytest.raises(InputError, match="diffusion views folder 'nowhere'"):
        TPTClassifier(backbone, classnames=CLASSES, diffusion_views="nowhere").fit()
    with pytest.raises(InputError, match="ctx_init"):
        TPTClassifier(backbone, classnames=CLASSES, ctx_init="{} and {}").fit()


# ---------------------------------------------------------------------- command line


def test_cli_predict_and_evaluate_with_tpt(tiny_config, tmp_path, make_image, capsys):
    from zeroshot_plus.cli import main

    root = tmp_path / "set"
    paths = [make_image(root / label / f"{label}{i}.png", 10 * k + i, (48, 40))
             for k, label in enumerate(["cat", "dog"]) for i in range(3)]
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    common = ["--model", tiny_config, "--pretrained", "none", "--no-progress",
              "--method", "tpt", "--tpt-views", "7", "--templates", "photo"]
    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(root), "--classes", "cat,dog", "--out", str(out), *common]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in sorted(paths)]
    assert "broken.jpg" in capsys.readouterr().err
    # the same numbers as the library, on the template's context "a photo of a"
    tuned = TPTClassifier(Backbone(tiny_config, "none", progress=False), classnames=["cat", "dog"],
                          n_views=7).fit().predict_proba(sorted(paths))
    np.testing.assert_allclose([r["probs"][0] for r in rows], tuned.max(1), atol=1e-5)
    assert main(["evaluate", str(root), *common, "--tpt-steps", "2"]) == 0
    assert "images: 6" in capsys.readouterr().out
    several = [a if a != "photo" else "simple_imagenet" for a in common]
    assert main(["predict", str(root), "--classes", "cat,dog", *several]) == 2
    assert "tunes one prompt" in capsys.readouterr().err


def test_saved_classifier_predicts_the_same_in_python_and_on_the_command_line(
        tiny_config, tmp_path, make_image):
    """A loaded TPT classifier rebuilds its prompt learner; the command line streams TPT's
    logits for it rather than embeddings."""
    from zeroshot_plus.cli import main

    paths = [make_image(tmp_path / "set" / f"{i}.png", i, (48, 40)) for i in range(3)]
    fitted = TPTClassifier(Backbone(tiny_config, "none", progress=False), classnames=["cat", "dog"],
                           n_views=7).fit()
    expected = fitted.predict_proba(paths)
    fitted.save(tmp_path / "tpt.npz")
    loaded = TPTClassifier.load(tmp_path / "tpt.npz", Backbone(tiny_config, "none", progress=False))
    np.testing.assert_allclose(loaded.predict_proba(paths), expected, atol=1e-6)
    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(tmp_path / "set"), "--classifier", str(tmp_path / "tpt.npz"),
                 "--model", tiny_config, "--out", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    np.testing.assert_allclose([r["probs"][0] for r in rows], expected.max(1), atol=1e-5)
    assert [r["labels"][0] for r in rows] == list(fitted.classes_[expected.argmax(1)])


def test_shared_first_pass_gives_each_images_own_gradient(backbone):
    clf = _classifier(backbone, n_views=7, text_batch=3)
    features = [torch.from_numpy(clf.backbone.encode_pixels(_views(clf, image))) for image in _images(3)]
    selected = [f[clf._select(clf._learner.logit_scale * f @ clf._init_weights.T)] for f in features]
    ctx = clf._learner.ctx_init.expand(3, -1, -1).clone()
    _, separate = clf._loss_and_grad(ctx, selected)  # three contexts, one graph each
    torch.testing.assert_close(clf._first_gradient(selected), separate,
                               atol=1e-4 * float(separate.abs().max()), rtol=1e-4)


def test_tpt_preset_has_the_papers_settings(backbone, tmp_path):
    from zeroshot_plus import tpt_preset

    def settings(clf):
        return clf.n_views, clf.steps, clf.selection_p, clf.ctx_init

    assert settings(tpt_preset(backbone, ["cat", "dog"])) == (63, 1, 0.1, "a photo of a")
    assert settings(tpt_preset(backbone, ["cat", "dog"], diffusion_views=tmp_path)) == (
        64, 4, 0.3, "a photo of a")
    own = tpt_preset(backbone, ["cat", "dog"], templates="photo", n_views=7, random_state=3)
    assert settings(own) == (7, 1, 0.1, "a photo of a {}.") and own.random_state == 3
    assert tpt_preset(backbone, ["cat"], templates=["a drawing of a {}."]).ctx_init == \
        "a drawing of a {}."
    assert tpt_preset(backbone, ["cat"], templates=["a drawing of a {c}."]).ctx_init == \
        "a drawing of a {}."  # CLIP_benchmark's placeholder
    with pytest.raises(InputError, match="tunes one prompt, but the templates "
                                         "'simple_imagenet' hold 7"):
        tpt_preset(backbone, ["cat", "dog"], templates="simple_imagenet")


def test_cli_tpt_uses_an_explicit_template_set(tiny_config, tmp_path, make_image, capsys):
    """--templates openai_imagenet was once taken for 'not given' by --method tpt."""
    from zeroshot_plus.cli import main

    make_image(tmp_path / "set" / "a.png", 0)
    assert main(["predict", str(tmp_path / "set"), "--classes", "cat,dog", "--method", "tpt",
                 "--templates", "openai_imagenet", "--model", tiny_config, "--pretrained",
                 "none", "--no-progress"]) == 2
    assert "tunes one prompt, but the templates 'openai_imagenet' hold 80" in \
        capsys.readouterr().err


# ---------------------------------------------------------------------- reference settings

from PIL import Image  # noqa: E402

from zeroshot_plus.encoders.augmix import (OPERATIONS, AugMix, Operation,  # noqa: E402
                                           apply_operation, operation_parameter, sample_chain)


def test_reference_augmix_draws_levels_uniform_on_0_1_to_1_and_chains_of_1_to_3():
    rng = np.random.default_rng(0)
    chains = [sample_chain(rng) for _ in range(6000)]
    levels = np.array([op.level for chain in chains for op in chain if op.level is not None])
    # U(0.1, 1): the whole range, mean 0.55, variance 0.9² / 12
    assert levels.min() >= 0.1 and levels.max() < 1.0
    assert levels.min() < 0.102 and levels.max() > 0.998
    assert abs(levels.mean() - 0.55) < 0.01 and abs(levels.var() - 0.81 / 12) < 0.003
    depths = np.bincount([len(chain) for chain in chains], minlength=4)
    assert depths[0] == 0 and np.abs(depths[1:] / len(chains) - 1 / 3).max() < 0.03
    names = [op.name for chain in chains for op in chain]
    assert set(names) == set(OPERATIONS)
    assert max(abs(names.count(n) / len(names) - 1 / 9) for n in OPERATIONS) < 0.015
    # levels only for the operations that have one, signs only for the geometric ones
    assert all((op.level is None) == (op.name in ("autocontrast", "equalize")) for chain in chains
               for op in chain)
    signs = [op.negative for chain in chains for op in chain if op.name == "rotate"]
    assert abs(np.mean(signs) - 0.5) < 0.05


def test_reference_augmix_operations_at_hand_computed_strengths():
    pixels = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)

    def apply(name, level, negative=False):
        return np.asarray(apply_operation(image, Operation(name, level, negative)))

    # translate: ⌊l·(224/3)/10⌋ pixels: 7 at l = 0.99, 3 at l = 0.5 (not torchvision's 0)
    assert operation_parameter("translate_x", 0.99, 224) == 7
    assert np.array_equal(apply("translate_x", 0.99)[:, :-7], pixels[:, 7:])
    assert np.array_equal(apply("translate_y", 0.5, negative=True)[3:], pixels[:-3])
    assert [operation_parameter("rotate", level, 224) for level in (0.1, 0.34, 0.99)] == [0, 1, 2]
    assert operation_parameter("shear_x", 0.5, 224) == pytest.approx(0.015)
    # posterize keeps 4 bits at every level of severity 1; solarize at 256 − ⌊25.6·l⌋
    assert np.array_equal(apply("posterize", 0.99), pixels & 0xF0)
    assert operation_parameter("solarize", 0.99, 224) == 231
    assert np.array_equal(apply("solarize", 0.99), np.where(pixels >= 231, 255 - pixels, pixels))
    assert apply("rotate", 0.5).shape == pixels.shape


def test_reference_augmix_is_a_convex_mix_of_normalised_tensors():
    mean = torch.tensor([0.48, 0.46, 0.41])[:, None, None]
    std = torch.tensor([0.27, 0.26, 0.28])[:, None, None]

    def pre(image):  # ToTensor + Normalize
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        return (pixels - mean) / std

    augmix = AugMix(pre)
    image = synthetic_image(3, (32, 32))
    ms, ws = [], []
    for seed in range(300):
        original, chains, w, m = augmix.parts(image, np.random.default_rng(seed))
        ms.append(m)
        ws.append(w)
        assert w.min() >= 0 and w.sum() == pytest.approx(1, abs=1e-6) and 0 <= m <= 1
        torch.testing.assert_close(original, pre(image))
        if seed < 20:
            out = augmix(image, np.random.default_rng(seed))
            torch.testing.assert_close(
                out, m * pre(image) + (1 - m) * (torch.from_numpy(w)[:, None, None, None]
                                                 * chains).sum(0), atol=1e-5, rtol=1e-5)
            parts = torch.cat([original[None], chains])
            assert (out >= parts.min(0).values - 1e-5).all()
            assert (out <= parts.max(0).values + 1e-5).all()
    # m ~ Beta(1, 1) = U(0, 1); w ~ Dirichlet(1, 1, 1): mean 1/3 each, variance 1/18
    assert abs(np.mean(ms) - 0.5) < 0.05 and abs(np.var(ms) - 1 / 12) < 0.015
    assert np.abs(np.mean(ws, axis=0) - 1 / 3).max() < 0.04
    assert np.abs(np.var(ws, axis=0) - 1 / 18).max() < 0.015


def test_reference_augmix_views_are_seeded_and_differ_from_the_others(backbone):
    images = _images(2)
    a = _classifier(backbone, augmix="reference", random_state=1).decision_function(images)
    b = _classifier(backbone, augmix="reference", random_state=1).decision_function(
        images[::-1])[::-1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    for other in (False, "torchvision"):
        c = _classifier(backbone, augmix=other, random_state=1).decision_function(images)
        assert np.abs(a - c).max() > 1e-4
    # True is torchvision's, as before
    np.testing.assert_allclose(
        _classifier(backbone, augmix=True, random_state=1).decision_function(images),
        _classifier(backbone, augmix="torchvision", random_state=1).decision_function(images))
    with pytest.raises(InputError, match="augmix must be False, True or one of"):
        _classifier(backbone, augmix="strong")


def test_ctx_count_words_is_the_references_count(backbone):
    # "itap" is two BPE tokens: the reference tunes 3 vectors (one per word), the 4th stays
    tokens = backbone.tokenizer(["itap of a"])[0]
    assert int(tokens.argmax()) - 1 == 4
    by_tokens = PromptLearner(backbone, CLASSES, "itap of a", 4, 0)
    by_words = PromptLearner(backbone, CLASSES, "itap_of_a", 4, 0, ctx_count="words")
    assert by_tokens.n_ctx == 4 and by_words.n_ctx == 3
    with torch.no_grad():
        embedded = backbone.model.token_embedding(tokens[None])[0]
    torch.testing.assert_close(by_words.ctx_init, embedded[1:4])
    torch.testing.assert_close(by_words.suffix[:, 0], embedded[4].expand(len(CLASSES), -1))
    expected = backbone.encode_texts([f"itap of a {name}." for name in CLASSES])
    for learner in (by_tokens, by_words):  # the same prompt text before tuning
        with torch.no_grad():
            initial = learner.text_features(learner.ctx_init[None], chunk=64)[0].numpy()
        np.testing.assert_allclose(initial, expected, atol=2e-6)
    tuned = _classifier(backbone, ctx_init="itap of a", ctx_count="words")
    assert tuned.n_ctx_ == 3
    # one token per word: both counts agree
    assert _classifier(backbone, ctx_count="words").n_ctx_ == 4
    with pytest.raises(InputError, match="has 3 words but 2 tokens"):
        _classifier(backbone, ctx_init="a  photo", ctx_count="words")
    with pytest.raises(InputError, match="ctx_count"):
        _classifier(backbone, ctx_count="letters")


def test_coop_learned_context_initialises_the_prompt(backbone, tmp_path):
    width = backbone.model.token_embedding.weight.shape[1]
    ctx = torch.randn(4, width, generator=torch.Generator().manual_seed(5)) * 0.05
    path = tmp_path / "prompt_learner" / "model.pth.tar-50"
    path.parent.mkdir()
    # CoOp's (Dassl's) checkpoint layout, which TPT's --load reads as ["state_dict"]["ctx"]
    torch.save({"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(3, 1, width),
                               "token_suffix": torch.zeros(3, 72, width)},
                "epoch": 50, "optimizer": None}, path)
    clf = _classifier(backbone, ctx_init=str(path))
    assert clf.n_ctx_ == 4
    torch.testing.assert_close(clf._learner.ctx_init, ctx)
    # [SOS] ctx_1..ctx_4 [name] . [EOS], the reference's prompt with the learned context
    prompts = [f"X X X X {name}." for name in clf.classnames_]
    with torch.no_grad():
        initial = clf._learner.text_features(clf._learner.ctx_init[None], chunk=64)[0]
    torch.testing.assert_close(initial, _full_length_features(
        backbone.model, backbone.tokenizer, prompts, 4, ctx), atol=2e-6, rtol=1e-5)
    images = _images(2)
    expected = clf.decision_function(images)
    np.testing.assert_allclose(
        _classifier(backbone, ctx_init=ctx.numpy()).decision_function(images), expected, atol=1e-6)
    np.testing.assert_allclose(_classifier(backbone, ctx_init=path).decision_function(images),
                               expected, atol=1e-6)
    # a plain state dict with the full model's key, or the tensor alone, load the same
    for i, saved in enumerate(({"prompt_learner.ctx": ctx}, ctx)):
        torch.save(saved, tmp_path / f"ctx{i}.pt")
        torch.testing.assert_close(tpt_module.load_coop_context(tmp_path / f"ctx{i}.pt"), ctx)
    clf.save(tmp_path / "tpt.npz")  # the path is saved, and read again by the loaded one
    loaded = TPTClassifier.load(tmp_path / "tpt.npz", backbone)
    np.testing.assert_allclose(loaded.decision_function(images), expected, atol=1e-6)


def test_bad_learned_contexts_are_one_sentence(backbone, tmp_path):
    width = backbone.model.token_embedding.weight.shape[1]
    torch.save({"state_dict": {"ctx": torch.zeros(4, 7, width)}}, tmp_path / "csc.pth")
    torch.save({"state_dict": {"token_prefix": torch.zeros(1)}}, tmp_path / "noctx.pth")
    torch.save({"ctx": torch.zeros(4, width + 1)}, tmp_path / "wide.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    for ctx_init, pattern in (
            (str(tmp_path / "missing.pth"), r"CoOp checkpoint '.*missing.pth' does not exist"),
            (str(tmp_path / "csc.pth"), r"one context per class \(4, 7, 64\)"),
            (str(tmp_path / "noctx.pth"), "no key 'ctx' or 'prompt_learner.ctx'"),
            (str(tmp_path / "wide.pth"), "width 65, but the text tower"),
            (str(tmp_path / "junk.pth"), r"cannot read CoOp checkpoint '.*junk.pth'"),
            (np.full((4, width), np.nan), r"finite \(n_ctx, width\)")):
        with pytest.raises(InputError, match=pattern):
            _classifier(backbone, ctx_init=ctx_init)


def test_difftpt_view_count_and_class_folder_layout(backbone, tmp_path, make_image):
    # DiffTPT's layout: ROOT/<class>/<stem>_<i>.<ext> beside the test image <class>/<stem>.*
    paths = [make_image(tmp_path / "test" / label / f"{label}{i}.png", 10 * k + i, (48, 40))
             for k, label in enumerate(["cat", "dog"]) for i in range(2)]
    root = tmp_path / "generated"
    for k, label in enumerate(["cat", "dog"]):
        for i in range(2):
            for j in (0, 1, 2, 10):  # i = 10 sorts after 2, as a number
                make_image(root / label / f"{label}{i}_{j}.jpg", 100 + 20 * k + 5 * i + j, (48, 40))
    make_image(root / "dog" / "cat0_0.jpg", 99)  # same stem, another class: not picked up
    found = tpt_module.generated_images(root, paths[0], None)
    assert [p.name for p in found] == ["cat0_0.jpg", "cat0_1.jpg", "cat0_2.jpg", "cat0_10.jpg"]
    assert all(p.parent.name == "cat" for p in found)
    assert [p.name for p in tpt_module.generated_images(root, paths[0], None, 3)] == [
        "cat0_0.jpg", "cat0_1.jpg", "cat0_2.jpg"]
    params = dict(n_views=6, selection_p=0.3, steps=2)
    by_folder = _classifier(backbone, diffusion_views=root, diffusion_count=3, **params)

    def first_three(image):
        index = [Image.open(p).convert("RGB").tobytes() for p in paths].index(image.tobytes())
        label = paths[index].parent.name
        return [Image.open(root / label / f"{paths[index].stem}_{j}.jpg") for j in range(3)]

    expected = _classifier(backbone, diffusion_views=first_three, **params).decision_function(paths)
    np.testing.assert_allclose(by_folder.decision_function(paths), expected, atol=1e-5)
    every = _classifier(backbone, diffusion_views=root, **params).decision_function(paths)
    assert np.abs(every - expected).max() > 1e-4  # the fourth view takes part without a count
    # DiffTPT's preset reads its 63
    from zeroshot_plus import tpt_preset
    assert tpt_preset(backbone, ["cat"], diffusion_views=root).diffusion_count == 63
    assert tpt_preset(backbone, ["cat"]).diffusion_count is None
    with pytest.raises(InputError, match="diffusion_count"):
        _classifier(backbone, diffusion_views=root, diffusion_count=0)


def test_cli_tpt_reference_options_reach_the_classifier(tiny_config, tmp_path, make_image,
                                                        monkeypatch, capsys):
    from zeroshot_plus.cli import main

    made = []
    preset = tpt_module.tpt_preset
    monkeypatch.setattr(tpt_module, "tpt_preset", lambda *a, **k: made.append(preset(*a, **k))
                        or made[-1])
    root = tmp_path / "set"
    paths = [make_image(root / "cat" / f"c{i}.png", i, (48, 40)) for i in range(2)]
    width = 64
    ctx = torch.randn(3, width, generator=torch.Generator().manual_seed(0)) * 0.02
    torch.save({"state_dict": {"ctx": ctx}}, tmp_path / "coop.pth")
    generated = tmp_path / "gen"
    for path in paths:
        for j in range(3):
            make_image(generated / "cat" / f"{path.stem}_{j}.png", 50 + j, (48, 40))
    common = ["predict", str(root), "--classes", "cat,dog", "--model", tiny_config,
              "--pretrained", "none", "--no-progress", "--method", "tpt", "--tpt-views", "5",
              "--out", str(tmp_path / "p.csv")]
    assert main([*common, "--augmix", "reference", "--ctx-init", "itap_of_a", "--ctx-count",
                 "words", "--tpt-lr", "0.01", "--tpt-select", "0.5"]) == 0
    params = made[-1].get_params()
    assert (params["augmix"], params["ctx_init"], params["ctx_count"], params["lr"],
            params["selection_p"], made[-1].n_ctx_) == ("reference", "itap_of_a", "words", 0.01,
                                                         0.5, 3)
    assert main([*common, "--augmix"]) == 0 and made[-1].augmix == "torchvision"
    assert main([*common, "--ctx-init", str(tmp_path / "coop.pth")]) == 0
    torch.testing.assert_close(made[-1]._learner.ctx_init, ctx)
    assert main([*common, "--n-ctx", "6"]) == 0
    assert made[-1].ctx_init is None and made[-1].n_ctx_ == 6
    assert main([*common, "--diffusion-views", str(generated), "--diffusion-count", "2",
                 "--tpt-cosine", "0.5"]) == 0
    assert (made[-1].diffusion_count, made[-1].cosine_p, made[-1].steps) == (2, 0.5, 4)
    capsys.readouterr()
    for extra, message in (
            (["--templates", "photo", "--ctx-init", "a photo of"],
             "--templates and --ctx-init both set TPT's initial context; give one of them."),
            (["--ctx-init", "a photo of", "--n-ctx", "4"], "--ctx-init and --n-ctx both set"),
            (["--diffusion-count", "3"], "--diffusion-count needs --diffusion-views DIR."),
            (["--ctx-init", str(tmp_path / "none.pth")], "CoOp checkpoint '.*none.pth' does not "
                                                         "exist."),
            (["--tpt-select", "2"], "selection_p")):
        assert main([*common, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    with pytest.raises(SystemExit):
        main([*common, "--augmix", "strong"])
    assert "invalid choice: 'strong'" in capsys.readouterr().err


def _cpu_autocasts_to(dtype: torch.dtype) -> bool:
    try:
        with torch.autocast("cpu", dtype=dtype):
            return F.linear(torch.ones(2, 2), torch.ones(2, 2)).dtype == dtype
    except RuntimeError:
        return False


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_first_gradient_under_autocast_keeps_the_steps_of_fp32(backbone, tiny_config,
                                                                precision, dtype):
    # The closed-form first step is -lr·sign(g) wherever |g| >> eps and only the weight decay
    # where g underflowed to 0: no loss scaling is needed while g is finite, not zero and of
    # fp32's signs. benchmarks/tpt_precision.py measures at most 1% of signs differing (tiny
    # model and ViT-B-32, 10 and 100 classes), only on entries near 0; an underflowed gradient
    # would get about half of them wrong.
    if not _cpu_autocasts_to(dtype):
        pytest.skip(f"this torch cannot autocast to {precision} on the CPU")
    reduced = Backbone(tiny_config, "none", precision=precision, progress=False)
    clf32 = _classifier(backbone, n_views=15, selection_p=0.2)
    clf = _classifier(reduced, n_views=15, selection_p=0.2)
    features = [torch.from_numpy(backbone.encode_pixels(_views(clf32, image)))
                for image in _images(3)]
    selected = [f[clf32._select(clf32._learner.logit_scale * f @ clf32._init_weights.T)]
                for f in features]
    grad, grad32 = clf._first_gradient(selected), clf32._first_gradient(selected)
    assert torch.isfinite(grad).all() and (grad != 0).any()
    assert not torch.equal(grad, grad32)  # the reduced precision is in effect
    ctx = clf32._learner.ctx_init.expand(3, -1, -1)
    step, step32 = (adamw_first_step(ctx, g, 5e-3) - ctx for g in (grad, grad32))
    assert float((torch.sign(step) == torch.sign(step32)).float().mean()) >= 0.95
