"""The C++ kernels' build folder: one per source and environment, so environments sharing one cache never rebuild
each other's build.

A second environment is a second torch install: here the same torch imported through another path (a folder
holding a link to it, first on PYTHONPATH), which is what differs between two venvs as far as the generated
build.ninja is concerned: the include and library folders it names.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rppnets.layers import cpu_kernels

REPORT = """
import torch
from rppnets.layers import cpu_kernels
print(torch.__file__)
print(cpu_kernels.build_key())
print("\\n".join(cpu_kernels.build_environment()))
"""
LOAD = """
import sys
from pathlib import Path
from rppnets.layers import cpu_kernels
cpu_kernels.SOURCE = Path(sys.argv[1])  # one snapshot of the source for the whole test
module = cpu_kernels.kernel()
assert module is not None, "the kernels were not built"
print(Path(module.__file__).parent)  # the folder the extension was built in and loaded from
"""

# What the build folder's keying is about does not depend on what the source computes: a module that compiles in
# seconds instead of the kernels' 40 s, built the same way (cpu_kernels.kernel(), torch's flags and libraries).
TINY_EXTENSION = """
#include <pybind11/pybind11.h>
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) { module.def("answer", [] { return 42; }); }
"""


def environment(tmp_path: Path | None = None, **variables) -> dict:
    """This process's environment; with `tmp_path`, one whose torch is imported from tmp_path/site/torch."""
    env = {key: value for key, value in os.environ.items() if key != "RPPNETS_CPU_KERNELS"} | variables
    if tmp_path is not None:
        site = tmp_path / "site"
        if not site.exists():
            site.mkdir()
            (site / "torch").symlink_to(Path(torch.__file__).parent, target_is_directory=True)
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def python(code: str, env: dict, *args: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_build_key_names_the_torch_install_it_compiles_against(tmp_path):
    here = python(REPORT, environment())
    there = python(REPORT, environment(tmp_path))
    assert Path(there[0]).parent == tmp_path / "site" / "torch"  # the second environment's torch lies elsewhere
    assert here[1] == cpu_kernels.build_key()  # the same environment, the same key, in any process
    assert there[1] != here[1]
    # the key covers the folders that build.ninja names: torch's include and library folders of each install
    assert {str(tmp_path / "site" / "torch" / "include"), str(tmp_path / "site" / "torch" / "lib")} <= set(there[2:])
    assert not any(str(tmp_path) in line for line in here[2:])


def test_the_compiler_is_part_of_the_key(tmp_path):
    assert python(REPORT, environment(CXX="g++"))[1] != python(REPORT, environment(CXX="clang++"))[1]


def build_state(folder: Path) -> dict:
    """What a rebuild changes: build.ninja's and the library's modification times, and ninja's log of commands."""
    return {"build.ninja": (folder / "build.ninja").stat().st_mtime_ns,
            "library": (folder / "rppnets_cpu_kernels.so").stat().st_mtime_ns,
            ".ninja_log": (folder / ".ninja_log").read_text()}


@pytest.mark.slow
@pytest.mark.long  # 48 s (two real compiles); make test keeps the key's unit tests above (CI time)
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")
def test_two_environments_sharing_a_cache_build_once_each_and_never_again(tmp_path):
    cache, source = tmp_path / "torch_extensions", tmp_path / cpu_kernels.SOURCE.name
    source.write_text(TINY_EXTENSION)
    first, second = (environment(TORCH_EXTENSIONS_DIR=str(cache)),
                     environment(tmp_path, TORCH_EXTENSIONS_DIR=str(cache)))
    folder = Path(python(LOAD, first, str(source))[-1])
    built = build_state(folder)
    other = Path(python(LOAD, second, str(source))[-1])
    assert other.parent == folder.parent == cache and other != folder  # side by side in the one cache
    assert str(tmp_path / "site" / "torch" / "include") in (other / "build.ninja").read_text()
    other_built = build_state(other)
    for _ in range(2):  # each environment again, in turn: neither rewrites nor rebuilds the other's build
        assert Path(python(LOAD, first, str(source))[-1]) == folder
        assert Path(python(LOAD, second, str(source))[-1]) == other
    assert build_state(folder) == built and build_state(other) == other_built
    assert sorted(path.name for path in cache.iterdir()) == sorted([folder.name, other.name])
