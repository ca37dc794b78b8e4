// The node's admin pages: a few lines of our own instead of a framework.
// Elements with data-refresh-url are re-filled from that URL (server-rendered HTML, escaped by the
// server) every data-refresh-seconds, while the tab is visible. A lost session reloads the page,
// which then goes to the login form. A list in which someone is filling in a form (a verdict on
// the worklist) waits until that form is sent or left untouched.
"use strict";

function startRefresh(el) {
  const every = 1000 * Number(el.dataset.refreshSeconds || 3);
  const stamp = document.querySelector('[data-refresh-stamp="' + el.id + '"]');
  el.addEventListener("input", function () { el.dataset.editing = "1"; });
  el.addEventListener("change", function () { el.dataset.editing = "1"; });
  function busy() {
    return el.dataset.editing === "1" || el.contains(document.activeElement);
  }
  async function tick() {
    if (!document.hidden && !busy()) {
      try {
        const response = await fetch(el.dataset.refreshUrl, {
          credentials: "same-origin",
          redirect: "manual",
          headers: { "X-Requested-With": "fetch" },
        });
        if (response.type === "opaqueredirect" || response.status === 401) {
          window.location.reload();
          return;
        }
        const html = response.ok ? await response.text() : null;
        // Someone may have begun a form while the rows were on their way: keep what they wrote.
        if (html !== null && !busy()) {
          el.innerHTML = html;
          el.dataset.refreshedAt = String(Date.now());
          if (stamp) stamp.textContent = "(updated " + new Date().toLocaleTimeString() + ")";
        }
      } catch (err) {
        // The node restarting or the network blinking: try again at the next tick.
      }
    }
    window.setTimeout(tick, every);
  }
  window.setTimeout(tick, every);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-refresh-url]").forEach(startRefresh);
  // Filters apply when chosen (no inline handlers: the pages' Content-Security-Policy forbids them).
  // The job page's picture chooser swaps the one large preview (the links work without JS too).
  document.querySelectorAll("a[data-preview-index]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      const image = document.getElementById("preview");
      image.src = link.href;
      image.alt = image.alt.replace(/overlay \d+/, "overlay " + (Number(link.dataset.previewIndex) + 1));
      document.getElementById("preview-caption").textContent = (Number(link.dataset.previewIndex) + 1) + " / " + link.dataset.previewTotal;
      document.querySelectorAll("a[data-preview-index]").forEach(function (other) { other.removeAttribute("aria-current"); });
      link.setAttribute("aria-current", "true");
    });
  });
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
});
