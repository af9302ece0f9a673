"""Where a model's weights go: one device, or a device map over several (models larger than a GPU).

``load_model(name, device_map=...)`` or ``load_model(name, n_devices=2)`` end up here. Bundled
models are read from the lenslib cache by ``AutoModelForCausalLM.from_pretrained(...,
device_map=...)`` (accelerate dispatches the layers) and then wrapped by
``TransformerBridge.boot_transformers(hf_model=...)``, which reads the placement from the model's
``hf_device_map`` (it refuses ``device_map`` together with a pre-loaded model). Hub models pass
``device_map`` / ``max_memory`` straight to ``boot_transformers``.

>>> resolve_placement("cpu", None, None)
Placement(device='cpu', device_map=None, max_memory=None)
>>> resolve_placement(None, {"": "cpu"}, None).from_pretrained_kwargs()
{'device_map': {'': 'cpu'}}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from lenslib.errors import InputError

DeviceMap = Union[str, dict]


@dataclass(frozen=True)
class Placement:
    """One device (``device``), or a device map (``device_map``, optional ``max_memory``)."""

    device: Optional[str]
    device_map: Optional[DeviceMap]
    max_memory: Optional[dict]

    def from_pretrained_kwargs(self) -> dict:
        """Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` (none for one device)."""
        if self.device_map is None:
            return {}
        kwargs = {"device_map": self.device_map}
        if self.max_memory is not None:
            kwargs["max_memory"] = self.max_memory
        return kwargs

    def boot_kwargs(self, *, preloaded: bool) -> dict:
        """Keyword arguments for ``boot_transformers``; with ``preloaded`` (``hf_model=``) the
        map is already applied, and the bridge reads it from ``hf_device_map``."""
        if self.device_map is None:
            return {"device": self.device}
        return {} if preloaded else self.from_pretrained_kwargs()


def resolve_placement(
    device: Union[str, torch.device, None], device_map: Optional[DeviceMap], n_devices: Optional[int]
) -> Placement:
    """Check the three placement arguments of :func:`lenslib.load_model` and combine them.

    ``n_devices > 1`` becomes accelerate's ``"balanced"`` map with a memory budget per visible
    GPU (TransformerLens's own translation); ``n_devices`` of 1 or ``None`` means one device.

    Raises:
        ValueError: ``device`` together with ``device_map`` or ``n_devices > 1``; a bad
            ``n_devices``; more GPUs asked for than CUDA sees.
    """
    if n_devices is not None and (isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1):
        raise InputError(f"n_devices must be a positive int, got {n_devices!r}")
    spread = device_map is not None or (n_devices or 1) > 1
    if spread and device is not None:
        raise InputError(
            f"pass either device={device!r} (one device) or device_map / n_devices (several), not "
            "both; e.g. load_model(name, device_map='auto') or load_model(name, n_devices=2)."
        )
    if not spread:
        return Placement(str(device) if device is not None else default_device(), None, None)
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    resolved, max_memory = resolve_device_map(n_devices, device_map, None, None)
    return Placement(None, resolved, max_memory)


def default_device() -> str:
    """``"cuda"`` when a GPU is visible to torch, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"
