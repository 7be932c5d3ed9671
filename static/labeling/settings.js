/* Staff settings form: the pool-fit line follows the secured set, first batch and batch size as they
   are typed (the same rule as labeling.config_fields.pool_fit and the refusal at start). */
(function () {
  "use strict";
  // a form the server sent back with errors: show its summary (the page may be long), not the top
  var summary = document.querySelector("[data-focus-on-load]");
  if (summary) {
    summary.scrollIntoView({ block: "start" });
    summary.focus({ preventScroll: true });
  }
  var line = document.getElementById("pool-fit");
  if (!line) return;
  var form = line.closest("form");
  var pool = parseInt(line.dataset.pool || "0", 10);
  function value(name, fallback) {
    var input = form.querySelector("[data-setting=" + name + "]");
    var v = input ? parseInt(input.value, 10) : NaN;
    return isNaN(v) ? fallback : v;
  }
  function update() {
    var securedSize = value("secured_size", 50), initial = value("initial_size", 20), batch = Math.max(1, value("batch_size", 20));
    var secured = Math.min(securedSize, Math.max(pool - 1, 0));
    var left = pool - secured - initial;
    var fits = pool > secured + initial, tight = fits && left < batch, text;
    if (pool === 0) {
      text = "No images yet. Start will need more than " + (securedSize + initial) + ": the secured set (" + securedSize +
        ") plus the first batch (" + initial + "), and then some for the model to choose from.";
    } else if (!fits) {
      text = "The pool has " + pool + " images: the secured set (" + securedSize + ") and the first batch (" + initial +
        ") would take them all, so start will refuse. Import more images or lower the secured set or the first batch.";
    } else if (tight) {
      text = "The pool has " + pool + " images; after the secured set (" + secured + ") and the first batch (" + initial +
        ") only " + left + " remain, less than one batch of " + batch + ".";
    } else {
      text = "The pool has " + pool + " images: " + secured + " go to the secured set, " + initial +
        " to the first batch, " + left + " remain for the model to choose from (" + Math.floor(left / batch) +
        " batches of " + batch + ").";
    }
    line.textContent = text;
    line.classList.toggle("warn", !fits && pool > 0);  // no images yet: a note, not a warning
    line.classList.toggle("tight", tight);
  }
  form.addEventListener("input", function (ev) {
    var name = ev.target && ev.target.dataset ? ev.target.dataset.setting : null;
    if (name === "secured_size" || name === "initial_size" || name === "batch_size") update();
  });
})();
