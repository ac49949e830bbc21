"""What ``ssc share`` can be asked for: its options, their checks, and the identity of a
fine-tune run (what ``OUTPUT.partial`` must match to be resumed).

Importing this module loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soft_share_cli.errors import InputError

DEFAULT_FINETUNE_LR = 0.01  # the weights are trained already: a tenth of ssc train's rate
#: The options of the fine-tune on --data: given without it (or with --finetune-epochs 0, which
#: runs none) they would do nothing.
FINETUNE_OPTIONS = ("lr", "batch_size", "weight_decay", "align", "align_mode", "seed", "resume")


@dataclass(frozen=True)
class FinetuneOptions:
    """The fine-tune on ``--data``: the ``ssc train`` recipe (SGD + Nesterov, cosine)."""

    epochs: int = 5  # 0: measure only
    lr: float = DEFAULT_FINETUNE_LR
    batch_size: int = 64
    weight_decay: float = 5e-4  # on every parameter but the coefficients
    align: float = 0.0  # weight of the coefficient-alignment regulariser (grows loops)
    align_mode: str = "recurrent"
    seed: int = 0
    device: str = "cpu"  # where evaluation and fine-tune run; the conversion runs on the CPU


@dataclass(frozen=True)
class ShareOptions:
    """Everything ``ssc share`` can be asked for, besides the paths."""

    templates: int | None = None  # K for every group ...
    keep: float | None = None  # ... or the fraction of each group's squared norm to keep
    model: str | None = None  # "module:callable" building the user's own network
    groups: tuple[str, ...] = ()  # --groups: comma-separated module-name patterns per group
    data: str | None = None  # a --data spec: measure (and fine-tune) on it
    finetune: FinetuneOptions = FinetuneOptions()
    resume: bool = False  # continue the fine-tune kept in OUTPUT.partial


@dataclass(frozen=True)
class ShareRun:
    """The identity of a fine-tune run kept in ``OUTPUT.partial``: the train config plus what
    was shared (a resume with another source, K or groups would continue another network)."""

    train: Any  # training.classification.TrainConfig; None: no fine-tune
    source: str
    source_sha256: str
    templates: int | None
    keep: float | None
    groups: tuple[str, ...]
    model: str | None

    def to_dict(self) -> dict[str, Any]:
        """Flat, so that ``device`` stays the one field a resume may change."""
        unread = ("arch", "depth", "width", "num_templates")  # finetune reads none of these
        train = {"epochs": 0}
        if self.train is not None:
            train = {k: v for k, v in self.train.to_dict().items() if k not in unread}
        return {
            **train,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "templates": self.templates,
            "keep": self.keep,
            "groups": list(self.groups),
            "model": self.model,
        }


def inapplicable(given: set[str], data: bool, epochs: int, align: float, device: str) -> str | None:
    """Why options ``given`` on the command line (names as in :data:`FINETUNE_OPTIONS`, plus
    ``finetune_epochs`` and ``device``) would do nothing; None when every one applies."""
    unusable: list[str] = []
    if not data:
        unusable = sorted(given - {"device"})
    elif epochs == 0:
        unusable = sorted(given & set(FINETUNE_OPTIONS))
    if unusable:
        flags = ", ".join("--" + name.replace("_", "-") for name in unusable)
        verb, them = ("applies", "it") if len(unusable) == 1 else ("apply", "them")
        if not data:
            return (
                f"{flags} {verb} to the fine-tune on --data; give --data SPEC or leave {them} out"
            )
        return (
            f"{flags} {verb} to the fine-tune, and --finetune-epochs 0 runs none; leave {them} out"
        )
    if not data and "device" in given:
        return (
            f"--device {device} applies to the evaluation and fine-tune on --data; without "
            "--data the conversion runs on the CPU (leave --device out)"
        )
    if "align_mode" in given and not align:
        return "--align-mode chooses the alignment regulariser; it needs --align W > 0"
    return None


def check_options(path: str | Path, output: str | Path, options: ShareOptions) -> None:
    """Refuse what cannot work before anything is loaded (exit 2)."""
    from soft_share_cli.files import check_outputs
    from soft_share_cli.training.resume import partial_path

    if (options.templates is None) == (options.keep is None):
        raise InputError(
            "give the number of templates per group (--templates K) or the fraction of each "
            "group's weights to keep (--keep F), one of them"
        )
    if options.keep is not None and not 0.0 < options.keep <= 1.0:
        raise InputError(f"--keep {options.keep:g}: the kept fraction must lie in (0, 1]")
    if options.groups and options.model is None:
        raise InputError(
            "--groups names the layers of your own network (--model); a WRN shares as its SWRN "
            "(conv1 and conv2 of every block of a stage but the first): leave it out"
        )
    if Path(output).suffix.lower() == ".safetensors":
        raise InputError(
            f"-o {output}: ssc share writes a torch checkpoint (weights and metadata); name it "
            "*.pt (ssc fold writes the .safetensors)"
        )
    tuning = options.data is not None and options.finetune.epochs > 0
    if options.resume and not tuning:
        raise InputError("--resume continues an interrupted fine-tune; it needs --data")
    check_outputs({"-o": output}, {"CHECKPOINT": path})
    partial = partial_path(output)
    if options.resume and not partial.is_file():
        raise InputError(
            f"nothing to resume: {partial} does not exist (ssc share -o {output} --data ... "
            "writes it after every fine-tune epoch and removes it when the run completes)"
        )
    if tuning and not options.resume and partial.exists():
        raise InputError(
            f"{partial} holds an interrupted fine-tune; pass --resume to continue it, or delete "
            "it to start over"
        )


def train_config(tune: FinetuneOptions) -> Any:
    """The :class:`~soft_share_cli.training.classification.TrainConfig` of the fine-tune (its
    architecture fields are left at their defaults: the fine-tune does not read them)."""
    from soft_share_cli.training.classification import TrainConfig
    from soft_share_cli.training.regularizers import AlignMode

    return TrainConfig(
        epochs=tune.epochs,
        batch_size=tune.batch_size,
        lr=tune.lr,
        weight_decay=tune.weight_decay,
        align=tune.align,
        align_mode=AlignMode(tune.align_mode),
        seed=tune.seed,
        device=tune.device,
    )
