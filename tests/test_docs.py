"""The documents under docs/ cannot drift from the code.

Convention (docs/derivation.md explains it to readers):

* ``File: <path>`` or ``File: <path> (<Qualified.name>)`` on its own line, directly followed by a
  fenced code block: every line of the block must occur in that file -- inside that function or
  class when one is named -- consecutively and in order, after normalising whitespace (strip,
  collapse runs of spaces). Blank lines are ignored; a line ``...`` marks lines left out.
* ``Run:`` on its own line before a fenced ``python`` block: the blocks of one document so marked
  are executed in order in one namespace (worked examples must run).
"""
import ast
import re
from pathlib import Path

import pytest

from manualbp.verify import RULES
from manualbp.verify.compare import load_framework

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
FILE_LINE = re.compile(r"^File:\s+(?P<path>\S+)(?:\s+\((?P<name>[\w.]+)\))?\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")


class DocError(AssertionError):
    """A document does not follow the convention, or an excerpt is not in the code."""


def normalise(line):
    return " ".join(line.split())


def blocks(text, marker):
    """``[(line number, marker match, code lines)]`` of the fenced blocks right after a marker
    line (``"File"`` or ``"Run"``)."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if marker == "File":
            match = FILE_LINE.match(stripped)
        else:
            match = re.match(r"^Run:\s*$", stripped)
        if not match:
            continue
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1].strip()):
            raise DocError(f"line {i + 1}: '{stripped}' must be directly followed by a ``` code block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise DocError(f"line {i + 2}: code block is never closed")
        found.append((i + 1, match, lines[i + 2:end]))
    return found


def source_segment(path, qualname):
    """The source lines of ``path``, or of the function / class ``qualname`` in it."""
    file = ROOT / path
    if not file.is_file():
        raise DocError(f"{path} does not exist")
    text = file.read_text()
    if qualname is None:
        return text.splitlines()
    nodes = ast.parse(text).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            raise DocError(f"{path} has no {qualname}")
        nodes = node.body
    return text.splitlines()[node.lineno - 1:node.end_lineno]


def find_excerpt(excerpt, source):
    """Raise :class:`DocError` unless the chunks of ``excerpt`` (split at ``...``) occur in
    ``source`` as consecutive non-blank lines, each chunk after the previous one."""
    code = [normalise(line) for line in source if line.strip()]
    chunks, chunk = [], []
    for line in excerpt:
        if line.strip() == "...":
            chunks.append(chunk)
            chunk = []
        elif line.strip():
            chunk.append(normalise(line))
    chunks.append(chunk)
    start = 0
    for chunk in filter(None, chunks):
        at = next((i for i in range(start, len(code) - len(chunk) + 1) if code[i:i + len(chunk)] == chunk), None)
        if at is None:
            raise DocError("not found in order:\n    " + "\n    ".join(chunk))
        start = at + len(chunk)


def check_document(text):
    """Check every ``File:`` excerpt of a document; returns how many there were."""
    excerpts = blocks(text, "File")
    for line, match, code in excerpts:
        where = match["path"] + (f" ({match['name']})" if match["name"] else "")
        try:
            find_excerpt(code, source_segment(match["path"], match["name"]))
        except DocError as err:
            raise DocError(f"line {line}: excerpt from {where}: {err}") from None
    return len(excerpts)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_excerpts_occur_in_the_named_code(doc):
    check_document(doc.read_text())


def test_derivation_covers_the_paper_and_ties_all_code_to_files():
    text = (ROOT / "docs" / "derivation.md").read_text()
    assert check_document(text) >= 25
    for heading in ("Eq. (1)", "Eq. (2)", "Theorem 1, Eq. (3)", "Theorem 2", "Eq. (7)"):
        assert re.search(rf"^## \d+\. {re.escape(heading)}", text, re.M), heading
    fences = [i for i, line in enumerate(text.splitlines()) if line.strip() == "```python"]
    assert len(fences) == len(blocks(text, "File")), "every python block names its source file"


def test_worked_examples_run(torch):
    """The ``Run:`` blocks (the worked example of docs/architecture.md uses PyTorch)."""
    runnable = {doc.name: blocks(doc.read_text(), "Run") for doc in DOCS}
    assert runnable.get("architecture.md"), "docs/architecture.md has a runnable worked example"
    load_framework("torch")                                 # its rules are in RULES from here on
    saved = {framework: dict(rules) for framework, rules in RULES.items()}
    try:
        for name, found in runnable.items():
            namespace = {}
            for line, _, code in found:
                exec(compile("\n".join(code), f"docs/{name}, block at line {line}", "exec"), namespace)
    finally:
        for framework, rules in RULES.items():              # drop rules the examples registered
            for added in set(rules) - set(saved[framework]):
                del rules[added]


# --- the checker itself ---------------------------------------------------------------------
def test_checker_accepts_a_true_excerpt_with_elision():
    doc = ("File: manualbp/ops/noise.py (noise_backward)\n```python\n"
           "d_sigma = d_mu = None\nif   need[1] is not None:\n...\n"
           "d_mu = delta.sum(axis=0)\n```\n")
    assert check_document(doc) == 1


@pytest.mark.parametrize("doc, message", [
    ("File: manualbp/ops/noise.py\n```python\nsigma = sigma * 2    # made up\n```\n", "not found"),
    ("File: manualbp/ops/noise.py (noise_forward)\n```python\nd_mu = delta.sum(axis=0)\n```\n",
     "not found"),                                            # true line, wrong function
    ("File: manualbp/ops/noise.py\n```python\nd_mu = delta.sum(axis=0)\n...\ndef noise_forward(xp, v, sigma, mu, "
     "eps, abs_sigma=False, released=False):\n```\n", "not found in order"),
    ("File: manualbp/layers/noise.py (GaussianNoise.nothing)\n```python\nreturn delta\n```\n", "has no"),
    ("File: manualbp/no_such_file.py\n```python\nx = 1\n```\n", "does not exist"),
    ("File: manualbp/ops/noise.py\n\n```python\nd_mu = delta.sum(axis=0)\n```\n", "directly followed"),
])
def test_checker_rejects_made_up_excerpts(doc, message):
    with pytest.raises(DocError, match=message):
        check_document(doc)


def test_readme_library_at_a_glance_runs_as_written():
    """The README's first code example runs in a fresh namespace, as a reader would paste it."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Library at a glance", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["grad_x"].shape == (32, 784)
    assert namespace["model"].named_gradients()["fc1.noise.sigma"].shape == (100,)
