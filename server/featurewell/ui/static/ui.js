// The health page's charts: Chart.js (static/chart.umd.min.js, from npm) fed with the JSON the
// server renders into #chart-data; htmx swaps that panel every 5 s and the charts follow.
(function () {
  "use strict";
  const charts = {};
  const palette = ["#2f6fde", "#d9822b", "#2e9d5b", "#c23b3b", "#8a5cd1", "#6b7785", "#1b9aaa"];
  const statusColours = {
    present: "#2e9d5b", stale: "#d9a12b", not_found: "#6b7785",
    fallback: "#c23b3b", fallback_cache: "#e07b7b", data_loss: "#5a1d1d",
  };

  function draw(id, config) {
    const canvas = document.getElementById(id);
    if (!canvas) return;
    if (charts[id]) {
      charts[id].data = config.data;
      charts[id].update("none");
      return;
    }
    config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options || {});
    charts[id] = new Chart(canvas, config);
  }

  function render() {
    const source = document.getElementById("chart-data");
    if (!source) return;
    const data = JSON.parse(source.textContent);
    const latency = [];
    Object.keys(data.latency).forEach(function (method, i) {
      const points = data.latency[method];
      const colour = palette[i % palette.length];
      latency.push({ label: method + " p50", data: points.map(p => ({ x: p.at * 1000, y: p.p50_ms })), borderColor: colour, backgroundColor: colour });
      latency.push({ label: method + " p99", data: points.map(p => ({ x: p.at * 1000, y: p.p99_ms })), borderColor: colour, backgroundColor: colour, borderDash: [5, 3] });
    });
    draw("chart-latency", {
      type: "line",
      data: { datasets: latency },
      options: { parsing: false, scales: { x: { type: "linear", ticks: { callback: v => new Date(v).toLocaleTimeString() } }, y: { beginAtZero: true, title: { display: true, text: "ms" } } } },
    });
    const views = Object.keys(data.served);
    draw("chart-served", {
      type: "bar",
      data: {
        labels: views,
        datasets: data.statuses.map(s => ({ label: s, data: views.map(v => data.served[v][s] || 0), backgroundColor: statusColours[s] })),
      },
      options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
    });
    draw("chart-drift", {
      type: "bar",
      data: {
        labels: data.drift.map(d => d.view + ":" + d.feature),
        datasets: [{ label: "PSI", data: data.drift.map(d => d.psi), backgroundColor: data.drift.map(d => d.psi > 0.25 ? "#c23b3b" : d.psi > 0.1 ? "#d9a12b" : "#2e9d5b") }],
      },
      options: { indexAxis: "y", scales: { x: { beginAtZero: true } } },
    });
    const fresh = data.freshness.filter(f => f.age_s !== null);
    draw("chart-freshness", {
      type: "bar",
      data: {
        labels: fresh.map(f => f.view),
        datasets: [
          { label: "newest event age (s)", data: fresh.map(f => f.age_s), backgroundColor: fresh.map(f => f.ok === false ? "#c23b3b" : "#2f6fde") },
          { label: "SLA (s)", data: fresh.map(f => f.sla_s), backgroundColor: "#cfd6de" },
        ],
      },
      options: { scales: { y: { type: "logarithmic" } } },
    });
  }

  window.featurewellCharts = charts;  // the browser tests read what was drawn
  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("htmx:afterSettle", render);
})();
