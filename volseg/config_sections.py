"""The config's sections: typed, validated settings of each part of a run.

Each section forbids unknown keys and validates assignments. ``model.patch_size`` is the one
patch / sliding-window size (pretraining and fine-tuning crops, the predictor's ROI, the
TransUNet's reference token grid); ``model.params`` holds constructor arguments per backbone
name, so ``--set model.name=X`` switches between sizes written once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _positive_sizes(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value or min(value) < 1:
        raise ValueError("sizes must be at least 1")
    return value


class SplitConfig(Section):
    """Patient-level split, stratified by CT category and labeled/unlabeled."""

    seed: int = Field(0, ge=0)
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.25, ge=0.0, lt=1.0)


class DataConfig(Section):
    """Where the MosMed-layout dataset lives and how volumes are preprocessed."""

    root: Path = Path("data/synth")
    reference: Literal["masks", "truth"] = "masks"
    """Reference masks for evaluation: ``masks`` (MosMed's labeled subset) or ``truth``
    (a synthetic dataset's full ground truth)."""
    spacing: Triple = (1.5, 1.5, 5.0)
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    lung_density_hu: float | None = Field(None, ge=-990.0, le=-500.0)
    """Unset: HU as scanned. Set: every scan (training and predict) is remapped so its
    lungs' 5th HU percentile sits at this value, HU at or below -1000 and from 0 up unchanged
    (``volseg.geometry.align_lung_density``; needs lung masks; docs/synth.md)."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes of the training stages."""
    prepare_workers: int | None = Field(None, ge=0)
    """Processes for ``prepare``'s per-study work (dataset check, lung masks, cache): unset,
    one per core as far as the available memory allows (``volseg.data.workers``); 0, all in
    the main process."""
    cache: bool = True
    lungs: Literal["compute", "dataset"] = "compute"
    """Lung masks: ``compute`` them (``volseg.data.lungs``) or use the dataset's ``lungs/``
    folder (synthetic data)."""

    @field_validator("hu_window")
    @classmethod
    def _window_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError("lower bound must be below upper bound")
        return value

    @field_validator("spacing")
    @classmethod
    def _spacing_positive(cls, value: Triple) -> Triple:
        if min(value) <= 0:
            raise ValueError("spacing must be positive")
        return value


class ModelConfig(Section):
    """Segmentation network by registry name, its patch size, and sizes per backbone."""

    name: str = "transunet3d"
    recalibration: Literal["none", "se", "ssr"] = "none"
    patch_size: IntTriple = (96, 96, 32)
    """The one patch size: pretraining and fine-tuning crops, the sliding-window ROI of
    every whole-volume prediction, and the TransUNet's reference token grid."""
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Constructor arguments keyed by backbone name (``params.transunet3d.widths``); the
    entry of ``name`` is used, so several backbones' sizes can stand in one config."""

    _patch_positive = field_validator("patch_size")(_positive_sizes)

    @field_validator("params", mode="before")
    @classmethod
    def _per_backbone(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, entry in value.items():
                if not isinstance(entry, dict):
                    raise ValueError(
                        f"'{key}' is not a backbone entry: model.params is keyed by backbone "
                        f"name (model.params.<name>.{key}, e.g. model.params.transunet3d.{key})"
                    )
        return value


class TrainConfig(Section):
    """Settings shared by the three training stages."""

    enabled: bool = True
    epochs: int = Field(10, ge=1)
    iters_per_epoch: int = Field(50, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    grad_clip: float | None = 1.0
    amp: bool = True
    compile: bool = False
    channels_last: bool = False
    """On CUDA, keep weights and 5D batches in ``channels_last_3d`` (NDHWC) memory format:
    cuDNN's 3D convolutions then skip their layout transposes. Measured on an H100 with the
    default TransUNet3D at 128³: +46 % patches/s together with ``compile``, neutral eager
    (bench/README.md). Ignored on CPU."""
    val_every: int = Field(1, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    """Steps between mid-epoch ``checkpoint_last.pt`` writes (None: about four per epoch)."""
    log_every: int = Field(10, ge=1)
    """Steps between lines in ``metrics.jsonl`` / TensorBoard."""


class GanConfig(TrainConfig):
    """3D GAN that restores healthy lung; its residual on COVID scans is the pseudo-mask."""

    patch_size: IntTriple = (96, 96, 32)
    """The GAN's own crops and restoration windows (its generator is not the segmentation
    network, so this is not ``model.patch_size``)."""
    _patch_positive = field_validator("patch_size")(_positive_sizes)
    adversarial: Literal["lsgan", "hinge"] = "lsgan"
    l1_weight: float = Field(10.0, ge=0)
    adv_weight: float = Field(1.0, ge=0)
    threshold: float | None = None
    """Residual threshold for pseudo-masks; None: calibrate (labeled val, else train, scans;
    else healthy residuals)."""
    smoothing_sigma_mm: float = Field(2.0, ge=0)
    min_component_mm3: float = Field(50.0, ge=0)
    generator_params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of ``Generator3D`` (e.g. ``widths``, ``strides``)."""
    discriminator_params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of ``PatchDiscriminator3D``."""
    paint_categories: tuple[Literal["CT-1", "CT-2", "CT-3", "CT-4"], ...] = (
        "CT-1",
        "CT-2",
        "CT-3",
        "CT-4",
    )
    """Involvement bands the GAN's healthy crops are painted to, one drawn per crop (the
    share of the crop's lung): the lesion model of ``volseg synth`` and ``synth --paint``
    (:func:`volseg.data.paint.paint_patch`)."""

    @field_validator("paint_categories")
    @classmethod
    def _some_category(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one of CT-1, CT-2, CT-3, CT-4")
        return value

    lesion_l1_weight: float = Field(4.0, ge=0)
    """Extra restoration-L1 weight on corrupted voxels (1 + this, versus 1 elsewhere)."""
    val_crops: int = Field(8, ge=1)
    """Corrupted healthy crops scored by the validation restoration error."""
    select_by: Literal["pseudo_dice", "restore"] = "pseudo_dice"
    """Which checkpoint makes the pseudo-masks: ``pseudo_dice``, the one whose pseudo-masks
    best match the labeled validation scans' true masks (mean Dice at the threshold
    calibrated on them at each validation; the restoration error does not track it), or
    ``restore``, the lowest restoration L1 on ``val_crops`` corrupted healthy crops (also
    used when there is no labeled validation scan)."""
    overlap: float = Field(0.5, ge=0, lt=1)
    """Sliding-window overlap when restoring whole volumes for the residual."""
    sw_batch_size: int = Field(4, ge=1)
    healthy_percentile: float = Field(99.5, gt=0, lt=100)
    """Without labeled scans: threshold = this percentile of healthy in-lung residuals."""
    max_involvement_pct: float = Field(90.0, gt=0, le=100)
    """QC: a pseudo-mask involving more of the lungs than this is implausible."""


class PretrainConfig(TrainConfig):
    """Barlow Twins pretraining of the encoder on all training-split scans."""

    lambda_offdiag: float = Field(5e-3, ge=0)
    projector_dims: tuple[int, ...] = (512, 512, 512)
    _dims_positive = field_validator("projector_dims")(_positive_sizes)
    probe: bool = True
    """After training, fit a linear probe (lesion vs lung voxels) on frozen features of the
    pretrained and of a random encoder; writes ``pretrain/probe.json``."""
    probe_voxels: int = Field(500, ge=1)
    """Lesion voxels (and as many lung-background voxels) sampled per labeled scan."""


class FinetuneConfig(TrainConfig):
    """Supervised fine-tuning on true masks plus down-weighted pseudo-masks."""

    init: Literal["pretrained", "scratch"] = "pretrained"
    use_pseudo: bool = True
    pseudo_weight: float = Field(0.5, ge=0, le=1)
    pseudo_until: float = Field(1.0, gt=0, le=1)
    """Share of the fine-tuning steps during which pseudo-labeled scans are drawn; after it
    the crops come from the true masks (and healthy scans) alone, so the noisy pseudo-masks
    give a warm start that the true labels then refine. 1: the whole run. Ignored without
    labeled scans (0 labels: the pseudo-masks are all there is)."""
    pseudo_fraction: float | None = Field(None, ge=0, lt=1)
    """While pseudo-masks are drawn: the share of the lesion-scan crops taken from the
    pseudo-labeled scans (the labeled scans share the rest evenly), so a few true masks are
    not outnumbered by many pseudo-masks. None: every scan is drawn with equal probability.
    Ignored without labeled scans."""
    use_healthy: bool = False
    """Add the CT-0 training scans with an all-zero mask at weight 1: CT-0 means "no CT signs
    of viral pneumonia", so the empty mask is a true label, and it teaches the network that
    vessels and normal lung are not lesion (MosMed's labeled scans are all CT-1). Off by
    default: scans are drawn uniformly, so the share of lesion-free crops grows with the
    number of CT-0 scans. On the demo (5 labels, 480 steps) it cut the false positives
    on healthy test scans by ~43 % (test Dice 0.445 -> 0.449); with 120 steps the network
    learned to predict nothing at every label count of the study (docs/study.md)."""
    healthy_fraction: float | None = Field(None, ge=0, lt=1)
    """With ``use_healthy``: the share of training crops taken from the CT-0 scans (the rest
    spread evenly over the labeled and pseudo-labeled scans). None: every training scan is
    drawn with equal probability. 0.1 on the demo: no collapse with short training; with
    the lesion-presence gate, test Dice 0.785 vs 0.727 without healthy scans, because the
    gate is set from the false positives on healthy lungs (docs/study.md)."""
    painted_fraction: float | None = Field(None, ge=0, lt=1)
    """The share of training crops taken from copies of the CT-0 training scans with
    COVID-like lesions painted in (:func:`volseg.data.paint.paint_study`: one copy per
    category CT-1..CT-3, exact masks, weight 1): real-looking anatomy under lesions whose
    truth is known. Painted once into ``<run_dir>/finetune/painted/`` from seeds of the run
    seed and the study id. Never validation or test scans. None: off."""
    fov_cut_prob: float = Field(0.0, ge=0, le=1)
    """The share of training crops cut to a random run of their slices, with zeros (air at
    the HU window's lower end) above and below, as the sliding window pads a scan whose
    field of view along the body is shorter than the window (lung bases on an abdominal CT;
    :func:`volseg.data.patches.cut_field_of_view`). 0: off."""
    n_labeled: int | None = Field(None, ge=0)
    encoder_lr_mult: float = Field(0.5, gt=0)
    dice_weight: float = Field(1.0, ge=0)
    bce_weight: float = Field(1.0, ge=0)
    mse_weight: float = Field(0.5, ge=0)
    supcon_weight: float = Field(0.1, ge=0)
    sensitivity_beta: float = Field(2.0, ge=0)
    supcon_temperature: float = Field(0.1, gt=0)
    calibrate_gate: bool = False
    """After training, choose the lesion-presence gate (``predict.min_involvement_pct``) on
    the labeled validation scans and the healthy (CT-0) scans the network did not train on
    (validation, plus training ones unless ``use_healthy``), whose reference is empty by
    definition; stored in the model bundle (``finetune/summary.json`` has the cases)."""
    calibrate_review: bool | None = None
    """After training, choose predict's ``needs_review`` threshold on the labeled validation
    scans (:mod:`volseg.inference.review`): each is predicted under all eight flips (eight
    sliding-window passes per scan, once), and the uncertainty score that best separates
    those with Dice below ``review_dice_floor`` goes into the bundle. Needs at least
    ``review_min_scans`` of them; fewer: the ``predict.review_disagreement`` value stays.
    None: only when there are at most 16 (a small cost); true: whatever their number;
    false: never. Test scans are never used."""
    review_min_scans: int = Field(4, ge=1)
    """Fewest labeled validation scans the review threshold is chosen on."""
    review_dice_floor: float = Field(0.5, gt=0, le=1)
    """A validation scan below this Dice is one review should catch."""
    augment_on: Literal["worker", "device"] = "worker"
    """Where the training patches are augmented. ``worker``: MONAI's transforms, per sample
    in the DataLoader workers (CPU). ``device``: the workers only crop and draw each
    sample's parameters; the training step flips, rotates/scales (one ``grid_sample``),
    rescales, shifts and adds noise to the whole batch on the training device
    (:mod:`volseg.data.batch_augment`), because the per-sample CPU augmentation is what a
    GPU waits for (bench/README.md: it quarters the patches/s of a core). Same
    probabilities and ranges (:class:`volseg.data.transforms.AugmentRecipe`) and the same
    crops, but not the same batches: the random streams and the interpolation code differ,
    so a run's numbers change when this does. Resume stays exact either way; with
    ``device`` the noise differs between a CPU and a CUDA run of the same seed."""

    @model_validator(mode="after")
    def _shares_leave_room(self) -> FinetuneConfig:
        """The healthy (when used) and painted shares must leave crops to the lesion scans."""
        healthy = (self.healthy_fraction or 0.0) if self.use_healthy else 0.0
        shares = healthy + (self.painted_fraction or 0.0)
        if shares >= 1.0:
            raise ValueError(
                f"healthy_fraction + painted_fraction must be below 1 (got {shares:g}): "
                "the labeled and pseudo-labeled scans need a share of the crops"
            )
        return self


class PredictConfig(Section):
    """Sliding-window inference and post-processing (the ROI is ``model.patch_size``)."""

    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(4, ge=1)
    tta: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """The network's arithmetic: ``auto`` autocasts on a GPU and runs fp32 on a CPU;
    ``fp32`` everywhere (exact); ``bf16`` everywhere, the CPU included (about twice as fast
    on CPUs with AVX512-BF16 or AMX; masks differ from fp32's on a few voxels near the
    threshold, bench/README.md)."""
    threshold: float = Field(0.5, gt=0, lt=1)
    min_component_mm3: float = Field(10.0, ge=0)
    min_involvement_pct: float | None = Field(None, ge=0, lt=100)
    """Lesion-presence gate: a scan whose predicted lesions fill less than this share (%) of
    its lungs is called lesion-free (empty mask, CT-0). None: the model bundle's value (set
    by ``finetune.calibrate_gate``, else 0 = no gate). Needs the lung mask."""
    restrict_to_lungs: bool = True
    lung_margin_mm: float = Field(10.0, ge=0, le=50)
    """Predicted lesion is kept within this distance (mm) of the lung mask, in components
    that touch it: consolidation at the chest wall and mediastinum is as dense as soft tissue
    and lies just outside an automatic lung mask. 0: strictly inside the mask."""
    consolidation_min_hu: float = Field(-200.0, ge=-900, le=200)
    """Lesion voxels at or above this density are consolidation, the rest ground glass
    (``ggo_ml`` / ``consolidation_ml`` in predict's JSON; ``volseg.quantify``)."""
    uncertainty: bool = False
    """Predict under all eight flips: ``<id>_uncertainty.nii.gz`` (max - min probability per
    voxel), ``uncertainty_score`` (how much the flips disagree on the lesion) and
    ``needs_review`` in the JSON. Eight times the network time."""
    review_disagreement: float | None = Field(None, ge=0, le=1)
    """``needs_review`` when the flips disagree on at least this share of the lesion. None:
    the model bundle's (chosen on validation by ``finetune.calibrate_review``), else 0.5."""
    ood_check: bool = True
    """Compare each scan with the model's training scans (spacing, lung HU; recorded in the
    bundle at fine-tuning) and report ``out_of_distribution`` in its JSON, with one console
    warning per run naming the flagged scans (:mod:`volseg.inference.ood`)."""
    ood_in_plane_margin_mm: float = Field(0.2, ge=0)
    """Flag a scan whose in-plane voxel spacing lies more than this outside the training
    scans' range (mm)."""
    ood_slice_margin_mm: float = Field(1.0, ge=0)
    """Flag a scan whose slice spacing lies more than this outside the training range (mm)."""
    ood_lung_hu_margin: float = Field(50.0, ge=0)
    """Flag a scan whose lung HU median or 10th percentile lies more than this outside the
    training scans' range (HU, on the preprocessing window). The synthetic validation and test
    scans of the tiny and demo presets lie within 27 HU of their training range; the real
    LIDC-IDRI-0001 CT 51-127 HU outside it (docs/pipeline.md)."""
    write_prob: bool = False
    write_types: bool = False
    """Also write ``<id>_types.nii.gz`` (1 ground glass, 2 consolidation)."""


class EvaluateConfig(Section):
    """Metrics report settings."""

    bootstrap: int = Field(1000, ge=0)
    nsd_tolerance_mm: float = Field(2.0, gt=0)
    involvement_bins: tuple[float, ...] = (0.0, 5.0, 25.0, 50.0, 100.0)
