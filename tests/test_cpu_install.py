"""The CPU-only install (`make setup-cpu`) stays the runtime install with plain onnxruntime."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _requirements(lines: list[str]) -> dict[str, str]:
    """name -> version spec, comments and blanks dropped."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)(.*)", line).groups()
            out[name.lower()] = spec.strip()
    return out


def test_cpu_requirements_are_the_runtime_dependencies_with_plain_onnxruntime() -> None:
    runtime = _requirements(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    cpu = _requirements((REPO / "requirements-cpu.txt").read_text().splitlines())
    assert "onnxruntime-gpu" in runtime and "onnxruntime-gpu" not in cpu
    runtime["onnxruntime"] = runtime.pop("onnxruntime-gpu")
    assert cpu == runtime


def test_setup_cpu_installs_the_list_then_the_project_without_its_dependencies() -> None:
    recipe = (REPO / "Makefile").read_text().split("setup-cpu:", 1)[1].split("\n\n", 1)[0]
    assert "pip install -q -r requirements-cpu.txt" in recipe and "pip install -q --no-deps -e ." in recipe
    assert recipe.index("requirements-cpu.txt") < recipe.index("--no-deps")
