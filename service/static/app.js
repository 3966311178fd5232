// The annotation-assist page: hints (tags or boxes) on an image, pseudo-label samples from
// POST /v1/pseudo-labels, the prediction network's instances from POST /v1/segment, clicked
// points refined into candidate masks by POST /v1/refine, and the chosen sample downloaded as
// COCO annotations. Plain browser JavaScript, no dependencies.
"use strict";

const MAX_VIEW = { width: 720, height: 540 };
const THUMB_SIZE = 128;
const MIN_BOX_SIDE = 2; // image pixels: a smaller drag is a click, not a box
const LABEL_HEIGHT = 16; // canvas pixels of a box's label line
const COLORS = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
];

const state = {
  classes: [],
  model: null,
  file: null,
  image: null, // HTMLImageElement, decoded
  boxes: [], // {label, bbox: [x0, y0, x1, y1]} in image pixels
  points: [], // {x, y, positive} in image pixels: clicks of the points mode
  drag: null, // {start: [x, y], end: [x, y]} in image pixels while a box is drawn
  results: null, // {kind, model, width, height, diversity, samples: [{instances, score}]}
  selected: -1,
  request: 0, // responses to an older request (a different image) are dropped
  modelLoad: 0,
};

const $ = (id) => document.getElementById(id);

// ---- COCO RLE (pycocotools maskApi.c rleFrString), masks are column-major ----

function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      if (p >= text.length) throw new Error("malformed RLE counts");
      const c = text.charCodeAt(p) - 48;
      // Arithmetic, not bit shifts: JavaScript shifts wrap at 32 bits, C's long does not.
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// A {size: [h, w], counts} RLE as Uint8Array[h * w] in row-major order (1 inside the mask).
function decodeMask(rle) {
  const [height, width] = rle.size;
  const mask = new Uint8Array(height * width);
  let index = 0;
  let inside = false;
  for (const run of rleCounts(rle.counts)) {
    if (inside) {
      for (let i = index; i < index + run; i += 1) {
        mask[(i % height) * width + Math.floor(i / height)] = 1;
      }
    }
    index += run;
    inside = !inside;
  }
  if (index !== height * width) {
    throw new Error(`RLE covers ${index} pixels, the mask has ${height * width}`);
  }
  return mask;
}

function instanceMask(instance) {
  if (!instance.decoded) instance.decoded = decodeMask(instance.mask);
  return instance.decoded;
}

// ---- drawing ----

function classColor(label) {
  const index = Math.max(0, state.classes.indexOf(label));
  return COLORS[index % COLORS.length];
}

function rgb([r, g, b], alpha = 1) {
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

// The sample's masks painted on a transparent canvas of the image's size (made once).
function maskLayer(sample, width, height) {
  if (sample.layer) return sample.layer;
  const layer = document.createElement("canvas");
  layer.width = width;
  layer.height = height;
  const context = layer.getContext("2d");
  const pixels = context.createImageData(width, height);
  sample.instances.forEach((instance, index) => {
    const mask = instanceMask(instance);
    // Instances of one class get shades of its colour, so they stay apart.
    const shade = 1 - 0.25 * (index % 3);
    const [r, g, b] = classColor(instance.label).map((v) => Math.round(v * shade));
    for (let i = 0; i < mask.length; i += 1) {
      if (!mask[i]) continue;
      const x = i % width;
      // Outline pixels (a 4-neighbour outside the mask or the image) are opaque, so a mask
      // stays visible on an image of its own colour.
      const edge = x === 0 || x === width - 1 || i < width || i >= mask.length - width ||
        !mask[i - 1] || !mask[i + 1] || !mask[i - width] || !mask[i + width];
      pixels.data.set([r, g, b, edge ? 255 : 140], i * 4);
    }
  });
  context.putImageData(pixels, 0, 0);
  sample.layer = layer;
  return layer;
}

// Where each label goes, in canvas pixels, for labels {x, y, width} wanted at (x, y) in this
// order: there, or, where it would cover a label placed before (an instance's box often starts
// where its hint box does), the first line below that covers none, within `height`.
function placeLabels(wanted, height) {
  const placed = [];
  for (const { x, y, width } of wanted) {
    const covers = (top) => placed.some((other) => x < other.x + other.width &&
      other.x < x + width && top < other.y + LABEL_HEIGHT && other.y < top + LABEL_HEIGHT);
    let top = y;
    while (covers(top) && top + 2 * LABEL_HEIGHT <= height) top += LABEL_HEIGHT;
    placed.push({ x, y: top, width });
  }
  return placed;
}

// Draws the image, the sample's masks and labelled boxes (image pixels) into `canvas`.
function paint(canvas, sample, boxes, { labels = true } = {}) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.image) return;
  const scale = canvas.width / state.image.naturalWidth;
  context.imageSmoothingEnabled = true;
  context.drawImage(state.image, 0, 0, canvas.width, canvas.height);
  if (sample) {
    const layer = maskLayer(sample, state.image.naturalWidth, state.image.naturalHeight);
    context.imageSmoothingEnabled = false;
    context.drawImage(layer, 0, 0, canvas.width, canvas.height);
  }
  context.font = "12px system-ui, sans-serif";
  context.textBaseline = "top";
  for (const { label, bbox, dashed } of boxes) {
    const [x0, y0, x1, y1] = bbox.map((v) => v * scale);
    context.setLineDash(dashed ? [5, 4] : []);
    context.lineWidth = 2;
    context.strokeStyle = rgb(classColor(label));
    context.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  context.setLineDash([]);
  if (!labels) return;
  const labelled = boxes.filter((box) => box.label);
  const wanted = labelled.map(({ label, bbox }) => ({
    x: bbox[0] * scale,
    y: Math.max(0, bbox[1] * scale - LABEL_HEIGHT),
    width: context.measureText(label).width + 6,
  }));
  placeLabels(wanted, canvas.height).forEach(({ x, y, width }, index) => {
    const { label } = labelled[index];
    context.fillStyle = rgb(classColor(label), 0.85);
    context.fillRect(x, y, width, LABEL_HEIGHT);
    context.fillStyle = "#fff";
    context.fillText(label, x + 3, y + 2);
  });
}

// Positive points as green discs, negative ones as red discs with a white ring.
function paintPoints(canvas) {
  const context = canvas.getContext("2d");
  const scale = canvas.width / state.image.naturalWidth;
  for (const { x, y, positive } of state.points) {
    context.beginPath();
    context.arc(x * scale, y * scale, 5, 0, 2 * Math.PI);
    context.fillStyle = positive ? "rgb(40, 200, 80)" : "rgb(230, 40, 40)";
    context.fill();
    context.lineWidth = 2;
    context.strokeStyle = "#fff";
    context.stroke();
  }
}

function fitCanvas(canvas, maxWidth, maxHeight) {
  const { naturalWidth: width, naturalHeight: height } = state.image;
  const scale = Math.min(maxWidth / width, maxHeight / height);
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));
}

function selectedSample() {
  return state.results && state.selected >= 0 ? state.results.samples[state.selected] : null;
}

function render() {
  const canvas = $("canvas");
  const sample = selectedSample();
  const boxes = [];
  if (sample) {
    for (const instance of sample.instances) {
      boxes.push({ label: `${instance.label} ${instance.score.toFixed(2)}`, bbox: instance.bbox });
    }
  }
  if (mode() === "boxes") {
    for (const box of state.boxes) boxes.push({ ...box, dashed: Boolean(sample) });
    if (state.drag) {
      boxes.push({ label: $("box-class").value, bbox: dragBox(state.drag), dashed: true });
    }
  }
  paint(canvas, sample, boxes);
  if (mode() === "points") paintPoints(canvas);
  document.querySelectorAll(".thumb").forEach((thumb, index) => {
    thumb.classList.toggle("selected", index === state.selected);
    thumb.setAttribute("aria-pressed", String(index === state.selected));
  });
}

// ---- messages ----

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(text) {
  $("status").textContent = text;
}

function setBusy(busy) {
  for (const id of ["suggest", "segment", "accept"]) $(id).disabled = busy;
}

// ---- the API ----

class ApiError extends Error {}

// JSON of a /v1 call; throws ApiError with the service's {"error": {code, message}} in words.
async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, { method, body, headers });
  } catch (error) {
    throw new ApiError(`Could not reach the service (${error.message}).`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && data.error;
    if (detail && detail.message) {
      throw new ApiError(`${detail.message} (${detail.code}, HTTP ${response.status})`);
    }
    throw new ApiError(`The service answered HTTP ${response.status} ${response.statusText}.`);
  }
  if (data === null) throw new ApiError("The service answered something that is not JSON.");
  return data;
}

function fillClassSelect(select, classes) {
  const chosen = new Set([...select.selectedOptions].map((option) => option.value));
  select.replaceChildren(
    ...classes.map((name) => {
      const option = new Option(name, name);
      option.selected = chosen.has(name);
      return option;
    }),
  );
}

async function loadModel() {
  // A changed API key starts another load; only the latest one's answer counts.
  const load = (state.modelLoad += 1);
  try {
    const info = await api("/v1/models");
    if (load !== state.modelLoad) return;
    state.classes = info.classes;
    state.model = info.model;
    fillClassSelect($("tags"), info.classes);
    fillClassSelect($("box-class"), info.classes);
    if (!$("box-class").value && info.classes.length) $("box-class").value = info.classes[0];
    $("model-name").textContent = `model ${info.model} · ${info.classes.length} classes`;
    clearError();
    renderBoxList();
  } catch (error) {
    if (load !== state.modelLoad) return;
    $("model-name").textContent = "model unavailable";
    showError(`Could not load the model's classes: ${error.message}`);
  }
}

// ---- the image and box hints ----

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function loadImage(file) {
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onload = () => {
    state.request += 1;
    state.file = file;
    state.image = image;
    state.boxes = [];
    state.points = [];
    state.results = null;
    state.selected = -1;
    setBusy(false);
    fitCanvas($("canvas"), MAX_VIEW.width, MAX_VIEW.height);
    renderBoxList();
    renderPointCount();
    renderResults();
    setStatus(`${file.name}: ${image.naturalWidth}×${image.naturalHeight} pixels`);
    clearError();
  };
  image.onerror = () => {
    URL.revokeObjectURL(url);
    showError(`${file.name} cannot be read as an image.`);
  };
  image.src = url;
}

// The image pixel under a pointer event, clamped to the image.
function imagePoint(event) {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  // client* measure the drawn area, inside the canvas's CSS border.
  const left = rect.left + canvas.clientLeft;
  const top = rect.top + canvas.clientTop;
  const x = ((event.clientX - left) / canvas.clientWidth) * state.image.naturalWidth;
  const y = ((event.clientY - top) / canvas.clientHeight) * state.image.naturalHeight;
  const clamp = (v, high) => Math.min(Math.max(v, 0), high);
  return [clamp(x, state.image.naturalWidth), clamp(y, state.image.naturalHeight)];
}

function dragBox({ start, end }) {
  const round = (v) => Math.round(v * 10) / 10;
  return [
    Math.min(start[0], end[0]), Math.min(start[1], end[1]),
    Math.max(start[0], end[0]), Math.max(start[1], end[1]),
  ].map(round);
}

function renderBoxList() {
  const list = $("box-list");
  list.replaceChildren(
    ...state.boxes.map((box, index) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = rgb(classColor(box.label));
      const select = document.createElement("select");
      select.className = "box-label";
      select.setAttribute("aria-label", `class of box ${index + 1}`);
      fillClassSelect(select, state.classes);
      select.value = box.label;
      select.addEventListener("change", () => {
        box.label = select.value;
        renderBoxList();
        render();
      });
      const coords = document.createElement("code");
      coords.textContent = box.bbox.map((v) => Math.round(v)).join(", ");
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete-box";
      remove.textContent = "✕";
      remove.title = "delete this box";
      remove.setAttribute("aria-label", `delete box ${index + 1}`);
      remove.addEventListener("click", () => {
        state.boxes.splice(index, 1);
        renderBoxList();
        render();
      });
      item.append(swatch, select, coords, remove);
      return item;
    }),
  );
}

function startDrag(event) {
  if (!state.image || event.button !== 0) return;
  if (mode() === "points") {
    event.preventDefault();
    const [x, y] = imagePoint(event);
    state.points.push({ x: Math.round(x * 10) / 10, y: Math.round(y * 10) / 10,
      positive: !event.shiftKey });
    renderPointCount();
    refine();
    return;
  }
  if (mode() !== "boxes") return;
  event.preventDefault();
  $("canvas").setPointerCapture(event.pointerId);
  const point = imagePoint(event);
  state.drag = { start: point, end: point };
}

function moveDrag(event) {
  if (!state.drag) return;
  state.drag.end = imagePoint(event);
  render();
}

function endDrag(event) {
  if (!state.drag) return;
  state.drag.end = imagePoint(event);
  const bbox = dragBox(state.drag);
  state.drag = null;
  if (bbox[2] - bbox[0] >= MIN_BOX_SIDE && bbox[3] - bbox[1] >= MIN_BOX_SIDE) {
    if (!$("box-class").value) {
      showError("The model's classes are not loaded, so the box has no class.");
    } else {
      state.boxes.push({ label: $("box-class").value, bbox });
      renderBoxList();
    }
  }
  render();
}

// ---- suggestions and predictions ----

// The k and seed fields as numbers; throws with a readable message when out of range.
function sampling() {
  const kField = $("k");
  const k = Number(kField.value);
  if (!Number.isInteger(k) || k < Number(kField.min) || k > Number(kField.max)) {
    throw new ApiError(`k must be a whole number from ${kField.min} to ${kField.max}.`);
  }
  const seedText = $("seed").value.trim();
  const seed = seedText === "" ? null : Number(seedText);
  if (seed !== null && (!Number.isSafeInteger(seed) || seed < 0)) {
    throw new ApiError("The seed must be a whole number ≥ 0, or empty for a random one.");
  }
  return { k, seed };
}

function hintForm() {
  if (!state.file) throw new ApiError("Choose an image first.");
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  if (mode() === "tags") {
    const tags = [...$("tags").selectedOptions].map((option) => option.value);
    if (!tags.length) throw new ApiError("Select the classes present in the image first.");
    form.append("tags", JSON.stringify(tags));
  } else {
    if (!state.boxes.length) throw new ApiError("Draw at least one box on the image first.");
    form.append("boxes", JSON.stringify(state.boxes.map(({ label, bbox }) => ({ label, bbox }))));
  }
  const { k, seed } = sampling();
  form.append("k", String(k));
  if (seed !== null) form.append("seed", String(seed));
  return form;
}

async function run(describe, call) {
  clearError();
  const request = (state.request += 1);
  setBusy(true);
  setStatus(`${describe}…`);
  try {
    const results = await call();
    if (request !== state.request) return;
    if (results.width !== state.image.naturalWidth || results.height !== state.image.naturalHeight) {
      throw new ApiError(
        `The service read the image as ${results.width}×${results.height}, the page shows it as ` +
          `${state.image.naturalWidth}×${state.image.naturalHeight}.`,
      );
    }
    state.results = results;
    state.selected = results.samples.length ? 0 : -1;
    renderResults();
    setStatus(`${describe}: done.`);
  } catch (error) {
    if (request !== state.request) return;
    setStatus("");
    showError(error instanceof ApiError ? error.message : `Unexpected error: ${error.message}`);
  } finally {
    if (request === state.request) setBusy(false);
  }
}

function suggest() {
  if (mode() === "points") {
    if (!state.points.length) showError("Click on the image to add points first.");
    else refine();
    return;
  }
  let form;
  try {
    form = hintForm();
  } catch (error) {
    showError(error.message);
    return;
  }
  run("Sampling pseudo labels", async () => {
    const data = await api("/v1/pseudo-labels", { method: "POST", body: form });
    return { kind: "pseudo-labels", ...data };
  });
}

function segment() {
  if (!state.file) {
    showError("Choose an image first.");
    return;
  }
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  run("Segmenting", async () => {
    const data = await api("/v1/segment", { method: "POST", body: form });
    const scores = data.instances.map((instance) => instance.score);
    const score = scores.length ? scores.reduce((a, b) => a + b, 0) / scores.length : 0;
    return {
      kind: "segment",
      model: data.model,
      width: data.width,
      height: data.height,
      samples: [{ instances: data.instances, score }],
    };
  });
}

function renderPointCount() {
  const positive = state.points.filter((point) => point.positive).length;
  const negative = state.points.length - positive;
  $("point-count").textContent = state.points.length
    ? `${positive} inside, ${negative} outside`
    : "No points yet.";
}

// Candidate masks of one object from the clicked points (POST /v1/refine); each candidate is
// shown as a sample of one instance.
function refine() {
  if (!state.points.length) return;
  let sampled;
  try {
    sampled = sampling();
  } catch (error) {
    showError(error.message);
    return;
  }
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  const coordinates = (positive) =>
    JSON.stringify(state.points.filter((p) => p.positive === positive).map((p) => [p.x, p.y]));
  form.append("positive", coordinates(true));
  form.append("negative", coordinates(false));
  form.append("k", String(sampled.k));
  if (sampled.seed !== null) form.append("seed", String(sampled.seed));
  run("Refining", async () => {
    const data = await api("/v1/refine", { method: "POST", body: form });
    return {
      kind: "refine",
      model: data.model,
      width: data.width,
      height: data.height,
      samples: data.candidates.map((candidate) => ({
        instances: [candidate],
        score: candidate.score,
      })),
    };
  });
}

function renderResults() {
  const results = state.results;
  $("result-bar").hidden = !results;
  const container = $("samples");
  if (!results) {
    container.replaceChildren();
    render();
    return;
  }
  const count = results.samples.length;
  const describe = {
    segment: () => `Prediction network: ${results.samples[0].instances.length} instances`,
    refine: () => `${count} candidates · ${results.model}`,
    "pseudo-labels": () =>
      `${count} ${count === 1 ? "sample" : "samples"} · diversity ${results.diversity.toFixed(3)} · ${results.model}`,
  };
  $("result-info").textContent = describe[results.kind]();
  container.replaceChildren(
    ...results.samples.map((sample, index) => {
      const thumb = document.createElement("button");
      thumb.type = "button";
      thumb.className = "thumb";
      const canvas = document.createElement("canvas");
      fitCanvas(canvas, THUMB_SIZE, THUMB_SIZE);
      paint(
        canvas,
        sample,
        sample.instances.map(({ label, bbox }) => ({ label, bbox })),
        { labels: false },
      );
      const caption = document.createElement("span");
      const name = results.kind === "segment" ? "prediction" : `#${index + 1}`;
      caption.textContent =
        `${name} · ${sample.instances.length} inst. · score ${sample.score.toFixed(2)}`;
      thumb.append(canvas, caption);
      thumb.addEventListener("click", () => {
        state.selected = index;
        render();
      });
      return thumb;
    }),
  );
  render();
}

// ---- accepting a sample: COCO annotations ----

function cocoAnnotations(sample) {
  const { width, height } = state.results;
  const categories = state.classes.map((name, index) => ({ id: index + 1, name }));
  const annotations = sample.instances.map((instance, index) => {
    const [x0, y0, x1, y1] = instance.bbox;
    return {
      id: index + 1,
      image_id: 1,
      category_id: state.classes.indexOf(instance.label) + 1,
      segmentation: { size: instance.mask.size, counts: instance.mask.counts },
      area: instanceMask(instance).reduce((total, v) => total + v, 0),
      bbox: [x0, y0, x1 - x0, y1 - y0],
      iscrowd: 0,
      score: instance.score,
    };
  });
  return {
    info: {
      description: `discoseg ${state.results.kind}`,
      model: state.results.model,
      date_created: new Date().toISOString(),
    },
    images: [{ id: 1, file_name: state.file.name, width, height }],
    categories,
    annotations,
  };
}

function accept() {
  const sample = selectedSample();
  if (!sample) {
    showError("Choose a sample first.");
    return;
  }
  const unknown = sample.instances.find((instance) => !state.classes.includes(instance.label));
  if (unknown) {
    showError(`The class ${unknown.label} is not among the model's classes; reload the page.`);
    return;
  }
  const text = JSON.stringify(cocoAnnotations(sample), null, 2);
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = `${state.file.name.replace(/\.[^.]*$/, "")}.coco.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  setStatus(`Accepted sample ${state.selected + 1}: ${link.download}`);
}

// ---- wiring ----

function init() {
  $("image-file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) loadImage(file);
  });
  $("api-key").addEventListener("change", loadModel);
  document.querySelectorAll('input[name="mode"]').forEach((radio) => {
    radio.addEventListener("change", () => {
      $("tags-panel").hidden = mode() !== "tags";
      $("boxes-panel").hidden = mode() !== "boxes";
      $("points-panel").hidden = mode() !== "points";
      $("canvas").classList.toggle("drawing", mode() !== "tags");
      render();
    });
  });
  const canvas = $("canvas");
  canvas.addEventListener("pointerdown", startDrag);
  canvas.addEventListener("pointermove", moveDrag);
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", () => {
    state.drag = null;
    render();
  });
  $("controls").addEventListener("submit", (event) => {
    event.preventDefault();
    suggest();
  });
  $("segment").addEventListener("click", segment);
  $("clear-points").addEventListener("click", () => {
    state.points = [];
    renderPointCount();
    render();
  });
  $("accept").addEventListener("click", accept);
  loadModel();
}

init();
