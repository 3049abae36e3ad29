"""DICOM Segmentation output (highdicom) for a prediction made from a DICOM series.

The SEG references every slice of the source series and holds one frame per source
slice, in the series' own geometry: each frame's pixels are looked up in the native-grid
mask through the series' affine (image position, orientation, pixel spacing of each
slice), never by assuming an axis order. Segments: "COVID-19 lesion" (SNOMED CT
morphologically abnormal structure / lesion), or, with the ground-glass / consolidation
split, "Ground-glass opacity" (DICOM 112120) and "Consolidation" (a volseg local code: the
code dictionaries shipped with pydicom hold no consolidation concept).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volseg.errors import InputError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
LOCAL_SCHEME = "99VOLSEG"


@dataclass(frozen=True)
class Segment:
    """One segment of the SEG: the mask label it holds and its coded meaning."""

    label: int
    name: str
    code: tuple[str, str, str]  # (value, scheme, meaning) of the segmented property type


LESION = Segment(1, "COVID-19 lesion", ("52988006", "SCT", "Lesion"))
GROUND_GLASS = Segment(1, "Ground-glass opacity", ("112120", "DCM", "Ground glass opacity"))
CONSOLIDATION = Segment(2, "Consolidation", ("consolidation", LOCAL_SCHEME, "Consolidation"))


def _read_series(files: list[str]) -> list:
    import pydicom

    try:
        return [pydicom.dcmread(f) for f in files]
    except Exception as exc:  # pydicom raises many kinds for a bad file
        raise InputError(f"{files[0]}: cannot read the DICOM series for the SEG ({exc})") from exc


def _frames(labels: np.ndarray, affine: np.ndarray, datasets: list) -> np.ndarray:
    """(n_slices, rows, columns) label frames, one per source slice, sampled from the
    native-grid ``labels`` through the scan's RAS ``affine`` (nearest voxel)."""
    inverse = np.linalg.inv(affine)
    frames = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), np.uint8)
    for n, ds in enumerate(datasets):
        origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        cosines = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        row_step, col_step = (float(v) for v in ds.PixelSpacing)  # between rows, columns
        rows, cols = frames.shape[1:]
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = origin + c[..., None] * col_step * cosines[:3] + r[..., None] * row_step * cosines[3:]
        ras = lps @ _LPS_TO_RAS.T
        index = np.rint(ras @ inverse[:3, :3].T + inverse[:3, 3]).astype(int)
        inside = np.all((index >= 0) & (index < np.asarray(labels.shape)), axis=-1)
        if not inside.all():
            raise InputError(
                f"{ds.filename}: slice lies outside the predicted volume; the series changed"
            )
        frames[n] = labels[index[..., 0], index[..., 1], index[..., 2]]
    return frames


def write_dicom_seg(
    path: Path,
    labels: np.ndarray,
    affine: np.ndarray,
    source_files: list[str],
    segments: tuple[Segment, ...],
    version: str,
) -> Path:
    """Write ``labels`` (native grid; each segment's ``label``) as a DICOM SEG at ``path``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    datasets = _read_series(source_files)
    frames = _frames(np.asarray(labels, dtype=np.uint8), affine, datasets)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="volseg", family=codes.cid7162.ArtificialIntelligence, version=version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=s.name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=hd.sr.CodedConcept(*s.code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, s in enumerate(segments, start=1)
    ]
    numbered = np.zeros_like(frames)
    for i, s in enumerate(segments, start=1):
        numbered[frames == s.label] = i
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=numbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="volseg",
        manufacturer_model_name="volseg",
        software_versions=version,
        device_serial_number="0",
        series_description="volseg COVID-19 lesions",
        omit_empty_frames=False,
    )
    seg.save_as(str(path))
    return path
