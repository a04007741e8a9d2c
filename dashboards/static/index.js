// The index's search box and sortable columns.
(function () {
  const table = document.getElementById("experiments");
  const body = table.tBodies[0];
  const search = document.getElementById("search");
  const empty = document.getElementById("empty");
  search.addEventListener("input", function () {
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const row of body.rows) {
      const hit = words.every(function (w) { return row.dataset.search.includes(w); });
      row.hidden = !hit;
      if (hit) shown += 1;
    }
    empty.hidden = shown > 0;
  });
  table.querySelectorAll("th button").forEach(function (button, column) {
    button.addEventListener("click", function () {
      const header = button.parentElement;
      const ascending = header.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (th) { th.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const numeric = button.dataset.type === "number";
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = a.cells[column].dataset.sort, y = b.cells[column].dataset.sort;
        const order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
