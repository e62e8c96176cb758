"""Sphinx configuration of ppvae's documentation site: ``make docs`` builds it into ``site/``.

The guide's pages are the README's sections (``readme_pages.py``), the notebooks are executed
in their smoke mode (``notebooks.py``), and the API reference is generated from the docstrings
(autodoc + numpydoc). ``make docs`` builds with ``-W -n``: a warning, a broken cross-reference
or a public name without a docstring fails the build.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import readme_pages  # noqa: E402

import notebooks  # noqa: E402
import ppvae  # noqa: E402

GENERATED = HERE / "_generated"
GUIDE = readme_pages.write(GENERATED / "guide")
(GENERATED / "guide" / "index.md").write_text(
    "# Guide\n\n```{toctree}\n:maxdepth: 2\n\n" + "\n".join(GUIDE) + "\n```\n"
)
NOTEBOOKS = notebooks.build(GENERATED / "notebooks")

project = "ppvae"
author = "the ppvae authors"
copyright = "the ppvae authors"
release = version = ppvae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_nb",
]
exclude_patterns = ["_build", "screenshots", "**.ipynb_checkpoints", "README.md"]
root_doc = "index"

# the API reference: one page per module, each object at its home (ppvae.infer.fitting.fit),
# and the top-level page with the names of ``ppvae.__all__`` (ppvae.fit)
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# GL08: "The object does not have a docstring", a warning, so an error under -W
numpydoc_validation_checks = {"GL08"}
numpydoc_validation_exclude = {r"\.__\w+__$", r"\.forward$", r"\.model$", r"\.guide$"}

# a cross-reference to a ppvae name that does not exist fails; other libraries' names are
# written out as text (no network for their inventories)
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|numpy|np|pandas|pd|matplotlib|plt|sklearn|argparse|tqdm)(\..*)?"),
    (r"py:.*", r"(collections|typing|pathlib|os|io|json|enum|dataclasses|contextlib)(\..*)?"),
    (r"py:.*", r"(abc|types|concurrent|threading|logging|warnings|datetime|csv)(\..*)?"),
    (r"py:.*", r"(Tensor|Path|Callable|Iterator|Iterable|Sequence|Mapping|Any|Self|Module)"),
    (r"py:.*", r"(int|float|str|bool|None|dict|list|tuple|object|type|bytes|Exception)"),
    (r"py:.*", r"(optional|default|callable|array-like|array_like|file-like|iterable)"),
    (r"py:.*", r"(nn|dist|Distribution|Generator|NamedTuple|TextIO|Literal)(\..*)?"),
]

# notebooks: executed by notebooks.py (smoke mode), never here
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

# MathJax from the site itself (the django-static-mathjax wheel ships it), not a CDN
_MATHJAX = importlib.util.find_spec("mathjax")
html_static_path = []
if _MATHJAX is not None and _MATHJAX.submodule_search_locations:
    _es5 = Path(list(_MATHJAX.submodule_search_locations)[0]) / "static" / "mathjax" / "es5"
    if (_es5 / "tex-mml-chtml.js").exists():
        _static = GENERATED / "static"
        _target = _static / "mathjax"
        if not (_target / "tex-mml-chtml.js").exists():
            import shutil

            shutil.copytree(_es5, _target, ignore=shutil.ignore_patterns("sre", "*-full*"))
        html_static_path = [str(_static)]
        mathjax_path = "mathjax/tex-mml-chtml.js"

html_theme = "furo"
html_title = f"ppvae {release}"
html_show_sourcelink = False

# the command line is documented by the guide's "Command line" page
NOT_IN_API = {"ppvae.cli", "ppvae.__main__"}


def _submodules(package: str) -> list[str]:
    """The submodules of ``package`` found on disk (``[]`` for a module)."""
    import pkgutil

    module = importlib.import_module(package)
    if not hasattr(module, "__path__"):
        return []
    names = [f"{package}.{info.name}" for info in pkgutil.iter_modules(module.__path__)]
    return [name for name in names if name not in NOT_IN_API]


def _api_page(name: str) -> str:
    """One module's page: the objects that live there (for ``ppvae`` itself, a page per name
    of ``__all__``), then its submodules. A package's function named like one of its
    submodules (``ppvae.guides.amortized``) is left to the registry that lists it."""
    title = name.replace("_", r"\_")
    lines = [title, "=" * len(title), "", f".. automodule:: {name}"]
    children = _submodules(name)
    if name == "ppvae":
        lines += ["   :no-members:", "", ".. rubric:: Names", "", ".. toctree::"]
        lines += ["   :maxdepth: 1", ""] + [f"   ppvae.{member}" for member in ppvae.__all__]
    else:
        lines.append("   :ignore-module-all:")
    clashes = [c.rsplit(".", 1)[1] for c in children]
    if clashes and name != "ppvae":
        lines.append(f"   :exclude-members: {', '.join(clashes)}")
    if children:
        lines += ["", ".. rubric:: Modules", "", ".. toctree::", "   :maxdepth: 1", ""]
        lines += [f"   {child}" for child in children]
    return "\n".join(lines) + "\n"


def _name_page(member: str) -> str:
    """The page of one top-level name (``ppvae.fit``), documented as it is imported."""
    obj = getattr(ppvae, member)
    if isinstance(obj, type):
        kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
    else:
        kind = "autofunction"
    title = f"ppvae.{member}".replace("_", r"\_")
    return f"{title}\n{'=' * len(title)}\n\n.. {kind}:: ppvae.{member}\n"


def _write(path: Path, page: str) -> None:
    """Write ``page`` unless ``path`` holds it already (Sphinx then keeps its cached page)."""
    if not path.exists() or path.read_text() != page:
        path.write_text(page)


def _write_api(out: Path, roots: tuple[str, ...]) -> None:
    """A page per module under ``roots``, into ``out`` (``_generated/api``)."""
    out.mkdir(parents=True, exist_ok=True)
    todo = list(roots)
    while todo:
        name = todo.pop()
        _write(out / f"{name}.rst", _api_page(name))
        todo += _submodules(name)
    for member in ppvae.__all__:
        _write(out / f"ppvae.{member}.rst", _name_page(member))


_write_api(GENERATED / "api", ("ppvae", "ppvae.models", "ppvae.guides"))
nitpick_ignore_regex += [(r"py:.*", r".*\._\w+"), (r"py:.*", r"ppvae\.config\.C|string")]

_MISSING = object()


def _lookup(dotted: str):
    """The object at ``dotted`` (``ppvae.data.load_dataset``), imported, or ``_MISSING``."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part, _MISSING)
            if obj is _MISSING:
                return _MISSING
        return obj
    return _MISSING


def _resolve_alias(app, env, node, contnode):
    """A reference to a name re-exported elsewhere (``ppvae.data.load_dataset``, or
    ``mppca_em`` imported into the module that mentions it) goes to the page where the object
    is documented; a name that is not a Python object stays broken and fails the build."""
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    target, module, cls = node["reftarget"], node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module:
        candidates += [f"{module}.{cls}.{target}"] if cls else []
        candidates += [f"{module}.{target}"]
    for candidate in candidates:
        obj = _lookup(candidate)
        if obj is _MISSING:
            continue
        last = candidate.rsplit(".", 1)[-1]
        for name in domain.objects:
            if name.rsplit(".", 1)[-1] == last and name != candidate and _lookup(name) is obj:
                return domain.resolve_xref(
                    env, node["refdoc"], app.builder, "obj", name, node, contnode
                )
    # a short name (``mppca_em``) of one documented object (of the role's kind), maybe shown
    # under two names (ppvae.fit, ppvae.infer.fitting.fit): its home is the one linked
    kinds = domain.objtypes_for_role(node["reftype"]) or []
    short = "." + target.lstrip("~.")
    same = [
        name
        for name, entry in domain.objects.items()
        if name.endswith(short) and (not kinds or entry.objtype in kinds)
    ]
    if same and len({id(_lookup(name)) for name in same}) == 1:
        home = max(same, key=len)
        return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", home, node, contnode)
    return None


def _skip_foreign(app, what, name, obj, skip, options):
    """Methods that a base class from another library generates (matplotlib's ``set``) are
    that library's to document."""
    module = getattr(obj, "__module__", None) or ""
    if what == "class" and callable(obj) and module and not module.startswith("ppvae"):
        return True
    return None


def setup(app):
    app.connect("missing-reference", _resolve_alias)
    app.connect("autodoc-skip-member", _skip_foreign)
