"""The demo's single page (HTML + CSS + JavaScript, no external resources).

Element ids the browser test relies on: ``#upload`` (file input), ``#sample`` + ``#load-sample``,
``#model``, ``#mode-pos`` / ``#mode-neg``, ``#undo``, ``#reset``, ``#download``, ``#canvas``,
``#status`` (``data-clicks``, ``data-mask-sha1``, ``data-mask-area``, ``data-encodes``) and
``#error`` (visible with a message after a failed request).
"""

PAGE_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>segblocks demo</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #222; }
  header { background: #283044; color: #fff; padding: 10px 18px; font-size: 18px; }
  header small { color: #aab; margin-left: 10px; font-size: 13px; }
  main { padding: 12px 18px; }
  .bar { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin-bottom: 10px; }
  .group { background: #fff; border: 1px solid #d8dbe2; border-radius: 6px; padding: 6px 10px; display: flex; gap: 6px; align-items: center; }
  button, select { font-size: 14px; padding: 4px 10px; }
  a.button { font-size: 14px; padding: 4px 10px; border: 1px solid #888; border-radius: 3px; color: #222; text-decoration: none; background: #eee; }
  a.button[aria-disabled=true] { opacity: .4; pointer-events: none; }
  #stage { background: #fff; border: 1px solid #d8dbe2; border-radius: 6px; padding: 8px; display: inline-block; min-width: 320px; min-height: 120px; }
  #canvas { max-width: 100%; cursor: crosshair; display: block; }
  #hint { color: #667; font-size: 13px; margin: 6px 0; }
  #status { font-family: ui-monospace, monospace; font-size: 13px; margin-top: 8px; }
  #error { display: none; background: #fde2e1; border: 1px solid #e0706b; color: #8a1c16; padding: 8px 12px; border-radius: 6px; margin-bottom: 10px; }
  #error.visible { display: block; }
  #message { color: #1f5e2e; font-size: 13px; min-height: 1em; }
  .pos { color: #1a7f37; } .neg { color: #c0392b; }
</style>
</head>
<body>
<header>segblocks demo <small>click-to-segment with the library's interactive models, served on this machine only</small></header>
<main>
  <div id="error" role="alert"></div>
  <div class="bar">
    <div class="group"><label>Image <input type="file" id="upload" accept="image/*"></label></div>
    <div class="group"><select id="sample"></select><button id="load-sample">Load sample</button></div>
    <div class="group"><label>Model <select id="model"></select></label></div>
    <div class="group">
      <label class="pos"><input type="radio" name="mode" id="mode-pos" checked> positive</label>
      <label class="neg"><input type="radio" name="mode" id="mode-neg"> negative</label>
    </div>
    <div class="group">
      <button id="undo">Undo</button><button id="reset">Reset</button>
      <a id="download" class="button" aria-disabled="true" download="mask.png" href="#">Download mask</a>
    </div>
  </div>
  <div id="hint">Left click: the selected mode (positive by default). Right click: negative.</div>
  <div id="message"></div>
  <div id="stage"><canvas id="canvas" width="320" height="120"></canvas></div>
  <div id="status" data-clicks="0" data-mask-sha1="" data-mask-area="0" data-encodes="0">no image yet</div>
</main>
<script>
(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas"), ctx = canvas.getContext("2d");
  const state = { imageId: null, image: null, mask: null, clicks: [], busy: false };

  function showError(text) { const e = $("error"); e.textContent = text; e.classList.add("visible"); }
  function clearError() { const e = $("error"); e.textContent = ""; e.classList.remove("visible"); }
  function loadImage(url) {
    return new Promise((resolve, reject) => { const img = new Image(); img.onload = () => resolve(img); img.onerror = reject; img.src = url; });
  }

  async function request(path, options) {
    let response;
    try { response = await fetch(path, options); }
    catch (err) { throw new Error("the demo server did not answer (" + err + ")"); }
    let body = {};
    try { body = await response.json(); } catch (err) { body = { error: "HTTP " + response.status }; }
    if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
    return body;
  }

  function draw() {
    if (!state.image) return;
    ctx.drawImage(state.image, 0, 0);
    if (state.mask) {
      const off = document.createElement("canvas");
      off.width = canvas.width; off.height = canvas.height;
      const octx = off.getContext("2d");
      octx.drawImage(state.mask, 0, 0);
      const data = octx.getImageData(0, 0, off.width, off.height);
      for (let i = 0; i < data.data.length; i += 4) {
        const on = data.data[i] > 127;
        data.data[i] = 255; data.data[i + 1] = 196; data.data[i + 2] = 0; data.data[i + 3] = on ? 120 : 0;
      }
      octx.putImageData(data, 0, 0);
      ctx.drawImage(off, 0, 0);
    }
    const r = Math.max(4, Math.round(Math.max(canvas.width, canvas.height) / 120));
    for (const [y, x, label] of state.clicks) {
      ctx.beginPath(); ctx.arc(x + 0.5, y + 0.5, r, 0, 2 * Math.PI);
      ctx.fillStyle = label ? "#22c55e" : "#ef4444"; ctx.fill();
      ctx.lineWidth = 2; ctx.strokeStyle = "#fff"; ctx.stroke();
    }
  }

  async function apply(result) {
    state.imageId = result.image_id;
    state.clicks = result.clicks;
    state.mask = result.mask_area > 0 ? await loadImage(result.mask_url) : null;
    const st = $("status");
    st.dataset.clicks = String(result.clicks.length);
    st.dataset.maskSha1 = result.mask_sha1;
    st.dataset.maskArea = String(result.mask_area);
    st.dataset.encodes = String(result.encode_count);
    const parts = [result.model, result.width + " x " + result.height + " px", result.clicks.length + " click(s)",
                   "mask " + result.mask_area + " px"];
    if (result.decode_ms !== null) parts.push("decode " + result.decode_ms.toFixed(1) + " ms");
    if (result.encode_ms !== null) parts.push("encode " + result.encode_ms.toFixed(1) + " ms");
    parts.push("encodes of this image: " + result.encode_count);
    st.textContent = parts.join(" | ");
    $("message").textContent = result.message || "";
    const dl = $("download");
    dl.href = "/api/mask.png?image_id=" + encodeURIComponent(result.image_id);
    dl.setAttribute("aria-disabled", "false");
    draw();
  }

  async function run(task) {
    if (state.busy) return;
    state.busy = true; document.body.style.cursor = "progress";
    try { clearError(); await task(); }
    catch (err) { showError(err.message || String(err)); }
    finally { state.busy = false; document.body.style.cursor = ""; }
  }

  async function upload(blob) {
    const result = await request("/api/image?model=" + encodeURIComponent($("model").value), { method: "POST", body: blob });
    state.image = await loadImage("/api/image.png?image_id=" + encodeURIComponent(result.image_id));
    canvas.width = result.width; canvas.height = result.height;
    await apply(result);
  }

  async function click(y, x, positive) {
    if (!state.imageId) throw new Error("upload or pick an image first");
    await apply(await request("/api/click", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_id: state.imageId, y: y, x: x, positive: positive }) }));
  }

  function post(path, extra) {
    return request(path, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(Object.assign({ image_id: state.imageId }, extra || {})) });
  }

  function canvasPoint(event) {
    const rect = canvas.getBoundingClientRect();
    return [Math.floor((event.clientY - rect.top) * canvas.height / rect.height),
            Math.floor((event.clientX - rect.left) * canvas.width / rect.width)];
  }

  canvas.addEventListener("click", (event) => {
    const [y, x] = canvasPoint(event);
    run(() => click(y, x, $("mode-pos").checked));
  });
  canvas.addEventListener("contextmenu", (event) => {
    event.preventDefault();
    const [y, x] = canvasPoint(event);
    run(() => click(y, x, false));
  });
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (file) run(() => upload(file));
  });
  $("load-sample").addEventListener("click", () => run(async () => {
    const response = await fetch("/api/sample/" + encodeURIComponent($("sample").value) + ".png");
    if (!response.ok) throw new Error("sample not available (HTTP " + response.status + ")");
    await upload(await response.blob());
  }));
  $("undo").addEventListener("click", () => run(async () => { if (state.imageId) await apply(await post("/api/undo")); }));
  $("reset").addEventListener("click", () => run(async () => { if (state.imageId) await apply(await post("/api/reset")); }));
  $("model").addEventListener("change", () => run(async () => {
    if (state.imageId) await apply(await post("/api/model", { model: $("model").value }));
  }));

  window.segblocksDemo = { click: (y, x, positive) => run(() => click(y, x, positive)), state: state };

  run(async () => {
    const config = await request("/api/config");
    for (const name of config.models) { const o = document.createElement("option"); o.value = o.textContent = name; $("model").appendChild(o); }
    for (const name of config.samples) { const o = document.createElement("option"); o.value = o.textContent = name; $("sample").appendChild(o); }
    document.body.dataset.ready = "true";
  });
})();
</script>
</body>
</html>
"""
