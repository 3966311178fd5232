"""Dependencies point down: models <- training <- service. A package imports none above it."""

import subprocess
import sys

import pytest

ABOVE = {"models": ("training", "service"), "training": ("service",)}


@pytest.mark.parametrize("package", ABOVE)
def test_no_module_of_a_package_imports_a_package_above_it(package):
    code = (
        f"import importlib, pkgutil, sys, {package}\n"
        f"for found in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(found.name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ABOVE[package]!r}))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"
