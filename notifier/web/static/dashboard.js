// notifier dashboard: live progress of a running run, and gentle auto-refresh of lists.
// Plain script (no build step); the pages' CSP allows only this file.
(function () {
  "use strict";

  function elapsed(since) {
    var seconds = Math.max(0, Math.round((Date.now() - Date.parse(since)) / 1000));
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return "elapsed " + (m ? m + " min " + (s < 10 ? "0" : "") + s + " s" : s + " s");
  }

  function followRun(box) {
    var id = box.getAttribute("data-run-id");
    var status = box.getAttribute("data-status");
    var active = ["claimed", "running", "delivering"];
    if (active.indexOf(status) < 0) { return; }
    var started = box.getAttribute("data-started");
    var bar = document.querySelector("#progress progress");
    var cell = document.querySelector("#progress .cell");
    var clock = document.querySelector("#progress .elapsed");
    function tick() { if (clock && started) { clock.textContent = elapsed(started); } }
    setInterval(tick, 1000);
    tick();
    function poll() {
      fetch("/api/runs/" + encodeURIComponent(id), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (run) {
          if (!run) { return; }
          if (run.status !== status) { window.location.reload(); return; }
          if (run.started_at) { started = run.started_at; }
          var p = run.progress;
          if (p && p.cells && bar && cell) {
            bar.max = p.cells; bar.value = p.cell;
            cell.textContent = p.cell ? "cell " + p.cell + " of " + p.cells : "starting the kernel…";
            if (p.started_at && !started) { started = p.started_at; }
          }
        })
        .catch(function () { /* the server restarts: try again */ })
        .then(function () { setTimeout(poll, 1000); });
    }
    poll();
  }

  function refresh(seconds) {
    setTimeout(function again() {
      var busy = document.activeElement && /INPUT|SELECT|TEXTAREA/.test(document.activeElement.tagName);
      if (document.hidden || busy) { setTimeout(again, 2000); return; }
      window.location.reload();
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var run = document.getElementById("run");
    if (run) { followRun(run); }
    var every = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
    if (every > 0) { refresh(every); }
  });
})();
