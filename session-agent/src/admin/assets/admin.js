// The operator page's only script: keeps a live table fresh by fetching its
// rows again every few seconds (`data-src` names where), while the page is
// shown and no one is typing in it.
"use strict";
(function () {
  const body = document.querySelector("tbody[data-src]");
  if (!body) return;
  const src = body.getAttribute("data-src");
  async function refresh() {
    if (document.hidden) return;
    const active = document.activeElement;
    if (active && body.contains(active) && active.tagName === "INPUT") return;
    try {
      const r = await fetch(src, { credentials: "same-origin", cache: "no-store" });
      if (r.redirected || !r.ok) return;
      body.innerHTML = await r.text();
    } catch (_) {
      // The next round tries again.
    }
  }
  setInterval(refresh, 3000);
})();
