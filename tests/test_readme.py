"""Every ```python and ```bash example of README.md runs as written.

Here the tiny random-weight model of the tests stands in for real weights. Small folders of
real CIFAR-10 photos, and the released prompt files in ../shared/data, stand in for the
placeholder paths. SUBSTITUTIONS lists every change made to the text. The Python blocks run
in order in one namespace, as the README says. A command that cannot run here is listed in
MARKED with its reason and shows as skipped. An example neither run nor marked cannot exist:
each ```python block and each command line of a ```bash block is one test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_DIR, SHARED_DATA, TINY_CONFIG

README = REPO_DIR / "README.md"
TINY = str(TINY_CONFIG)

# What is substituted in the examples' text, and why.
PYTHON_SUBSTITUTIONS = {
    '"ViT-B-32"': repr(TINY),          # the tiny architecture for the real one
    '"ViT-B-16"': repr(TINY),
    '"openai"': '"none"',              # random weights: no download
    "path/to/images": "images",        # CIFAR-10 photos in the working folder
}
BASH_SUBSTITUTIONS = {
    "python3 -m pip install -e . && ": "",  # the checkout is imported, not installed
    "zeroshot-plus ": f"{sys.executable} -m zeroshot_plus.cli ",  # this checkout's command line
    "--model ViT-B-32": f"--model {TINY}",
    "path/to/images": "images",
}
NO_MODEL_GIVEN = f" --model {TINY} --pretrained none"  # appended when a command names no model

# Commands that cannot run here, and why.
MARKED = {
    'python3 -m pip install -c .ci/constraints.txt -e ".[test]" && python3 -m pytest -q':
        "the test suite itself: CI runs it (.ci/run), and test_ci_runs_the_readme_test_command "
        "checks that CI's command is this one",
    "python3 -m pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu":
        "network: PyTorch's index is unreachable here, and it would replace this "
        "environment's torch",
    "python3 -m pip install -e .":
        "installs into the running environment; the tests import the checkout",
    'python3 -m pip install -e ".[openvino]"':
        "installs into the running environment; the test extra already has openvino",
    "export ZEROSHOT_PLUS_LLM_MODEL=gpt-4o-mini OPENAI_API_KEY=...":
        "LLM settings, for the describe command below",
    "zeroshot-plus describe --classes classes.txt --kind descriptors --out descriptors.json":
        "needs an LLM endpoint and an API key (network)",
}

# Command prefixes that cannot run here, and why.
MARKED_PREFIXES = {
    "zeroshot-plus benchmark --root DATA ":
        "reproduces a paper's table: needs the standard data sets under DATA and the published "
        "weights (network); tests/test_benchmark.py checks that each such command parses",
}


def _examples() -> list[tuple[str, int, str]]:
    """(language, line number, text): each Python block, and each bash command line."""
    text = README.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^```(python|bash)\n(.*?)^```", text, re.S | re.M):
        language, body = match.groups()
        line = text.count("\n", 0, match.start(2)) + 1
        if language == "python":
            found.append((language, line, body))
            continue
        for offset, command in enumerate(body.splitlines()):
            if command.strip() and not command.lstrip().startswith("#"):
                found.append((language, line + offset, command.strip()))
    return found


EXAMPLES = _examples()


def _substitute(text: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder holding what the examples name: images/, support/, test/, classes.txt, a
    checkpoint file, and the released Oxford Pets prompt files."""
    cifar = SHARED_DATA / "images" / "cifar10"
    pets_descriptors = SHARED_DATA / "descriptors" / "descriptors_pets.json"
    pets_synonyms = SHARED_DATA / "real" / "oxford_pets" / "metrics-LAION400M.json"
    needed = [cifar / "train", cifar / "test", pets_descriptors, pets_synonyms]
    if not all(path.exists() for path in needed):
        pytest.skip(f"the README examples need CIFAR-10 and the released Pets files in "
                    f"{SHARED_DATA}")
    root = tmp_path_factory.mktemp("readme")
    classes = sorted(p.name for p in (cifar / "test").iterdir())
    for folder, split, first, count in (("support", "train", 0, 16), ("test", "test", 0, 2),
                                        ("images", "test", 2, 2)):
        for name in classes:
            (root / folder / name).mkdir(parents=True)
            for photo in sorted((cifar / split / name).iterdir())[first:first + count]:
                shutil.copy(photo, root / folder / name / photo.name)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    shutil.copy(pets_descriptors, root / "descriptors_pets.json")
    shutil.copy(pets_synonyms, root / "metrics-LAION400M.json")
    from zeroshot_plus import Backbone

    torch.save(Backbone(TINY, "none").model.state_dict(), root / "ViT-B-32-openai.bin")
    return root


@pytest.fixture(scope="module")
def session() -> dict:
    """The one namespace the Python examples share."""
    return {"__name__": "readme"}


def test_every_marked_command_is_in_the_readme():
    commands = {text for language, _, text in EXAMPLES if language == "bash"}
    assert set(MARKED) <= commands, set(MARKED) - commands


def test_ci_runs_the_readme_test_command():
    setup = [text for language, _, text in EXAMPLES if "pytest" in text]
    assert len(setup) == 1
    ci = (REPO_DIR / ".ci" / "run").read_text().splitlines()
    assert setup[0] in ci


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e[0] == "python"],
                         ids=lambda e: f"README.md:{e[1]}")
def test_python_example(example, workdir, session, monkeypatch):
    _, line, code = example
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / ".cache"))  # compiled towers go there
    exec(compile(_substitute(code, PYTHON_SUBSTITUTIONS), f"README.md:{line}", "exec"), session)


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e[0] == "bash"],
                         ids=lambda e: f"README.md:{e[1]}")
def test_bash_example(example, workdir):
    _, line, command = example
    if command in MARKED:
        pytest.skip(f"README.md:{line} not run: {MARKED[command]}")
    for prefix, reason in MARKED_PREFIXES.items():
        if command.startswith(prefix):
            pytest.skip(f"README.md:{line} not run: {reason}")
    if "zeroshot-plus " in command and "--model" not in command:
        command += NO_MODEL_GIVEN
    command = _substitute(command, BASH_SUBSTITUTIONS)
    env = dict(os.environ, PYTHONPATH=str(REPO_DIR), OMP_NUM_THREADS="1",
               XDG_CACHE_HOME=str(workdir / ".cache"))
    result = subprocess.run(command, shell=True, cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"README.md:{line}: {command}\n{result.stderr[-3000:]}"
