"""Every docstring example in ppvae, ppvae.models and ppvae.guides runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

import ppvae
import ppvae.guides
import ppvae.models


def _modules():
    for package in (ppvae, ppvae.models, ppvae.guides):
        prefix = package.__name__ + "."
        for info in pkgutil.walk_packages(package.__path__, prefix):
            yield info.name


@pytest.mark.parametrize("name", sorted(set(_modules())))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_every_public_class_has_an_example():
    """The house style: public classes carry an Examples section that runs (result
    NamedTuples and exceptions are exempt)."""
    missing = []
    for name in sorted(set(_modules())):
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if isinstance(obj, type) and obj.__module__ == name and not attr.startswith("_"):
                exempt = issubclass(obj, Exception | tuple)
                if not exempt and ">>>" not in (obj.__doc__ or ""):
                    missing.append(f"{name}.{attr}")
    assert not missing, f"public classes without a doctest: {missing}"
