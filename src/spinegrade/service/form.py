"""Reading ``POST /v1/grade``'s multipart body as it arrives, within a size limit.

The body streams through python-multipart's parser chunk by chunk: the ``study`` part goes
straight to a file in the request's own temporary folder, the small ``series`` field to
memory, and counting stops the upload at the limit, before the rest is read (413). Nothing
of the upload is kept anywhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from spinegrade.data.upload import UploadError, capped_async

FIELD_LIMIT = 64 * 1024  # bytes of a form field that is not the file


@dataclass
class GradeForm:
    """What the form held: the study's file (or None) and the other fields' text."""

    study: Path | None = None
    study_filename: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a Content-Type header.

    Raises:
        UploadError: 415 unless it is multipart/form-data with a boundary.
    """
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadError(
            415,
            "send the study as multipart/form-data with a file field 'study' "
            f"(got Content-Type {content_type or 'none'!r})",
        )
    return options[b"boundary"]


async def read_form(
    chunks: AsyncIterator[bytes], content_type: str, folder: Path, limit: int
) -> GradeForm:
    """Parse the multipart body ``chunks`` into ``folder`` (the ``study`` part as
    ``folder/upload.zip``), stopping at ``limit`` bytes of body.

    Raises:
        UploadError: 413 past the limit, 415 for another content type, 400 for a body
            that is not well-formed multipart or a field over FIELD_LIMIT.
    """
    form = GradeForm()
    state: dict = {"name": None, "filename": None, "out": None, "buffer": bytearray()}
    header: dict = {"field": b"", "value": b"", "headers": {}}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        header["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(header["headers"].get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        state.update(name=name, filename=filename, buffer=bytearray())
        header["headers"] = {}
        if name == "study" and filename is not None:
            if form.study is not None:
                raise UploadError(400, "send one study per request (two 'study' files)")
            form.study = folder / "upload.zip"
            form.study_filename = filename.decode("utf-8", "replace")
            state["out"] = form.study.open("wb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["out"] is not None:
            state["out"].write(data[start:end])
            return
        state["buffer"] += data[start:end]
        if len(state["buffer"]) > FIELD_LIMIT:
            raise UploadError(400, f"form field {state['name']!r} is over {FIELD_LIMIT} bytes")

    def on_part_end() -> None:
        if state["out"] is not None:
            state["out"].close()
            state["out"] = None
        elif state["name"]:
            form.fields[state["name"]] = state["buffer"].decode("utf-8", "replace")

    parser = MultipartParser(
        boundary_of(content_type),
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in capped_async(chunks, limit):
            try:
                parser.write(chunk)
            except UploadError:
                raise
            except Exception as exc:  # python-multipart's own parse errors
                raise UploadError(400, f"the body is not well-formed multipart ({exc})") from None
        parser.finalize()
    finally:
        if state["out"] is not None:
            state["out"].close()
    return form
