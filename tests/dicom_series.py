"""A small CT series written with pydicom (CT Image Storage, every attribute a DICOM SEG
needs from its source), shared by the DICOM tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.8, 5.0),
    origin: tuple[float, float, float] = (-10.0, 20.0, 30.0),
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    orientation: tuple[tuple[float, float, float], tuple[float, float, float]] = (
        (1.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
    ),
    prefix: str = "",
) -> str:
    """Write ``hu`` (z, y, x) as slices in ``folder``; returns the series UID.

    By default axial (LPS, rows along y, columns along x). ``orientation`` gives the
    direction cosines of a row and of a column (ImageOrientationPatient); slices step along
    their cross product. Pixels are stored as ``(hu - intercept) / slope``. ``prefix``
    names the files, so several series can share a folder.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    normal = np.cross(orientation[0], orientation[1])
    for k in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = folder / f"{prefix}{k:03d}.dcm"
        ds = FileDataset(str(name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^P", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", "CT", "test"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [
            float(o + k * spacing[2] * n) for o, n in zip(origin, normal, strict=True)
        ]
        ds.ImageOrientationPatient = [float(c) for c in (*orientation[0], *orientation[1])]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # between rows (y), between columns (x)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, slope, "HU"
        stored = np.round((hu[k].astype(np.float64) - intercept) / slope)
        ds.PixelData = np.ascontiguousarray(stored, dtype=np.int16).tobytes()
        ds.save_as(str(name), enforce_file_format=True)
    return series
