"""``llama-server`` compiled once from the llama.cpp sources vendored in the pinned ``llama-cpp-python`` sdist."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from .cache import cache_dir, file_lock, install_file, is_executable
from .commands import BUILD_TOOLS_HINT, LocalEngineError, missing_build_tools, pip_download, run, say, single_file

#: The llama-cpp-python release whose vendored llama.cpp we build. Pinned because the
#: server's behaviour (chat templating, continuation, usage fields) changes between
#: releases and the tests rely on it; it is also the cache key of the binary.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

#: Names the build's CPU baseline in the cache key. A native build (``-march=native``)
#: enables every instruction set the build machine lists, and on a virtual CPU that
#: lists AMX without running it the server died with SIGILL in an AMX kernel during
#: warm-up; it would also not run on an older CPU that restores the same cache. The
#: portable build targets x86-64 with AVX2/FMA/F16C (no AVX-512, no AMX).
BUILD_FLAVOUR = "portable"


def llama_server_path() -> Path:
    """Return where the cached ``llama-server`` binary lives (it may not exist yet)."""
    return cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-{BUILD_FLAVOUR}" / "bin" / "llama-server"


def _cpu_count() -> int:
    # The affinity mask, not os.cpu_count(), is what a container or `taskset` really
    # grants us; oversubscribing threads slows llama.cpp down markedly.
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def check_build_tools() -> None:
    """Raise :class:`LocalEngineError` naming what is missing, unless ``llama-server`` can be built (or is cached).

    Run before anything is downloaded, so a machine without a compiler learns it in a second, in one line.
    """
    if is_executable(llama_server_path()):
        return
    missing = missing_build_tools()
    if missing:
        raise LocalEngineError(
            f"building llama-server (once, cached in {cache_dir()}) needs cmake, make and a C/C++ compiler; "
            f"not found: {', '.join(missing)}. {BUILD_TOOLS_HINT}"
        )


def _download_sdist(dest: Path, log_path: Path) -> Path:
    """Download the pinned llama-cpp-python sdist into *dest* and return its path."""
    say(f"downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sources with pip")
    pip_download(
        ["--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"],
        dest,
        what="pip download of llama-cpp-python",
        log_path=log_path,
    )
    return single_file(dest, "*.tar.gz", "llama-cpp-python sdist")


def _extract_sdist(sdist: Path, dest: Path) -> Path:
    """Extract the sdist's ``vendor/llama.cpp`` tree into *dest*; return the sdist root.

    Only the vendored llama.cpp is unpacked: it is all the build needs, and skipping
    the Python bindings and docs saves time and disk.
    """
    say(f"extracting {sdist.name}")
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if Path(m.name).parts[1:3] == ("vendor", "llama.cpp")]
        if not members:
            raise LocalEngineError(f"{sdist} contains no vendor/llama.cpp folder")
        roots = {Path(m.name).parts[0] for m in members}
        if len(roots) != 1:
            raise LocalEngineError(f"{sdist} has several top-level folders: {sorted(roots)}")
        if hasattr(tarfile, "data_filter"):
            # The "data" filter refuses absolute paths, links out of the tree and
            # device files; it exists from Python 3.12 and in security releases of
            # 3.10/3.11, and older interpreters simply do without it.
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - only on unpatched old interpreters
            tar.extractall(dest, members=members)
    return dest / roots.pop()


def _cmake_build(source_root: Path, log_path: Path) -> Path:
    """Configure and build ``llama-server`` under ``<source_root>/build``; return the binary.

    Running it on an already-built tree is cheap: cmake reconfigures and make finds
    nothing to do.
    """
    jobs = _cpu_count()
    configure = [
        "cmake",
        "-S",
        "vendor/llama.cpp",
        "-B",
        "build",
        "-DLLAMA_BUILD_SERVER=ON",
        # Tests and examples would triple the compile time and are not needed.
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        # No libcurl: the server must never download models itself, and it removes a
        # system dependency.
        "-DLLAMA_CURL=OFF",
        # A static binary can be copied into the cache and outlive the build tree.
        "-DBUILD_SHARED_LIBS=OFF",
        "-DCMAKE_BUILD_TYPE=Release",
        # Portable baseline instead of -march=native (see BUILD_FLAVOUR).
        "-DGGML_NATIVE=OFF",
    ]
    say("configuring llama.cpp with cmake")
    run(configure, what="cmake configure", log_path=log_path, cwd=source_root)
    say(f"compiling llama-server with {jobs} jobs (several minutes on a small machine)")
    build = ["cmake", "--build", "build", "--target", "llama-server", f"-j{jobs}"]
    run(build, what="cmake build", log_path=log_path, cwd=source_root)
    binary = source_root / "build" / "bin" / "llama-server"
    if not is_executable(binary):
        raise LocalEngineError(f"cmake reported success but {binary} does not exist")
    return binary


def ensure_llama_server() -> Path:
    """Return the path of the cached ``llama-server`` binary, building it if missing.

    The first call downloads the pinned llama-cpp-python sdist with pip and compiles
    its vendored llama.cpp with cmake (about 10 minutes on 2 cores); later calls
    return at once. A file lock keeps concurrent processes from building twice.

    Raises:
        LocalEngineError: pip, cmake or the compiler failed (the message quotes the
            tail of their output; the full log is kept in the cache folder).
    """
    target = llama_server_path()
    if is_executable(target):
        return target
    check_build_tools()
    root = cache_dir()
    with file_lock(root / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}.lock", "llama-server"):
        # Another process may have finished the build while we waited for the lock.
        if is_executable(target):
            return target
        log_path = root / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-build.log"
        log_path.write_text("")
        say(f"building llama-server {LLAMA_CPP_PYTHON_VERSION} once into {target} (log: {log_path})")
        # The build tree lives inside the cache folder, not /tmp: /tmp is often a small
        # tmpfs, and the tree is several hundred MB.
        work = Path(tempfile.mkdtemp(prefix=".build-llama-server-", dir=root))
        try:
            sdist = _download_sdist(work / "download", log_path)
            source_root = _extract_sdist(sdist, work / "src")
            sdist.unlink()  # 75 MB we no longer need during the compile
            binary = _cmake_build(source_root, log_path)
            install_file(binary, target, executable=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    say(f"llama-server ready: {target}")
    return target
