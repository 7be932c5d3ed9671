/* Annotator page, the image viewer: zoom (buttons, + and - keys, Z to fit, drag or scroll to pan),
   contrast (button, C key), crisp pixels for tiny images and smooth scaling for photos; and the
   project's instructions, open on wide screens unless the annotator folded them.
   The state lives on the stage (CSS variables and classes), so it also applies to an <img> that
   annotate.js swaps in (a preloaded image replaces the shown one). */
(function () {
  "use strict";
  var stage = document.getElementById("stage");
  var root = document.getElementById("annotate");
  if (!stage || !root) return;
  var ZOOMS = [1, 1.5, 2, 3, 4, 6, 8];
  var CONTRASTS = [1, 1.6, 2.4];
  var CRISP_MAX_SIDE = 128;  // natural size at or below this (CIFAR 32 px, digits, upscaled thumbnails): pixelated
  var zoomIndex = 0, contrastIndex = 0;
  var buttons = {
    zoomIn: document.getElementById("zoom-in"), zoomOut: document.getElementById("zoom-out"),
    reset: document.getElementById("zoom-reset"), contrast: document.getElementById("contrast")
  };

  function image() { return stage.querySelector("img"); }

  function applyZoom(keepCentre) {
    var z = ZOOMS[zoomIndex];
    var cx = 0.5, cy = 0.5;
    if (keepCentre && stage.scrollWidth > 0) {
      cx = (stage.scrollLeft + stage.clientWidth / 2) / stage.scrollWidth;
      cy = (stage.scrollTop + stage.clientHeight / 2) / stage.scrollHeight;
    }
    stage.style.setProperty("--zoom", String(z));
    stage.classList.toggle("zoomed", z > 1);
    stage.dataset.zoom = String(z);
    buttons.zoomOut.disabled = zoomIndex === 0;
    buttons.zoomIn.disabled = zoomIndex === ZOOMS.length - 1;
    buttons.reset.disabled = zoomIndex === 0;
    stage.scrollLeft = cx * stage.scrollWidth - stage.clientWidth / 2;
    stage.scrollTop = cy * stage.scrollHeight - stage.clientHeight / 2;
  }
  function zoom(step) {
    var next = Math.max(0, Math.min(ZOOMS.length - 1, zoomIndex + step));
    if (next === zoomIndex) return;
    zoomIndex = next;
    applyZoom(true);
  }
  function fit() { zoomIndex = 0; applyZoom(false); }
  function cycleContrast() {
    contrastIndex = (contrastIndex + 1) % CONTRASTS.length;
    stage.style.setProperty("--contrast", String(CONTRASTS[contrastIndex]));
    stage.dataset.contrast = String(CONTRASTS[contrastIndex]);
    buttons.contrast.setAttribute("aria-pressed", contrastIndex > 0 ? "true" : "false");
    buttons.contrast.title = "contrast (C): " + ["normal", "high", "highest"][contrastIndex];
  }

  // Crisp or smooth, decided by the image's own size: a tiny image scaled up smoothly is a blur,
  // a photo scaled with pixelated sampling looks blocky.
  var shownSrc = null;
  function onImage() {
    var img = image();
    if (!img || !img.complete || !img.naturalWidth) return;
    var side = Math.max(img.naturalWidth, img.naturalHeight);
    var crisp = side <= CRISP_MAX_SIDE;
    stage.classList.toggle("crisp", crisp);
    stage.classList.toggle("smooth", !crisp);
    stage.dataset.rendering = crisp ? "pixelated" : "smooth";
    if (img.currentSrc !== shownSrc) {  // a new image: back to the whole view (contrast is kept)
      shownSrc = img.currentSrc;
      fit();
    }
  }
  stage.addEventListener("load", onImage, true);  // load does not bubble; capture sees it
  new MutationObserver(onImage).observe(stage, { childList: true, subtree: true, attributes: true,
                                                 attributeFilter: ["src"] });

  // Drag to pan a zoomed image with the mouse (touch screens scroll the stage natively).
  var drag = null;
  stage.addEventListener("pointerdown", function (ev) {
    if (ev.pointerType !== "mouse" || zoomIndex === 0) return;
    drag = { x: ev.clientX, y: ev.clientY, left: stage.scrollLeft, top: stage.scrollTop };
    stage.classList.add("dragging");
    ev.preventDefault();
  });
  window.addEventListener("pointermove", function (ev) {
    if (!drag) return;
    stage.scrollLeft = drag.left - (ev.clientX - drag.x);
    stage.scrollTop = drag.top - (ev.clientY - drag.y);
  });
  window.addEventListener("pointerup", function () { drag = null; stage.classList.remove("dragging"); });

  function noFocus(fn) { return function (ev) { ev.currentTarget.blur(); fn(); }; }
  buttons.zoomIn.addEventListener("click", noFocus(function () { zoom(1); }));
  buttons.zoomOut.addEventListener("click", noFocus(function () { zoom(-1); }));
  buttons.reset.addEventListener("click", noFocus(fit));
  buttons.contrast.addEventListener("click", noFocus(cycleContrast));
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    var key = ev.key;
    if (key === "+" || key === "=") { ev.preventDefault(); zoom(1); }
    else if (key === "-" || key === "_") { ev.preventDefault(); zoom(-1); }
    else if (key === "z" || key === "Z") { ev.preventDefault(); fit(); }
    else if (key === "c" || key === "C") { ev.preventDefault(); cycleContrast(); }
  });
  applyZoom(false);

  // Instructions: open on wide screens the first time; the annotator's choice is remembered.
  var details = document.getElementById("instructions");
  if (details) {
    var key = details.dataset.remember, saved = null;
    try { saved = window.localStorage.getItem(key); } catch (e) { saved = null; }
    var wide = window.matchMedia("(min-width: 700px) and (min-height: 600px)").matches;
    details.open = saved === null ? wide : saved === "open";
    details.addEventListener("toggle", function () {
      try { window.localStorage.setItem(key, details.open ? "open" : "closed"); } catch (e) { /* private mode */ }
    });
  }
})();
