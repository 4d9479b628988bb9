"""The whole QualiCLIP score as one ONNX or OpenVINO model, in a folder that needs nothing of this package.

An export folder holds the model file (``model.onnx``, or OpenVINO's ``model.xml`` and ``model.bin``)
and ``qualiclip.json``, which describes its inputs and outputs, the prompt pairs, the temperature and
the weights' provenance. The model takes a float32 RGB batch in [0, 1], shaped (N, 3, H, W) with
any N, H and W (31 pixels a side at least), normalizes it, and returns the (N,) scores first; with
``per_pair`` also the (N, P) probability of each pair's positive prompt. The conversion cache of the
inference backends (:mod:`qualiclip_metric.runtimes`) holds folders in this same layout.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualiclip_metric.errors import CheckpointError
from qualiclip_metric.inputs import MIN_IMAGE_SIDE
from qualiclip_metric.integrity import Verify, sha256_file, tensors_sha256, verify_sha256

if TYPE_CHECKING:
    from qualiclip_metric.model import QualiCLIP

FORMATS = ("onnx", "openvino")
#: Precisions each format can be exported in. ONNX runtimes have no bf16 convolutions on most
#: hardware; an OpenVINO model stores fp32 weights (fp16 for "fp16") and carries its precision as
#: the inference precision hint in its runtime options.
EXPORT_PRECISIONS = {"onnx": ("fp32", "fp16"), "openvino": ("fp32", "bf16", "fp16")}
DESCRIPTION_FILE = "qualiclip.json"
MODEL_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
INPUT_NAME = "images"
#: Output names, in order; an export has the first one, two or all three.
OUTPUT_NAMES = ("scores", "probabilities", "features")
#: OpenVINO's names of the precisions, for ``INFERENCE_PRECISION_HINT``.
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
LAYOUT_VERSION = 1
_log = logging.getLogger(__name__)


class ScorerGraph(nn.Module):
    """The score as one traceable module: normalization, trunk, attention pool, prompts and softmax.

    It holds the model's own image tower (a copy in ``dtype`` when that is not float32); the
    normalization constants, prompt features and scale are frozen into it.
    """

    def __init__(self, model: QualiCLIP, outputs: int = 2, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        import copy

        same = dtype == torch.float32 and model.device.type == "cpu"
        self.visual = model.visual if same else copy.deepcopy(model.visual).to("cpu", dtype)
        self.register_buffer("pixel_mean", model.mean.detach().float().cpu().clone())
        self.register_buffer("pixel_std", model.std.detach().float().cpu().clone())
        self.register_buffer("prompt_features", model.prompts_features.detach().float().cpu().clone())
        self.scale = float(model.score_logit_scale / model.temperature)
        self.outputs = outputs
        self.dtype = dtype

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        from qualiclip_metric.model import antonym_probabilities

        x = ((images - self.pixel_mean) / self.pixel_std).to(self.dtype)
        pooled = self.visual(x)
        features = F.normalize(pooled.float(), dim=-1)
        probabilities = antonym_probabilities(features, self.prompt_features, self.scale)
        return (probabilities.mean(dim=-1), probabilities, features)[: self.outputs]


def weights_sha256(model: QualiCLIP) -> str:
    """sha256 of every tensor the score depends on (image tower and prompt features)."""
    return tensors_sha256({key: value for key, value in model.state_dict().items() if key != "logit_scale"})


def validate_export(format: str, precision: str, outputs: int) -> None:
    if format not in FORMATS:
        raise ValueError(f"Argument `format` must be one of {FORMATS}, but got {format!r}")
    if precision not in EXPORT_PRECISIONS[format]:
        raise ValueError(
            f"Argument `precision` must be one of {EXPORT_PRECISIONS[format]} for {format}, but got {precision!r}"
            + ("; export the OpenVINO format for bf16" if precision == "bf16" else "")
        )
    if outputs not in (1, 2, 3):
        raise ValueError(f"Argument `outputs` must be 1, 2 or 3, but got {outputs!r}")
    required = {"onnx": ("onnx", "onnxscript"), "openvino": ("openvino",)}[format]
    import importlib.util

    missing = [name for name in required if importlib.util.find_spec(name) is None]
    if missing:
        extra = "onnx" if format == "onnx" else "openvino"
        raise ValueError(f'exporting {format} needs {", ".join(missing)}: pip install "qualiclip-metric[{extra}]"')


def export_scorer(
    model: QualiCLIP,
    directory: str | os.PathLike,
    format: str = "onnx",
    *,
    precision: str = "fp32",
    per_pair: bool = False,
    outputs: int | None = None,
) -> Path:
    """Write ``model``'s whole score as an export folder (see the module docstring) and return it.

    Args:
        model: the weights, prompts, temperature and score scale to freeze into the file.
        directory: the folder to create; it must not exist (nothing is ever replaced).
        format: ``"onnx"`` or ``"openvino"``.
        precision: ``"fp32"``; ``"fp16"``; ``"bf16"`` (OpenVINO only).
        per_pair: also return the (N, P) pair probabilities as the second output.
        outputs: 1, 2 or 3 outputs (scores, probabilities, features); overrides ``per_pair``.

    Raises:
        ValueError: an unknown format or precision, or the converter is not installed.
        FileExistsError: ``directory`` exists.

    Examples:
        >>> export_scorer(QualiCLIP.from_pretrained(), "qualiclip-onnx", "onnx")  # doctest: +SKIP
    """
    from qualiclip_metric.checkpoint import staged_folder

    count = outputs if outputs is not None else (2 if per_pair else 1)
    validate_export(format, precision, count)
    dtype = torch.float16 if precision == "fp16" and format == "onnx" else torch.float32
    graph = ScorerGraph(model, count, dtype).eval()
    names = OUTPUT_NAMES[:count]
    with staged_folder(directory) as staging:
        _log.info("converting the QualiCLIP scorer to %s (%s) in %s", format, precision, Path(directory).name)
        converter = _convert_onnx if format == "onnx" else _convert_openvino
        versions = converter(graph, staging, names, precision)
        description = _description(model, format, precision, names, versions)
        description["files"] = {name: sha256_file(staging / name) for name in MODEL_FILES[format]}
        (staging / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return Path(directory)


def _example() -> Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def _quiet() -> Any:
    """Converters print progress and deprecation notes; an export reports through its return value."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _convert_onnx(graph: ScorerGraph, folder: Path, names: tuple[str, ...], precision: str) -> dict[str, str]:
    import onnx

    batch = torch.export.Dim("N", min=1)
    height, width = (torch.export.Dim(axis, min=MIN_IMAGE_SIDE) for axis in ("H", "W"))
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            graph,
            (_example(),),
            input_names=[INPUT_NAME],
            output_names=list(names),
            dynamic_shapes={"images": {0: batch, 2: height, 3: width}},
            dynamo=True,
            verbose=False,
        )
        program.save(str(folder / MODEL_FILES["onnx"][0]), external_data=False)
    return {"onnx": onnx.__version__, "opset": str(program.model.opset_imports.get("", ""))}


def _convert_openvino(graph: ScorerGraph, folder: Path, names: tuple[str, ...], precision: str) -> dict[str, str]:
    import openvino as ov

    with _quiet(), torch.no_grad():
        converted = ov.convert_model(
            graph, example_input=(_example(),), input=[(INPUT_NAME, ov.PartialShape([-1, 3, -1, -1]), ov.Type.f32)]
        )
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(converted.outputs, names, strict=True):
        output.get_tensor().set_names({name})
    # A plain ``compile_model`` of the file applies runtime options stored in the model itself.
    converted.set_rt_info(OPENVINO_PRECISION[precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(converted, str(folder / MODEL_FILES["openvino"][0]), compress_to_fp16=precision == "fp16")
    return {"openvino": ov.__version__}


def _description(
    model: QualiCLIP, format: str, precision: str, names: tuple[str, ...], versions: dict[str, str]
) -> dict[str, Any]:
    from qualiclip_metric import __version__

    pairs = len(model.prompt_pairs)
    shapes = {"scores": ["N"], "probabilities": ["N", pairs], "features": ["N", model.prompts_features.shape[1]]}
    meaning = {
        "scores": "quality in [0, 1], higher is better: the mean of the pair probabilities",
        "probabilities": "probability of each pair's positive prompt, columns in prompt_pairs order",
        "features": "L2-normalized image embeddings",
    }
    description: dict[str, Any] = {
        "layout_version": LAYOUT_VERSION,
        "format": format,
        "precision": precision,
        "inputs": [
            {
                "name": INPUT_NAME,
                "dtype": "float32",
                "shape": ["N", 3, "H", "W"],
                "meaning": f"RGB images in [0, 1], any size with sides of at least {MIN_IMAGE_SIDE} pixels; "
                "normalization happens inside",
            }
        ],
        "outputs": [
            {"name": name, "dtype": "float32", "shape": shapes[name], "meaning": meaning[name]} for name in names
        ],
        "prompt_pairs": [list(pair) for pair in model.prompt_pairs],
        "temperature": model.temperature,
        "logit_scale": model.score_logit_scale,
        "normalization": {"mean": model.config.mean, "std": model.config.std},
        "weights": {
            "source": model.source,
            "tensors_sha256": weights_sha256(model),
            "provenance": model.config.provenance,
        },
        "created_by": {"qualiclip-metric": __version__, "torch": torch.__version__.split("+")[0], **versions},
    }
    if format == "openvino":
        description["openvino_inference_precision_hint"] = OPENVINO_PRECISION[precision]
    return description


def read_description(directory: str | os.PathLike, verify: Verify = True) -> dict[str, Any]:
    """The ``qualiclip.json`` of an export folder, its model files checked against their sha256.

    ``verify`` is as for weights: ``True`` trusts a file hashed before and unchanged since.

    Raises:
        CheckpointError: not an export folder this version reads, or a model file missing or changed.
    """
    directory = Path(directory)
    try:
        description = json.loads((directory / DESCRIPTION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory}: not a QualiCLIP export folder ({err})") from err
    files = description.get("files")
    format = description.get("format")
    if format not in FORMATS or description.get("layout_version") != LAYOUT_VERSION or not isinstance(files, dict):
        raise CheckpointError(f"{directory}: {DESCRIPTION_FILE} describes no export this version reads")
    for name in MODEL_FILES[format]:
        if name not in files or not (directory / name).is_file():
            raise CheckpointError(f"{directory}: {name} is missing")
        verify_sha256(directory / name, files[name], verify=verify)
    return description
