"""Every hook is documented and exercised.

For each hookspec in ``zeone.hookspecs``: a docstring a plugin author can work from, a mention in
the plugin author guide (docs/plugins.md), and at least one test under tests/ that uses it.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from zeone import hookspecs

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"
MIN_DOC_LINES = 3


def hookspec_names() -> list[str]:
    return sorted(
        name
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, f"{hookspecs.PROJECT_NAME}_spec")
    )


HOOKS = hookspec_names()


def other_test_sources() -> str:
    this = Path(__file__).resolve()
    return "\n".join(
        path.read_text(encoding="utf-8")
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() != this
    )


def test_there_are_hooks() -> None:
    assert "zeone_plugin_info" in HOOKS
    assert "zeone_services" in HOOKS
    # every zeone_* function in the module is a hookspec: none lacks the marker
    public = [n for n, o in vars(hookspecs).items() if n.startswith("zeone_") and callable(o)]
    assert sorted(public) == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    lines = [line for line in doc.splitlines() if line.strip()]
    assert len(lines) >= MIN_DOC_LINES, f"{hook} needs a docstring a plugin author can work from"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_in_the_plugin_guide(hook: str) -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    assert re.search(rf"\b{hook}\b", guide), f"{hook} is not mentioned in {GUIDE}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook: str) -> None:
    assert re.search(rf"\b{hook}\b", other_test_sources()), f"no test under {TESTS} uses {hook}"
