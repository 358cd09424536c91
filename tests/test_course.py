"""The course: every exercise passes with its solution and names each deliberate mistake in
words; a stub is a "todo", not an error; every chapter executes with NumPy alone (PyTorch and JAX
unimportable), is committed without outputs, renders to its committed ``.md``, and ends with its
exercises. ``nbclient``, ``nbformat`` and ``ipykernel`` are optional; without them the execution
tests are skipped, or fail under ``MANUALBP_STRICT=1``."""
import importlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from manualbp.course import EXERCISES, check, render, solutions

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"
CHAPTERS = ["01_neuron_and_mlp", "02_convolution", "03_batch_norm", "04_graphs", "05_theorem_2", "06_attacks"]
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([A-Za-z_][A-Za-z_0-9]*)["']""")


def _require(name):
    """Import and return module ``name``; skip when it is missing, fail under MANUALBP_STRICT=1."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        if os.environ.get("MANUALBP_STRICT", "").strip() == "1":
            pytest.fail(f"MANUALBP_STRICT=1 but {name} cannot be imported ({err}); "
                        "install it with pip install nbclient nbformat ipykernel", pytrace=False)
        pytest.skip(f"{name} not installed")


def one_line(capsys):
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n"), f"check printed {out!r}, not one line"
    return out.rstrip("\n")


# --- the exercises -------------------------------------------------------------------------------

def test_every_exercise_has_a_solution_and_a_chapter():
    assert len(EXERCISES) == 8
    for name, ex in EXERCISES.items():
        assert ex.name == name and ex.signature.startswith(name + "(") and ex.task
        assert 1 <= ex.chapter <= len(CHAPTERS)
        assert callable(getattr(solutions, name))


@pytest.mark.parametrize("name", list(EXERCISES))
def test_solution_passes(name, capsys):
    assert check(name, getattr(solutions, name)) is True
    line = one_line(capsys)
    gradient = EXERCISES[name].finite_differences is not None
    assert line.startswith(f"pass: {name} agrees with the engine" + (" and finite differences" if gradient else ""))
    assert re.search(r"\(max rel err \d\.\de[+-]\d\d\)$", line)


def in_place_sigma_update(sigma, grad, m, v, t, lr, beta1, beta2, adam_eps):
    """Eq. (7) written into the given arrays: the checker hands over copies."""
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad ** 2
    sigma -= lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + adam_eps)
    np.abs(sigma, out=sigma)
    return sigma, m, v


def test_a_solution_that_writes_in_place_passes(capsys):
    assert check("sigma_update", in_place_sigma_update)
    assert check("sigma_update", in_place_sigma_update)          # the inputs were not changed
    assert capsys.readouterr().out.count("pass: ") == 2


S = solutions
WRONG = {
    "linear_backward": [
        (lambda x, w, d: (d @ w, d.T @ x, d), "db is not summed over the batch: expected shape (4,), got (5, 4)"),
        (lambda x, w, d: (d @ w, x.T @ d, d.sum(0)), "dw is transposed"),
        (lambda x, w, d: (-(d @ w), d.T @ x, d.sum(0)), "dx has the wrong sign"),
        (lambda x, w, d: (d @ w, d.T @ x / len(x), d.sum(0)), "dw is N = 5 times too small"),
        (lambda x, w, d: ((d @ w)[:4], d.T @ x, d.sum(0)), "returns dx of shape (4, 3); expected (5, 3), the shape of x"),
        (lambda x, w, d: (d @ w, d.T @ x), "returns 2 values; expected 3: (dx, dw, db)"),
        (lambda x, w, d: None, "returns None"),
        (lambda x, w, d: (d @ w.T, d.T @ x, d.sum(0)), "raised ValueError"),
    ],
    "noise_backward": [
        (lambda delta, eps: delta * eps, "dsigma is not summed over the batch: expected shape (3,), got (5, 3)"),
        (lambda delta, eps: (delta * eps).mean(0), "dsigma is N = 5 times too small"),
        (lambda delta, eps: delta.sum(0), "the factor eps of Eq. (3) is missing"),
        (lambda delta, eps: -(delta * eps).sum(0), "dsigma has the wrong sign"),
    ],
    "sigma_update": [
        (lambda sigma, grad, m, v, t, lr, b1, b2, e: (
            sigma - lr * ((b1 * m + (1 - b1) * grad) / (1 - b1 ** t))
            / (np.sqrt((b2 * v + (1 - b2) * grad ** 2) / (1 - b2 ** t)) + e),
            b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad ** 2),
         "the absolute value of Eq. (7) is missing"),
        (lambda sigma, grad, m, v, t, lr, b1, b2, e: (
            np.abs(sigma - lr * (b1 * m + (1 - b1) * grad) / (np.sqrt(b2 * v + (1 - b2) * grad ** 2) + e)),
            b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad ** 2),
         "bias correction"),
        (lambda sigma, grad, m, v, t, lr, b1, b2, e: S.sigma_update(sigma, grad, m, v, t + 1, lr, b1, b2, e),
         "step t + 1"),
        (lambda sigma, grad, m, v, t, lr, b1, b2, e: (S.sigma_update(sigma, grad, m, v, t, lr, b1, b2, e)[0], m, v),
         "wrong: sigma_update: m differs from the engine by max rel err"),
    ],
    "col2im": [
        (lambda cols, shape, k, s, p: overwriting_col2im(cols, shape, k, s, p),
         "x overwrites where patches overlap: col2im must add them"),
        (lambda cols, shape, k, s, p: np.pad(S.col2im(cols, shape, k, s, p), ((0, 0), (0, 0), (p, p), (p, p))),
         "returns x of shape (2, 2, 7, 7); expected (2, 2, 5, 5), x_shape"),
        (lambda cols, shape, k, s, p: S.col2im(cols, shape, k, s, p) * 2, "x is 2 times the engine's"),
    ],
    "batchnorm_backward": [
        (lambda delta, xhat, inv_std, w: (w * inv_std * delta, (delta * xhat).sum(0), delta.sum(0)),
         "dx treats the batch mean and variance as constants"),
        (lambda delta, xhat, inv_std, w: (
            w * inv_std * (delta - delta.sum(0) - xhat * (delta * xhat).sum(0)), (delta * xhat).sum(0), delta.sum(0)),
         "the 1/N of the mean is missing"),
        (lambda delta, xhat, inv_std, w: (S.batchnorm_backward(delta, xhat, inv_std, w)[0], (delta * xhat).sum(0), delta),
         "dbias is not summed over the batch: expected shape (3,), got (5, 3)"),
        (lambda delta, xhat, inv_std, w: (S.batchnorm_backward(delta, xhat, inv_std, w)[0], -(delta * xhat).sum(0),
                                          delta.sum(0)),
         "dweight has the wrong sign"),
    ],
    "concat_backward": [
        (lambda delta, sizes, axis: np.array_split(delta, len(sizes), axis=axis), "the pieces are of equal size"),
        (lambda delta, sizes, axis: np.split(delta, np.cumsum(sizes)[:-1], axis=0), "cut along axis 0"),
        (lambda delta, sizes, axis: np.split(delta, np.cumsum(sizes)[:-2], axis=axis), "returns 2 values; expected 3"),
        (lambda delta, sizes, axis: np.split(delta, np.cumsum(sizes)[:-1] + 1, axis=axis),
         "returns dx1 of shape (3, 3, 2); expected (3, 2, 2), the shape of input 1"),
    ],
    "pathwise_sigma_grad": [
        (lambda a, sigma, eps: eps, "the ReLU's derivative 1[a + sigma eps > 0] is missing"),
        (lambda a, sigma, eps: (a > 0) * eps, "taken at a: take it at a + sigma eps"),
        (lambda a, sigma, eps: ((a + sigma * eps > 0) * eps).sum(0),
         "returns grad of shape (4,); expected (8, 4), the shape of a (one estimate per sample)"),
        (lambda a, sigma, eps: (a + sigma * eps > 0) * eps * sigma, "grad differs from the engine by max rel err"),
    ],
    "fgsm": [
        (lambda x, grad, epsilon: x + epsilon * np.sign(grad), "x_adv leaves [0, 1]: clip it"),
        (lambda x, grad, epsilon: np.clip(x + epsilon * grad, 0, 1), "moves by epsilon * grad"),
        (lambda x, grad, epsilon: np.clip(x - epsilon * np.sign(grad), 0, 1), "steps down the gradient"),
        (lambda x, grad, epsilon: np.clip(x + epsilon * np.sign(grad), "0", 1), "wrong: fgsm raised"),
    ],
}


def overwriting_col2im(cols, x_shape, kernel_size, stride, padding):
    """col2im that sets, not adds, where patches overlap."""
    n, c, h, w = x_shape
    k, s, p = kernel_size, stride, padding
    oh, ow = cols.shape[4:]
    x_pad = np.zeros((n, c, h + 2 * p, w + 2 * p))
    for i in range(k):
        for j in range(k):
            x_pad[:, :, i:i + s * oh:s, j:j + s * ow:s] = cols[:, :, i, j]
    return x_pad[:, :, p:p + h, p:p + w]


def test_every_exercise_has_deliberate_mistakes():
    assert set(WRONG) == set(EXERCISES)
    assert all(len(cases) >= 2 for cases in WRONG.values())


@pytest.mark.parametrize("name, wrong, words",
                         [(n, f, w) for n, cases in WRONG.items() for f, w in cases],
                         ids=[f"{n}-{i}" for n, cases in WRONG.items() for i in range(len(cases))])
def test_a_mistake_is_named(name, wrong, words, capsys):
    assert check(name, wrong) is False
    line = one_line(capsys)
    assert line.startswith(f"wrong: {name}"), line
    assert words in line, f"expected {words!r} in {line!r}"


@pytest.mark.parametrize("name", list(EXERCISES))
def test_a_stub_is_todo_and_does_not_raise(name, capsys):
    def stub(*args):
        # your code
        raise NotImplementedError
    assert check(name, stub) is False
    assert one_line(capsys) == f"todo: {name} is not written yet"


def test_an_error_is_one_line_naming_it(capsys):
    assert check("linear_backward", lambda x, weight: None) is False
    line = one_line(capsys)
    assert line.startswith("wrong: linear_backward raised TypeError: ")


def test_an_unknown_exercise_is_an_error():
    with pytest.raises(KeyError, match="linear_backward"):
        check("linear_backwards", solutions.linear_backward)


def test_the_fgsm_exercise_is_the_engines_attack():
    """The exercise's answer is :func:`manualbp.attacks.fgsm`'s step, given its gradient."""
    from manualbp import get_backend
    from manualbp.attacks import fgsm, input_gradient
    from manualbp.zoo import mlp
    bk = get_backend("numpy", "float64", 0, "reference")
    model = mlp(bk, "mlp", sizes=(6, 5, 4, 3))
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 6)), rng.integers(0, 3, 4)
    x[0, :2] = 0.0
    model.eval()
    _, grad = input_gradient(model, x, y)
    expected, = EXERCISES["fgsm"].engine(x=x, grad=grad, epsilon=0.1)
    np.testing.assert_array_equal(fgsm(model, x, y, 0.1), expected)


# --- the renderer --------------------------------------------------------------------------------

def test_rendering_runs_on_numpy_alone(tmp_path):
    nbformat = _require("nbformat")
    _require("nbclient")
    _require("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A chapter\n\n$v = \\theta x + b + z$"),
        nbformat.v4.new_code_cell("import os\nprint(os.path.basename(os.getcwd()))"),
        nbformat.v4.new_code_cell("for name in ('torch', 'jax'):\n    try:\n        __import__(name)\n"
                                  "        print(name, 'imported')\n    except ImportError:\n"
                                  "        print(name, 'blocked')"),
        nbformat.v4.new_code_cell("from manualbp.course import check\n\n"
                                  "def noise_backward(delta, eps):\n    raise NotImplementedError\n"
                                  "check('noise_backward', noise_backward);"),
    ]
    chapter = tmp_path / "chapter" / "01_test.ipynb"
    chapter.parent.mkdir()
    nbformat.write(nb, str(chapter))
    assert render.main([str(chapter)]) == 0
    assert render.rendering_path(chapter).read_text(encoding="utf-8") == (
        "<!-- generated from 01_test.ipynb by python -m manualbp.course.render: edit the notebook -->\n\n"
        "# A chapter\n\n$v = \\theta x + b + z$\n\n"
        "```python\nimport os\nprint(os.path.basename(os.getcwd()))\n```\n\n```text\nchapter\n```\n\n"
        f"```python\n{nb.cells[2].source}\n```\n\n```text\ntorch blocked\njax blocked\n```\n\n"
        f"```python\n{nb.cells[3].source}\n```\n\n```text\ntodo: noise_backward is not written yet\n```\n")
    assert json.loads(chapter.read_text())["cells"][1]["outputs"] == []     # the notebook is left as it was
    assert sorted(p.name for p in chapter.parent.iterdir()) == ["01_test.ipynb", "01_test.md"]


def test_check_mode_names_the_first_stale_chapter(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "01_a.ipynb", tmp_path / "02_b.ipynb"
    monkeypatch.setattr(render, "render", lambda notebook, env=None: f"rendering of {Path(notebook).name}\n")
    assert render.main([str(first), str(second)]) == 0
    assert render.main(["--check", str(first), str(second)]) == 0
    (tmp_path / "02_b.md").write_text("edited by hand\n")
    capsys.readouterr()
    assert render.main(["--check", str(first), str(second)]) == 1
    assert "02_b.md differs" in capsys.readouterr().err
    assert (tmp_path / "02_b.md").read_text() == "edited by hand\n"        # --check writes nothing
    (tmp_path / "01_a.md").unlink()
    assert render.main(["--check", str(first), str(second)]) == 1
    assert "01_a.md is missing" in capsys.readouterr().err


def test_an_image_output_is_refused():
    nbformat = _require("nbformat")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plot()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})]
    nb.cells = [cell]
    with pytest.raises(render.RenderError, match="do not plot"):
        render.to_markdown(nb, "01_test.ipynb")


# --- the chapters --------------------------------------------------------------------------------

def chapter_path(stem):
    path = COURSE / f"{stem}.ipynb"
    if not path.exists():
        pytest.skip(f"course/{stem}.ipynb is not written yet")
    return path


def code_sources(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(c["cell_type"], "".join(c["source"])) for c in cells]


def test_the_chapters_are_the_courses():
    found = sorted(p.stem for p in COURSE.glob("[0-9][0-9]_*.ipynb")) if COURSE.exists() else []
    assert set(found) <= set(CHAPTERS), f"chapters not in the course's list: {set(found) - set(CHAPTERS)}"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_is_committed_without_outputs(stem):
    nb = json.loads(chapter_path(stem).read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            assert "outputs" not in cell, f"cell {i}: a {cell['cell_type']} cell with outputs"
            continue
        assert cell.get("outputs") == [], f"cell {i} has stored outputs; clear them before committing"
        assert cell.get("execution_count") is None, f"cell {i} has an execution count"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_ends_with_its_exercises(stem):
    cells = code_sources(chapter_path(stem))
    headings = [i for i, (kind, text) in enumerate(cells)
                if kind == "markdown" and re.search(r"^#+ .*Exercises", text, re.M)]
    assert headings, f"{stem} has no Exercises section"
    start = headings[-1]
    assert all(kind == "markdown" or not CHECK_CALL.search(text) for kind, text in cells[:start]), \
        f"{stem} calls check() before its Exercises section"
    called = [name for kind, text in cells[start:] if kind == "code" for name in CHECK_CALL.findall(text)]
    assert called, f"the Exercises section of {stem} calls no check()"
    chapter = int(stem[:2])
    for name in called:
        assert name in EXERCISES, f"{stem} checks {name!r}, which is not an exercise"
        assert EXERCISES[name].chapter == chapter, f"{name} belongs to chapter {EXERCISES[name].chapter}"
    for kind, text in cells:
        assert "solutions" not in text or kind == "markdown", f"{stem} imports the solutions"


def test_every_exercise_is_in_its_chapter():
    paths = [COURSE / f"{stem}.ipynb" for stem in CHAPTERS]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"chapters not written yet: {', '.join(missing)}")
    called = {name for p in paths for kind, text in code_sources(p) if kind == "code"
              for name in CHECK_CALL.findall(text)}
    assert set(EXERCISES) <= called, f"exercises no chapter checks: {sorted(set(EXERCISES) - called)}"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_executes_on_numpy_alone_and_matches_its_rendering(stem):
    path = chapter_path(stem)
    _require("nbformat")
    _require("nbclient")
    _require("ipykernel")
    text = render.render(path)                   # executed with torch and jax unimportable
    committed = render.rendering_path(path)
    assert committed.exists(), f"course/{committed.name} is missing: run python -m manualbp.course.render"
    assert committed.read_text(encoding="utf-8") == text, \
        f"course/{committed.name} is out of date: run python -m manualbp.course.render"
