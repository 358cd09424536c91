"""Write ``cupy/api.json``: the names and keyword parameters of the CuPy API that the stand-in
(``tests/standin/cupy``) may offer, read from an installed CuPy (no GPU needed)::

    python tests/standin/refresh_cupy_api.py

Functions and classes keep the parameter names of their signature (``null`` when CuPy gives
none); ufuncs keep ``[nin, nout]``; ``ndarray``, ``random.RandomState`` and ``random.Generator`` methods
keep the parameters of their docstring's first line, where Cython puts the signature. Recorded:
``cupy``, ``cupy.random``, ``cupy.lib.stride_tricks``, those three classes, and the names of
``cupy.cuda`` and ``cupy.cuda.runtime``.
"""
import inspect
import json
import os
import re
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]   # the real CuPy, not the stand-in
import cupy  # noqa: E402


def parameters(obj):
    """The parameter names of ``obj`` (``*`` / ``**`` marked), or ``None`` when unknown."""
    try:
        found = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        first = (getattr(obj, "__doc__", None) or "").split("\n", 1)[0]
        match = re.match(r"[\w.]+\((.*)\)", first)
        if match is None:
            return None
        names = [p.strip().split("=")[0].strip() for p in match.group(1).split(",")]
        return [n for n in names if n and n not in ("self", "/", "*")] or []
    marks = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [marks.get(p.kind, "") + p.name for p in found if p.name != "self"]


def namespace(module):
    """``{"functions": ..., "ufuncs": ..., "classes": ..., "constants": ...}`` of a module."""
    out = {"functions": {}, "ufuncs": {}, "classes": [], "constants": []}
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType):
            continue
        if isinstance(obj, cupy.ufunc):
            out["ufuncs"][name] = [obj.nin, obj.nout]
        elif isinstance(obj, type):
            out["classes"].append(name)
        elif callable(obj):
            out["functions"][name] = parameters(obj)
        else:
            out["constants"].append(name)
    return out


def methods(cls):
    """``{name: parameters}`` of the public methods, and the names of the attributes, of ``cls``."""
    found, attributes = {}, []
    for name in sorted(dir(cls)):
        if name.startswith("_") and name not in ("__array_priority__",):
            continue
        obj = getattr(cls, name)
        if callable(obj):
            found[name] = parameters(obj)
        else:
            attributes.append(name)
    return {"methods": found, "attributes": attributes}


def snapshot():
    """The API record of the installed CuPy."""
    import cupy.lib.stride_tricks
    return {"version": cupy.__version__, "cupy": namespace(cupy), "cupy.random": namespace(cupy.random),
            "cupy.lib.stride_tricks": namespace(cupy.lib.stride_tricks),
            "cupy.ndarray": methods(cupy.ndarray),
            "cupy.random.RandomState": methods(cupy.random.RandomState),
            "cupy.random.Generator": methods(cupy.random.Generator),
            "cupy.cuda": sorted(n for n in dir(cupy.cuda) if not n.startswith("_")),
            "cupy.cuda.runtime": sorted(n for n in dir(cupy.cuda.runtime) if not n.startswith("_"))}


def main():
    api = snapshot()
    path = os.path.join(HERE, "cupy", "api.json")
    with open(path + ".tmp", "w") as f:
        json.dump(api, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path} (CuPy {cupy.__version__})")


if __name__ == "__main__":
    main()
