// The upload page of `spinegrade serve`: send one study (a .zip, or a folder zipped here
// without compression), show the upload's and the grading's progress, then the study as
// the review page shows it, with its 25 rows. Every string from the service is shown as
// text, never parsed as markup.
"use strict";

const $ = (id) => document.getElementById(id);

// --- a folder -> a .zip (stored, not compressed: DICOM pixels hardly compress) ---------
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function zipFiles(entries) {  // entries: [{path, file}]
  const enc = new TextEncoder();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const { path, file } of entries) {
    const name = enc.encode(path);
    const data = new Uint8Array(await file.arrayBuffer());
    const crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, 0x0800, true);  // names in UTF-8
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true);
    local.setUint32(22, data.length, true);
    local.setUint16(26, name.length, true);
    parts.push(local, name, data);
    const cd = new DataView(new ArrayBuffer(46));
    cd.setUint32(0, 0x02014b50, true);
    cd.setUint16(4, 20, true);
    cd.setUint16(6, 20, true);
    cd.setUint16(8, 0x0800, true);
    cd.setUint32(16, crc, true);
    cd.setUint32(20, data.length, true);
    cd.setUint32(24, data.length, true);
    cd.setUint16(28, name.length, true);
    cd.setUint32(42, offset, true);
    central.push(cd, name);
    offset += 30 + name.length + data.length;
  }
  const size = central.reduce((s, p) => s + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

// --- what was dropped or chosen -> one .zip ---------------------------------------------
async function readEntry(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    out.push({ path: prefix + entry.name, file });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      for (const child of batch) await readEntry(child, prefix + entry.name + "/", out);
    }
  }
}

async function fromDrop(dataTransfer) {
  const items = [...dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry());
  if (items.length === 1 && items[0] && items[0].isFile && /\.zip$/i.test(items[0].name)) {
    return dataTransfer.files[0];
  }
  const entries = [];
  for (const entry of items) if (entry) await readEntry(entry, "", entries);
  if (!entries.length) throw new Error("nothing to upload: drop a .zip or a folder");
  stage("Packing " + entries.length + " files…");
  return zipFiles(entries);
}

async function fromFolder(files) {
  const entries = [...files].map((file) => ({ path: file.webkitRelativePath || file.name, file }));
  if (!entries.length) throw new Error("the folder is empty");
  stage("Packing " + entries.length + " files…");
  return zipFiles(entries);
}

// --- upload, grade, show -------------------------------------------------------------
function stage(text, percent) {
  $("progress").hidden = false;
  $("stage").textContent = text;
  const bar = $("bar");
  if (percent === undefined) bar.removeAttribute("value");
  else bar.value = percent;
}

function fail(message) {
  $("progress").hidden = true;
  $("error").hidden = false;
  $("error").textContent = message;
}

function send(blob, name) {
  $("error").hidden = true;
  $("result").hidden = true;
  const form = new FormData();
  form.append("study", blob, name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/grade?review=true");
  xhr.responseType = "json";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) stage("Uploading… " + Math.round((100 * e.loaded) / e.total) + "%", (100 * e.loaded) / e.total);
  };
  xhr.upload.onload = () => stage("Grading: reading the series, finding the levels, grading the crops…");
  xhr.onerror = () => fail("the upload failed (the service did not answer)");
  xhr.onload = () => {
    $("progress").hidden = true;
    const body = xhr.response || {};
    if (xhr.status !== 200) {
      fail("Error " + xhr.status + ": " + (body.error || xhr.statusText));
      return;
    }
    show(body);
  };
  stage("Uploading…", 0);
  xhr.send(form);
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function show(answer) {
  $("result").hidden = false;
  $("result-title").textContent = "Study " + answer.study_id;
  $("result-meta").textContent = answer.rows.length + " rows, graded in " + answer.seconds.toFixed(1) + " s";
  const warnings = $("warnings");
  warnings.replaceChildren();
  for (const w of answer.warnings) {
    const li = document.createElement("li");
    li.textContent = w;
    warnings.appendChild(li);
  }
  const series = $("series").tBodies[0];
  series.replaceChildren();
  for (const s of answer.series) {
    const tr = series.insertRow();
    cell(tr, String(s.id));
    cell(tr, s.type || "(none)");
    cell(tr, s.basis + (s.reason ? ": " + s.reason : ""));
  }
  const rows = $("rows").tBodies[0];
  rows.replaceChildren();
  for (const r of answer.rows) {
    const tr = rows.insertRow();
    cell(tr, r.row_id);
    for (const k of ["normal_mild", "moderate", "severe"]) cell(tr, r[k].toFixed(3), "num");
  }
  const frame = $("review");
  if (answer.review) frame.src = answer.review;
  frame.hidden = !answer.review;
}

async function take(getBlob, name) {
  try {
    const blob = await getBlob();
    send(blob, name);
  } catch (e) {
    fail(String(e.message || e));
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  take(() => fromDrop(e.dataTransfer), "study.zip");
});
$("zip-input").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) take(async () => file, file.name);
});
$("folder-input").addEventListener("change", (e) => take(() => fromFolder(e.target.files), "study.zip"));
