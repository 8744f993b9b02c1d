// The instance page's diagram (Mermaid, rendered here from the text the server sends) and
// the timeline's category filter. htmx swaps the instance's body when it changes: the new
// diagram is rendered then, and the hidden categories stay hidden.
window.sagalog = (function () {
  const hidden = new Set();
  mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "default" });

  function render() {
    mermaid.run({ querySelector: "pre.mermaid:not([data-processed])" });
    document.querySelectorAll("ol.timeline li").forEach(function (item) {
      const category = item.className.replace("cat-", "");
      item.hidden = hidden.has(category);
    });
    document.querySelectorAll("input[data-category]").forEach(function (box) {
      box.checked = !hidden.has(box.dataset.category);
    });
  }

  function showCategory(box) {
    if (box.checked) { hidden.delete(box.dataset.category); } else { hidden.add(box.dataset.category); }
    render();
  }

  document.addEventListener("DOMContentLoaded", render);
  document.body.addEventListener("htmx:afterSettle", render);
  return { showCategory: showCategory, render: render };
})();
