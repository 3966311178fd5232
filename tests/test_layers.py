"""Dependencies point down: models <- training <- service. A package imports none above it,
and the training commands load no more than they need."""

import json
import subprocess
import sys

import pytest

ABOVE = {"models": {"training", "service"}, "training": {"service"}}


def loaded_packages(code: str) -> set[str]:
    """The top-level packages whose modules are loaded once `code` ran in a new interpreter."""
    code += "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(run.stdout))


@pytest.mark.parametrize("package", ABOVE)
def test_no_module_of_a_package_imports_a_package_above_it(package):
    loaded = loaded_packages(
        f"import importlib, pkgutil, {package}\n"
        f"for found in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    importlib.import_module(found.name)"
    )
    assert not loaded & ABOVE[package]


def test_the_training_commands_load_neither_the_service_stack_nor_torch():
    """`--help` and option errors pay for none of the service's packages, nor for torch."""
    heavy = {"celery", "kombu", "redis", "fastapi", "uvicorn", "pydantic_settings", "torch"}
    assert not loaded_packages("import training.cli") & heavy
