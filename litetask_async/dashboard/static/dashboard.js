// litetask dashboard: live progress on the task page, self-refreshing overview and workers pages.
// Plain JavaScript, served by the dashboard itself (no CDN, no build step).
(function () {
  "use strict";

  function livePoll(section) {
    var url = section.getAttribute("data-live-url");
    var bar = document.getElementById("progress-bar");
    var text = document.getElementById("progress-text");
    var badge = document.getElementById("status-badge");
    var message = document.getElementById("status-message");
    var attempts = document.getElementById("attempts");
    var delay = 500;

    function setText(id, value) {
      var el = document.getElementById(id);
      if (el && typeof value === "string") { el.textContent = value; }
    }

    function show(d) {
      if (bar) {
        bar.value = d.progress;
        bar.textContent = d.progress + "%";
        bar.className = "big status-" + d.status;
      }
      if (text) { text.textContent = d.progress + "%"; }
      if (badge) {
        badge.textContent = d.status;
        badge.className = "badge big status-" + d.status;
      }
      if (message) { message.textContent = d.status_message || ""; }
      if (attempts) { attempts.textContent = d.attempts + " of " + d.max_attempts; }
      setText("started-at", d.started_text);
      setText("run-time", d.run_time_text);
      if (d.status !== "pending") {
        Array.prototype.forEach.call(document.querySelectorAll(".run-at"), function (el) { el.hidden = true; });
      }
    }

    function poll() {
      fetch(url, { cache: "no-store", credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) {
          if (!r.ok) { throw new Error("HTTP " + r.status); }
          return r.json();
        })
        .then(function (d) {
          show(d);
          if (d.final) {
            // result, error and logs are rendered by the server: load the page once more
            window.location.replace(window.location.pathname);
            return;
          }
          delay = 500;
          window.setTimeout(poll, delay);
        })
        .catch(function () {
          delay = Math.min(delay * 2, 8000);
          window.setTimeout(poll, delay);
        });
    }
    window.setTimeout(poll, delay);
  }

  function autoRefresh(main) {
    var every = parseInt(main.getAttribute("data-refresh"), 10) || 5000;
    function refresh() {
      if (document.hidden) { window.setTimeout(refresh, every); return; }
      fetch(window.location.href, { cache: "no-store", credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status)); })
        .then(function (html) {
          // DOMParser never runs scripts; the server escaped every value already
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.querySelector("main[data-refresh]");
          if (fresh) { main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes)); }
        })
        .catch(function () { /* keep the current view; try again later */ })
        .then(function () { window.setTimeout(refresh, every); });
    }
    window.setTimeout(refresh, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var section = document.querySelector("[data-live-url]");
    if (section) { livePoll(section); }
    var main = document.querySelector("main[data-refresh]");
    if (main) { autoRefresh(main); }
  });
})();
