"""transformers' own common model tests (ModelTesterMixin from the transformers source distribution at the pinned
version), imported from the cache folder .ci/setup.sh extracts them to, never copied into this repository.

The sdist's tests/ holds the common mixins but not tests/generation or tests/exporters, which
test_modeling_common imports; they become empty mixins here (generation is covered by tests/hf/test_optimize.py,
export is not part of ff.optimize's contract). The folder is imported as the package `transformers_tests`
(our own tests are the package `tests`)."""
import importlib.metadata
import importlib.util
import os
import sys
import types

TRANSFORMERS_VERSION = importlib.metadata.version("transformers")  # .ci/setup.sh fetches the pinned one
SOURCE_DIR = os.environ.get("FASTFORMER_TRANSFORMERS_TESTS", os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fastformer",
    f"transformers-{TRANSFORMERS_VERSION}", "tests"))
PACKAGE = "transformers_tests"


def missing_reason() -> str | None:
    """Why the mixins cannot be imported here, or None."""
    if not os.path.isfile(os.path.join(SOURCE_DIR, "test_modeling_common.py")):
        return (f"transformers {TRANSFORMERS_VERSION} source tests not found in {SOURCE_DIR} "
                "(run .ci/setup.sh, or set FASTFORMER_TRANSFORMERS_TESTS)")
    if importlib.util.find_spec("parameterized") is None:
        return "the package parameterized is not installed (run .ci/setup.sh)"
    return None


def _empty_mixin_module(name: str, mixin: str) -> None:
    module = types.ModuleType(f"{PACKAGE}.{name}")
    setattr(module, mixin, type(mixin, (), {}))
    sys.modules[module.__name__] = module


def import_common():
    """The sdist's tests/test_modeling_common module."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_loader(PACKAGE, loader=None, is_package=True)
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [SOURCE_DIR]
        sys.modules[PACKAGE] = package
        for folder in ("exporters", "generation"):
            sys.modules[f"{PACKAGE}.{folder}"] = types.ModuleType(f"{PACKAGE}.{folder}")
        _empty_mixin_module("exporters.test_export", "ExportTesterMixin")
        _empty_mixin_module("generation.test_utils", "GenerationTesterMixin")
    return importlib.import_module(f"{PACKAGE}.test_modeling_common")
