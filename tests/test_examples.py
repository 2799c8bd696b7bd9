"""The library-use docs and examples run: the README / docs/library.md snippet, and each script in
examples/ with tiny settings (random data; one on the real CIFAR-10 npz)."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TINY = ["--clients", "3", "--steps", "3", "--inner-steps", "2", "--batch-size", "8"]
SNIPPET = re.compile(r"<!-- snippet:start -->\s*```python\n(.*?)```\s*<!-- snippet:end -->", re.S)


def snippet() -> tuple[Path, str]:
    """The 'Use as a library' snippet: from README.md when it has the markers, else docs/library.md."""
    for path in (ROOT / "README.md", ROOT / "docs" / "library.md"):
        if path.is_file() and (m := SNIPPET.search(path.read_text())):
            return path, m.group(1)
    raise AssertionError("no <!-- snippet:start --> ```python ... ``` <!-- snippet:end --> block in README.md "
                         "or docs/library.md")


def test_library_snippet_runs_and_learns(capsys):
    path, code = snippet()
    assert len(code.strip().splitlines()) <= 25, f"the snippet in {path.name} must stay within 25 lines"
    ns: dict = {"__name__": "__snippet__"}
    exec(compile(code, str(path), "exec"), ns)
    assert int(ns["state"].step) > 0
    acc = float(re.search(r"'acc': ([0-9.]+)", capsys.readouterr().out).group(1))
    assert acc > 0.5, f"the snippet's pooled test accuracy {acc} is near chance (0.25)"


def test_readme_snippet_is_the_docs_snippet():
    readme, docs = ROOT / "README.md", (ROOT / "docs" / "library.md").read_text()
    if readme.is_file() and (m := SNIPPET.search(readme.read_text())):
        assert m.group(1) == SNIPPET.search(docs).group(1), "README.md and docs/library.md snippets differ"


def run_example(name: str, args: list[str], monkeypatch) -> None:
    """Run examples/<name>.py as `python examples/<name>.py *args`, in this process."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")


@pytest.mark.parametrize("name", ["flax_target", "custom_loop", "generated_weights"])
def test_examples_are_short(name):
    assert len((EXAMPLES / f"{name}.py").read_text().splitlines()) <= 80


def test_flax_target(monkeypatch, capsys):
    run_example("flax_target", TINY, monkeypatch)
    out = capsys.readouterr().out
    assert "generated params per client: 18490" in out and re.search(r"test accuracy [0-9.]+ \(clients: min", out)


def test_custom_loop_round_robin(monkeypatch, capsys):
    run_example("custom_loop", TINY + ["--round-robin", "--eval-every", "2"], monkeypatch)
    out = capsys.readouterr().out
    assert out.count("val mean") == 2 and re.search(r"selected step [23] .* bottom-decile [0-9.]+", out)


def test_generated_weights_export_the_reference_layout(monkeypatch, capsys, tmp_path, small_cifar_dir):
    out_file = tmp_path / "client1.npz"
    run_example("generated_weights", TINY + ["--data-dir", str(small_cifar_dir), "--client", "1", "--pc",
                                             "--export", str(out_file)], monkeypatch)
    out = capsys.readouterr().out
    assert "['conv1']['kernel']" in out and "['fc3']" not in out.split("cosine")[0]  # fc3 private: not generated
    with np.load(out_file) as f:
        shapes = {k: f[k].shape for k in f.files}
    # real 32x32x3 inputs: the reference's CIFAR CNNTarget, state_dict names and (out, in) / OIHW shapes;
    # the private head fc3 is exported too
    assert shapes == {"conv1.weight": (16, 3, 5, 5), "conv1.bias": (16,), "conv2.weight": (32, 16, 5, 5),
                      "conv2.bias": (32,), "fc1.weight": (120, 800), "fc1.bias": (120,), "fc2.weight": (84, 120),
                      "fc2.bias": (84,), "fc3.weight": (10, 84), "fc3.bias": (10,)}
