/* Annotator page: fetch the next assignment, answer with buttons or the key shown on each, skip, undo.
   Vanilla JS, no build step. Talks only to /api/labeling/ (session auth + CSRF header). */
(function () {
  "use strict";
  var root = document.getElementById("annotate");
  if (!root) return;
  var cfg = root.dataset;
  var csrfInPage = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  // the CSRF cookie first: logging in again (in another tab) rotates the token this page was given
  function csrf() {
    var m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : csrfInPage;
  }
  var el = {
    work: document.getElementById("work"), image: document.getElementById("image"),
    classes: document.getElementById("classes"), banner: document.getElementById("banner"),
    notice: document.getElementById("notice"),
    error: document.getElementById("error"), errorText: document.getElementById("error-text"),
    retry: document.getElementById("retry"), errorNext: document.getElementById("error-next"),
    login: document.getElementById("error-login"),
    skip: document.getElementById("skip"),
    undo: document.getElementById("undo"), bar: document.getElementById("progress-bar"),
    progress: document.getElementById("progress-text")
  };
  var current = null, shownAt = 0, busy = false, pollTimer = null, undoTimer = null, classNames = null;
  var pending = null;  // a failed answer {label, seconds} kept for "Send again"
  var keyToLabel = {};
  var undoMs = parseFloat(cfg.undoSeconds || "10") * 1000;

  function api(url, body) {
    var opts = { credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRFToken"] = csrf();
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        return { ok: r.ok, status: r.status, data: data };
      });
    });
  }
  function forAssignment(template, id) { return template.replace("/0/", "/" + id + "/"); }
  function sentence(text) { text = String(text || "").trim(); return /[.!?…]$/.test(text) ? text : text + "."; }
  // 401, or DRF's 403 for a request without a valid session (no credentials, a stale CSRF token)
  function sessionEnded(r) {
    return r.status === 401 || (r.status === 403 && /credentials|CSRF/i.test(String(r.data.detail || "")));
  }

  // An error stays on screen until the annotator acts: "Send again" for an answer that may not
  // have arrived (network, server error), "Next image" for one the server refused for good.
  function showError(msg, actions) {
    actions = actions || {};
    el.errorText.textContent = msg || "";
    el.error.hidden = !msg;
    el.retry.hidden = !actions.retry;
    el.errorNext.hidden = !actions.next;
    el.login.hidden = !actions.login;
    root.classList.toggle("blocked", !!(actions.retry || actions.next));
  }
  function clearError() { pending = null; showError(""); }
  var noticeTimer = null;
  // A short confirmation that a skip or an undo went through (it floats: the layout never moves).
  function showNotice(msg) {
    el.notice.textContent = msg;
    el.notice.hidden = false;
    if (noticeTimer) clearTimeout(noticeTimer);
    noticeTimer = setTimeout(function () { el.notice.hidden = true; }, 3000);
  }
  function showBanner(msg, updating) {
    el.banner.textContent = msg || "";
    el.banner.hidden = !msg;
    el.banner.classList.toggle("updating", !!updating);
  }
  function setProgress(p) {
    if (!p) return;
    var pct = p.batch_total ? Math.round(100 * p.batch_done / p.batch_total) : 0;
    el.bar.style.width = pct + "%";
    el.progress.textContent = "Batch: " + p.batch_done + " / " + p.batch_total +
      (p.budget ? " · labels: " + p.bought + " / " + p.budget : "");
  }
  // The next item's image loads while the current one is shown (next/?prefetch=1 holds it for
  // us); when it comes up, the loaded <img> takes the place of the old one: no new request.
  var ahead = null;
  function preload(up) {
    if (!up) { ahead = null; return; }
    if (ahead && ahead.id === up.id) return;
    var img = new Image();
    img.alt = el.image.alt;
    img.draggable = false;
    img.src = up.image_url;
    ahead = { id: up.id, img: img };
  }
  function showImage(a) {
    if (ahead && ahead.id === a.id) {
      var img = ahead.img;
      img.id = el.image.id;
      img.className = el.image.className;
      el.image.replaceWith(img);
      el.image = img;
    } else {
      el.image.src = a.image_url;
    }
    ahead = null;
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
      b.addEventListener("click", function () { b.blur(); answer(i); });
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
      // "updating" too: with pipeline the next batch is labeled while the model updates (loadNext
      // shows the server's "updating" message and polls again when there is no work)
      if (r.data.state === "labeling" || r.data.state === "updating") loadNext();
      else if (r.data.state === "finished") showBanner("This project is finished. Thank you!", false);
      else schedulePoll();
    }).catch(function () { schedulePoll(); });
  }

  function loadNext() {
    return api(cfg.nextUrl + (cfg.nextUrl.indexOf("?") < 0 ? "?" : "&") + "prefetch=1").then(function (r) {
      if (sessionEnded(r)) {
        showError("Your session ended. Log in again (the link opens a new tab); this page goes on by itself.",
                  { login: true });
        schedulePoll();
        return;
      }
      if (!r.ok) { showError(r.data.detail || "Could not load the next image."); schedulePoll(); return; }
      clearError();
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
      showImage(a);
      preload(r.data.upcoming);
      el.work.hidden = false;
      root.dataset.assignment = String(a.id);
      shownAt = Date.now();
    }).catch(function () { showError("Network problem; retrying…"); schedulePoll(); });
  }

  function answer(label, seconds) {
    if (!current || busy || (pending && seconds === undefined) || !el.errorNext.hidden) return;
    setBusy(true);
    if (seconds === undefined) seconds = Math.max(0, (Date.now() - shownAt) / 1000);
    var sent = { label: label, seconds: seconds };
    api(forAssignment(cfg.answerUrl, current.id), sent).then(function (r) {
      if (r.ok) { pending = null; armUndo(); return loadNext(); }
      var detail = r.data.detail || (r.data.label && r.data.label.join(" "));
      if (sessionEnded(r)) {  // nothing was stored: keep the answer until they are logged in again
        pending = sent;
        showError("Your session ended, so your answer was not saved. It is kept: log in again (the link opens " +
                  "a new tab), then send it again.", { retry: true, login: true });
      } else if (r.status === 409) {
        pending = null;
        showError("This image was already answered with another label (in another tab or window?). That answer " +
                  "stands. Go on with the next image.", { next: true });
      } else if (r.status >= 500 || r.status === 429) {
        pending = sent;
        showError("Your answer was not saved (" + (detail || "server error " + r.status) + "). It is kept: send it again.",
                  { retry: true });
      } else {  // refused for good: answered elsewhere (409), no longer yours (404), invalid (400)
        pending = null;
        showError(sentence(detail || "The answer was not accepted") + " Go on with the next image.", { next: true });
      }
    }).catch(function () {
      pending = sent;
      showError("Your answer could not be sent (network problem). It is kept: send it again.", { retry: true });
    }).finally(function () { setBusy(false); });
  }
  function retry() { if (pending) answer(pending.label, pending.seconds); }
  function errorNext() { clearError(); loadNext(); }
  function skip() {
    if (!current || busy) return;
    setBusy(true);
    api(forAssignment(cfg.skipUrl, current.id), {}).then(function (r) {
      if (sessionEnded(r)) return loadNext();  // says so, with the login link
      if (r.ok) { armUndo(); showNotice("Skipped: the image goes to someone else. U takes it back."); }
      else showError(sentence(r.data.detail || "Could not skip"));
      return loadNext();
    }).catch(function () {
      showError("Could not skip (network problem): this image is still yours. Try again.");
    }).finally(function () { setBusy(false); });
  }
  function undo() {
    if (busy || el.undo.disabled) return;
    setBusy(true);
    api(cfg.undoUrl, {}).then(function (r) {
      if (sessionEnded(r)) return loadNext();  // says so, with the login link
      el.undo.disabled = true;
      if (!r.ok) showError(sentence(r.data.detail || "Nothing to undo"));
      else showNotice("Undone: this image is yours to answer again.");
      return loadNext();
    }).catch(function () {
      showError("Could not undo (network problem): your last answer still stands. Try again.");
    }).finally(function () { setBusy(false); });
  }

  el.skip.addEventListener("click", skip);
  el.undo.addEventListener("click", undo);
  el.retry.addEventListener("click", retry);
  el.errorNext.addEventListener("click", errorNext);
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    var key = ev.key;
    // Space and Enter on a class button would "click" it again: the next image would get the same
    // class before anyone looked at it. They never answer; on the other controls (skip, undo,
    // zoom, instructions, links) they do what they always do.
    if (key === " " || key === "Enter") {
      if (t && t.closest && t.closest("#classes")) ev.preventDefault();
      return;
    }
    if (!el.retry.hidden && (key === "r" || key === "R")) { ev.preventDefault(); retry(); return; }
    if (!el.errorNext.hidden && (key === "n" || key === "N")) { ev.preventDefault(); errorNext(); return; }
    if (pending || !el.errorNext.hidden) return;  // an error waits for the annotator's decision
    if (/^[0-9]$/.test(key)) {
      if (current && Object.prototype.hasOwnProperty.call(keyToLabel, key)) { ev.preventDefault(); answer(keyToLabel[key]); }
    } else if (key === "s" || key === "S") { ev.preventDefault(); skip(); }
    else if (key === "u" || key === "U") { ev.preventDefault(); undo(); }
  });
  loadNext();
})();
