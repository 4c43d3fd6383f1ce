"""Series routing: which of the three series types each series of a study is, and on what
basis, for a study that comes without series_descriptions.csv (an upload).

Per series, the first basis that decides (``BASES``):

1. ``override``: the caller's type for that series id;
2. ``description``: SeriesDescription names a type (``type_of_description``: case,
   separators, "T2/STIR", "STIR", "T2 STIR", "SAG", "AX" tolerated; a word outside
   ``DESCRIPTION_WORDS`` or a conflicting plane or weighting is no match);
3. ``timing``: the plane from ImageOrientationPatient (``plane_of``: the slice normal mostly
   along x (LPS) is sagittal, along z axial; coronal and oblique series are not routable)
   and the weighting from RepetitionTime, EchoTime and InversionTime (``weighting_of``);
4. ``plane``: an axial series whose timing is missing or inconclusive is Axial T2, the
   dataset's only axial type;
5. ``image``: a sagittal series whose timing is missing or inconclusive, from the pixels of
   its middle slice (``canal_contrast``): the spinal canal's CSF is bright on T2 and STIR,
   dark on T1;

else ``unroutable``, with the reason. Headers are read without pixels and only the tags in
``HEADER_TAGS``; the image basis decodes one slice. A reason names planes, types, TR, TE and
TI in ms, and quotes a SeriesDescription only when every word of it is a known one: never a
name, id, UID or date.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from spinegrade.core import vocab
from spinegrade.core.errors import ConfigError, DataError, DicomError
from spinegrade.data.dicom import read_slice
from spinegrade.data.geometry import slice_normal

BASES: tuple[str, ...] = ("override", "description", "timing", "plane", "image", "unroutable")

ROUTING_COLUMNS: tuple[str, ...] = (*vocab.SERIES_CSV_HEADER, "basis", "reason")

# The only tags routing reads (no pixels): no identifier is ever read.
HEADER_TAGS = (
    "SeriesDescription",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
)

PLANES = ("sagittal", "coronal", "axial")  # the slice normal mostly along x, y, z (LPS)

# A plane is named when the slice normal's largest component is at least this cosine
# (about 37 degrees off the axis at most); a more oblique series is not routable.
PLANE_MIN_COSINE = 0.8

# Weighting from the sequence timing (ms). T1: short TR and short TE. T2: long TR and long
# TE. STIR: an inversion time short enough to null fat (about 0.69 x fat's T1: 150-250 ms
# at 1.5-3 T) with a long TR, whatever its TE. Anything between (proton density: long TR,
# short TE; T1-FLAIR: TI of about 1 s) is inconclusive and leaves the decision to the image.
T1_MAX_TR_MS = 1000.0
T1_MAX_TE_MS = 30.0
T2_MIN_TR_MS = 2000.0
T2_MIN_TE_MS = 60.0
STIR_MAX_TI_MS = 300.0

# The image basis (``canal_contrast``): the median intensity of each column along the
# spine's superior-inferior axis, in the middle half of the slice both ways (the field of
# view centres on the spine; the subcutaneous fat at the body's edge, bright on T1, stays
# out). Each column's mean over +-CANAL_SMOOTH_MM (which averages out bands much thinner
# than the canal, such as the posterior epidural fat, bright on T1) is compared with the
# two columns CANAL_FLANK_MM away on either side, a little more than the canal's half width
# (its AP diameter is about 15 mm). The canal is the strongest band of its width: brighter
# than both flanks on T2/STIR (CSF), darker on T1. On synthetic sagittal series at
# difficulty 1 (about 200, at 2.3 and at 0.8 mm pixels) the T1 contrasts stayed at or below
# -0.13 and the T2/STIR ones at or above +0.5; at difficulty 2, 2 of 60 crossed.
CANAL_FLANK_MM = 12.0
CANAL_SMOOTH_MM = 3.0
CENTRAL_FRACTION = 0.5
CANAL_CONTRAST_THRESHOLD = 0.0  # above: T2/STIR; at or below: T1

# SeriesDescription words (lowercase, split at anything but letters and digits).
PLANE_WORDS = {
    "sag": "sagittal",
    "sagittal": "sagittal",
    "ax": "axial",
    "axial": "axial",
    "tra": "axial",
    "transverse": "axial",
}
WEIGHTING_WORDS = {"t1": "T1", "t1w": "T1", "t2": "T2", "t2w": "T2", "stir": "STIR", "tirm": "STIR"}
# Words that may stand beside them (sequence names, fat saturation, the body part).
OTHER_WORDS = frozenset(
    {"tse", "fse", "frfse", "se", "w", "weighted", "fs", "fat", "sat", "fatsat", "spair"}
    | {"l", "lumbar", "spine", "lspine"}
)
DESCRIPTION_WORDS = frozenset(PLANE_WORDS) | frozenset(WEIGHTING_WORDS) | OTHER_WORDS


@dataclass(frozen=True)
class Route:
    """One series' decision: ``series_type`` (None when not routable), ``basis`` (one of
    ``BASES``) and a short ``reason`` free of identifiers."""

    series_id: int
    series_type: str | None
    basis: str
    reason: str
    warning: str = ""  # e.g. the description's plane disagrees with the geometry


@dataclass
class Routing:
    """The routed series of one or more studies.

    Attributes:
        series: one row per series folder, columns ``ROUTING_COLUMNS`` (study_id, series_id
            int64; series_description the decided type, "" when not routable).
        warnings: a study lacking a type, two series routed to one sagittal type, a series
            not routed, a description that disagrees with the geometry; each names the
            study (and series) by its folder number.
    """

    series: pd.DataFrame
    warnings: list[str]

    def table(self) -> pd.DataFrame:
        """The routed series as ``tables.read_series_table`` returns a series CSV: study_id,
        series_id (int64), series_description; unroutable series left out."""
        routed = self.series[self.series["series_description"] != ""]
        return routed[list(vocab.SERIES_CSV_HEADER)].reset_index(drop=True)


def type_of_description(description: str) -> str | None:
    """The series type a SeriesDescription names, or None.

    Case and separators do not matter ("SAG T2/STIR", "sagittal_t2_stir", "Sag STIR",
    "AX T2 TSE"); every word must be in ``DESCRIPTION_WORDS``, the plane must be one, and the
    weighting T1 alone (Sagittal T1), T2 and/or STIR (Sagittal T2/STIR) or T2 alone (Axial T2).
    """
    words = [w for w in re.split(r"[^a-z0-9]+", str(description).lower()) if w]
    if not words or any(w not in DESCRIPTION_WORDS for w in words):
        return None
    planes = {PLANE_WORDS[w] for w in words if w in PLANE_WORDS}
    weights = {WEIGHTING_WORDS[w] for w in words if w in WEIGHTING_WORDS}
    if planes == {"sagittal"} and weights == {"T1"}:
        return vocab.SAGITTAL_T1
    if planes == {"sagittal"} and weights and weights <= {"T2", "STIR"}:
        return vocab.SAGITTAL_T2
    if planes == {"axial"} and weights == {"T2"}:
        return vocab.AXIAL_T2
    return None


def plane_of(iop: Iterable[float]) -> str:
    """ "sagittal", "coronal" or "axial" (the slice normal mostly along x, y or z), or
    "oblique" when no component reaches ``PLANE_MIN_COSINE``."""
    normal = np.abs(slice_normal(np.asarray(list(iop), dtype=np.float64)))
    k = int(np.argmax(normal))
    return PLANES[k] if normal[k] >= PLANE_MIN_COSINE else "oblique"


def weighting_of(tr: float | None, te: float | None, ti: float | None) -> str | None:
    """ "T1", "T2" or "STIR" from RepetitionTime, EchoTime and InversionTime (ms; None when
    absent) by the thresholds above, or None when they are missing or inconclusive."""
    if tr is None:
        return None
    if ti is not None and ti <= STIR_MAX_TI_MS and tr >= T2_MIN_TR_MS:
        return "STIR"
    if te is None:
        return None
    if tr < T1_MAX_TR_MS and te < T1_MAX_TE_MS:
        return "T1"
    if tr >= T2_MIN_TR_MS and te >= T2_MIN_TE_MS:
        return "T2"
    return None


def canal_contrast(pixels: np.ndarray, iop: Iterable[float], spacing: Iterable[float]) -> float:
    """How much brighter the spinal canal is than its surroundings on a sagittal slice.

    The strongest bright band minus the strongest dark band of the canal's width among the
    column profiles (see the constants above), in units of the profile's median: positive
    when the canal's CSF is bright (T2, STIR), negative when it is dark (T1).

    Args:
        pixels: (H, W) one sagittal slice.
        iop: (6,) its ImageOrientationPatient.
        spacing: (2,) its PixelSpacing [row, col], mm.

    Raises:
        ValueError: the slice is too small for the flanks, or blank.
    """
    img = np.asarray(pixels, dtype=np.float64)
    iop = np.asarray(list(iop), dtype=np.float64)
    row_mm, col_mm = (float(v) for v in spacing)
    if abs(iop[2]) > abs(iop[5]):  # along a row is superior-inferior: profile over rows
        img, col_mm = img.T, row_mm
    h, w = img.shape
    margin = int(h * (1 - CENTRAL_FRACTION) / 2)
    profile = np.median(img[margin : h - margin], axis=0)  # per column, along the spine
    body = profile[profile > 0.1 * profile.max()] if profile.max() > 0 else profile[:0]
    if not len(body) or np.median(body) <= 0:
        raise ValueError("blank slice")
    profile = profile / np.median(body)
    k = max(1, int(round(CANAL_FLANK_MM / col_mm)))
    r = int(round(CANAL_SMOOTH_MM / col_mm))
    centre = np.convolve(np.pad(profile, r, mode="edge"), np.ones(2 * r + 1) / (2 * r + 1), "valid")
    edge = int(w * (1 - CENTRAL_FRACTION) / 2)
    c = np.arange(max(edge, k), min(w - edge, w - k))
    if not len(c):
        raise ValueError(f"{w} columns: too few for flanks {k} columns away")
    left, right = profile[c - k], profile[c + k]
    bright = centre[c] - np.maximum(left, right)
    dark = np.minimum(left, right) - centre[c]
    return float(bright.max() - dark.max())


@dataclass(frozen=True)
class SeriesHeader:
    """One file's routing tags (``HEADER_TAGS``), read by :func:`header_of`.

    Attributes:
        path: the file (the image basis decodes the middle slice's pixels from it).
        description: SeriesDescription, "" when absent.
        iop: ImageOrientationPatient (6 finite numbers) or None.
        ipp: ImagePositionPatient (3 finite numbers) or None.
        timing: RepetitionTime, EchoTime, InversionTime in ms, each None when absent.
    """

    path: Path
    description: str
    iop: tuple[float, ...] | None
    ipp: tuple[float, ...] | None
    timing: tuple[float | None, float | None, float | None]  # TR, TE, TI (ms)


def _number(ds: pydicom.Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _numbers(ds: pydicom.Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in ds.get(keyword) or ())
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


def _read_header(path: Path) -> SeriesHeader | None:
    """The routing tags of one file (no pixels), or None when it is not readable DICOM."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError):
        return None
    return header_of(ds, path)


def header_of(ds: pydicom.Dataset, path: Path) -> SeriesHeader:
    """The routing tags of ``ds``, read from ``path`` (which needs only ``HEADER_TAGS``):
    for a caller that has read the header already, as an upload's unpacking does."""
    return SeriesHeader(
        path=path,
        description=str(ds.get("SeriesDescription", "") or ""),
        iop=_numbers(ds, "ImageOrientationPatient", 6),
        ipp=_numbers(ds, "ImagePositionPatient", 3),
        timing=(
            _number(ds, "RepetitionTime"),
            _number(ds, "EchoTime"),
            _number(ds, "InversionTime"),
        ),
    )


def _ms(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() or value >= 100 else f"{value:.1f}"


def _timing_text(tr: float | None, te: float | None, ti: float | None) -> str:
    parts = [f"{name} {_ms(v)} ms" for name, v in (("TR", tr), ("TE", te), ("TI", ti)) if v]
    return " ".join(parts) if parts else "no TR/TE"


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def route_series(
    series_dir: str | Path,
    override: str | None = None,
    headers: Sequence[SeriesHeader] | None = None,
) -> Route:
    """Decide one series folder's type (see the module docstring).

    Args:
        series_dir: a folder of one series' ``*.dcm`` files, named by its series id.
        override: the caller's type for it (a ``vocab.SERIES_TYPES`` name or its slug).
        headers: its files' routing tags when the caller has read them (``header_of``);
            by default each ``*.dcm`` file's header is read here.

    Raises:
        DataError: the folder's name is not an integer series id.
        ConfigError: ``override`` is not a series type.
    """
    series_dir = Path(series_dir)
    series_id = vocab.parse_id(series_dir.name)
    if series_id is None:
        raise DataError(f"{series_dir}: a series folder must be named by its integer series id")
    if override is not None:
        chosen = series_type_named(override, f"series {series_id}")
        return Route(series_id, chosen, "override", "set by the caller")

    def unroutable(reason: str) -> Route:
        return Route(series_id, None, "unroutable", reason)

    if headers is None:
        files = sorted(series_dir.glob("*.dcm"))
        if not files:
            return unroutable("no .dcm files")
        headers = [h for h in map(_read_header, files) if h is not None]
        if not headers:
            return unroutable(f"none of its {len(files)} files is readable DICOM")
    elif not headers:
        return unroutable("no readable DICOM files")
    described = Counter(h.description for h in headers if h.description).most_common(1)
    by_description = type_of_description(described[0][0]) if described else None
    oriented = [h for h in headers if h.iop is not None]
    planes = sorted({plane_of(h.iop) for h in oriented})
    plane = planes[0] if len(planes) == 1 else None
    if by_description is not None:
        warning = ""
        expected = "axial" if by_description == vocab.AXIAL_T2 else "sagittal"
        if plane is not None and plane != expected:
            warning = (
                f"series {series_id}: SeriesDescription names {by_description} "
                f"but its slices are {plane}"
            )
        reason = f"SeriesDescription {described[0][0]!r}"
        return Route(series_id, by_description, "description", reason, warning)
    if not oriented:
        return unroutable("no ImageOrientationPatient")
    if plane is None:
        return unroutable(f"mixed planes ({', '.join(planes)})")
    if plane not in ("sagittal", "axial"):
        return unroutable(f"{plane} plane")
    tr, te, ti = (_median([h.timing[i] for h in headers]) for i in range(3))
    timing = _timing_text(tr, te, ti)
    weighting = weighting_of(tr, te, ti)
    if plane == "axial":
        if weighting == "T2":
            return Route(series_id, vocab.AXIAL_T2, "timing", f"axial plane, {timing}")
        if weighting is not None:
            return unroutable(f"axial plane, {weighting} timing ({timing}): no axial type but T2")
        return Route(
            series_id,
            vocab.AXIAL_T2,
            "plane",
            f"axial plane, {timing}: Axial T2 is the dataset's only axial type",
        )
    if weighting is not None:
        chosen = vocab.SAGITTAL_T1 if weighting == "T1" else vocab.SAGITTAL_T2
        return Route(series_id, chosen, "timing", f"sagittal plane, {timing}")
    return _route_by_image(series_id, oriented, timing)


def _route_by_image(series_id: int, headers: Sequence[SeriesHeader], timing: str) -> Route:
    """A sagittal series by ``canal_contrast`` of its middle slice (by position)."""
    with_position = [h for h in headers if h.ipp is not None]
    if with_position:
        normal = slice_normal(np.asarray(with_position[0].iop))
        with_position.sort(key=lambda h: float(np.dot(h.ipp, normal)))
        middle = with_position[len(with_position) // 2].path
    else:
        middle = headers[len(headers) // 2].path
    try:
        sl = read_slice(middle)
        contrast = canal_contrast(sl.pixels, sl.iop, sl.spacing)
    except (DicomError, ValueError) as exc:
        reason = "middle slice unreadable" if isinstance(exc, DicomError) else str(exc)
        return Route(series_id, None, "unroutable", f"sagittal plane, {timing}; {reason}")
    if contrast > CANAL_CONTRAST_THRESHOLD:
        chosen, how = vocab.SAGITTAL_T2, "brighter"
    else:
        chosen, how = vocab.SAGITTAL_T1, "darker"
    return Route(
        series_id,
        chosen,
        "image",
        f"sagittal plane, {timing}; canal CSF {how} than its surroundings "
        f"(contrast {contrast:+.2f})",
    )


def series_type_named(name: str, where: str) -> str:
    """The series type ``name`` spells (a type or its slug, any case).

    Raises:
        ConfigError: naming ``where`` and the unknown name.
    """
    spellings = {t.lower(): t for t in vocab.SERIES_TYPES}
    spellings |= {slug: t for slug, t in vocab.SERIES_FROM_SLUG.items()}
    found = spellings.get(str(name).strip().lower())
    if found is None:
        raise ConfigError(
            f"{where}: unknown series type {name!r}; expected one of "
            f"{list(vocab.SERIES_TYPES)} (or {list(vocab.SERIES_SLUGS.values())})"
        )
    return found


def route_study(
    study: str | Path | Iterable[str | Path],
    overrides: Mapping[int, str] | None = None,
    study_id: int | None = None,
    headers: Mapping[int, Sequence[SeriesHeader]] | None = None,
) -> Routing:
    """Route every series of one study.

    Args:
        study: the study's folder ({study_id}/{series_id}/{instance}.dcm), or a list of its
            series folders.
        overrides: series id -> type (a name or slug) that wins over everything else.
        study_id: the study's id; default the folder's name (the series folders' parent's).
        headers: series id -> its files' routing tags, when the caller has read them
            (``spinegrade.data.upload``); a series not in it has its headers read here.

    Raises:
        DataError: the study or a series folder is not named by an integer id.
        ConfigError: an override names an unknown type.
    """
    if isinstance(study, str | Path):
        study_dir = Path(study)
        if not study_dir.is_dir():
            raise DataError(f"{study_dir}: study folder not found")
        series_dirs = sorted(
            (p for p in study_dir.iterdir() if p.is_dir()), key=lambda p: _folder_id(p)
        )
    else:
        series_dirs = [Path(p) for p in study]
        if not series_dirs and study_id is None:
            raise DataError("route_study: no series folders and no study_id")
        study_dir = series_dirs[0].parent if series_dirs else Path(".")
    if study_id is None:
        study_id = _folder_id(study_dir, "study")
    overrides = dict(overrides or {})
    headers = dict(headers or {})
    routes = [
        route_series(d, overrides.get(_folder_id(d)), headers.get(_folder_id(d)))
        for d in series_dirs
    ]
    rows = [(study_id, r.series_id, r.series_type or "", r.basis, r.reason) for r in routes]
    table = pd.DataFrame(rows, columns=list(ROUTING_COLUMNS)).astype(
        {"study_id": "int64", "series_id": "int64"}
    )
    return Routing(table, _warnings(study_id, routes))


def _folder_id(path: Path, what: str = "series") -> int:
    value = vocab.parse_id(path.name)
    if value is None:
        raise DataError(f"{path}: a {what} folder must be named by its integer {what} id")
    return value


def _warnings(study_id: int, routes: list[Route]) -> list[str]:
    """What predict should hear about a study's routing (see ``Routing.warnings``)."""
    out = [f"study {study_id}: {r.warning}" for r in routes if r.warning]
    if not any(r.series_type for r in routes):
        out.append(f"study {study_id}: no series could be routed (predict leaves it out)")
    out += [
        f"study {study_id}: series {r.series_id} not routed ({r.reason})"
        for r in routes
        if r.series_type is None
    ]
    for series_type in vocab.SERIES_TYPES:
        ids = [r.series_id for r in routes if r.series_type == series_type]
        if not ids:
            out.append(f"study {study_id}: no series routed to {series_type}")
        elif len(ids) > 1 and series_type != vocab.AXIAL_T2:
            listed = " and ".join(str(i) for i in ids)
            out.append(f"study {study_id}: series {listed} all routed to {series_type}")
    return out


def route_studies(images_dir: str | Path, overrides: Mapping[int, str] | None = None) -> Routing:
    """Route every study folder under ``images_dir`` ({study}/{series}/{instance}.dcm), in
    study id order.

    Raises:
        DataError: ``images_dir`` is missing or a study or series folder is not named by an
            integer id.
        ConfigError: an override names an unknown type or a series that is not there.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images directory not found")
    studies = sorted(
        (p for p in images_dir.iterdir() if p.is_dir()), key=lambda p: _folder_id(p, "study")
    )
    parts = [route_study(p, overrides) for p in studies]
    series = pd.concat(
        [p.series for p in parts] or [pd.DataFrame(columns=list(ROUTING_COLUMNS))],
        ignore_index=True,
    )
    unknown = sorted(set(overrides or {}) - set(series["series_id"].astype("int64")))
    if unknown:
        raise ConfigError(
            f"series type override for series {unknown}: no such series folder under {images_dir}"
        )
    return Routing(series, [w for p in parts for w in p.warnings])
