"""Run Python code with `torch` impossible to import, as on a device without PyTorch."""
from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import sys, importlib.machinery
    class _PathFinderWithoutTorch(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                return None  # exactly what an interpreter without torch answers
            return importlib.machinery.PathFinder.find_spec(name, path, target)
    sys.meta_path = [_PathFinderWithoutTorch if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
""")



def run_without_torch(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where importing torch fails; asserts nothing itself."""
    script = BLOCK_TORCH + textwrap.dedent(code) + "\nassert 'torch' not in sys.modules\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
