// The operator page's only script: keeps live parts fresh. An element with
// `data-src` has its content fetched again from there every `data-every`
// seconds, while the page is shown and no one is typing in it.
"use strict";
(function () {
  for (const el of document.querySelectorAll("[data-src]")) {
    const src = el.getAttribute("data-src");
    const every = Math.max(1, Number(el.getAttribute("data-every")) || 5) * 1000;
    const refresh = async function () {
      if (document.hidden) return;
      const active = document.activeElement;
      if (active && el.contains(active) && active.tagName === "INPUT") return;
      try {
        const r = await fetch(src, { credentials: "same-origin", cache: "no-store" });
        if (r.redirected || !r.ok) return;
        el.innerHTML = await r.text();
      } catch (_) {
        // The next round tries again.
      }
    };
    setInterval(refresh, every);
  }
})();
