// cloak's page: upload photos, follow their progress, compare before and after, download.
// Talks only to the server that served it; all text from the server goes in with textContent.
"use strict";

const POLL_MS = 700;
const FINAL = new Set(["done", "no_face", "failed"]);

const state = {
  settings: null,
  photos: new Map(), // id -> {card, data}
  polling: false,
};

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showBanner(message) {
  const banner = $("#banner");
  banner.textContent = message;
  banner.hidden = !message;
}

async function loadSettings() {
  const response = await fetch("/api/settings");
  const settings = await response.json();
  state.settings = settings;
  $("#max-files").textContent = settings.max_files;
  $("#max-mb").textContent = settings.max_upload_mb;
  for (const preset of settings.strengths) {
    const steps = $(`[data-steps="${preset.name}"]`);
    if (steps) steps.textContent = `· ${preset.steps} steps`;
  }
  const chosen = document.querySelector(`input[name="strength"][value="${settings.default_strength}"]`);
  if (chosen) chosen.checked = true;
  if (settings.metadata === "keep") {
    const note = $("#metadata-note");
    note.textContent = "Metadata is kept (the server runs with metadata=keep): copies keep their GPS location.";
    note.classList.add("warn");
  }
  $("#device-note").textContent = settings.device === "cpu" ? " (on its processor)" : ` (on ${settings.device})`;
}

// ---- uploading ----------------------------------------------------------------------

function chosenStrength() {
  const checked = document.querySelector('input[name="strength"]:checked');
  return checked ? checked.value : "mid";
}

async function uploadFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  showBanner("");
  const size = state.settings ? state.settings.max_files : 20;
  for (let start = 0; start < files.length; start += size) {
    await uploadGroup(files.slice(start, start + size));
  }
}

async function uploadGroup(files) {
  const form = new FormData();
  for (const file of files) form.append("photos", file, file.name);
  form.append("strength", chosenStrength());
  form.append("keep_no_face", $("#keep-no-face").checked ? "true" : "false");
  const placeholders = files.map((file) => addPlaceholder(file.name));
  let body;
  try {
    const response = await fetch("/api/photos", { method: "POST", body: form });
    body = await response.json().catch(() => ({}));
    if (!response.ok && !body.refused) {
      placeholders.forEach((card) => card.remove());
      showBanner(body.detail || `The upload failed (${response.status}).`);
      return;
    }
  } catch (error) {
    placeholders.forEach((card) => card.remove());
    showBanner("cloak's server is not answering. Is it still running?");
    return;
  }
  placeholders.forEach((card) => card.remove());
  for (const photo of body.photos || []) addPhoto(photo);
  for (const refused of body.refused || []) addRefused(refused);
  poll();
}

// ---- cards ----------------------------------------------------------------------------

function newCard(name) {
  const card = $("#photo-template").content.firstElementChild.cloneNode(true);
  $(".name", card).textContent = name;
  $("#photo-list").append(card);
  $("#results").hidden = false;
  return card;
}

function addPlaceholder(name) {
  const card = newCard(name);
  setBadge(card, "uploading", "Uploading");
  $(".status-text", card).textContent = "Sending to cloak on this computer…";
  return card;
}

function addRefused(refused) {
  const card = newCard(refused.name);
  card.classList.add("is-failed");
  setBadge(card, "failed", "Not cloaked");
  $(".progress", card).hidden = true;
  $(".status-text", card).textContent = refused.error;
}

function addPhoto(photo) {
  const card = newCard(photo.name);
  card.dataset.id = photo.id;
  wireViewer(card);
  state.photos.set(photo.id, { card, data: null });
  render(photo);
}

function setBadge(card, kind, text) {
  const badge = $(".badge", card);
  badge.className = `badge ${kind}`;
  badge.textContent = text;
}

function wireViewer(card) {
  const slider = $(".slider", card);
  const update = () => {
    const value = Number(slider.value);
    $(".after", card).style.clipPath = `inset(0 0 0 ${value}%)`;
    $(".divider", card).style.left = `${value}%`;
  };
  slider.addEventListener("input", update);
  update();
  for (const tab of card.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      for (const other of card.querySelectorAll(".tab")) other.classList.toggle("active", other === tab);
      const amplified = tab.dataset.view === "amplified";
      $(".compare", card).hidden = amplified;
      $(".amplified", card).hidden = !amplified;
    });
  }
}

function statusText(photo) {
  switch (photo.status) {
    case "queued":
      return photo.position > 0
        ? `Waiting: ${photo.position} photo${photo.position === 1 ? "" : "s"} ahead.`
        : "Waiting to start…";
    case "detecting":
      return "Looking for faces…";
    case "cloaking":
      return `Cloaking: step ${photo.step} of ${photo.steps}`;
    case "saving":
      return "Checking the cloak and saving the copy…";
    case "done": {
      const faces = photo.report.faces.length;
      return `Done: ${faces} face${faces === 1 ? "" : "s"} cloaked in ${photo.seconds} s.`;
    }
    case "no_face":
      return photo.download
        ? "No face found, so there is nothing to cloak. It is given back unchanged (camera data removed)."
        : "No face found in this photo, so there is nothing to cloak. Tick \u201cgive back photos without a face\u201d to get it back unchanged.";
    case "failed":
      return photo.message;
    default:
      return photo.status;
  }
}

const BADGES = {
  queued: ["waiting", "Waiting"],
  detecting: ["working", "Working"],
  cloaking: ["working", "Cloaking"],
  saving: ["working", "Saving"],
  done: ["done", "Cloaked"],
  no_face: ["neutral", "No face"],
  failed: ["failed", "Not cloaked"],
};

function progressFraction(photo) {
  if (photo.status === "cloaking" && photo.steps) return 0.1 + (0.8 * photo.step) / photo.steps;
  return { queued: 0, detecting: 0.05, saving: 0.92 }[photo.status] ?? 1;
}

function render(photo) {
  const entry = state.photos.get(photo.id);
  if (!entry) return;
  const { card } = entry;
  const previous = entry.data;
  entry.data = photo;
  const [badgeKind, badgeText] = BADGES[photo.status] || ["neutral", photo.status];
  setBadge(card, badgeKind, badgeText);
  card.classList.toggle("is-failed", photo.status === "failed");
  $(".status-text", card).textContent = statusText(photo);
  $(".bar", card).style.width = `${Math.round(progressFraction(photo) * 100)}%`;
  $(".progress", card).hidden = FINAL.has(photo.status);

  if (FINAL.has(photo.status) && !(previous && FINAL.has(previous.status))) {
    renderResult(card, photo);
  }
  updateDownloadAll();
}

function renderResult(card, photo) {
  const views = photo.views || {};
  if (views.before) {
    $(".viewer", card).hidden = false;
    $(".before", card).src = views.before;
    if (views.after) {
      $(".after", card).src = views.after;
      $(".amplified img", card).src = views.amplified;
    } else {
      // No face: nothing to compare; show the photo alone.
      card.classList.add("single");
      $(".tabs", card).hidden = true;
      for (const node of card.querySelectorAll(".after, .divider, .corner, .slider")) node.hidden = true;
    }
  }
  if (photo.status === "done") renderFaces(card, photo);
  if (photo.status !== "failed") $(".meta-note", card).textContent = metadataText(photo.metadata);
  if (photo.download) {
    const link = $(".download", card);
    link.href = photo.download;
    link.download = photo.download_name;
    link.textContent = `Download ${photo.download_name}`;
    link.hidden = false;
  }
}

function metadataText(meta) {
  if (meta.policy !== "strip") return "Metadata kept (the server runs with metadata=keep), GPS location included.";
  if (meta.gps_found) return "\u2713 GPS location removed, with all other camera data.";
  if (meta.found) return "\u2713 Camera data removed (it held no GPS location).";
  return "\u2713 No location or camera data in this photo.";
}

function renderFaces(card, photo) {
  const list = $(".faces", card);
  list.textContent = "";
  const faces = photo.report.faces;
  faces.forEach((face, index) => {
    const item = el("li", face.protected === false ? "face weak" : "face ok");
    const label = faces.length > 1 ? `Face ${index + 1}: ` : "Your face: ";
    item.append(el("span", "mark", face.protected === false ? "!" : "\u2713"));
    const text = el("span", "verdict");
    text.append(el("b", "", label));
    text.append(document.createTextNode(`${face.text}.`));
    item.append(text);
    list.append(item);
  });

  const details = $(".numbers", card);
  const body = $(".numbers-body", card);
  body.textContent = "";
  const table = el("table");
  const head = el("tr");
  for (const title of ["Face", "Model", "Distance", "After JPEG", "Same-person threshold"]) head.append(el("th", "", title));
  table.append(head);
  faces.forEach((face, index) => {
    for (const row of face.numbers) {
      const tr = el("tr");
      tr.append(el("td", "", String(index + 1)));
      tr.append(el("td", "", row.model));
      tr.append(el("td", "num", row.distance.toFixed(3)));
      tr.append(el("td", "num", row.distance_jpeg75.toFixed(3)));
      tr.append(el("td", "num", row.threshold === null ? "none" : row.threshold.toFixed(2)));
      table.append(tr);
    }
  });
  body.append(table);
  const quality = faces
    .map((face, index) => (face.quality && face.quality.ssim !== undefined ? `face ${index + 1} ${face.quality.ssim.toFixed(3)}` : ""))
    .filter(Boolean);
  const shading = faces
    .map((face, index) =>
      face.quality && face.quality.shading !== undefined ? `face ${index + 1} ${face.quality.shading.toFixed(2)}` : ""
    )
    .filter(Boolean);
  body.append(
    el(
      "p",
      "hint",
      `Distance between the face descriptors of your original and the cloaked copy (after JPEG: once the copy is ` +
        `re-compressed at quality 75, as platforms do). Above the threshold, the model no longer sees the same ` +
        `person. ` +
        (shading.length
          ? `Change of shading and tone on the faces: ${shading.join(", ")} (0 = none; about 1 starts to show side by side). `
          : "") +
        `Image quality: SSIM ${photo.report.ssim.toFixed(3)} (1 = identical)` +
        (quality.length ? ` (around the faces: ${quality.join(", ")})` : "") +
        `, PSNR ` +
        `${photo.report.psnr.toFixed(1)} dB. Strength: ${photo.strength}; ${photo.width}\u00d7${photo.height} ` +
        `${photo.format}.`
    )
  );
  details.hidden = false;
}

function updateDownloadAll() {
  const ready = [...state.photos.entries()].filter(([, entry]) => entry.data && entry.data.download);
  const link = $("#download-all");
  link.hidden = ready.length === 0;
  link.href = `/api/download.zip?ids=${ready.map(([id]) => encodeURIComponent(id)).join(",")}`;
  link.textContent = ready.length === 1 ? "Download as .zip" : `Download all ${ready.length} (.zip)`;
}

// ---- polling --------------------------------------------------------------------------

async function poll() {
  if (state.polling) return;
  state.polling = true;
  try {
    for (;;) {
      const pending = [...state.photos.entries()].filter(([, entry]) => !entry.data || !FINAL.has(entry.data.status));
      if (!pending.length) break;
      await Promise.all(
        pending.map(async ([id]) => {
          const response = await fetch(`/api/photos/${encodeURIComponent(id)}`);
          if (response.status === 404) {
            render({
              ...(state.photos.get(id).data || {}),
              id,
              status: "failed",
              message: "This photo is gone from the server (it was restarted, or the result expired). Please add it again.",
            });
            return;
          }
          render(await response.json());
        })
      ).then(
        () => showBanner(""),
        () => showBanner("cloak's server is not answering. Is it still running?")
      );
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  } finally {
    state.polling = false;
  }
}

// ---- wiring ---------------------------------------------------------------------------

function wireDropzone() {
  const zone = $("#dropzone");
  const input = $("#file-input");
  zone.addEventListener("click", (event) => {
    if (event.target !== input) input.click();
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    uploadFiles(input.files);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    uploadFiles(event.dataTransfer.files);
  });
  // A photo dropped next to the zone should not make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

document.addEventListener("DOMContentLoaded", () => {
  wireDropzone();
  loadSettings().catch(() => showBanner("cloak's server is not answering. Is it still running?"));
});
