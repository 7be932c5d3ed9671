/* Annotator page: fetch the next assignment, answer with buttons or the key shown on each, skip, undo.
   Vanilla JS, no build step. Talks only to /api/labeling/ (session auth + CSRF header). */
(function () {
  "use strict";
  var root = document.getElementById("annotate");
  if (!root) return;
  var cfg = root.dataset;
  var csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  var el = {
    work: document.getElementById("work"), image: document.getElementById("image"),
    classes: document.getElementById("classes"), banner: document.getElementById("banner"),
    error: document.getElementById("error"), skip: document.getElementById("skip"),
    undo: document.getElementById("undo"), bar: document.getElementById("progress-bar"),
    progress: document.getElementById("progress-text")
  };
  var current = null, shownAt = 0, busy = false, pollTimer = null, undoTimer = null, classNames = null;
  var keyToLabel = {};
  var undoMs = parseFloat(cfg.undoSeconds || "10") * 1000;

  function api(url, body) {
    var opts = { credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRFToken"] = csrf;
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        return { ok: r.ok, status: r.status, data: data };
      });
    });
  }
  function forAssignment(template, id) { return template.replace("/0/", "/" + id + "/"); }

  function showError(msg) {
    el.error.textContent = msg || "";
    el.error.hidden = !msg;
  }
  function showBanner(msg, updating) {
    el.banner.textContent = msg || "";
    el.banner.hidden = !msg;
    el.banner.classList.toggle("updating", !!updating);
  }
  function setProgress(p) {
    if (!p) return;
    var pct = p.total ? Math.round(100 * p.done / p.total) : 0;
    el.bar.style.width = pct + "%";
    el.progress.textContent = "You: " + p.done + " / " + p.total + " · batch: " + p.batch_done + " / " + p.batch_total;
  }
  // Keyboard shortcut of each class. Classes named by single digits ("0".."9", e.g. digit data
  // sets) use their own digit, so the key pressed is the label seen; otherwise keys 1-9 then 0
  // go to the first ten classes in order. The key is printed on the button either way.
  function shortcutKeys(classes) {
    var names = classes.map(function (c) { return String(c).trim(); });
    var digits = names.every(function (n) { return /^[0-9]$/.test(n); }) &&
      names.filter(function (n, i) { return names.indexOf(n) === i; }).length === names.length;
    return names.map(function (n, i) {
      if (digits) return n;
      return i < 9 ? String(i + 1) : (i === 9 ? "0" : null);
    });
  }
  function renderClasses(classes) {
    if (classNames && classNames.join("\u0001") === classes.join("\u0001")) return;
    classNames = classes.slice();
    keyToLabel = {};
    el.classes.textContent = "";
    var keys = shortcutKeys(classes);
    classes.forEach(function (name, i) {
      var b = document.createElement("button");
      b.type = "button";
      b.className = "class-button";
      b.dataset.label = String(i);
      if (keys[i] !== null) {
        keyToLabel[keys[i]] = i;
        b.dataset.key = keys[i];
        b.setAttribute("aria-keyshortcuts", keys[i]);
        b.title = "key " + keys[i];
        var k = document.createElement("kbd");
        k.textContent = keys[i];
        b.appendChild(k);
      }
      var label = document.createElement("span");
      label.className = "class-name";
      label.textContent = name;
      b.appendChild(label);
      b.addEventListener("click", function () { answer(i); });
      el.classes.appendChild(b);
    });
  }
  function setBusy(value) {
    busy = value;
    root.classList.toggle("busy", value);
  }
  function armUndo() {
    el.undo.disabled = false;
    if (undoTimer) clearTimeout(undoTimer);
    undoTimer = setTimeout(function () { el.undo.disabled = true; }, undoMs);
  }
  function schedulePoll() {
    if (pollTimer) clearTimeout(pollTimer);
    pollTimer = setTimeout(pollStatus, 2000);
  }
  function pollStatus() {
    pollTimer = null;
    api(cfg.statusUrl).then(function (r) {
      if (!r.ok) { schedulePoll(); return; }
      setProgress(r.data.progress);
      if (r.data.state === "labeling") loadNext();
      else if (r.data.state === "updating") { showBanner("The model is updating…", true); schedulePoll(); }
      else if (r.data.state === "finished") showBanner("This project is finished. Thank you!", false);
      else schedulePoll();
    }).catch(function () { schedulePoll(); });
  }

  function loadNext() {
    return api(cfg.nextUrl).then(function (r) {
      if (r.status === 401 || r.status === 403) {
        showError("Your session ended. Please log in again.");
        return;
      }
      if (!r.ok) { showError(r.data.detail || "Could not load the next image."); schedulePoll(); return; }
      showError("");
      setProgress(r.data.progress);
      var a = r.data.assignment;
      if (!a) {
        current = null;
        el.work.hidden = true;
        el.image.removeAttribute("src");
        root.dataset.assignment = "";
        showBanner(r.data.message, r.data.project_state === "updating");
        if (r.data.project_state !== "finished") schedulePoll();
        return;
      }
      current = a;
      renderClasses(a.classes);
      showBanner("");
      el.image.src = a.image_url;
      el.work.hidden = false;
      root.dataset.assignment = String(a.id);
      shownAt = Date.now();
    }).catch(function () { showError("Network problem; retrying…"); schedulePoll(); });
  }

  function answer(label) {
    if (!current || busy) return;
    setBusy(true);
    var seconds = Math.max(0, (Date.now() - shownAt) / 1000);
    api(forAssignment(cfg.answerUrl, current.id), { label: label, seconds: seconds }).then(function (r) {
      if (r.ok) armUndo();
      else showError(r.data.detail || (r.data.label && r.data.label.join(" ")) || "The answer was not accepted.");
      return loadNext();
    }).finally(function () { setBusy(false); });
  }
  function skip() {
    if (!current || busy) return;
    setBusy(true);
    api(forAssignment(cfg.skipUrl, current.id), {}).then(function (r) {
      if (r.ok) armUndo();
      else showError(r.data.detail || "Could not skip.");
      return loadNext();
    }).finally(function () { setBusy(false); });
  }
  function undo() {
    if (busy || el.undo.disabled) return;
    setBusy(true);
    api(cfg.undoUrl, {}).then(function (r) {
      el.undo.disabled = true;
      if (!r.ok) showError(r.data.detail || "Nothing to undo.");
      return loadNext();
    }).finally(function () { setBusy(false); });
  }

  el.skip.addEventListener("click", skip);
  el.undo.addEventListener("click", undo);
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    var key = ev.key;
    if (/^[0-9]$/.test(key)) {
      if (current && Object.prototype.hasOwnProperty.call(keyToLabel, key)) { ev.preventDefault(); answer(keyToLabel[key]); }
    } else if (key === "s" || key === "S") { ev.preventDefault(); skip(); }
    else if (key === "u" || key === "U") { ev.preventDefault(); undo(); }
  });
  loadNext();
})();
