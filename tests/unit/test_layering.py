"""The package's dependency direction (DESIGN.md): top may import bottom, never the reverse.

Walks every module's imports (top-level and function-level) and checks each ``pagellm.X``
import against the layers X may use.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pagellm

BASE = {"config", "errors", "sampling_params", "outputs", "logger", "zmq_context"}
ALLOWED = {
    "config": BASE, "errors": BASE, "sampling_params": BASE, "outputs": BASE, "logger": BASE,
    "zmq_context": BASE,
    "platforms": BASE,
    "ops": BASE | {"platforms"},
    # distributed/parallel_state.py (process groups, collectives) and custom_all_reduce.py
    # (its one-shot all-reduce) sit below layers
    "parallel_state": BASE | {"platforms", "ops"},   # the one-shot all-reduce kernels
    "layers": BASE | {"ops", "platforms", "parallel_state"},
    "models": BASE | {"layers", "ops", "platforms", "parallel_state"},
    # core reads only pagellm.lora.request (torch-free, test_torch_free checks it)
    "core": BASE | {"lora"},
    # multi-LoRA: adapter files, slots on the parallel linear layers, their kernels
    "lora": BASE | {"layers", "ops", "platforms", "parallel_state"},
    # grammar backends and the engine-core manager (structured outputs)
    "structured_output": BASE,
    # reasoning parsers: text in, text out (the chat API's reasoning_content)
    "reasoning": BASE,
    # the runner receives the core's typed step messages (torch-free data)
    "worker": BASE | {"models", "layers", "ops", "platforms", "core", "parallel_state", "lora"},
    "distributed": BASE | {"worker", "core", "platforms", "parallel_state", "models"},
    # engine reaches the worker only through the executor; it reads model metadata
    "engine": BASE | {"core", "distributed", "platforms", "models", "structured_output", "lora"},
    "metrics": BASE | {"engine", "core"},
    "bench": BASE | {"__init__", "engine"},
    "tuning": BASE | {"__init__", "engine", "bench", "models"},
    "entrypoints": BASE | {"__init__", "engine", "bench", "tuning", "metrics", "models",
                           "structured_output", "reasoning", "lora"},
    "__init__": BASE | {"engine", "lora"},
    "__main__": BASE | {"entrypoints"},
}
ENGINE_FORBIDDEN = {"worker"}


def _pagellm_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pagellm"):
            parts = node.module.split(".")
            found.add(_target_layer(parts))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "pagellm":
                    found.add(_target_layer(parts))
    return found


def _target_layer(parts: list[str]) -> str:
    """The layer of an imported module ``pagellm.X[.Y]``."""
    if parts[1:3] in (["distributed", "parallel_state"], ["distributed", "custom_all_reduce"]):
        return "parallel_state"
    return parts[1] if len(parts) > 1 else "__init__"


def _layer_of(path: Path, root: Path) -> str:
    relative = path.relative_to(root)
    if relative.parts in (("distributed", "parallel_state.py"),
                          ("distributed", "custom_all_reduce.py")):
        return "parallel_state"
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or \
        relative.name != "__init__.py" else "__init__"


def test_imports_point_down_only():
    root = Path(pagellm.__file__).parent
    violations = []
    for path in sorted(root.rglob("*.py")):
        layer = _layer_of(path, root)
        allowed = ALLOWED[layer] | {layer}
        for target in _pagellm_imports(path):
            if target not in allowed:
                violations.append(f"{path.relative_to(root)} imports pagellm.{target}")
    assert not violations, "\n".join(violations)


def test_every_layer_is_known():
    root = Path(pagellm.__file__).parent
    layers = {_layer_of(p, root) for p in root.rglob("*.py")}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)
