// Draw the experiment page's figures from the JSON block the server rendered (no inline
// script: the pages' Content-Security-Policy runs only the server's own files).
(function () {
  const data = JSON.parse(document.getElementById("figures-data").textContent);
  for (const [name, figure] of Object.entries(data.figures)) {
    Plotly.newPlot("fig-" + name, figure.data, figure.layout, data.config);
  }
})();
