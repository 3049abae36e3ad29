"""Settings of the lung masking (:func:`volseg.data.lungs.lung_mask`), all in physical
units (HU, mm, mm², mL), checked on construction; ``volseg lungs`` takes its defaults."""

from __future__ import annotations

from dataclasses import dataclass

from volseg.errors import ConfigError


@dataclass(frozen=True)
class LungParams:
    """Settings of :func:`lung_mask`, all in physical units (HU, mm, mL)."""

    grid_mm: float = 2.0
    """Working grid: native voxels are averaged in blocks of about this size (mm)."""
    air_floor_hu: float = -1024.0
    """Values below this (scan-circle padding: -2048, -3024) are taken as air."""
    threshold_hu: float = -400.0
    """Voxels below this are air or aerated lung."""
    min_component_ml: float = 0.1
    """Air components smaller than this are never lung."""
    lung_p10_margin_hu: float = 60.0
    """Aerated lung: its darkest tenth stays at least this far above the scanner's air."""
    emphysema_min_ml: float = 500.0
    """A component this large whose median is lung-like is lung even if partly pure air."""
    cut_lung_in_thorax: float = 0.2
    """A lung-like component that reaches the side of the field of view is lung only if at
    least this share of it lies inside the per-slice hull of the ribs, spine and sternum
    (counted on slices where that hull spans at least ``thorax_min_mm2``); otherwise it is
    outside air with something in it: the foam pad or immobilisation cushion under a
    patient, cut off from the room air by a tight field of view (the 4D-Lung radiotherapy
    CT, docs/lungs.md)."""
    thorax_min_mm2: float = 10000.0
    """A slice's bony hull must span at least this (mm²) to judge what lies inside the
    thorax: a vertebra alone is 1000-2000 mm², an adult rib cage 30000-70000 mm²."""
    second_lung_fraction: float = 0.1
    """Keep another group of lung-like components if at least this share of the largest."""
    satellite_mm: float = 10.0
    """Lung-like components this close to each other are pieces of one lung (one group)."""
    airway_margin_hu: float = 60.0
    """Airway lumen: within this of the scanner's air value."""
    airway_area_mm2: tuple[float, float] = (80.0, 700.0)
    """Cross-section (mm^2) of a tracheal seed."""
    airway_offset_mm: float = 40.0
    """A tracheal seed lies at most this far from the middle of the air in view."""
    airway_max_ml: float = 150.0
    """A larger airway tree has leaked into lung and is cut back."""
    airway_wall_mm: float = 3.0
    """In-plane reach (mm) of the airway lumen's partial-volume wall, removed with it."""
    closing_mm: float = 5.0
    """Radius of the rolling-ball closing that pulls vessels and pleural lesions in."""
    hole_max_mm2: float = 400.0
    """2D holes up to this area (mm^2) are vessels or nodules; larger ones need lesion."""
    pleural_fill: bool = True
    """Fill lesions that dent a lung (see lung_fill._fill_hull_dents)."""
    ggo_max_hu: float = -250.0
    """Dense ground glass spans threshold_hu..ggo_max_hu; soft tissue lies above."""
    min_ggo_fraction: float = 0.2
    """Share of ground glass that marks a dent of a lung as lesion, not organ."""
    ggo_reach_mm: float = 20.0
    """Extensive disease: thick ground glass is added up to this path length (mm)."""
    dense_fill: bool = True
    """In extensive disease, grow the lungs into consolidation (see grow_into_lesions)."""
    dense_min_ggo_share: float = 0.3
    """Extensive disease: thick ground glass at least this share of the lung volume."""
    ggo_min_hu: float = -720.0
    """Lower bound of ground glass for that test; healthy aerated lung lies below."""
    ggo_open_mm: float = 3.0
    """Ground glass thinner than this (radius, mm) is a partial-volume rim."""
    bone_hu: float = 200.0
    """Ribs, spine and sternum are above this; their hull per slice bounds the thorax."""
    cavity_margin_mm: float = 5.0
    """Inward margin (mm) from that hull to the pleural cavity."""
    dense_smoothing_mm: float = 3.0
    """In-plane Gaussian sigma (mm) before judging consolidation against organs."""
    dense_max_hu: float = 20.0
    """Consolidation is below this after smoothing; heart, liver and muscle lie above."""
    fat_hu: tuple[float, float] = (-130.0, -30.0)
    """Thick regions in this range (after smoothing) are fat, or tissue mostly fat, never
    lung: mediastinal and pericardial fat, and the fat mixed with muscle and bowel in the
    neck and under the domes, where the growth into consolidation otherwise leaks on real
    scans (consolidation holds no fat: -10..+50 HU; docs/lungs.md)."""
    mediastinum_solidity: float = 0.5
    """Extensive disease: growth stays out of the region between the two lungs on slices
    where each lung fills at least this share of its convex hull (lung_fill.between_lungs;
    1 keeps it out only between perfectly convex lungs, i.e. almost never)."""
    dense_open_mm: float = 4.0
    """Radius (mm) of the opening that cuts thin bridges from consolidation to organs."""
    dense_reach_mm: float = 80.0
    """Consolidation is added up to this in-plane path length (mm) from ground glass."""
    min_total_ml: float = 1500.0
    """QC: fewer lungs than this (whole lungs in view) is implausible for an adult."""
    max_total_ml: float = 9000.0
    """QC: more than this is implausible."""

    def __post_init__(self) -> None:
        for name in (
            "grid_mm",
            "min_component_ml",
            "lung_p10_margin_hu",
            "emphysema_min_ml",
            "satellite_mm",
            "airway_margin_hu",
            "airway_offset_mm",
            "airway_max_ml",
            "airway_wall_mm",
            "closing_mm",
            "hole_max_mm2",
            "thorax_min_mm2",
            "ggo_open_mm",
            "cavity_margin_mm",
            "dense_smoothing_mm",
            "dense_open_mm",
            "dense_reach_mm",
            "ggo_reach_mm",
            "min_total_ml",
            "max_total_ml",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"lungs.{name} must be >= 0, got {getattr(self, name)}")
        if self.grid_mm <= 0:
            raise ConfigError(f"lungs.grid_mm must be > 0, got {self.grid_mm}")
        for name in (
            "second_lung_fraction",
            "min_ggo_fraction",
            "dense_min_ggo_share",
            "mediastinum_solidity",
            "cut_lung_in_thorax",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"lungs.{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.ggo_min_hu < self.ggo_max_hu:
            raise ConfigError("lungs.ggo_min_hu must be below lungs.ggo_max_hu")
        if not self.fat_hu[0] < self.fat_hu[1]:
            raise ConfigError(f"lungs.fat_hu must be (low, high), got {self.fat_hu}")
        if not self.airway_area_mm2[0] < self.airway_area_mm2[1]:
            raise ConfigError(
                f"lungs.airway_area_mm2 must be (low, high), got {self.airway_area_mm2}"
            )
        if not self.min_total_ml < self.max_total_ml:
            raise ConfigError("lungs.min_total_ml must be below lungs.max_total_ml")
