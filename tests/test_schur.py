"""Schur-complement tools: closed forms, the invariants of METHODS.md §6.7, the edit, the CLI."""

from __future__ import annotations

import csv
import re
import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.covariance import empirical_covariance
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.preprocessing import KernelCenterer

from zeroshot_plus import InputError, SchurEditor, ZeroShotClassifier, sce_score
from zeroshot_plus.cli import main
from zeroshot_plus.methods.schur import (_double_centre, _gaussian_gram, _second_moment,
                                         draw_frequencies, random_fourier_features,
                                         spectrum_entropy)


def _unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _pairs(n_prompts: int = 8, per_prompt: int = 6, dim: int = 16, noise: float = 0.7,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images = their prompt's vector + independent noise; each prompt repeats."""
    rng = np.random.default_rng(seed)
    texts = _unit(rng.standard_normal((n_prompts, dim)))[np.repeat(np.arange(n_prompts), per_prompt)]
    return _unit(texts + noise * rng.standard_normal(texts.shape)), texts


def _rff(X: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """The random Fourier map, written out independently of the library."""
    m = omega.shape[1]
    return np.hstack([np.cos(X @ omega), np.sin(X @ omega)]) / np.sqrt(m)


def _gaussian(X: np.ndarray, sigma: float) -> np.ndarray:
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma ** 2))


# ---------------------------------------------------------------------- closed forms


def test_spectrum_entropy_known_values():
    uniform = np.full(4, 0.25)
    assert spectrum_entropy(uniform) == pytest.approx(4.0)  # exp(1·log 4)
    assert spectrum_entropy(uniform / 2) == pytest.approx(2.0)  # τ = 1/2: 4^(1/2)
    assert spectrum_entropy(uniform / 2, entropy="normalized") == pytest.approx(4.0)
    skewed = np.array([0.5, 0.25, 0.25, 0.0])
    assert spectrum_entropy(skewed, order=2) == pytest.approx(1 / 0.375)
    assert spectrum_entropy(skewed, order=np.inf) == pytest.approx(2.0)
    assert spectrum_entropy(skewed) == pytest.approx(np.exp(1.5 * np.log(2)))
    assert spectrum_entropy(np.zeros(3)) == 1.0


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_score_matches_the_closed_form(ridge):
    images, texts = _pairs()
    n = len(images)
    c_tt, c_ti, c_ii = texts.T @ texts / n, texts.T @ images / n, images.T @ images / n
    residual = c_ii - c_ti.T @ np.linalg.pinv(c_tt + ridge * np.trace(c_tt) * np.eye(16)) @ c_ti
    lam = np.clip(np.linalg.eigvalsh(residual), 1e-300, None)
    expected = np.exp(-np.sum(lam * np.log(lam / lam.sum())))
    result = sce_score(images, texts, kernel="cosine", ridge=ridge)
    assert result.score == pytest.approx(expected, rel=1e-8)
    np.testing.assert_allclose(result.spectrum, np.sort(np.clip(lam, 0, None))[::-1], atol=1e-12)
    assert result.residual_trace == pytest.approx(np.trace(residual), abs=1e-12)


@pytest.mark.parametrize("center", [False, True])
def test_covariances_summed_over_row_blocks(center):
    images, texts = _pairs(n_prompts=30, per_prompt=70, dim=8)  # n = 2100: three blocks
    if center:
        images_c, texts_c = images - images.mean(0), texts - texts.mean(0)
    else:
        images_c, texts_c = images, texts
    n = len(images)
    c_tt, c_ti = texts_c.T @ texts_c / n, texts_c.T @ images_c / n
    residual = images_c.T @ images_c / n - c_ti.T @ np.linalg.solve(c_tt + 1e-3 * np.trace(c_tt) * np.eye(8), c_ti)
    result = sce_score(images, texts, kernel="cosine", ridge=1e-3, center=center)
    assert result.form == "primal"
    np.testing.assert_allclose(result.spectrum, np.sort(np.linalg.eigvalsh(residual))[::-1],
                               atol=1e-12)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_trace_identities(kernel):
    images, texts = _pairs()
    result = sce_score(images, texts, kernel=kernel, n_features=400, sigma=0.6)
    assert result.image_trace == pytest.approx(1.0, abs=1e-12)  # unit-norm feature rows
    assert result.residual_trace + result.explained_trace == pytest.approx(1.0, abs=1e-10)
    assert 0.05 < result.residual_trace < 0.95


def test_images_equal_to_texts_leave_nothing_unexplained():
    _, texts = _pairs()
    result = sce_score(texts, texts, kernel="gaussian", n_features=400, sigma=0.6, ridge=1e-9)
    assert result.residual_trace < 1e-6
    assert result.score == pytest.approx(1.0, abs=1e-4)
    assert result.explained_trace == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("kernel, n_features", [("cosine", None), ("gaussian", 60)])
def test_gamma_residuals_are_orthogonal_to_the_text_features(kernel, n_features):
    images, texts = _pairs(n_prompts=40, per_prompt=1)  # n = 40 < p: C_TT is singular
    editor = SchurEditor(texts=texts, kernel=kernel, n_features=n_features or 2, sigma=0.6,
                         ridge=0.0)
    editor.fit(images)
    phi_t, phi_i = ((texts, images) if kernel == "cosine"
                    else (_rff(texts, editor.omega_), _rff(images, editor.omega_)))
    residual = phi_i - phi_t @ editor.gamma_
    np.testing.assert_allclose(phi_t.T @ residual, 0.0, atol=1e-10)


def test_gamma_with_a_ridge_solves_the_normal_equations():
    images, texts = _pairs()
    editor = SchurEditor(texts=texts, ridge=1e-2).fit(images)
    n = len(texts)
    lam = 1e-2 * np.trace(texts.T @ texts / n)
    # (C_TT + λI) Γ = C_TI, i.e. Φ_Tᵀ(Φ_I − Φ_TΓ)/n = λΓ
    np.testing.assert_allclose(texts.T @ (images - texts @ editor.gamma_) / n,
                               lam * editor.gamma_, atol=1e-12)
    assert editor.ridge_ == pytest.approx(lam)


# ---------------------------------------------------------------------- primal and dual


@pytest.mark.parametrize("kernel, n_features", [("cosine", None), ("gaussian", 40),
                                                ("gaussian", 200)])
@pytest.mark.parametrize("ridge", [0.0, 1e-3])
@pytest.mark.parametrize("center", [False, True])
def test_dual_and_primal_forms_agree(kernel, n_features, ridge, center):
    images, texts = _pairs()  # n = 48 against p = 16, 40, 200
    kwargs = dict(kernel=kernel, n_features=n_features, sigma=0.6, ridge=ridge, center=center)
    primal = sce_score(images, texts, form="primal", **kwargs)
    dual = sce_score(images, texts, form="dual", **kwargs)
    assert (primal.form, dual.form) == ("primal", "dual")
    k = min(len(primal.spectrum), len(dual.spectrum))
    np.testing.assert_allclose(primal.spectrum[:k], dual.spectrum[:k], atol=1e-10)
    np.testing.assert_allclose(primal.text_spectrum[:k], dual.text_spectrum[:k], atol=1e-10)
    assert primal.score == pytest.approx(dual.score, rel=1e-6)
    assert primal.text_score == pytest.approx(dual.text_score, rel=1e-6)
    assert primal.text_dof == pytest.approx(dual.text_dof, rel=1e-6)
    np.testing.assert_allclose(primal.mode_scores, dual.mode_scores, atol=1e-6)


def test_auto_form_picks_the_smaller_side():
    images, texts = _pairs()  # n = 48
    assert sce_score(images, texts, kernel="cosine").form == "primal"  # p = 16
    assert sce_score(images, texts, n_features=200, sigma=0.6).form == "dual"
    assert sce_score(images, texts, n_features=None, sigma=0.6).form == "dual"


def test_modes_rank_images_by_their_projection():
    images, texts = _pairs()
    result = sce_score(images, texts, kernel="cosine", n_modes=3)
    assert result.mode_scores.shape == (48, 3)
    assert (result.mode_scores.sum(axis=0) >= 0).all()
    top = result.modes(top=5)
    assert top.shape == (3, 5)
    for mode in range(3):
        column = result.mode_scores[:, mode]
        assert column[top[mode, 0]] == column.max()
        assert (np.diff(column[top[mode]]) <= 0).all()


# ---------------------------------------------------------------------- against scikit-learn


def test_exact_gaussian_gram_and_centring_equal_scikit_learns_kernels():
    images, _ = _pairs()
    sigma = 0.6
    gram = _gaussian_gram(images.astype(np.float64), sigma)
    expected = rbf_kernel(images.astype(np.float64), gamma=1 / (2 * sigma ** 2))
    np.testing.assert_allclose(gram, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_double_centre(expected), KernelCenterer().fit_transform(expected),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("center", [False, True])
def test_covariances_equal_scikit_learns_empirical_covariance(center):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((2500, 6)) + 0.5  # three row blocks; a mean to centre away
    lower, mean = _second_moment(lambda rows: rows, X, center)
    expected = empirical_covariance(X, assume_centered=not center)
    np.testing.assert_allclose(np.tril(lower), np.tril(expected), rtol=0, atol=1e-12)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("center", [False, True])
def test_exact_kernel_spectra_from_scikit_learns_kernels(center):
    # C_{I|T} = Φ_Iᵀ M Φ_I / n with M = nλ(K_TT + nλI)⁻¹ and C_{I←T} = Φ_Iᵀ(I − M)Φ_I / n, so
    # their non-zero eigenvalues are those of A^{1/2} K_II A^{1/2} / n for A = M and I − M
    images, texts = _pairs()
    n, sigma, ridge = len(images), 0.6, 1e-3
    gamma = 1 / (2 * sigma ** 2)
    kernels = [rbf_kernel(a.astype(np.float64), gamma=gamma) for a in (texts, images)]
    if center:
        kernels = [KernelCenterer().fit_transform(k) for k in kernels]
    k_tt, k_ii = kernels
    lam = ridge * np.trace(k_tt) / n
    m = n * lam * np.linalg.inv(k_tt + n * lam * np.eye(n))
    result = sce_score(images, texts, kernel="gaussian", n_features=None, sigma=sigma,
                       ridge=ridge, center=center)
    for a, spectrum in ((m, result.spectrum), (np.eye(n) - m, result.text_spectrum)):
        values, vectors = np.linalg.eigh((a + a.T) / 2)
        root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        expected = np.sort(np.linalg.eigvalsh(root @ k_ii @ root / n))[::-1]
        np.testing.assert_allclose(spectrum, np.clip(expected, 0, None), rtol=0, atol=1e-10)


# ---------------------------------------------------------------------- random features


def test_random_fourier_features_approach_the_gaussian_kernel():
    rng = np.random.default_rng(1)
    X = _unit(rng.standard_normal((30, 16)))
    exact = _gaussian(X, 0.6)
    errors = []
    for n_features in (20, 200, 2000, 20000):
        phi = random_fourier_features(X, draw_frequencies(16, n_features, 0.6, random_state=0))
        np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1.0)
        errors.append(np.abs(phi @ phi.T - exact).max())
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.05


def test_rff_score_approaches_the_exact_kernel_score():
    images, texts = _pairs()
    exact = sce_score(images, texts, n_features=None, sigma=0.6, ridge=1e-3)
    gaps = [abs(sce_score(images, texts, n_features=p, sigma=0.6, ridge=1e-3).score - exact.score)
            for p in (20, 400, 20000)]
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.02 * exact.score


def test_random_features_are_seeded():
    images, texts = _pairs()
    a, b = (sce_score(images, texts, n_features=100, sigma=0.6, random_state=s) for s in (0, 0))
    c = sce_score(images, texts, n_features=100, sigma=0.6, random_state=1)
    assert a.score == b.score != c.score
    assert a.random_state == 0


# ---------------------------------------------------------------------- behaviour


def _generator(depends_on_prompt: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """12 prompts x 10 images: images vary independently of the prompt, or follow it."""
    rng = np.random.default_rng(seed)
    prompts = _unit(rng.standard_normal((12, 16)))
    texts = prompts[np.repeat(np.arange(12), 10)]
    if depends_on_prompt:
        images = texts @ rng.standard_normal((16, 16)) + 0.05 * rng.standard_normal(texts.shape)
    else:
        images = rng.standard_normal(texts.shape)
    return _unit(images), texts


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_sce_is_higher_for_a_generator_that_ignores_the_prompt(kernel):
    free = sce_score(*_generator(False), kernel=kernel, n_features=1000, sigma=0.8)
    follows = sce_score(*_generator(True), kernel=kernel, n_features=1000, sigma=0.8)
    assert free.score > 2 * follows.score
    assert free.residual_trace > 5 * follows.residual_trace


def test_warns_when_the_text_spans_every_sample():
    images, texts = _pairs(n_prompts=30, per_prompt=1)
    with pytest.warns(UserWarning, match="degenerates toward 1"):
        result = sce_score(images, texts, n_features=400, sigma=0.6)
    assert result.text_dof > 27
    images, texts = _pairs(n_prompts=5, per_prompt=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sce_score(images, texts, n_features=400, sigma=0.6)


def test_warns_when_sigma_does_not_fit_the_embeddings():
    images, texts = _pairs()
    with pytest.warns(UserWarning, match="sigma=6 is far from the median distance 1.4"):
        sce_score(images, texts, n_features=100, sigma=6.0)
    with pytest.warns(UserWarning, match="Gaussian kernel is nearly the identity"):
        sce_score(images, texts, n_features=100, sigma=0.1)


def _orthogonal_unit(rng, n: int, dim: int, skip: int) -> np.ndarray:
    """n unit vectors in the span of the coordinates skip..dim-1, in ± pairs (mean zero)."""
    half = np.zeros((n // 2, dim))
    half[:, skip:] = rng.standard_normal((n // 2, dim - skip))
    half = _unit(half)
    return np.vstack([half, -half])


def test_edit_removes_the_prompt_and_keeps_orthogonal_directions():
    rng = np.random.default_rng(0)
    dim, theta = 12, np.pi / 3
    dog, cat = np.eye(dim)[0], np.eye(dim)[1]
    u_dog, u_cat = _orthogonal_unit(rng, 20, dim, 2), _orthogonal_unit(rng, 20, dim, 2)
    images = np.vstack([np.cos(theta) * dog + np.sin(theta) * u_dog,
                        np.cos(theta) * cat + np.sin(theta) * u_cat])
    texts = np.vstack([np.tile(dog, (20, 1)), np.tile(cat, (20, 1))])
    editor = SchurEditor(texts=texts, ridge=0.0).fit(images)
    edited = editor.set_params(prompts=dog).transform(images[:20])
    np.testing.assert_allclose(edited[:, :2], 0.0, atol=1e-6)  # no dog (nor cat) left
    np.testing.assert_allclose(edited, u_dog, atol=1e-6)  # the rest, unchanged
    # each image losing its own prompt: the same
    np.testing.assert_allclose(editor.set_params(prompts=None).fit_transform(images)[20:], u_cat,
                               atol=1e-6)


def test_zero_shot_moves_away_from_the_removed_class():
    rng = np.random.default_rng(0)
    dim, classes = 24, ["dog", "cat", "bird"]
    weights = np.eye(dim)[:3]
    labels = rng.integers(0, 3, 300)
    content = _unit(rng.standard_normal((300, dim)) * (np.arange(dim) >= 1))  # never dog
    images = _unit(1.2 * weights[labels] + content)
    editor = SchurEditor(texts=weights[labels], ridge=1e-6).fit(images)
    classifier = ZeroShotClassifier(text_weights=weights, classnames=classes).fit()
    dogs = images[labels == 0]
    dog = list(classifier.classes_).index("dog")  # columns follow the sorted classes_
    before = classifier.predict_proba(dogs)[:, dog]
    edited = editor.set_params(prompts=weights[0]).transform(dogs)
    after = classifier.predict_proba(edited)[:, dog]
    assert edited.dtype == np.float32 and edited.shape == dogs.shape
    np.testing.assert_allclose(np.linalg.norm(edited, axis=1), 1.0, atol=1e-6)
    assert (classifier.predict(dogs) == "dog").mean() > 0.9
    assert (after < before).all()
    # what is left is the scene's content, unrelated to the class: dog at chance or below
    assert (classifier.predict(edited) == "dog").mean() < 0.4
    assert after.mean() < 0.4 < 0.9 < before.mean()


def test_gaussian_edit_reuses_the_stored_frequencies():
    images, texts = _pairs()
    editor = SchurEditor(texts=texts, prompts=texts, kernel="gaussian", n_features=64, sigma=0.6,
                         random_state=3)
    editor.fit(images)
    np.testing.assert_array_equal(editor.omega_, draw_frequencies(16, 64, 0.6, random_state=3))
    first = editor.transform(images)
    np.testing.assert_array_equal(first, editor.transform(images))
    expected = _rff(images, editor.omega_) - _rff(texts, editor.omega_) @ editor.gamma_
    np.testing.assert_allclose(first, _unit(expected), atol=1e-6)
    assert first.shape == (48, 64)


def test_editor_follows_scikit_learn_conventions(backbone):
    editor = SchurEditor(backbone, ridge=1e-4, prompts="a photo of a dog")
    assert clone(editor).get_params() == editor.get_params()
    images, texts = _pairs(dim=backbone.embed_dim)
    words = ["a dog", "a cat"] * 24
    encoded = backbone.encode_texts(words)
    editor.set_params(texts=words).fit(images)
    np.testing.assert_allclose(editor.gamma_,
                               SchurEditor(texts=encoded, ridge=1e-4).fit(images).gamma_,
                               atol=1e-10)
    dog = backbone.encode_texts(["a photo of a dog"])
    np.testing.assert_allclose(editor.transform(images),
                               editor.set_params(prompts=dog).transform(images), atol=1e-6)


# ---------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("images, texts, message", [
    (np.ones((5, 4)), np.ones((4, 4)), "image_embeddings has 5 rows but text_embeddings has 4"),
    (np.ones((1, 4)), np.ones((1, 4)), "at least 2 image-prompt pairs, got 1"),
    (np.where(np.eye(4, dtype=bool)[:3], np.nan, 1.0), np.ones((3, 4)),
     r"image_embeddings contains NaN or infinite values \(row 0\)"),
    (np.ones((3, 4)), np.ones((3, 5)), "text_embeddings has dimension 5, but 4 was expected"),
    (np.ones(4), np.ones(4), r"image_embeddings must be a 2-D \(n, D\) array"),
    (np.vstack([np.ones((2, 4)), np.zeros((1, 4))]), np.ones((3, 4)), "row 2 is all zeros"),
])
def test_bad_inputs_name_the_input(images, texts, message):
    with pytest.raises(InputError, match=message):
        sce_score(images, texts, kernel="cosine")
    with pytest.raises(InputError, match=message):
        SchurEditor(texts=texts).fit(images)


def test_bad_options_and_transform_inputs():
    images, texts = _pairs()
    with pytest.raises(InputError, match="kernel must be one of cosine, gaussian"):
        sce_score(images, texts, kernel="linear")
    with pytest.raises(InputError, match="n_features must be an even number"):
        sce_score(images, texts, n_features=101)
    with pytest.raises(InputError, match="order must be a number >= 0"):
        sce_score(images, texts, kernel="cosine", order=-1)
    editor = SchurEditor(texts=texts).fit(images)
    with pytest.raises(InputError, match="image_embeddings has dimension 8, but 16"):
        editor.set_params(prompts=texts[0]).transform(images[:, :8])
    with pytest.raises(InputError, match="prompts has 3 rows for 48 images"):
        editor.set_params(prompts=texts[:3]).transform(images)
    with pytest.raises(InputError, match="prompts are strings but SchurEditor has no backbone"):
        editor.set_params(prompts="a dog").transform(images)
    with pytest.raises(InputError, match="needs the prompts to remove"):
        editor.set_params(prompts=None).transform(images)


# ---------------------------------------------------------------------- command line


@pytest.fixture
def generated(tmp_path, make_image):
    """18 generated images, 3 prompts, and the CSV that maps each image to its prompt."""
    folder = tmp_path / "generated"
    prompts = ["a dog on grass", "a cat on a sofa", "a bird in a tree"]
    rows = [(make_image(folder / f"img{i:02d}.png", seed=i).name, prompts[i % 3])
            for i in range(18)]
    table = tmp_path / "prompts.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "prompt"), *[(f"generated/{name}", p)
                                                            for name, p in rows]])
    return folder, table


def test_cli_sce_prints_the_score_and_draws_the_spectrum(generated, tiny_config, backbone,
                                                         tmp_path, capsys):
    folder, table = generated
    plot = tmp_path / "spectrum.png"
    model = ["--model", tiny_config, "--pretrained", "none", "--no-progress"]
    assert main(["sce", str(folder), "--prompts", str(table), "--plot", str(plot),
                 "--features", "200", "--sigma", "0.3", *model]) == 0
    out = capsys.readouterr().out
    images = backbone.encode_images(sorted(folder.iterdir()))
    texts = backbone.encode_texts(["a dog on grass", "a cat on a sofa", "a bird in a tree"] * 6)
    expected = sce_score(images, texts, n_features=200, sigma=0.3)
    assert out.startswith(f"SCE: {expected.score:.4f}  text-explained: {expected.text_score:.4f}")
    assert "18 images, 3 distinct prompts" in out
    with Image.open(plot) as png:
        assert png.format == "PNG" and png.size == (720, 440)
        colours = {c for _, c in png.convert("RGB").getcolors(1 << 20)}
    assert {(200, 60, 40), (40, 90, 200)} <= colours  # both spectra drawn


def test_cli_edit_writes_embed_format(generated, tiny_config, tmp_path, capsys):
    folder, table = generated
    model = ["--model", tiny_config, "--pretrained", "none", "--no-progress"]
    assert main(["embed", str(folder), "--out", str(tmp_path / "in.npz"), *model]) == 0
    assert main(["edit", str(folder), "--prompts", str(table), "--remove", "a dog on grass",
                 "--out", str(tmp_path / "a.npz"), *model]) == 0
    assert main(["edit", "--embeddings", str(tmp_path / "in.npz"), "--prompts", str(table),
                 "--remove", "a dog on grass", "--out", str(tmp_path / "b.npz"), *model]) == 0
    with np.load(tmp_path / "in.npz") as raw, np.load(tmp_path / "a.npz") as a, \
            np.load(tmp_path / "b.npz") as b:
        assert set(a.files) == set(raw.files)
        assert a["embeddings"].dtype == np.float32 and a["embeddings"].shape == (18, 32)
        np.testing.assert_allclose(np.linalg.norm(a["embeddings"], axis=1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(a["paths"], raw["paths"])
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-6)
        assert not np.allclose(a["embeddings"], raw["embeddings"], atol=1e-3)
    capsys.readouterr()
    (table.parent / "short.csv").write_text("path,prompt\ngenerated/img00.png,a dog\n")
    assert main(["sce", str(folder), "--prompts", str(table.parent / "short.csv"), *model]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"zeroshot-plus: error: 17 image(s) have no prompt in --prompts "
                     f"'{table.parent / 'short.csv'}', e.g. '{folder / 'img01.png'}'.")


@pytest.mark.parametrize("params, message", [
    ({"kernel": "gaussian", "n_features": 20, "sigma": np.inf}, "sigma must be a positive finite number, got inf"),
    ({"kernel": "gaussian", "n_features": 20, "sigma": "wide"}, "sigma must be a positive finite number, got 'wide'"),
    ({"ridge": np.inf}, "ridge must be a finite number >= 0, got inf"),
    ({"ridge": "small"}, "ridge must be a finite number >= 0, got 'small'"),
])
def test_editor_numbers_are_range_checked_in_one_sentence(params, message):
    images, texts = _pairs()
    with pytest.raises(InputError, match=f"^{re.escape(message)}.$"):
        SchurEditor(texts=texts, **params).fit(images)
