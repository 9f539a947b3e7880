// The operator page's only script: keeps live parts fresh. An element with
// `data-src` has its content fetched again from there every `data-every`
// seconds, and, with `data-live`, as soon as the agent announces a change
// (`/admin/events`); never while the page is hidden or someone types in it.
"use strict";
(function () {
  const parts = Array.from(document.querySelectorAll("[data-src]"));
  const refresh = async function (el) {
    if (document.hidden) return;
    const active = document.activeElement;
    if (active && el.contains(active) && active.tagName === "INPUT") return;
    try {
      const r = await fetch(el.getAttribute("data-src"), { credentials: "same-origin", cache: "no-store" });
      if (r.redirected || !r.ok) return;
      el.innerHTML = await r.text();
    } catch (_) {
      // The next round tries again.
    }
  };
  for (const el of parts) {
    const every = Math.max(1, Number(el.getAttribute("data-every")) || 5) * 1000;
    setInterval(function () { refresh(el); }, every);
  }
  const live = parts.filter(function (el) { return el.hasAttribute("data-live"); });
  if (live.length && window.EventSource) {
    let pending = null;
    const events = new EventSource("/admin/events");
    events.addEventListener("changed", function () {
      // A burst of events is one refresh.
      clearTimeout(pending);
      pending = setTimeout(function () { live.forEach(refresh); }, 300);
    });
  }
})();
