"""A ``.zip`` of a DICOM series as a predict input.

:func:`unpacked_inputs` unpacks each archive among the inputs into a temporary folder that
lives as long as the run (the DICOM SEG writer reads the source slices again at the end),
finds the DICOM series in it, in any sub-folder, and removes the folder afterwards, also
when the run fails. The scan is named by the archive's stem (``series.zip`` ->
``series_mask.nii.gz``, ``series.json``) and messages name the archive, not the temporary
folder. A damaged archive, one that holds no DICOM series, or one that would not fit on the
temporary disk is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from volseg.errors import InputError, cause_text
from volseg.inference.scans import ScanSource, dicom_series_ids, discover_scans


def is_zip(path: str | Path) -> bool:
    """True for a file named ``*.zip`` (any case)."""
    path = Path(path)
    return path.suffix.lower() == ".zip" and path.is_file()


@contextlib.contextmanager
def unpacked_inputs(
    items: Sequence[str | Path], series_uid: str | None = None
) -> Iterator[list[ScanSource]]:
    """The scans of ``items`` (:func:`discover_scans`), archives unpacked for the block."""
    with contextlib.ExitStack() as stack:
        sources: list[ScanSource] = []
        for item in items:
            if not is_zip(item):
                sources += discover_scans(item, series_uid)
                continue
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="volseg-zip-")))
            sources.append(archive_series(Path(item), root, series_uid))
        yield sources


def unpack(archive: Path, root: Path) -> None:
    """Extract ``archive`` into ``root`` (``zipfile`` keeps members inside it)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            size = sum(m.file_size for m in members)
            free = shutil.disk_usage(root).free
            if size > free:
                raise InputError(
                    f"{archive}: unpacks to {size / 1e9:.2f} GB, more than the "
                    f"{free / 1e9:.2f} GB free in {root.parent}"
                )
            for member in members:
                zf.extract(member, root)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
        raise InputError(
            f"{archive}: not a readable zip archive (damaged or truncated: {cause_text(exc)})"
        ) from None


def archive_series(archive: Path, root: Path, series_uid: str | None = None) -> ScanSource:
    """The one DICOM series in ``archive`` (or ``series_uid`` among several), unpacked
    into ``root``."""
    unpack(archive, root)
    folders = sorted({p.parent for p in root.rglob("*") if p.is_file()})
    found = [(folder, uid) for folder in folders for uid in dicom_series_ids(folder)]
    if not found:
        raise InputError(f"{archive}: no DICOM series in the archive")
    if series_uid is not None:
        chosen = [(folder, uid) for folder, uid in found if uid == series_uid]
        if not chosen:
            raise InputError(
                f"{archive}: series {series_uid} not found in the archive (has: "
                + ", ".join(sorted({uid for _, uid in found}))
                + ")"
            )
        found = chosen
    if len(found) > 1:
        raise InputError(
            f"{archive}: {len(found)} DICOM series in the archive, choose one with --series: "
            + ", ".join(uid for _, uid in found)
        )
    folder, uid = found[0]
    source = ScanSource(folder, uid)
    return replace(source, name=archive.stem, archive=archive, unpacked=root)
