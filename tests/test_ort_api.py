"""Every onnxruntime API the package calls exists in the installed onnxruntime, GPU-only paths included.

A GPU-only branch (the CUDA pool's OrtValue hand-off, the CUDA/TensorRT benchmark, the CUDA device
of the back) never runs on a CPU machine, so a misspelt or non-existent ORT function there (e.g.
`OrtValue.ortvalue_from_data_ptr`, which no onnxruntime has) would only show on a GPU. This test reads
the package's source instead of running it:

1. every dotted name rooted at an onnxruntime import (`ort.OrtValue.ortvalue_from_shape_and_type`,
   `C.OrtDevice.cuda`, `artifacts.LossType.CrossEntropyLoss`, `from onnxruntime... import X`) must
   resolve, attribute by attribute, in the installed onnxruntime;
2. variables and `self.` attributes assigned from an onnxruntime constructor or factory
   (`session = ort.InferenceSession(...)`, `self.module = C.Module(...)`,
   `value = ort.OrtValue.ortvalue_from_shape_and_type(...)`) are followed within their function or
   class, and every attribute used on them must exist on the class the factory returns
   (`session.run`, `self.module.train_step_with_ort_values`, `value.data_ptr`);
3. what those objects hand out further (parameters of a checkpoint, values in an OrtValueVector,
   NodeArgs) is checked on real instances for the attributes the package uses on them.

A factory that is not in FACTORIES below fails the test: say what it returns, and its uses are checked.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

import latent_replay

PACKAGE = Path(latent_replay.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
# The optional engine's code calls the training build's API (onnxruntime-training): checked where
# that build is installed (CI's second environment), allowed to be missing from stock onnxruntime.
TRAINING_FILES = {"runtime/engine/ort_training.py"}


def _has_training() -> bool:
    from onnxruntime.capi import _pybind_state as C

    return hasattr(C, "Module")


def _training_only(path: Path, name: str) -> bool:
    """A name the stock onnxruntime does not have and need not have (the optional engine's)."""
    return not _has_training() and (path.relative_to(PACKAGE).as_posix() in TRAINING_FILES
                                    or name.startswith("onnxruntime.training"))


def _resolve(dotted: str) -> Any:
    """The object a dotted name rooted at onnxruntime refers to; AttributeError/ImportError if none."""
    if dotted.startswith("onnxruntime.training"):
        from latent_replay.export import exporter

        exporter._artifacts_module()  # the package's own torch-free import of onnxruntime.training
    parts = dotted.split(".")
    obj = None
    for i in range(len(parts), 0, -1):  # the longest importable module prefix
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    if obj is None:
        raise ImportError(dotted)
    for attr in parts[i:]:
        obj = getattr(obj, attr)
    return obj


def _ort():
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state as C

    return ort, C


def _factories() -> Dict[str, Optional[Any]]:
    """Dotted onnxruntime callables whose result the package keeps: -> the class of the result
    (None: not an onnxruntime object, nothing to check). Constructors (classes) need no entry."""
    ort, C = _ort()
    return {
        "onnxruntime.OrtValue.ortvalue_from_numpy": ort.OrtValue,
        "onnxruntime.OrtValue.ortvalue_from_shape_and_type": ort.OrtValue,
        "onnxruntime.capi._pybind_state.load_checkpoint": getattr(C, "CheckpointState", None),
        "onnxruntime.get_available_providers": None,
        "onnxruntime.set_default_logger_severity": None,
        "onnxruntime.__version__.split": None,
        "onnxruntime.capi._pybind_state.OrtDevice.cuda": None,
        "onnxruntime.capi._pybind_state.OrtDevice.cpu": None,
        "onnxruntime.capi._pybind_state.OrtDevice.default_memory": None,
        "onnxruntime.training.artifacts.generate_artifacts": None,
    }


class _Scanner(ast.NodeVisitor):
    """Collects, per file: dotted onnxruntime names used (1) and attributes used on tracked ORT objects (2)."""

    def __init__(self, path: Path, factories: Dict[str, Optional[Any]]) -> None:
        self.path = path
        self.factories = factories
        self.aliases: Dict[str, str] = {}  # local name -> dotted onnxruntime name
        self.names: List[Tuple[str, int]] = []  # (dotted name, line)
        self.unknown_factories: List[Tuple[str, int]] = []
        self.uses: List[Tuple[str, str, int, Any]] = []  # (variable, attribute, line, class)
        self._scopes: List[Dict[str, Any]] = [{}]  # variable -> class, per function
        self._class_attrs: List[Dict[str, Any]] = [{}]  # "self.x" -> class, per class
        self._returns: List[Dict[str, Any]] = [{}]  # method name -> class it returns, per class

    # -- imports -----------------------------------------------------------------------------
    def collect_imports(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "onnxruntime":
                        if a.asname:
                            self.aliases[a.asname] = a.name
                        else:
                            self.aliases["onnxruntime"] = "onnxruntime"
                        self.names.append((a.name, node.lineno))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "onnxruntime":
                for a in node.names:
                    dotted = f"{node.module}.{a.name}"
                    self.aliases[a.asname or a.name] = dotted
                    self.names.append((dotted, node.lineno))

    # -- helpers -----------------------------------------------------------------------------
    def dotted(self, node: ast.AST) -> Optional[str]:
        """`ort.X.y` -> 'onnxruntime.X.y' when rooted at an onnxruntime alias, else None."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.aliases:
            return ".".join([self.aliases[node.id]] + parts[::-1])
        return None

    def key(self, node: ast.AST) -> Optional[str]:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return f"self.{node.attr}"
        return None

    def lookup(self, key: str, local: Optional[Dict[str, Any]] = None) -> Any:
        if key.startswith("self."):
            return self._class_attrs[-1].get(key)
        return (self._scopes[-1] if local is None else local).get(key)

    def result_class(self, expr: Optional[ast.AST], local: Optional[Dict[str, Any]] = None) -> Any:
        """The onnxruntime class of what `expr` evaluates to, if the scan can tell: an onnxruntime
        constructor or factory call, a tracked variable, or a method of this class returning one."""
        if expr is None:
            return None
        k = self.key(expr)
        if k is not None:
            return self.lookup(k, local)
        if not isinstance(expr, ast.Call):
            return None
        func = expr.func
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self"
                and func.attr in self._returns[-1]):
            return self._returns[-1][func.attr]
        name = self.dotted(func)
        if name is None:
            return None
        try:
            target = _resolve(name)
        except (AttributeError, ImportError):
            return None  # reported by check 1
        if isinstance(target, type):
            return target
        if name in self.factories:
            return self.factories[name]
        if (name, expr.lineno) not in self.unknown_factories:
            self.unknown_factories.append((name, expr.lineno))
        return None

    # -- visiting ----------------------------------------------------------------------------
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        """First the class's ORT-valued `self.` attributes and methods returning ORT objects
        (a few passes, so that they can feed each other), then the uses in every method."""
        self._class_attrs.append({})
        self._returns.append({})
        methods = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for _ in range(3):
            for method in methods:
                local: Dict[str, Any] = {}
                for sub in sorted((n for n in ast.walk(method) if isinstance(n, (ast.Assign, ast.Return))),
                                  key=lambda n: (n.lineno, n.col_offset)):  # in source order
                    if isinstance(sub, ast.Assign):
                        cls = self.result_class(sub.value, local)
                        for t in sub.targets:
                            k = self.key(t)
                            if k and cls is not None:
                                (self._class_attrs[-1] if k.startswith("self.") else local)[k] = cls
                    elif isinstance(sub, ast.Return):
                        cls = self.result_class(sub.value, local)
                        if cls is not None:
                            self._returns[-1][method.name] = cls
        self.generic_visit(node)
        self._class_attrs.pop()
        self._returns.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scopes.append({})
        self.generic_visit(node)
        self._scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        cls = self.result_class(node.value)
        for t in node.targets:
            k = self.key(t)
            if k and not k.startswith("self."):
                if cls is not None:
                    self._scopes[-1][k] = cls
                else:
                    self._scopes[-1].pop(k, None)
            self.visit(t)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self.dotted(node)
        if name is not None:
            self.names.append((name, node.lineno))
            return  # the whole chain is checked at once
        k = self.key(node.value)
        if k is not None:
            cls = self.lookup(k)
            if cls is not None:
                self.uses.append((k, node.attr, node.lineno, cls))
        self.generic_visit(node)


def _scan() -> List[_Scanner]:
    factories = _factories()
    out = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        scanner = _Scanner(path, factories)
        scanner.collect_imports(tree)
        if scanner.aliases:
            scanner.visit(tree)
            out.append(scanner)
    return out


@pytest.fixture(scope="module")
def scanned() -> List[_Scanner]:
    return _scan()


def test_the_scan_sees_the_ort_code(scanned):
    """The scan finds the files and calls it must see (guards the scanner itself)."""
    files = {s.path.relative_to(PACKAGE).as_posix() for s in scanned}
    assert {"runtime/engine/step.py", "runtime/engine/session.py", "runtime/engine/ort_training.py",
            "runtime/replay/cuda.py", "apps/bench/workers.py", "export/exporter.py"} <= files
    names = {n for s in scanned for n, _ in s.names}
    assert "onnxruntime.OrtValue.ortvalue_from_shape_and_type" in names  # the CUDA pool (GPU only)
    assert "onnxruntime.InferenceSession" in names
    uses = {(k, a) for s in scanned for k, a, _, _ in s.uses}
    assert ("value", "data_ptr") in uses  # on the OrtValue the CUDA pool allocates
    assert ("session", "run") in uses


def test_every_dotted_onnxruntime_name_exists(scanned):
    missing = []
    for s in scanned:
        for name, line in s.names:
            if _training_only(s.path, name):
                continue
            try:
                _resolve(name)
            except (AttributeError, ImportError) as e:
                missing.append(f"{s.path.relative_to(PACKAGE)}:{line}: {name} ({type(e).__name__}: {e})")
    assert not missing, "onnxruntime has no:\n" + "\n".join(missing)


def test_every_factory_result_is_known(scanned):
    unknown = [f"{s.path.relative_to(PACKAGE)}:{line}: {name}" for s in scanned for name, line in s.unknown_factories
               if not _training_only(s.path, name)]
    assert not unknown, "add what these return to FACTORIES in this test:\n" + "\n".join(unknown)


def _instance_attributes() -> Dict[Any, set]:
    """Attributes set per instance (invisible to hasattr on the class), read off real objects."""
    ort, _ = _ort()
    value = ort.OrtValue.ortvalue_from_numpy(np.zeros(2, np.float32))
    return {ort.OrtValue: set(vars(value))}


def test_every_attribute_used_on_an_ort_object_exists(scanned):
    extra = _instance_attributes()
    missing = []
    for s in scanned:
        for key, attr, line, cls in s.uses:
            if not (hasattr(cls, attr) or attr in extra.get(cls, ())):
                missing.append(f"{s.path.relative_to(PACKAGE)}:{line}: {key}.{attr} ({cls.__module__}.{cls.__name__})")
    assert not missing, "onnxruntime objects have no:\n" + "\n".join(missing)


def test_what_the_step_engine_calls_on_a_gpu_exists():
    """The default engine's calls that only the CUDA device makes (writing a device buffer in
    place, OrtValues allocated on a device), and the IOBinding calls of every device."""
    ort, _ = _ort()
    for attr in ("update_inplace", "ortvalue_from_numpy", "ortvalue_from_shape_and_type", "numpy", "data_ptr"):
        assert hasattr(ort.OrtValue, attr), attr
    for attr in ("bind_ortvalue_input", "bind_ortvalue_output", "bind_cpu_input", "bind_output",
                 "copy_outputs_to_cpu"):
        assert hasattr(ort.IOBinding, attr), attr
    assert hasattr(ort.InferenceSession, "io_binding") and hasattr(ort.InferenceSession, "run_with_iobinding")


@pytest.mark.skipif(not _has_training(), reason="the optional engine's API: onnxruntime-training is not installed "
                                                "(checked in CI's second environment)")
def test_objects_handed_out_by_ort_have_what_the_package_uses(tmp_path):
    """Check 3, on real objects from exported artifacts: checkpoint parameters (`.data`, `.grad`),
    the values they and an OrtValueVector hold (`.numpy()`, `.shape()`), an OrtValue's C value
    (`._ortvalue`), a session's NodeArgs (`.name`), and the Module / OrtValueVector methods the
    optional engine calls."""
    ort, C = _ort()
    from onnxruntime.capi.onnxruntime_pybind11_state import OrtValueVector

    from latent_replay.export.exporter import export
    from latent_replay.export.manifest import Manifest
    from helpers import make_weights

    art = tmp_path / "art"
    export(make_weights(0), "pool6", 3, art, engines=("step", "ort-training"))
    manifest = Manifest.load(art)
    state = C.load_checkpoint(str(manifest.path(art, "checkpoint")))
    for method in ("get_parameter", "parameter_names", "copy_parameter_from"):
        assert hasattr(state, method), method
    param = state.get_parameter(next(iter(state.parameter_names())))
    assert hasattr(param, "data") and hasattr(param, "grad")
    assert hasattr(param.data, "numpy") and hasattr(param.data, "shape")
    device = C.OrtDevice(C.OrtDevice.cpu(), C.OrtDevice.default_memory(), 0)
    module = C.Module(str(manifest.path(art, "training_model")), state, str(manifest.path(art, "eval_model")),
                      device, ort.SessionOptions())
    for method in ("input_names", "output_names", "lazy_reset_grad", "train_step", "train_step_with_ort_values",
                   "eval_step"):
        assert hasattr(module, method), method
    vector = OrtValueVector()
    value = ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 1024), np.float32))
    vector.push_back(value._ortvalue)
    assert hasattr(vector[0], "numpy") and len(vector) == 1
    session = ort.InferenceSession(str(manifest.path(art, "front")), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].name, str) and isinstance(session.get_outputs()[0].name, str)
    for attr in ("data_ptr", "shape", "device_name", "numpy", "data_type"):
        assert hasattr(value, attr), attr
