"""The review page: one self-contained HTML file to look through a run's predictions.

``render_page(index, studies)`` returns the document, ``write_page(path, index, studies)``
writes it atomically. The page opens from disk (``file://``) and needs no network or
server: its style and script (``assets/review.css``, ``assets/review.js``) are inlined,
images are ``data:`` URIs and a Content-Security-Policy forbids every other source.

It has two views, switched by the URL's hash: the overview (a sortable, filterable table
of the studies, worst first when answers exist) and, at ``#study-<study_id>``, one study:
its warnings, its images with the found (cyan disc) and labelled (yellow square) points,
and a table of its 25 rows (crop, Grad-CAM, probabilities, grade, truth, loss).

Data format (a caller gathers it; every string is data, never markup):

``index``: ``title``, ``has_answers`` (False hides truth, loss and point error),
``models`` {group: model}, ``severities`` (the three grades), ``groups``, ``summary``
{label: text}, and ``studies``: one entry per study with ``study_id`` (int), ``series``
and ``missing_series`` (series types), ``graded`` and ``prior`` (row counts),
``warnings`` (texts), ``severe_groups``, ``loss`` and ``group_loss`` {group: loss} (or
None), ``point_error_mm`` (or None) and ``thumbnail`` (a data URI or None).

``studies``: the detail of each study, in the order of ``index["studies"]``:
``study_id``, ``warnings``, ``views`` (``id``, ``title``, ``image`` data URI, ``width``,
``height``, ``orientation`` {left, right, top, bottom: letter}, ``points``: ``label``,
``row_id``, ``kind`` "found" or "labelled", ``x``, ``y`` in image pixels,
``distance_mm``) and ``rows`` (``row_id``, ``condition``, ``level``, ``group``,
``probabilities`` [3], ``predicted``, ``truth``, ``loss``, ``weight``, ``prior`` (bool),
``crop`` and ``cam`` data URIs or None, ``distance_mm``, ``view``: the id of the view
holding the row's point).

The index is embedded as ``<script type="application/json" id="review-index">`` and each
study as ``<script type="application/json" id="study-<study_id>">``, parsed only when the
study is opened, so a page of many studies loads fast.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from spinegrade.core.io import atomic_path

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

# JSON inside <script>: no "<" (ends the element at "</script>" or opens "<!--"), and ">"
# and "&" for good measure; JSON.parse reads the \uXXXX escapes back.
_SCRIPT_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


def _asset(name: str) -> str:
    """The text of one of the page's assets (``spinegrade/inference/assets``)."""
    return resources.files("spinegrade.inference").joinpath("assets", name).read_text("utf-8")


def _plain(obj: Any) -> Any:
    """``obj`` with non-finite floats as None (JSON has no NaN) and numpy scalars as Python."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, str | bool | int):
        return obj
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, without importing numpy
        return _plain(obj.tolist())
    raise TypeError(f"review page: cannot embed a {type(obj).__name__} as JSON")


def script_json(obj: Any) -> str:
    """``obj`` as JSON that is safe as the text of a ``<script>`` element."""
    text = json.dumps(_plain(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.translate(_SCRIPT_ESCAPES).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _data_block(element_id: str, obj: Any) -> str:
    return (
        f'<script type="application/json" id="{html.escape(element_id)}">'
        f"{script_json(obj)}</script>"
    )


def render_page(index: dict, studies: list[dict]) -> str:
    """The review page of ``index`` (the overview) and ``studies`` (one detail per study).

    Raises:
        ValueError: when ``studies`` does not match ``index["studies"]`` one for one.
    """
    entries = index.get("studies", [])
    ids = [int(s["study_id"]) for s in entries]
    if [int(s["study_id"]) for s in studies] != ids:
        raise ValueError("review page: studies must be the details of index['studies'], in order")
    if len(set(ids)) != len(ids):
        raise ValueError("review page: duplicate study_id in index['studies']")
    css, js = _asset("review.css"), _asset("review.js")
    if "</style" in css.lower() or any(t in js.lower() for t in ("</script", "<script", "<!--")):
        raise ValueError("review page: an asset would end its own element")
    title = html.escape(str(index.get("title") or "spinegrade review"))
    blocks = "\n".join(
        [_data_block("review-index", index)]
        + [_data_block(f"study-{sid}", study) for sid, study in zip(ids, studies, strict=True)]
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
{css}
</style>
</head>
<body>
<header id="page-header"><h1 id="page-title">{title}</h1></header>
<main>
<section id="overview-view" aria-label="Studies"></section>
<section id="study-view" hidden></section>
</main>
<svg id="svg-ns" width="0" height="0" aria-hidden="true" focusable="false"></svg>
<noscript><p class="noscript">This page needs JavaScript to show the studies.</p></noscript>
{blocks}
<script>
{js}
</script>
</body>
</html>
"""


def write_page(path: str | Path, index: dict, studies: list[dict]) -> Path:
    """Write the review page to ``path`` (atomically) and return the path."""
    path = Path(path)
    page = render_page(index, studies)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
