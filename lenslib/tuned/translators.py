"""Tuned-lens translators: one affine map per layer, applied to the residual stream before ``ln_final``.

The tuned lens (Belrose et al. 2023, https://arxiv.org/abs/2303.08112) decodes layer ``l`` as
``unembed(ln_final(h + h @ A_l + b_l))`` instead of ``unembed(ln_final(h))``. With ``A_l = 0``
and ``b_l = 0`` it is exactly the logit lens. The final layer (``"final_post"``) is never
translated: it is the model's own prediction.

>>> import lenslib
>>> from lenslib.tuned.translators import TunedLens
>>> model = lenslib.load_model("tiny-llama")
>>> lens = TunedLens.identity(model)
>>> lens.labels                      # one translator per accumulated_resid entry but the last
['0_pre', '1_pre']
>>> lens.A.shape                     # [layer, d_model, d_model]; row vectors: h @ A
torch.Size([2, 32, 32])
>>> plain = lenslib.logit_lens(model, "abc")
>>> tuned = lenslib.logit_lens(model, "abc", lens=lens)
>>> bool((plain.kl_to_final == tuned.kl_to_final).all())   # identity = the logit lens, exactly
True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lenslib.core.files import write_atomic
from lenslib.errors import LensMismatchError

if TYPE_CHECKING:
    pass

WEIGHTS_FILE = "translators.safetensors"
RECORD_FILE = "record.json"



def lens_labels(n_layers: int, incl_mid: bool = False) -> list[str]:
    """``accumulated_resid`` labels, in its order, without ``"final_post"``.

    >>> lens_labels(2, incl_mid=True)
    ['0_pre', '0_mid', '1_pre', '1_mid']
    """
    labels = []
    for l in range(n_layers):
        labels.append(f"{l}_pre")
        if incl_mid:
            labels.append(f"{l}_mid")
    return labels


def model_signature(model) -> dict:
    """What a set of translators must agree with: model name, layers, width, vocabulary."""
    cfg = model.cfg
    return {
        "model_name": str(getattr(cfg, "model_name", "")),
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_vocab": int(cfg.d_vocab),
    }


@dataclass
class TunedLens:
    """One affine translator ``h -> h + h @ A[i] + b[i]`` per lens layer ``labels[i]``.

    Attributes:
        labels: the ``accumulated_resid`` labels translated (``"final_post"`` never is).
        A: ``[layer, d_model, d_model]`` the translators' linear parts (0 = identity).
        b: ``[layer, d_model]`` their biases.
        signature: the model they belong to (see :func:`model_signature`).
        record: free-form provenance: corpus, recipe, held-out scores, fit time.
    """

    labels: list[str]
    A: Float[Tensor, "layer d_model d_model"]
    b: Float[Tensor, "layer d_model"]
    signature: dict
    record: dict = field(default_factory=dict)

    def __post_init__(self):
        n, d = len(self.labels), self.signature["d_model"]
        if tuple(self.A.shape) != (n, d, d) or tuple(self.b.shape) != (n, d):
            raise LensMismatchError(
                f"translators for {n} layers of width {d} need A of shape {(n, d, d)} and b of "
                f"shape {(n, d)}; got {tuple(self.A.shape)} and {tuple(self.b.shape)}"
            )

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def identity(cls, model, *, incl_mid: bool = False) -> "TunedLens":
        """Zero translators (the logit lens) for every layer of ``model``."""
        sig = model_signature(model)
        labels = lens_labels(sig["n_layers"], incl_mid)
        d = sig["d_model"]
        return cls(labels, torch.zeros(len(labels), d, d), torch.zeros(len(labels), d), sig)

    # -- use --------------------------------------------------------------------------------

    def check_model(self, model) -> None:
        """Raise :class:`LensMismatchError`, naming both, if the lens is not for ``model``."""
        theirs = model_signature(model)
        differ = [k for k in ("n_layers", "d_model", "d_vocab") if theirs[k] != self.signature[k]]
        if self.signature["model_name"] and theirs["model_name"] != self.signature["model_name"]:
            differ.insert(0, "model_name")
        if differ:
            raise LensMismatchError(
                f"these translators were fitted for {self.signature} but the model is {theirs} "
                f"(differs in {', '.join(differ)}); get this model's lens with lenslib.tuned_lens(model) "
                "(bundled models) or fit one with lenslib.fit_tuned_lens(model, texts)."
            )

    def translate(
        self, stack: Float[Tensor, "layer *rows d_model"], labels: Sequence[str]
    ) -> Float[Tensor, "layer *rows d_model"]:
        """Translate each entry of a raw (un-normalised) ``accumulated_resid`` stack.

        Entries labelled ``"final_post"`` pass unchanged. An entry whose label has no
        translator raises :class:`LensMismatchError` (e.g. ``incl_mid=True`` with a lens
        fitted without the ``_mid`` entries).
        """
        index = {label: i for i, label in enumerate(self.labels)}
        out = []
        for entry, label in zip(stack, labels):
            if label == "final_post":
                out.append(entry)
                continue
            if label not in index:
                raise LensMismatchError(
                    f"the lens has no translator for {label!r} (it has {self.labels[0]}..."
                    f"{self.labels[-1]}); fit one with incl_mid=True to lens the _mid entries"
                )
            i = index[label]
            A, b = self.A[i].to(entry), self.b[i].to(entry)
            out.append(entry + torch.matmul(entry, A) + b)
        return torch.stack(out)

    def as_transformer_lens(self, *, incl_mid: bool = False) -> Callable[[Tensor, int], Tensor]:
        """A ``lens(entry, index)`` for TransformerLens's ``tools.analysis.logit_lens(..., lens=)``.

        ``index`` is the entry's index in ``accumulated_resid(incl_mid=incl_mid)``; pass the
        same ``incl_mid`` to both.
        """
        labels = lens_labels(self.signature["n_layers"], incl_mid) + ["final_post"]

        def translator(entry: Tensor, index: int) -> Tensor:
            return self.translate(entry.unsqueeze(0), [labels[index]])[0]

        return translator

    # -- files ------------------------------------------------------------------------------

    def save(self, path: os.PathLike, *, prefix: str = "") -> Path:
        """Write ``{prefix}translators.safetensors`` and ``{prefix}record.json`` into ``path``.

        Both files are written under temporary names and renamed: an interrupted save leaves
        the previous files, never half-written ones.
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"labels": json.dumps(self.labels), "signature": json.dumps(self.signature)}
        tensors = {"A": self.A.detach().float().contiguous(), "b": self.b.detach().float().contiguous()}
        write_atomic(path / (prefix + WEIGHTS_FILE), lambda tmp: save_file(tensors, tmp, metadata=meta))
        record = {"signature": self.signature, "labels": self.labels, **self.record}
        write_atomic(path / (prefix + RECORD_FILE), lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
        return path

    @classmethod
    def load(cls, path: os.PathLike, model=None, *, prefix: str = "") -> "TunedLens":
        """Read what :meth:`save` wrote; with ``model``, check the lens belongs to it.

        Raises:
            LensMismatchError: ``model`` is not the model the lens was fitted for.
        """
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path / (prefix + WEIGHTS_FILE)), framework="pt") as handle:
            meta = handle.metadata()
            A, b = handle.get_tensor("A"), handle.get_tensor("b")
        record = {}
        if (path / (prefix + RECORD_FILE)).is_file():
            record = json.loads((path / (prefix + RECORD_FILE)).read_text())
            record.pop("signature", None), record.pop("labels", None)
        lens = cls(json.loads(meta["labels"]), A, b, json.loads(meta["signature"]), record)
        if model is not None:
            lens.check_model(model)
        return lens

    @classmethod
    def from_tuned_lens_package(cls, path: os.PathLike, model) -> "TunedLens":
        """Import an artifact of the ``tuned-lens`` package (``config.json`` + ``params.pt``).

        That package (https://github.com/AlignmentResearch/tuned-lens) saves one
        ``torch.nn.Linear(d_model, d_model)`` per hidden state but the last, as the state dict
        of a ``ModuleList`` (``"{i}.weight"``, ``"{i}.bias"``) and decodes
        ``h + weight @ h + bias``; hidden state ``i`` is ``accumulated_resid`` entry
        ``"{i}_pre"``.

        Raises:
            LensMismatchError: the artifact's ``d_model`` or layer count is not the model's.
        """
        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        state = torch.load(path / "params.pt", map_location="cpu", weights_only=True)
        sig = model_signature(model)
        theirs = (config.get("num_hidden_layers"), config.get("d_model"))
        n = sum(1 for key in state if key.endswith(".weight") and key.split(".")[0].isdigit())
        if theirs != (sig["n_layers"], sig["d_model"]) or n != sig["n_layers"]:
            raise LensMismatchError(
                f"the tuned-lens artifact in {path} is for {config.get('base_model_name_or_path')!r} "
                f"with {theirs[0]} layers of width {theirs[1]} ({n} translators), but the model "
                f"{sig['model_name']!r} has {sig['n_layers']} layers of width {sig['d_model']}"
            )
        A = torch.stack([state[f"{i}.weight"].float().T for i in range(n)])
        b = torch.stack([
            state[f"{i}.bias"].float() if f"{i}.bias" in state else torch.zeros(sig["d_model"])
            for i in range(n)
        ])
        record = {"imported_from": str(path), "tuned_lens_config": config}
        return cls(lens_labels(n), A, b, sig, record)
