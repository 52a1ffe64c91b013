"""Builds lqkernels._C by driving CMake (CMakeLists.txt is the only place that knows the sources).

    pip install --no-build-isolation -e .

Environment: CUDA_HOME (toolkit root; default: found from nvcc on PATH), TORCH_CUDA_ARCH_LIST
(default "9.0a"), LQK_NO_CUDA=1 (CPU kernels only), LQK_CPU_ARCH (-march of the baseline, default
x86-64-v2 on x86-64; the CPU kernels are also built for AVX2 and AVX-512 and chosen at import),
MAX_JOBS (parallel compile jobs).
"""
import fcntl
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


def build_tool(module: str, attribute: str, name: str) -> str:
    """The cmake / ninja of the PyPI packages in this environment (system ones may be too old, and
    an environment's bin folder is not on PATH unless it was activated); else the one on PATH."""
    try:
        return str(Path(getattr(__import__(module), attribute)) / name)
    except (ImportError, AttributeError):
        return name


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        # A build folder that outlives pip's temporary one: rebuilding after an edit recompiles only
        # what changed (the CUDA files take minutes on two cores).
        flavour = "cpu" if os.environ.get("LQK_NO_CUDA") else "cuda"
        build_dir = Path(__file__).parent.resolve() / "build" / f"py{sys.version_info[0]}{sys.version_info[1]}-{flavour}"
        build_dir.mkdir(parents=True, exist_ok=True)
        with open(build_dir / ".lock", "w") as lock:  # one build at a time per folder
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._cmake(build_dir, out_dir)

    def _cmake(self, build_dir: Path, out_dir: Path) -> None:
        args = [
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={build_tool('ninja', 'BIN_DIR', 'ninja')}",
        ]
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
        if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
            args.append(f"-DCMAKE_CUDA_COMPILER={Path(cuda_home) / 'bin' / 'nvcc'}")
        source_dir = Path(__file__).parent.resolve()
        cmake = build_tool("cmake", "CMAKE_BIN_DIR", "cmake")
        subprocess.run([cmake, "-S", str(source_dir), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run([cmake, "--build", str(build_dir), "--parallel", jobs], check=True)


setup(
    packages=find_packages(include=["lqkernels", "lqkernels.*"]),
    ext_modules=[CMakeExtension("lqkernels._C")],
    cmdclass={"build_ext": CMakeBuild},
)
