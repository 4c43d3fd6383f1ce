/* spinegrade review page (spinegrade/inference/page.py inlines this file).
 *
 * Reads the overview from the JSON script element "review-index" and a study's detail
 * from the element "study-ID" when the study is opened (URL hash #study-ID). Every data
 * string goes into the page through textContent or an attribute, never as markup; images
 * are data: URIs only (the page's CSP allows nothing else).
 */
(function () {
  "use strict";

  // The SVG namespace, read from an svg element the HTML parser made (a name, not a link).
  const SVG_NS = document.getElementById("svg-ns").namespaceURI;
  const index = JSON.parse(document.getElementById("review-index").textContent);
  const hasAnswers = Boolean(index.has_answers);
  const severities = index.severities || ["Normal/Mild", "Moderate", "Severe"];
  const groups = index.groups || Object.keys(index.models || {});
  const entries = index.studies || [];
  const entryById = new Map(entries.map((e) => [String(e.study_id), e]));
  const details = new Map(); // study id -> parsed detail (parsed once, on first opening)

  const overviewView = document.getElementById("overview-view");
  const studyView = document.getElementById("study-view");

  // ---------------------------------------------------------------- small helpers

  function append(node, children) {
    if (children === undefined || children === null) return node;
    if (!Array.isArray(children)) children = [children];
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      node.appendChild(
        typeof child === "string" || typeof child === "number"
          ? document.createTextNode(String(child))
          : child,
      );
    }
    return node;
  }

  function setProps(node, props) {
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.setAttribute("class", value);
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    return node;
  }

  function el(tag, props, children) {
    return append(setProps(document.createElement(tag), props), children);
  }

  function svg(tag, props, children) {
    return append(setProps(document.createElementNS(SVG_NS, tag), props), children);
  }

  function dataImage(src) {
    return typeof src === "string" && src.startsWith("data:image/") ? src : null;
  }

  function isNum(x) {
    return typeof x === "number" && Number.isFinite(x);
  }

  function fmt(x, digits) {
    return isNum(x) ? x.toFixed(digits) : "\u2014";
  }

  function dash() {
    return el("span", { class: "none", text: "\u2014" });
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function shortGrade(name) {
    const s = String(name);
    return s.includes("/") ? s.split("/").map((p) => p.charAt(0)).join("/") : s.slice(0, 3);
  }

  function gradeIndex(name) {
    return severities.indexOf(name);
  }

  function gradePill(name, extra) {
    const i = gradeIndex(name);
    return el("span", { class: `grade g${i < 0 ? "x" : i}${extra ? " " + extra : ""}`, text: name });
  }

  function list(x) {
    return Array.isArray(x) ? x : [];
  }

  function studyHash(id) {
    return `#study-${id}`;
  }

  // ---------------------------------------------------------------- sortable tables

  /* columns: [{key, label, title, value(item) -> number | string | null, dir: 1 | -1}];
   * clicking a header sorts by it (its default direction first), clicking again reverses. */
  function sortableHead(columns, sort, onChange) {
    const cells = new Map();
    const row = el("tr");
    for (const col of columns) {
      const th = el("th", { class: `c-${col.key}`, scope: "col", title: col.title });
      if (col.value) {
        th.dataset.sort = col.key;
        const button = el("button", { type: "button" }, [
          el("span", { class: "label", text: col.label }),
          el("span", { class: "arrow", "aria-hidden": "true" }),
        ]);
        th.appendChild(button);
        th.addEventListener("click", () => {
          if (sort.key === col.key) sort.dir = -sort.dir;
          else Object.assign(sort, { key: col.key, dir: col.dir || 1 });
          onChange();
        });
      } else {
        th.appendChild(el("span", { class: "label", text: col.label }));
      }
      cells.set(col.key, th);
      row.appendChild(th);
    }
    function update() {
      for (const [key, th] of cells) {
        if (!th.dataset.sort) continue;
        const on = key === sort.key;
        th.setAttribute("aria-sort", on ? (sort.dir > 0 ? "ascending" : "descending") : "none");
        th.querySelector(".arrow").textContent = on ? (sort.dir > 0 ? "\u25B2" : "\u25BC") : "";
        th.classList.toggle("sorted", on);
      }
    }
    return { thead: el("thead", null, row), cells, update };
  }

  /* Sort items by sort.key; missing values last in either direction; ties by tiebreak. */
  function sortItems(items, columns, sort, tiebreak) {
    const col = columns.find((c) => c.key === sort.key);
    if (!col || !col.value) return items.slice();
    const keyed = items.map((item) => ({ item, v: col.value(item) }));
    keyed.sort((a, b) => {
      const am = a.v === null || a.v === undefined || (typeof a.v === "number" && isNaN(a.v));
      const bm = b.v === null || b.v === undefined || (typeof b.v === "number" && isNaN(b.v));
      if (am !== bm) return am ? 1 : -1;
      if (!am && a.v !== b.v) {
        const c =
          typeof a.v === "number" && typeof b.v === "number"
            ? a.v - b.v
            : String(a.v).localeCompare(String(b.v));
        if (c !== 0) return c * sort.dir;
      }
      return tiebreak(a.item, b.item);
    });
    return keyed.map((k) => k.item);
  }

  // ---------------------------------------------------------------- header

  function legendMark(kind) {
    const s = svg("svg", { class: "legend-mark", viewBox: "0 0 20 20", width: 20, height: 20 });
    if (kind === "found") s.appendChild(svg("circle", { class: "mark-found", cx: 10, cy: 10, r: 5 }));
    else if (kind === "labelled")
      s.appendChild(svg("rect", { class: "mark-labelled", x: 5, y: 5, width: 10, height: 10 }));
    else s.appendChild(svg("line", { class: "pair-line", x1: 2, y1: 15, x2: 18, y2: 5 }));
    return s;
  }

  function buildHeader() {
    const header = document.getElementById("page-header");
    const meta = el("div", { class: "header-meta" });
    const models = Object.entries(index.models || {});
    if (models.length) {
      meta.appendChild(
        el("div", { class: "models" }, [
          el("span", { class: "meta-label", text: "Models" }),
          ...models.map(([g, m]) =>
            el("span", { class: "chip model" }, [el("b", { text: g }), " ", String(m)]),
          ),
        ]),
      );
    }
    const summary = Object.entries(index.summary || {});
    if (summary.length) {
      meta.appendChild(
        el(
          "dl",
          { class: "summary" },
          summary.map(([k, v]) =>
            el("div", { class: "pair" }, [el("dt", { text: k }), el("dd", { text: String(v) })]),
          ),
        ),
      );
    }
    const legend = el("div", { class: "legend", "aria-label": "Legend of the point marks" }, [
      el("span", { class: "meta-label", text: "Points" }),
      el("span", { class: "legend-item" }, [legendMark("found"), "found by the localizer"]),
    ]);
    if (hasAnswers) {
      legend.appendChild(
        el("span", { class: "legend-item" }, [legendMark("labelled"), "labelled (answer)"]),
      );
      legend.appendChild(
        el("span", { class: "legend-item" }, [legendMark("line"), "found \u2194 labelled, mm"]),
      );
    } else {
      legend.appendChild(
        el("span", { class: "legend-item muted", text: "no answers: truth and loss hidden" }),
      );
    }
    meta.appendChild(legend);
    header.appendChild(meta);
  }

  // ---------------------------------------------------------------- overview

  const ov = {
    sort: hasAnswers ? { key: "loss", dir: -1 } : { key: "study_id", dir: 1 },
    group: "",
    severeOnly: false,
    rows: new Map(), // study id -> {tr, lossCell, severeCell}
    order: entries.map((e) => String(e.study_id)), // ids shown, in order (prev/next)
    scrollY: 0,
  };

  function entryLoss(e) {
    if (!ov.group) return isNum(e.loss) ? e.loss : null;
    const g = e.group_loss || {};
    return isNum(g[ov.group]) ? g[ov.group] : null;
  }

  function entrySevere(e) {
    const sg = list(e.severe_groups);
    return ov.group ? sg.includes(ov.group) : sg.length > 0;
  }

  const ovColumns = [
    { key: "thumb", label: "" },
    { key: "study_id", label: "Study", value: (e) => Number(e.study_id), dir: 1 },
    {
      key: "series",
      label: "Series",
      title: "Series types read; missing ones in red",
      value: (e) => list(e.missing_series).length,
      dir: -1,
    },
    {
      key: "graded",
      label: "Graded \u00B7 prior",
      title: "Rows graded by the models \u00B7 rows filled with the class prior",
      value: (e) => (isNum(e.prior) ? e.prior : 0),
      dir: -1,
    },
    { key: "warnings", label: "Warnings", value: (e) => list(e.warnings).length, dir: -1 },
    {
      key: "severe",
      label: "Predicted Severe",
      title: "Groups with at least one row predicted Severe",
      value: (e) => (ov.group ? (entrySevere(e) ? 1 : 0) : list(e.severe_groups).length),
      dir: -1,
    },
  ];
  if (hasAnswers) {
    ovColumns.push(
      {
        key: "loss",
        label: "Loss",
        title: "The study's loss in the official metric (lower is better)",
        value: entryLoss,
        dir: -1,
      },
      {
        key: "point_error",
        label: "Point error",
        title: "Mean distance between found and labelled points, mm",
        value: (e) => (isNum(e.point_error_mm) ? e.point_error_mm : null),
        dir: -1,
      },
    );
  }

  function seriesCell(e) {
    const td = el("td", { class: "c-series" });
    for (const s of list(e.series)) td.appendChild(el("span", { class: "chip series", text: s }));
    for (const s of list(e.missing_series)) {
      td.appendChild(
        el("span", { class: "chip series missing", title: `${s}: missing or unreadable` }, [
          el("span", { class: "icon", "aria-hidden": "true", text: "\u26A0 " }),
          s,
          el("span", { class: "visually-hidden", text: " (missing)" }),
        ]),
      );
    }
    return td;
  }

  function warningsCell(e) {
    const warnings = list(e.warnings).map(String);
    const td = el("td", { class: "c-warnings" });
    if (!warnings.length) {
      td.appendChild(dash());
      return td;
    }
    td.title = warnings.join("\n");
    td.appendChild(
      el("details", { class: "warn-details" }, [
        el("summary", null, [
          el("span", { class: "badge warn", text: String(warnings.length) }),
          el("span", { class: "warn-first", text: warnings[0] }),
        ]),
        el(
          "ul",
          null,
          warnings.map((w) => el("li", { text: w })),
        ),
      ]),
    );
    return td;
  }

  function buildOverviewRow(e) {
    const id = String(e.study_id);
    const thumb = dataImage(e.thumbnail);
    const tr = el("tr", { "data-study-id": id, tabindex: 0, title: `Open study ${id}` });
    tr.appendChild(
      el(
        "td",
        { class: "c-thumb" },
        thumb
          ? el("img", { src: thumb, alt: "", loading: "lazy", decoding: "async" })
          : el("span", { class: "thumb-none" }),
      ),
    );
    tr.appendChild(
      el("td", { class: "c-study_id" }, el("a", { href: studyHash(id), class: "study-link", text: id })),
    );
    tr.appendChild(seriesCell(e));
    const prior = isNum(e.prior) ? e.prior : 0;
    tr.appendChild(
      el("td", { class: "c-graded" }, [
        el("span", { text: fmt(e.graded, 0) }),
        prior > 0 ? el("span", { class: "badge prior", text: `+${prior} prior` }) : null,
      ]),
    );
    tr.appendChild(warningsCell(e));
    const severeCell = el("td", { class: "c-severe" });
    tr.appendChild(severeCell);
    let lossCell = null;
    if (hasAnswers) {
      lossCell = el("td", { class: "c-loss num" });
      tr.appendChild(lossCell);
      tr.appendChild(
        el("td", { class: "c-point_error num" }, isNum(e.point_error_mm) ? `${fmt(e.point_error_mm, 1)} mm` : dash()),
      );
    }
    tr.addEventListener("click", (ev) => {
      if (ev.target.closest("a, details, button")) return;
      location.hash = studyHash(id);
    });
    tr.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && ev.target === tr) location.hash = studyHash(id);
    });
    return { tr, lossCell, severeCell, entry: e };
  }

  function fillSevere(row) {
    const sg = list(row.entry.severe_groups);
    row.severeCell.replaceChildren();
    if (!sg.length) row.severeCell.appendChild(dash());
    for (const g of sg) {
      const dim = ov.group && g !== ov.group;
      row.severeCell.appendChild(el("span", { class: `chip severe${dim ? " dim" : ""}`, text: g }));
    }
  }

  function fillLoss(row, maxLoss) {
    if (!row.lossCell) return;
    const loss = entryLoss(row.entry);
    row.lossCell.replaceChildren();
    if (loss === null) {
      row.lossCell.appendChild(dash());
      return;
    }
    const bar = el("span", { class: "lossbar", "aria-hidden": "true" }, el("span"));
    bar.firstChild.style.width = `${maxLoss > 0 ? Math.min(100, (100 * loss) / maxLoss) : 0}%`;
    row.lossCell.append(el("span", { class: "value", text: fmt(loss, 3) }), bar);
    row.lossCell.dataset.value = String(loss);
  }

  let ovHead = null;
  let ovBody = null;
  let ovCount = null;
  let ovLossLabel = null;

  function renderOverview() {
    const shown = entries.filter((e) => !ov.severeOnly || entrySevere(e));
    const sorted = sortItems(shown, ovColumns, ov.sort, (a, b) => Number(a.study_id) - Number(b.study_id));
    const maxLoss = Math.max(0, ...entries.map(entryLoss).filter(isNum));
    ov.order = sorted.map((e) => String(e.study_id));
    const trs = [];
    for (const id of ov.order) {
      const row = ov.rows.get(id);
      fillLoss(row, maxLoss);
      fillSevere(row);
      trs.push(row.tr);
    }
    if (!trs.length) {
      trs.push(el("tr", { class: "empty" }, el("td", { colspan: ovColumns.length, text: "No study matches the filters." })));
    }
    ovBody.replaceChildren(...trs);
    ovCount.textContent = `${sorted.length} of ${entries.length} studies`;
    if (ovLossLabel) ovLossLabel.textContent = ov.group ? `Loss (${ov.group})` : "Loss";
    ovHead.update();
  }

  function buildOverview() {
    const select = el("select", { id: "group-filter" }, [
      el("option", { value: "", text: "all groups" }),
      ...groups.map((g) => el("option", { value: g, text: g })),
    ]);
    select.addEventListener("change", () => {
      ov.group = select.value;
      renderOverview();
    });
    const severe = el("input", { type: "checkbox", id: "severe-filter" });
    severe.addEventListener("change", () => {
      ov.severeOnly = severe.checked;
      renderOverview();
    });
    ovCount = el("span", { id: "study-count", class: "count", "aria-live": "polite" });
    const controls = el("div", { class: "controls" }, [
      el("label", { for: "group-filter" }, "Group"),
      select,
      el("label", { class: "check" }, [severe, " predicted Severe only"]),
      ovCount,
      el("span", { class: "hint", text: "Click a header to sort, a row to open the study." }),
    ]);
    ovHead = sortableHead(ovColumns, ov.sort, renderOverview);
    if (hasAnswers) ovLossLabel = ovHead.cells.get("loss").querySelector(".label");
    ovBody = el("tbody");
    for (const e of entries) ov.rows.set(String(e.study_id), buildOverviewRow(e));
    const table = el("table", { id: "overview", class: "data" }, [ovHead.thead, ovBody]);
    overviewView.append(
      controls,
      el("div", { id: "route-notice", class: "notice", hidden: true, role: "status" }),
      el("div", { class: "table-wrap" }, table),
    );
    renderOverview();
  }

  // ---------------------------------------------------------------- study view

  const hl = { pinned: null, marks: new Map(), rows: new Map(), views: null };

  function highlight(rowId) {
    const active = rowId || hl.pinned;
    for (const [id, marks] of hl.marks) for (const m of marks) m.classList.toggle("hl", id === active);
    for (const [id, tr] of hl.rows) tr.classList.toggle("hl", id === active);
    if (hl.views) hl.views.classList.toggle("has-hl", Boolean(active && hl.marks.has(active)));
  }

  function pin(rowId) {
    hl.pinned = hl.pinned === rowId ? null : rowId;
    for (const [id, tr] of hl.rows) tr.classList.toggle("pinned", id === hl.pinned);
    highlight(null);
  }

  function addMark(rowId, node) {
    if (!rowId) return;
    if (!hl.marks.has(rowId)) hl.marks.set(rowId, []);
    hl.marks.get(rowId).push(node);
    node.addEventListener("mouseenter", () => highlight(rowId));
    node.addEventListener("mouseleave", () => highlight(null));
    node.addEventListener("click", () => {
      pin(rowId);
      const tr = hl.rows.get(rowId);
      if (tr && hl.pinned === rowId) {
        tr.scrollIntoView({ block: "nearest", behavior: "smooth" });
        tr.classList.remove("flash");
        void tr.offsetWidth; // restart the animation
        tr.classList.add("flash");
      }
    });
  }

  function pairDistance(found, labelled) {
    if (!found || !labelled) return null;
    if (isNum(found.distance_mm)) return found.distance_mm;
    return isNum(labelled.distance_mm) ? labelled.distance_mm : null;
  }

  function buildOverlay(view, w, h) {
    const s = Math.max(w, h) / 330; // marks of a constant size at the usual display width
    const overlay = svg("svg", {
      class: "overlay",
      viewBox: `0 0 ${w} ${h}`,
      preserveAspectRatio: "none",
      "aria-hidden": "true",
    });
    overlay.style.setProperty("--s", String(s));
    const points = list(view.points).filter((p) => isNum(p.x) && isNum(p.y));
    const byRow = new Map();
    for (const p of points) {
      const key = String(p.row_id || "");
      if (!byRow.has(key)) byRow.set(key, {});
      byRow.get(key)[p.kind === "labelled" ? "labelled" : "found"] = p;
    }
    const lines = svg("g", { class: "pairs" });
    const marks = svg("g", { class: "marks" });
    const labels = svg("g", { class: "labels" });
    overlay.append(lines, marks, labels);
    for (const [rowId, pair] of byRow) {
      const { found, labelled } = pair;
      if (found && labelled) {
        const g = svg("g", { class: "pair", "data-row-id": rowId });
        g.appendChild(
          svg("line", { class: "pair-line", x1: found.x, y1: found.y, x2: labelled.x, y2: labelled.y }),
        );
        lines.appendChild(g);
        addMark(rowId, g);
      }
      for (const p of [labelled, found]) {
        if (!p) continue;
        const title = svg("title", {
          text: `${p.label || ""} ${p.kind === "labelled" ? "labelled" : "found"}${
            isNum(p.distance_mm) ? `, ${p.distance_mm.toFixed(1)} mm` : ""
          }`,
        });
        const g = svg("g", { class: `pt ${p === found ? "found" : "labelled"}`, "data-row-id": rowId }, title);
        if (p === found) g.appendChild(svg("circle", { class: "mark-found", cx: p.x, cy: p.y, r: 4 * s }));
        else
          g.appendChild(
            svg("rect", {
              class: "mark-labelled",
              x: p.x - 4.5 * s,
              y: p.y - 4.5 * s,
              width: 9 * s,
              height: 9 * s,
            }),
          );
        marks.appendChild(g);
        addMark(rowId, g);
      }
      const anchor = found || labelled;
      if (anchor && anchor.label) {
        // The level beside the point (the found one of a pair), on the outer side (left and
        // right points of an axial slice apart), then the pair's distance in smaller type.
        let right = anchor.x >= w / 2;
        if (right && anchor.x > w * 0.8) right = false;
        if (!right && anchor.x < w * 0.2) right = true;
        const xs = [found, labelled].filter(Boolean).map((p) => p.x);
        const d = pairDistance(found, labelled);
        const t = svg(
          "text",
          {
            class: `level ${found ? "found" : "labelled"}`,
            x: (right ? Math.max(...xs) : Math.min(...xs)) + (right ? 8 : -8) * s,
            y: anchor.y + 4 * s,
            "font-size": 11 * s,
            "text-anchor": right ? "start" : "end",
            "data-row-id": rowId,
          },
          [
            svg("tspan", { text: String(anchor.label) }),
            d === null ? null : svg("tspan", { class: "dist", "font-size": 9 * s, text: ` ${d.toFixed(1)} mm` }),
          ],
        );
        labels.appendChild(t);
        addMark(rowId, t);
      }
    }
    return overlay;
  }

  function buildView(view) {
    const w = isNum(view.width) && view.width > 0 ? view.width : 256;
    const h = isNum(view.height) && view.height > 0 ? view.height : 256;
    const src = dataImage(view.image);
    const frame = el("div", { class: "frame" });
    frame.style.aspectRatio = `${w} / ${h}`;
    if (src) frame.appendChild(el("img", { src, alt: String(view.title || view.id || "image"), width: w, height: h }));
    else frame.appendChild(el("div", { class: "no-image", text: "no image" }));
    frame.appendChild(buildOverlay(view, w, h));
    const o = view.orientation || {};
    for (const edge of ["top", "bottom", "left", "right"]) {
      if (o[edge]) frame.appendChild(el("span", { class: `ori ori-${edge}`, text: String(o[edge]) }));
    }
    const fig = el("figure", { class: "view", "data-view-id": String(view.id || "") }, [
      frame,
      el("figcaption", { text: String(view.title || view.id || "") }),
    ]);
    fig.style.setProperty("--w", `${w}px`);
    return fig;
  }

  function probsCell(row) {
    const probs = list(row.probabilities);
    const pred = gradeIndex(row.predicted);
    const truth = hasAnswers && row.truth !== null && row.truth !== undefined ? gradeIndex(row.truth) : -1;
    const wrap = el("div", { class: "probs" });
    severities.forEach((name, i) => {
      const p = isNum(probs[i]) ? probs[i] : null;
      const line = el(
        "div",
        {
          class: `prob g${i}${i === pred ? " predicted" : ""}${i === truth ? " truth" : ""}`,
          title: `${name}: ${p === null ? "\u2014" : p.toFixed(3)}${i === truth ? " (truth)" : ""}`,
        },
        [
          el("span", { class: "plabel", text: shortGrade(name) }),
          el("span", { class: "pbar" }, el("span", { class: "pfill" })),
          el("span", { class: "pvalue", text: fmt(p, 2) }),
          i === truth ? el("span", { class: "truth-mark", title: "truth", text: "\u25C0" }) : null,
        ],
      );
      line.querySelector(".pfill").style.width = `${p === null ? 0 : Math.max(0, Math.min(1, p)) * 100}%`;
      wrap.appendChild(line);
    });
    return el("td", { class: "c-probs" }, wrap);
  }

  function imgCell(src, cls, alt) {
    const s = dataImage(src);
    return el("td", { class: `c-${cls} pic` }, s ? el("img", { class: "crop", src: s, alt }) : dash());
  }

  function buildRowsTable(detail, viewTitles, scrollToView) {
    const rows = list(detail.rows).map((r, i) => ({ ...r, _order: i }));
    const cols = [
      { key: "condition", label: "Condition", value: (r) => r._order, dir: 1 },
      { key: "level", label: "Level", value: (r) => String(r.level || ""), dir: 1 },
      { key: "crop", label: "Crop" },
      { key: "cam", label: "Grad-CAM" },
      { key: "probs", label: "Probabilities", value: (r) => (isNum(list(r.probabilities)[2]) ? r.probabilities[2] : null), dir: -1, title: "Sorts by P(Severe)" },
      { key: "predicted", label: "Predicted", value: (r) => gradeIndex(r.predicted), dir: -1 },
    ];
    if (hasAnswers) {
      cols.push(
        { key: "truth", label: "Truth", value: (r) => (r.truth ? gradeIndex(r.truth) : null), dir: -1 },
        { key: "loss", label: "Loss", value: (r) => (isNum(r.loss) ? r.loss : null), dir: -1 },
        { key: "weight", label: "Weight", value: (r) => (isNum(r.weight) ? r.weight : null), dir: -1 },
        { key: "distance", label: "Point", title: "Found vs labelled point, mm", value: (r) => (isNum(r.distance_mm) ? r.distance_mm : null), dir: -1 },
      );
    }
    cols.push({ key: "view", label: "View" });
    const sort = hasAnswers ? { key: "loss", dir: -1 } : { key: "condition", dir: 1 };
    const trs = new Map();
    for (const r of rows) {
      const rowId = String(r.row_id || "");
      const prior = Boolean(r.prior);
      const tr = el("tr", { "data-row-id": rowId, class: prior ? "prior" : null });
      tr.append(
        el("td", { class: "c-condition" }, [
          el("div", { class: "cond", text: String(r.condition || "") }),
          el("div", { class: "sub", text: String(r.group || "") }),
        ]),
        el("td", { class: "c-level", text: String(r.level || "") }),
      );
      if (prior) {
        tr.append(
          el("td", { class: "c-crop pic", colspan: 2 }, el("span", { class: "prior-note", text: "class prior: not graded, no crop" })),
        );
      } else {
        tr.append(imgCell(r.crop, "crop", `crop ${r.level || ""}`), imgCell(r.cam, "cam", `Grad-CAM ${r.level || ""}`));
      }
      tr.appendChild(probsCell(r));
      tr.appendChild(
        el("td", { class: "c-predicted" }, [
          gradePill(String(r.predicted || "")),
          prior ? el("span", { class: "badge prior", title: "Filled with the class prior, not graded", text: "prior" }) : null,
        ]),
      );
      if (hasAnswers) {
        const truth = r.truth === null || r.truth === undefined ? null : String(r.truth);
        tr.append(
          el("td", { class: "c-truth" }, truth === null ? dash() : gradePill(truth, truth === r.predicted ? "hit" : "miss")),
          el("td", { class: "c-loss num", text: fmt(r.loss, 3) }),
          el("td", { class: "c-weight num", text: fmt(r.weight, 0) }),
          el("td", { class: "c-distance num" }, isNum(r.distance_mm) ? `${fmt(r.distance_mm, 1)} mm` : dash()),
        );
      }
      const viewId = r.view === null || r.view === undefined ? null : String(r.view);
      tr.appendChild(
        el(
          "td",
          { class: "c-view" },
          viewId && viewTitles.has(viewId)
            ? el("button", { type: "button", class: "link", text: viewTitles.get(viewId), title: "Show the point" })
            : dash(),
        ),
      );
      const button = tr.querySelector(".c-view button");
      if (button) {
        button.addEventListener("click", (ev) => {
          ev.stopPropagation();
          if (hl.pinned !== rowId) pin(rowId);
          scrollToView(viewId);
        });
      }
      tr.addEventListener("mouseenter", () => highlight(rowId));
      tr.addEventListener("mouseleave", () => highlight(null));
      tr.addEventListener("click", () => pin(rowId));
      trs.set(r, tr);
      hl.rows.set(rowId, tr);
    }
    const tbody = el("tbody");
    const head = sortableHead(cols, sort, render);
    function render() {
      const sorted = sortItems(rows, cols, sort, (a, b) => a._order - b._order);
      tbody.replaceChildren(...sorted.map((r) => trs.get(r)));
      head.update();
    }
    render();
    return el("table", { id: "rows", class: "data rows" }, [head.thead, tbody]);
  }

  function neighbours(id) {
    const order = ov.order.includes(id) ? ov.order : entries.map((e) => String(e.study_id));
    const i = order.indexOf(id);
    return { prev: i > 0 ? order[i - 1] : null, next: i >= 0 && i < order.length - 1 ? order[i + 1] : null, i, n: order.length };
  }

  function loadDetail(id) {
    if (!details.has(id)) {
      const node = document.getElementById(`study-${id}`);
      details.set(id, node ? JSON.parse(node.textContent) : { study_id: Number(id), views: [], rows: [] });
    }
    return details.get(id);
  }

  function buildStudy(id, fromOverview) {
    const entry = entryById.get(id);
    const detail = loadDetail(id);
    hl.pinned = null;
    hl.marks = new Map();
    hl.rows = new Map();
    const nb = neighbours(id);
    const back = el("a", { href: "#overview", class: "back-link", text: "\u2190 back to overview" });
    back.addEventListener("click", (ev) => {
      if (fromOverview) {
        ev.preventDefault();
        history.back();
      }
    });
    const nav = el("nav", { class: "study-nav" }, [
      back,
      el("span", { class: "spacer" }),
      nb.prev ? el("a", { href: studyHash(nb.prev), class: "nav-link prev", title: "Previous study (\u2190)", text: `\u2039 ${nb.prev}` }) : null,
      el("span", { class: "position", text: nb.i >= 0 ? `${nb.i + 1} of ${nb.n}` : "" }),
      nb.next ? el("a", { href: studyHash(nb.next), class: "nav-link next", title: "Next study (\u2192)", text: `${nb.next} \u203A` }) : null,
    ]);

    const facts = el("dl", { class: "facts" });
    const fact = (k, v) => facts.appendChild(el("div", { class: "pair" }, [el("dt", { text: k }), el("dd", null, v)]));
    fact("Series", list(entry.series).length ? list(entry.series).join(", ") : "none");
    fact("Graded \u00B7 prior", `${fmt(entry.graded, 0)} \u00B7 ${fmt(entry.prior, 0)}`);
    fact("Predicted Severe", list(entry.severe_groups).length ? list(entry.severe_groups).join(", ") : "none");
    if (hasAnswers) {
      fact("Loss", fmt(entry.loss, 3));
      const gl = entry.group_loss || {};
      if (Object.keys(gl).length) fact("Group loss", groups.filter((g) => g in gl).map((g) => `${g} ${fmt(gl[g], 3)}`).join(" \u00B7 "));
      fact("Point error", isNum(entry.point_error_mm) ? `${fmt(entry.point_error_mm, 1)} mm` : "\u2014");
    }

    const warnings = [];
    for (const s of list(entry.missing_series)) warnings.push(el("li", { class: "missing" }, [el("b", { text: "Missing series: " }), String(s)]));
    for (const w of list(detail.warnings)) warnings.push(el("li", { text: String(w) }));
    const warningBox = warnings.length
      ? el("section", { class: "warnings", role: "alert", "aria-label": "Warnings" }, [
          el("h3", { text: plural(warnings.length, "warning") }),
          el("ul", null, warnings),
        ])
      : null;

    const views = list(detail.views);
    const viewTitles = new Map();
    const viewNodes = new Map();
    const viewsBox = el("section", { class: "views", "aria-label": "Images" });
    for (const v of views) {
      const node = buildView(v);
      viewNodes.set(String(v.id), node);
      viewTitles.set(String(v.id), String(v.title || v.id).split(",")[0]);
      viewsBox.appendChild(node);
    }
    if (!views.length) viewsBox.appendChild(el("p", { class: "muted", text: "No images for this study." }));
    hl.views = viewsBox;
    const scrollToView = (viewId) => {
      const node = viewNodes.get(viewId);
      if (node) node.scrollIntoView({ block: "nearest", behavior: "smooth" });
    };

    const rowsCount = list(detail.rows).length;
    const priorCount = list(detail.rows).filter((r) => r.prior).length;
    const parts = [
      nav,
      el("div", { class: "study-head" }, [el("h2", { text: `Study ${id}` }), facts]),
      warningBox,
      viewsBox,
      el("h3", { class: "section-title" }, [
        plural(rowsCount, "row"),
        priorCount ? el("span", { class: "badge prior", text: `${priorCount} prior` }) : null,
        el("span", { class: "hint", text: hasAnswers ? "worst loss first; hover a row to find its point" : "hover a row to find its point" }),
      ]),
      el("div", { class: "table-wrap" }, buildRowsTable(detail, viewTitles, scrollToView)),
    ];
    studyView.replaceChildren(...parts.filter(Boolean));
  }

  // ---------------------------------------------------------------- routing

  let current = null; // "overview" or a study id

  function route() {
    const m = /^#study-(\d+)$/.exec(location.hash);
    const notice = document.getElementById("route-notice");
    if (m && entryById.has(m[1])) {
      if (current === "overview") ov.scrollY = window.scrollY;
      const fromOverview = current === "overview";
      buildStudy(m[1], fromOverview);
      overviewView.hidden = true;
      studyView.hidden = false;
      document.title = `Study ${m[1]} \u00B7 ${index.title || "review"}`;
      current = m[1];
      window.scrollTo(0, 0);
      return;
    }
    notice.hidden = !m;
    notice.textContent = m ? `Study ${m[1]} is not on this page.` : "";
    studyView.hidden = true;
    studyView.replaceChildren();
    overviewView.hidden = false;
    document.title = String(index.title || "spinegrade review");
    const wasStudy = current !== null && current !== "overview";
    current = "overview";
    window.scrollTo(0, wasStudy ? ov.scrollY : 0);
  }

  document.addEventListener("keydown", (ev) => {
    if (current === null || current === "overview" || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.target.closest && ev.target.closest("input, select, textarea")) return;
    const nb = neighbours(current);
    if (ev.key === "ArrowLeft" && nb.prev) location.hash = studyHash(nb.prev);
    else if (ev.key === "ArrowRight" && nb.next) location.hash = studyHash(nb.next);
    else if (ev.key === "Escape") studyView.querySelector(".back-link").click();
  });

  buildHeader();
  buildOverview();
  window.addEventListener("hashchange", route);
  route();
  document.body.classList.add("ready");
})();
