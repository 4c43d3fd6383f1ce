"""Unpacking one uploaded study (a .zip of its DICOM files) safely, and capping an upload.

:func:`unpack_study` turns an uploaded zip, any folder layout inside, into the RSNA
``test_images`` layout of one study: ``dest/{series_id}/{n}.dcm``, series ids 1..k. It
never trusts the zip:

- entry names never become paths: every file is written under a name this module makes
  (a counter), so ``..``, absolute paths and drive letters cannot reach outside ``dest``;
  such entries, symbolic links, special files and encrypted entries are refused outright;
- sizes are capped twice: the sizes the zip declares (the entry count, the total, each
  entry's compression ratio) before anything is written, and the bytes actually
  decompressed, counted while each entry streams in chunks, whatever the headers say;
- a DICOM file's header is read from the file written to ``dest``, never from the zip
  entry; a deflated DICOM dataset (which pydicom inflates in memory all at once) is
  first inflated here under the same caps.

On any error nothing this module wrote stays in ``dest``.

Identifiers: what is returned or raised names zip entries, counts and sizes only, never an
identifying DICOM header value (names, ids, UIDs, dates, institutions); the one header
content returned is routing's tags (``Unpacked.headers``: SeriesDescription, orientation,
position, sequence timing), which ``spinegrade.data.routing`` quotes only as its module
docstring says. Series are told apart by
SeriesInstanceUID, which stays inside this module: each becomes an integer 1..k. The zip's
entry names are the uploader's own and may hold a patient's name (as a folder); they are
returned to that uploader (``study_name``, ``ignored``, ``rejected``, error messages) and
should not be logged. ``study_name`` is the zip's single top folder, and only that.
"""

from __future__ import annotations

import lzma
import math
import os
import re
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels import get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from spinegrade.core.errors import DataError
from spinegrade.data.routing import HEADER_TAGS, SeriesHeader, header_of

CHUNK = 1 << 20  # bytes read, written or inflated at a time
MiB = 1 << 20

# Compression methods Python's zipfile decodes with the standard library.
METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)

# Folders macOS's Finder adds to the zips it makes (resource forks): listed as ignored, and
# not counted when looking for the study's top folder.
MACOS_FOLDER = "__MACOSX"

STAGING = ".unpacking"  # dest's scratch folder while entries are read
DICOM_MAGIC_END = 132  # a DICOM Part 10 file: 128-byte preamble, then b"DICM"
STUDY_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
STUDY_NAME_MAX = 64
SHOWN_NAME_MAX = 200  # characters of an entry name shown in a message
UNDEFINED_LENGTH = 0xFFFFFFFF  # an element's length when it is encapsulated


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold (bytes unless named otherwise).

    Attributes:
        max_upload_bytes: the uploaded zip itself.
        max_total_bytes: its entries decompressed, declared and actual alike.
        max_files: entries in the zip (folders included).
        max_ratio: an entry's decompressed size over its compressed size.
        ratio_grace_bytes: entries that decompress to at most this many bytes are exempt
            from ``max_ratio``: a blank 512x512 slice deflates about 1000:1, and a small
            entry cannot be a bomb (the total cap holds whatever their number).
    """

    max_upload_bytes: int = 512 * MiB
    max_total_bytes: int = 2048 * MiB
    max_files: int = 5000
    max_ratio: float = 200.0
    ratio_grace_bytes: int = 1 * MiB

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_total_bytes", "max_files", "max_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"UploadLimits.{name} must be positive, got {getattr(self, name)}")
        if self.ratio_grace_bytes < 0:
            raise ValueError(
                f"UploadLimits.ratio_grace_bytes must be >= 0, got {self.ratio_grace_bytes}"
            )


class UploadError(DataError):
    """An upload refused, with the HTTP status that says why: 400 (bad input), 413 (too
    large) or 422 (a well-formed zip with nothing usable in it). The message names the
    zip entry and the size at fault, never a DICOM header value."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):  # raised in the service's unpacking process, re-raised in its own
        return (type(self), (self.status, self.message))


@dataclass(frozen=True)
class Unpacked:
    """What :func:`unpack_study` wrote and found.

    Attributes:
        study_name: the zip's single top folder (every entry under it), reduced to
            ``[A-Za-z0-9._-]``, at most 64 characters; None when there is none.
        headers: series id (1..k, ordered by SeriesNumber, then first entry name) -> its
            files' routing tags (``spinegrade.data.routing.SeriesHeader``: the file,
            ``dest/{series_id}/{n}.dcm`` with n = 1.. in InstanceNumber order, and the tags
            read with the grouping keys, so that routing need not read them again).
        ignored: entries that are not DICOM files (no ``DICM`` marker), in zip order.
        rejected: (entry, reason) for DICOM files that cannot be graded: no pixel data,
            a transfer syntax no installed decoder reads, no SeriesInstanceUID, an
            unreadable header.
        sources: each written file -> the zip entry it came from.
    """

    study_name: str | None
    headers: dict[int, list[SeriesHeader]]
    ignored: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    sources: dict[Path, str] = field(default_factory=dict)

    @property
    def series(self) -> dict[int, list[Path]]:
        """Series id -> its files, in order (``dest/{series_id}/{n}.dcm``)."""
        return {k: [h.path for h in hs] for k, hs in self.headers.items()}


def copy_capped(
    chunks: Iterable[bytes], out: BinaryIO, limit: int, what: str = "the upload"
) -> int:
    """Write ``chunks`` to ``out`` and return the byte count, refusing more than ``limit``.

    Raises:
        UploadError: 413 as soon as the next chunk would pass ``limit``, before it is
            written (and before the rest is read). ``out`` then holds a prefix: the caller
            deletes it.
    """
    total = 0
    for chunk in chunks:
        total = _counted(total, chunk, limit, what)
        out.write(chunk)
    return total


async def capped_async(
    chunks: AsyncIterable[bytes], limit: int, what: str = "the upload"
) -> AsyncIterator[bytes]:
    """``chunks`` (Starlette's ``request.stream()``) as they come, up to ``limit`` bytes.

    Raises:
        UploadError: 413 at the chunk that would pass ``limit``, before it is yielded (and
            before the rest is read).
    """
    total = 0
    async for chunk in chunks:
        total = _counted(total, chunk, limit, what)
        yield chunk


def too_large(what: str, limit: int) -> UploadError:
    """The 413 for ``what`` (an upload, a body) over ``limit`` bytes."""
    return UploadError(413, f"{what} is over the limit of {_size(limit)}")


def _counted(total: int, chunk: bytes, limit: int, what: str) -> int:
    total += len(chunk)
    if total > limit:
        raise too_large(what, limit)
    return total


def decodable(transfer_syntax: UID) -> bool:
    """Whether pydicom, with the plugins installed here, decodes pixel data in
    ``transfer_syntax`` (uncompressed and deflated always; RLE, JPEG, JPEG-LS, JPEG 2000
    only with a plugin)."""
    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def unpack_study(
    source: str | Path | BinaryIO, dest: str | Path, limits: UploadLimits | None = None
) -> Unpacked:
    """Unpack one uploaded study's zip into ``dest`` as ``dest/{series_id}/{n}.dcm``.

    Args:
        source: the zip, a path or a seekable binary file object.
        dest: an existing empty folder (the request's own temporary folder).
        limits: the caps; ``UploadLimits()`` when None.

    Raises:
        UploadError: 400 for a file that is not a zip, an empty zip, a corrupt entry, an
            entry named with ``..``, an absolute path or a drive letter, a symbolic link
            or special file, an encrypted entry or an unsupported compression method; 413
            for an upload, an entry count, a total (declared or decompressed) or an
            entry's compression ratio over ``limits``; 422 for a zip without one usable
            DICOM file. ``dest`` is then as it was: empty.
        ValueError: ``dest`` is not an empty folder (the caller's mistake, not the upload's).
    """
    limits = limits or UploadLimits()
    dest = Path(dest)
    if not dest.is_dir() or any(dest.iterdir()):
        raise ValueError(f"{dest}: not an empty folder")
    root = dest.resolve()
    with _open_zip(source, limits) as zf:
        infos = zf.infolist()
        _check_entries(infos, limits)
        created: list[Path] = []
        try:
            return _unpack(zf, infos, root, limits, created)
        except BaseException:
            for path in reversed(created):
                shutil.rmtree(path, ignore_errors=True)
            raise


def _open_zip(source: str | Path | BinaryIO, limits: UploadLimits) -> zipfile.ZipFile:
    if isinstance(source, (str, os.PathLike)):
        size = os.path.getsize(source)
    else:
        size = source.seek(0, os.SEEK_END)
        source.seek(0)
    if size > limits.max_upload_bytes:
        raise UploadError(
            413, f"the upload ({_size(size)}) is over the limit of {_size(limits.max_upload_bytes)}"
        )
    try:
        return zipfile.ZipFile(source)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        EOFError,
        ValueError,
        struct.error,
    ) as exc:  # NotImplementedError: a zip version Python does not read
        raise UploadError(400, f"not a zip file ({exc})") from exc


def _check_entries(infos: list[zipfile.ZipInfo], limits: UploadLimits) -> None:
    """Refuse the zip for what its central directory says, before anything is written."""
    if len(infos) > limits.max_files:
        raise UploadError(
            413, f"the zip has {len(infos)} entries, over the limit of {limits.max_files}"
        )
    declared = 0
    for info in infos:
        name = _show(info.filename)
        if problem := _path_problem(info.filename):
            raise UploadError(400, f"entry {name} {problem}")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise UploadError(400, f"entry {name} is a symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UploadError(400, f"entry {name} is a special file, not a regular one")
        if info.flag_bits & 0x1:
            raise UploadError(400, f"entry {name} is encrypted")
        if info.compress_type not in METHODS:
            raise UploadError(
                400, f"entry {name} uses an unsupported compression method ({info.compress_type})"
            )
        _check_ratio(info, info.file_size, limits)
        declared += info.file_size
        if declared > limits.max_total_bytes:
            raise UploadError(
                413,
                f"the zip declares {_size(declared)} or more uncompressed (at entry {name}), "
                f"over the limit of {_size(limits.max_total_bytes)}",
            )
    if all(i.is_dir() for i in infos):
        raise UploadError(400, "the zip is empty: it holds no files")


def _path_problem(name: str) -> str | None:
    """Why entry ``name`` could not be unpacked under a folder, or None (``/`` and ``\\``
    both count as separators: zips made on Windows may use either)."""
    if not name.strip("/\\"):
        return "has an empty name"
    if name.startswith(("/", "\\")):
        return "has an absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "has a drive letter"
    if ".." in re.split(r"[/\\]", name):
        return "has a '..' component"
    return None


def _check_ratio(info: zipfile.ZipInfo, size: int, limits: UploadLimits) -> None:
    if size > limits.ratio_grace_bytes and size > limits.max_ratio * max(info.compress_size, 1):
        raise UploadError(
            413,
            f"entry {_show(info.filename)} decompresses to over {limits.max_ratio:g} times its "
            f"compressed size ({_size(info.compress_size)})",
        )


@dataclass
class _Dicom:
    entry: str
    staged: Path
    series_uid: str  # never leaves this module
    series_number: float
    instance_number: float
    header: SeriesHeader  # the routing tags; its path is the staged file until placed


def _unpack(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    root: Path,
    limits: UploadLimits,
    created: list[Path],
) -> Unpacked:
    staging = _inside(root, root / STAGING)
    staging.mkdir()
    created.append(staging)
    ignored: list[str] = []
    rejected: list[tuple[str, str]] = []
    dicoms: list[_Dicom] = []
    written = 0
    for k, info in enumerate(infos):
        if info.is_dir():
            continue
        with _open_entry(zf, info) as f:
            head = _read_entry(f, info, DICOM_MAGIC_END)
            if len(head) < DICOM_MAGIC_END or head[128:132] != b"DICM":
                ignored.append(info.filename)
                continue
            staged = _inside(root, staging / f"{k}.dcm")
            with open(staged, "xb") as out:
                budget = limits.max_total_bytes - written
                what = f"the unpacked study (at entry {_show(info.filename)})"
                written += copy_capped(_entry_chunks(f, info, head, limits), out, budget, what)
        header = _read_header(staged, info, limits)
        if isinstance(header, str):
            rejected.append((info.filename, header))
            staged.unlink()
        else:
            dicoms.append(header)
    if not dicoms:
        files = sum(not i.is_dir() for i in infos)
        if rejected:
            entry, reason = rejected[0]
            raise UploadError(
                422,
                f"none of the zip's {len(rejected)} DICOM files can be graded "
                f"(entry {_show(entry)}: {reason})",
            )
        raise UploadError(422, f"no DICOM files among the zip's {files} files")
    headers, sources = _place(dicoms, root, created)
    shutil.rmtree(staging)
    created.remove(staging)
    return Unpacked(_study_name(infos), headers, ignored, rejected, sources)


def _open_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo):
    try:
        return zf.open(info)
    # ValueError: a negative seek, from an entry offset that points before the file
    except (
        zipfile.BadZipFile,
        NotImplementedError,
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
    ) as exc:
        raise UploadError(400, f"entry {_show(info.filename)} is corrupt ({exc})") from exc


def _read_entry(f, info: zipfile.ZipInfo, n: int) -> bytes:
    """Up to ``n`` decompressed bytes of entry ``info``; a corrupt entry is a 400."""
    try:
        return f.read(n)
    # OSError: bz2's "Invalid data stream"; BadZipFile: a CRC that does not match
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError) as exc:
        raise UploadError(400, f"entry {_show(info.filename)} is corrupt ({exc})") from exc


def _entry_chunks(f, info: zipfile.ZipInfo, head: bytes, limits: UploadLimits) -> Iterator[bytes]:
    """The entry's bytes from ``head`` on, its actual compression ratio checked as they
    come (the total is capped by the caller's :func:`copy_capped`)."""
    n = len(head)
    yield head
    while chunk := _read_entry(f, info, CHUNK):
        n += len(chunk)
        _check_ratio(info, n, limits)
        yield chunk


def _read_header(path: Path, info: zipfile.ZipInfo, limits: UploadLimits) -> _Dicom | str:
    """The grouping keys of a written DICOM file, or why it cannot be graded."""
    try:
        with open(path, "rb") as fp:
            read_preamble(fp, False)
            meta = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
            syntax = meta.get("TransferSyntaxUID")
            if syntax == DeflatedExplicitVRLittleEndian:
                _check_inflated(fp, path.stat().st_size, info, limits)
        if syntax is None:
            return "no transfer syntax in its file meta"
        syntax = UID(str(syntax))
        ds = pydicom.dcmread(
            path,
            defer_size=CHUNK,
            specific_tags=[
                "SeriesInstanceUID",
                "SeriesNumber",
                "InstanceNumber",
                "PixelData",
                *HEADER_TAGS,
            ],
        )
        pixels = ds.get_item("PixelData", keep_deferred=True)
        series_uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        series_number = _number(ds.get("SeriesNumber"))
        instance_number = _number(ds.get("InstanceNumber"))
        header = header_of(ds, path)
    except UploadError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed headers
        return f"unreadable DICOM header ({type(exc).__name__})"
    if pixels is None:
        return "no pixel data"
    if not syntax.is_transfer_syntax:
        return "unknown transfer syntax"
    if not decodable(syntax):
        return f"unsupported transfer syntax {syntax.name} (no decoder installed)"
    if isinstance(pixels, RawDataElement):
        encapsulated = pixels.length == UNDEFINED_LENGTH
    else:
        encapsulated = pixels.is_undefined_length
    if encapsulated != syntax.is_encapsulated:
        how = "encapsulated" if encapsulated else "not encapsulated"
        return f"pixel data {how}, against its transfer syntax {syntax.name}"
    if (
        isinstance(pixels, RawDataElement)
        and not encapsulated
        and syntax != DeflatedExplicitVRLittleEndian  # its offsets are in the inflated data
        and pixels.value_tell + pixels.length > path.stat().st_size
    ):
        return "pixel data cut short (the file ends before it does)"
    if not series_uid:
        return "no SeriesInstanceUID"
    return _Dicom(info.filename, path, series_uid, series_number, instance_number, header)


def _check_inflated(fp: BinaryIO, size: int, info: zipfile.ZipInfo, limits: UploadLimits) -> None:
    """Inflate a deflated DICOM dataset from ``fp``'s position under the ratio and total
    caps (pydicom inflates it whole in memory, whatever its size)."""
    cap = min(
        limits.max_total_bytes, max(limits.ratio_grace_bytes, limits.max_ratio * max(size, 1))
    )
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while data := fp.read(CHUNK):
        while data:
            total += len(inflater.decompress(data, CHUNK))
            data = inflater.unconsumed_tail
            if total > cap:
                raise UploadError(
                    413,
                    f"entry {_show(info.filename)}: its deflated DICOM data inflates to over "
                    f"{_size(int(cap))}",
                )


def _number(value) -> float:
    """A header's integer string as a sort key; absent or unreadable last."""
    try:
        return float(int(str(value).strip()))
    except (TypeError, ValueError):
        return math.inf


def _place(
    dicoms: list[_Dicom], root: Path, created: list[Path]
) -> tuple[dict[int, list[SeriesHeader]], dict[Path, str]]:
    """Move the staged files to ``root/{series_id}/{n}.dcm``: their routing tags (with the
    placed files) per series, and each file's zip entry."""
    groups: dict[str, list[_Dicom]] = {}
    for d in dicoms:
        groups.setdefault(d.series_uid, []).append(d)
    ordered = sorted(
        groups.values(),
        key=lambda g: (min(d.series_number for d in g), min(d.entry for d in g)),
    )
    sources: dict[Path, str] = {}
    headers: dict[int, list[SeriesHeader]] = {}
    for series_id, members in enumerate(ordered, start=1):
        folder = _inside(root, root / str(series_id))
        folder.mkdir()
        created.append(folder)
        members.sort(key=lambda d: (d.instance_number, d.entry))
        for n, d in enumerate(members, start=1):
            target = _inside(root, folder / f"{n}.dcm")
            os.replace(d.staged, target)
            sources[target] = d.entry
            headers.setdefault(series_id, []).append(replace(d.header, path=target))
    return headers, sources


def _study_name(infos: list[zipfile.ZipInfo]) -> str | None:
    """The zip's single top folder, sanitized, when every entry (macOS's __MACOSX aside)
    sits under it; else None."""
    tops = set()
    for info in infos:
        parts = [p for p in re.split(r"[/\\]", info.filename) if p not in ("", ".")]
        if not parts or parts[0] == MACOS_FOLDER:
            continue
        if len(parts) == 1 and not info.is_dir():
            return None  # a file at the top
        tops.add(parts[0])
    if len(tops) != 1:
        return None
    name = STUDY_NAME_CHARS.sub("_", tops.pop())[:STUDY_NAME_MAX]
    return name if name.strip(".") else None


def _inside(root: Path, path: Path) -> Path:
    """``path``, after checking that it resolves under ``root`` (itself resolved). Entry
    names never make paths here, so a failure means the folder changed under us."""
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise RuntimeError(f"{path} resolves outside {root}")
    return path


def _show(name: str) -> str:
    """An entry name as a message shows it: quoted, escaped, at most 200 characters."""
    shown = name if len(name) <= SHOWN_NAME_MAX else name[:SHOWN_NAME_MAX] + "..."
    return repr(shown)


def _size(n: float) -> str:
    """Bytes as ``512 MiB``, ``1.5 GiB``, ``900 bytes``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"
