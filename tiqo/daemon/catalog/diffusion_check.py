"""Is this folder (or file) a diffusers pipeline tiqo can load, and what does it do? Stdlib only, no torch: it runs
when `tiqo models add` registers a model, so a broken download is a clear 400 there, not a crash at first use.

A folder is what ``save_pretrained`` / ``huggingface-cli download`` leave: ``model_index.json`` naming the pipeline
class and one sub-folder per component with its config and weights. A safetensors file starts with an 8-byte header
length and a JSON header whose offsets say how long the data must be, so a truncated copy is caught without reading it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiqo.core.errors import BadRequest
from tiqo.sdk.imaging import IMAGE_TO_IMAGE, IMAGE_TO_VIDEO, INPAINTING, TEXT_TO_IMAGE, TEXT_TO_VIDEO

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_VIDEO_CLASSES = {
    "StableVideoDiffusionPipeline": IMAGE_TO_VIDEO,
    "I2VGenXLPipeline": IMAGE_TO_VIDEO,
    "CogVideoXImageToVideoPipeline": IMAGE_TO_VIDEO,
    "TextToVideoSDPipeline": TEXT_TO_VIDEO,
    "AnimateDiffPipeline": TEXT_TO_VIDEO,
    "CogVideoXPipeline": TEXT_TO_VIDEO,
}
_TEXT_TO_IMAGE_FAMILIES = ("StableDiffusion", "Flux", "PixArt", "Kandinsky", "LatentConsistencyModel")
# Text-to-image classes whose weights also do image-to-image and inpainting through
# AutoPipelineForImage2Image/Inpainting.from_pipe (same modules, no extra memory); checked for StableDiffusionPipeline.
EDITABLE = {
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusion3Pipeline",
    "FluxPipeline",
    "LatentConsistencyModelPipeline",
    "AutoPipelineForText2Image",
}
VIDEO_TASKS = (IMAGE_TO_VIDEO, TEXT_TO_VIDEO)
TASK_KINDS = {
    TEXT_TO_IMAGE: "image",
    IMAGE_TO_IMAGE: "image",
    INPAINTING: "image",
    IMAGE_TO_VIDEO: "video",
    TEXT_TO_VIDEO: "video",
}
SINGLE_FILE_DEFAULT = "StableDiffusionPipeline"
_NO_WEIGHTS = {"scheduler", "tokenizer", "tokenizer_2", "tokenizer_3", "feature_extractor", "image_processor"}
_WEIGHTS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


@dataclass(frozen=True)
class DiffusionInfo:
    path: Path
    pipeline_class: str
    task: str
    weight_bytes: int  # every weight file together
    half_weights: bool  # the weights are stored in 16-bit floats (float32 on CPU doubles them in memory)
    single_file: bool = False
    components: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return TASK_KINDS[self.task]

    @property
    def capabilities(self) -> tuple[str, ...]:
        return capabilities(self.task, self.pipeline_class)


def capabilities(task: str, pipeline_class: str) -> tuple[str, ...]:
    """What routing may send to a model: text-to-image classes of the editable families also edit and inpaint."""
    if task == TEXT_TO_IMAGE:
        return ("image", "image-edit", "inpaint") if pipeline_class in EDITABLE else ("image",)
    return {
        IMAGE_TO_IMAGE: ("image-edit",),
        INPAINTING: ("image-edit", "inpaint"),
        IMAGE_TO_VIDEO: ("video-from-image",),
        TEXT_TO_VIDEO: ("video",),
    }[task]


def task_of(class_name: str) -> str:
    """The task of a diffusers pipeline class name; 400 naming the supported ones for anything else."""
    if class_name in _VIDEO_CLASSES:
        return _VIDEO_CLASSES[class_name]
    if class_name.endswith("Pipeline") or class_name.startswith("AutoPipelineFor"):
        if "Inpaint" in class_name:
            return INPAINTING
        if "Img2Img" in class_name or "Image2Image" in class_name:
            return IMAGE_TO_IMAGE
        if class_name == "AutoPipelineForText2Image" or class_name.startswith(_TEXT_TO_IMAGE_FAMILIES):
            return TEXT_TO_IMAGE
    raise BadRequest(
        f"pipeline class {class_name!r} is not one tiqo can run",
        param="path",
        hint="supported: StableDiffusion*/SDXL/SD3/Flux/PixArt/Kandinsky text-to-image pipelines and their Img2Img "
        f"and Inpaint variants, and the video pipelines {', '.join(sorted(_VIDEO_CLASSES))}",
    )


def check_safetensors(path: Path) -> int:
    """Bytes of tensor data ``path`` holds; 400 when it is not a safetensors file or is shorter than its header says."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER or 8 + length > size:
                raise ValueError(f"its header says {length} bytes but the file has {size}")
            header = json.loads(fh.read(length))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError, AttributeError) as exc:
        raise _cut_short(f"{path} is not a whole safetensors file ({exc})", "was probably") from None
    if 8 + length + end > size:
        raise _cut_short(f"{path} is truncated: its header needs {8 + length + end} bytes but the file has {size}")
    return end


def _cut_short(message: str, was: str = "was") -> BadRequest:
    """A safetensors file that ends early: whether its header or its data is missing, the fix is the same."""
    return BadRequest(
        message,
        param="path",
        hint=f"the download {was} cut short: copy the file again and compare its size with the source",
    )


def _half(path: Path) -> bool:
    """Are the tensors of a safetensors file 16-bit (F16/BF16)? Read from the header only."""
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    dtypes = {t.get("dtype") for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)}
    return bool(dtypes) and dtypes <= {"F16", "BF16"}


def inspect(path: Path, pipeline_class: str | None = None) -> DiffusionInfo:
    """Check a diffusers folder or single-file checkpoint; raise a 400 naming what is wrong."""
    if path.is_dir():
        return _inspect_folder(path)
    if not path.is_file():
        raise BadRequest(f"{path} does not exist", param="path")
    return _inspect_file(path, pipeline_class or SINGLE_FILE_DEFAULT)


def is_diffusers_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def _inspect_folder(folder: Path) -> DiffusionInfo:
    index_file = folder / "model_index.json"
    try:
        index: dict[str, Any] = json.loads(index_file.read_text())
        class_name = str(index["_class_name"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadRequest(
            f"{index_file} is not a diffusers model index ({exc})",
            param="path",
            hint="a diffusers folder has a model_index.json naming its pipeline class (`_class_name`)",
        ) from None
    task = task_of(class_name)
    total, halves, components = 0, [], []
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue  # settings such as requires_safety_checker, or an optional component left out ([null, null])
        components.append(name)
        sub = folder / name
        if not sub.is_dir():
            raise BadRequest(
                f"{folder} lists the component {name!r} ({value[1]}) but has no {name}/ folder",
                param="path",
                hint="copy the whole model folder (every sub-folder model_index.json names)",
            )
        configs = [p for p in sub.iterdir() if p.suffix == ".json"]
        if not configs:
            raise BadRequest(f"component {name!r} has no config file in {sub}", param="path", hint=_COPY_AGAIN)
        if name in _NO_WEIGHTS:
            continue  # configuration and vocabularies only
        weights = [p for p in sub.rglob("*") if p.suffix in _WEIGHTS and p.is_file()]
        if not weights:
            raise BadRequest(f"component {name!r} has no weights in {sub}", param="path", hint=_COPY_AGAIN)
        for weight in weights:
            if weight.suffix == ".safetensors":
                check_safetensors(weight)
                halves.append(_half(weight))
            total += weight.stat().st_size
    return DiffusionInfo(
        path=folder,
        pipeline_class=class_name,
        task=task,
        weight_bytes=total,
        half_weights=bool(halves) and all(halves),
        components=tuple(components),
    )


_COPY_AGAIN = (
    "copy the whole model folder again (`huggingface-cli download REPO --local-dir DIR` on a connected machine)"
)


def _inspect_file(path: Path, pipeline_class: str) -> DiffusionInfo:
    if path.suffix not in (".safetensors", ".ckpt"):
        raise BadRequest(
            f"{path} is not a diffusers folder or a .safetensors/.ckpt checkpoint",
            param="path",
            hint="pass the folder that holds model_index.json, or a single-file .safetensors checkpoint",
        )
    task = task_of(pipeline_class)
    if task != TEXT_TO_IMAGE:
        raise BadRequest(
            f"a single-file checkpoint is loaded as a text-to-image pipeline, not {pipeline_class}",
            param="pipeline",
            hint="register video and edit models as diffusers folders",
        )
    half = False
    if path.suffix == ".safetensors":
        check_safetensors(path)
        half = _half(path)
    elif path.stat().st_size < 1024 * 1024:  # a .ckpt is a pickle in a zip: only its size can be sanity-checked here
        raise BadRequest(f"{path} is too small to be a checkpoint", param="path", hint=_COPY_AGAIN)
    return DiffusionInfo(
        path=path,
        pipeline_class=pipeline_class,
        task=task,
        weight_bytes=path.stat().st_size,
        half_weights=half,
        single_file=True,
        notes=[f"single file: loaded as text-to-image with {pipeline_class}.from_single_file"],
    )
