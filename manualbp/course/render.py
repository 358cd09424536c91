"""Render the course's chapters: ``python -m manualbp.course.render [--check] [CHAPTER ...]``.

Each chapter ``course/NN_name.ipynb`` is executed top to bottom (nbclient, kernel ``python3``,
600 s per cell, working directory ``course/``) with PyTorch and JAX unimportable -- the course
runs on NumPy alone, and its optional PyTorch cells show their skip message -- and written as
``course/NN_name.md`` beside it: markdown cells as they are, code cells in ```python blocks, what
they print in ```text blocks. Chapters print; they do not plot (an image output is refused).

``--check`` writes nothing: it renders every chapter and exits 1 naming the first whose committed
``.md`` differs from its rendering (the test suite does the same).
"""
import argparse
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COURSE = ROOT / "course"
CELL_TIMEOUT = 600
BLOCKED = ("torch", "jax")


class RenderError(RuntimeError):
    """A chapter that cannot be rendered (an image output, an unknown output type)."""


def chapters(course=COURSE):
    """The chapter notebooks ``NN_name.ipynb`` of ``course``, in order."""
    return sorted(Path(course).glob("[0-9][0-9]_*.ipynb"))


def header(notebook):
    return (f"<!-- generated from {Path(notebook).name} by python -m manualbp.course.render: "
            "edit the notebook -->")


@contextmanager
def numpy_only_environment(base=None):
    """An environment for the kernel in which ``import torch`` and ``import jax`` raise
    ImportError (a folder of stand-ins first on ``PYTHONPATH``) and ``manualbp`` is importable
    from this checkout."""
    env = dict(os.environ if base is None else base)
    with tempfile.TemporaryDirectory(prefix="numpy-only-") as blocker:
        for name in BLOCKED:
            Path(blocker, f"{name}.py").write_text(
                f'raise ImportError("{name} is not available: the course runs on NumPy alone")\n')
        paths = [blocker, str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"       # no debugger warning from the kernel
        yield env


def execute(notebook, env=None):
    """The chapter executed in memory (its file is left as it is): an ``nbformat`` notebook."""
    import nbclient
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    workdir = str(Path(notebook).resolve().parent)
    with numpy_only_environment(env) as kernel_env:
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                         resources={"metadata": {"path": workdir}})
        client.execute(cwd=workdir, env=kernel_env)
    return nb


def output_text(output, where):
    """The text an output shows; raises :class:`RenderError` for an image."""
    kind = output["output_type"]
    if kind == "stream":
        return output["text"]
    if kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        images = [m for m in data if m.startswith("image/")]
        if images:
            raise RenderError(f"{where} displays an image ({images[0]}): chapters print, they do not plot")
        if "text/plain" in data:
            return data["text/plain"]
        raise RenderError(f"{where} displays {', '.join(data)} with no text/plain form")
    raise RenderError(f"{where} has an output of type {kind!r}")


def fenced(language, text):
    return f"```{language}\n{text.rstrip()}\n```"


def to_markdown(nb, notebook):
    """The executed notebook as Markdown, under the header line; consecutive outputs of a code
    cell form one ```text block."""
    blocks = [header(notebook)]
    for i, cell in enumerate(nb.cells):
        source = cell.source.rstrip()
        if cell.cell_type == "markdown":
            if source:
                blocks.append(source)
        elif cell.cell_type == "code":
            if source:
                blocks.append(fenced("python", source))
            printed = "".join(output_text(o, f"{Path(notebook).name}, cell {i}") for o in cell.get("outputs", []))
            if printed.strip():
                blocks.append(fenced("text", printed))
    return "\n\n".join(blocks) + "\n"


def render(notebook, env=None):
    """The Markdown rendering of chapter ``notebook`` (executed with PyTorch and JAX blocked)."""
    return to_markdown(execute(notebook, env), notebook)


def rendering_path(notebook):
    return Path(notebook).with_suffix(".md")


def write_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file in its folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m manualbp.course.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare each rendering with the committed .md instead of writing it")
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter notebooks (default: all of course/)")
    args = parser.parse_args(argv)
    notebooks = args.chapters or chapters()
    if not notebooks:
        print(f"no chapters NN_name.ipynb in {COURSE}", file=sys.stderr)
        return 1
    for notebook in notebooks:
        text, target = render(notebook), rendering_path(notebook)
        if args.check:
            committed = target.read_text(encoding="utf-8") if target.exists() else None
            if committed != text:
                state = "is missing" if committed is None else "differs from the notebook's rendering"
                print(f"{target.name} {state}: run python -m manualbp.course.render", file=sys.stderr)
                return 1
            print(f"{target.name} is up to date")
        else:
            write_atomically(target, text)
            print(f"wrote {target.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
