/* A training task's admin page: the loss chart and the samples grid
   (templates/admin/models_app/trainingtask/change_form.html calls these on load and on every refresh).

   The chart is plain SVG drawn here rather than a charting library: three lines, two axes and a legend
   are a few dozen lines, nothing is fetched at run time (the console may run with no internet), and
   there is no vendored file to keep up to date. */
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 520, HEIGHT = 250;
  const MARGIN = {left: 56, right: 12, top: 30, bottom: 40};
  const SERIES = [
    {key: "raw", label: "loss", colour: "#9cc7ea", width: 1.2},
    {key: "smoothed", label: "smoothed loss", colour: "#1f5f99", width: 2.2},
    {key: "validation", label: "validation loss", colour: "#d2691e", width: 1.8, dash: "5 3", dots: true},
  ];

  function element(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // About `count` round tick values covering [low, high] (1, 2 or 5 times a power of ten apart).
  function ticks(low, high, count) {
    if (!(high > low)) return [low];
    const rough = (high - low) / count;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    const step = [1, 2, 5, 10].map(m => m * power).find(s => s >= rough);
    const values = [];
    for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) values.push(Number(v.toPrecision(12)));
    return values;
  }

  function tickLabel(value) {
    if (value === 0) return "0";
    const size = Math.abs(value);
    if (size >= 10000 || size < 0.001) return value.toExponential(1);
    return String(Number(value.toPrecision(4)));
  }

  function finite(points, at) {
    return (points || []).filter(p => Array.isArray(p) && p.length > at && Number.isFinite(p[0]) && Number.isFinite(p[at]))
      .map(p => [p[0], p[at]]);
  }

  // lossHistory: [step, loss] or [step, loss, smoothed]; validationHistory: [step, loss].
  function drawLossChart(svg, lossHistory, validationHistory) {
    const series = {raw: finite(lossHistory, 1), smoothed: finite(lossHistory, 2), validation: finite(validationHistory, 1)};
    const shown = SERIES.filter(s => series[s.key].length);
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
    svg.replaceChildren();
    if (!shown.length) {
      svg.appendChild(element("text", {x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "chart-empty"}, "no loss reported yet"));
      return;
    }
    const all = shown.flatMap(s => series[s.key]);
    let x0 = Math.min(...all.map(p => p[0])), x1 = Math.max(...all.map(p => p[0]));
    let y0 = Math.min(...all.map(p => p[1])), y1 = Math.max(...all.map(p => p[1]));
    if (x1 === x0) x1 = x0 + 1;
    const pad = (y1 - y0) * 0.05 || Math.abs(y1) * 0.05 || 0.01;
    y0 -= pad; y1 += pad;
    const plotW = WIDTH - MARGIN.left - MARGIN.right, plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const x = step => MARGIN.left + plotW * (step - x0) / (x1 - x0);
    const y = loss => MARGIN.top + plotH * (1 - (loss - y0) / (y1 - y0));

    // Axes: ticks with labels, a light grid, the axis titles.
    const xAxis = element("g", {class: "axis axis-x"}), yAxis = element("g", {class: "axis axis-y"});
    for (const value of ticks(x0, x1, Math.min(6, x1 - x0))) {  // whole steps: at least 1 apart
      const at = x(value).toFixed(1);
      const tick = element("g", {class: "tick"});
      tick.appendChild(element("line", {x1: at, x2: at, y1: MARGIN.top, y2: MARGIN.top + plotH, class: "grid"}));
      tick.appendChild(element("text", {x: at, y: MARGIN.top + plotH + 16, "text-anchor": "middle"}, tickLabel(value)));
      xAxis.appendChild(tick);
    }
    for (const value of ticks(y0, y1, 5)) {
      const at = y(value).toFixed(1);
      const tick = element("g", {class: "tick"});
      tick.appendChild(element("line", {x1: MARGIN.left, x2: MARGIN.left + plotW, y1: at, y2: at, class: "grid"}));
      tick.appendChild(element("text", {x: MARGIN.left - 6, y: Number(at) + 4, "text-anchor": "end"}, tickLabel(value)));
      yAxis.appendChild(tick);
    }
    xAxis.appendChild(element("line", {x1: MARGIN.left, x2: MARGIN.left + plotW, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH, class: "domain"}));
    yAxis.appendChild(element("line", {x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: MARGIN.top + plotH, class: "domain"}));
    xAxis.appendChild(element("text", {x: MARGIN.left + plotW / 2, y: HEIGHT - 6, "text-anchor": "middle", class: "axis-title"}, "step"));
    yAxis.appendChild(element("text", {x: 14, y: MARGIN.top + plotH / 2, "text-anchor": "middle", class: "axis-title",
                                       transform: `rotate(-90 14 ${MARGIN.top + plotH / 2})`}, "loss"));
    svg.append(xAxis, yAxis);

    // The lines, in SERIES order: the smoothed loss drawn over the raw one, the validation loss last.
    for (const s of shown) {
      const points = series[s.key];
      const d = points.map(([step, loss], i) => `${i ? "L" : "M"}${x(step).toFixed(1)},${y(loss).toFixed(1)}`).join(" ");
      const group = element("g", {class: `series series-${s.key}`});
      group.appendChild(element("path", {d, fill: "none", stroke: s.colour, "stroke-width": s.width, ...(s.dash ? {"stroke-dasharray": s.dash} : {})}));
      if (s.dots || points.length === 1) {
        for (const [step, loss] of points) group.appendChild(element("circle", {cx: x(step).toFixed(1), cy: y(loss).toFixed(1), r: 2.5, fill: s.colour}));
      }
      svg.appendChild(group);
    }

    // The legend, above the plot.
    const legend = element("g", {class: "legend"});
    let left = MARGIN.left;
    for (const s of shown) {
      const item = element("g", {class: "legend-item", "data-series": s.key});
      item.appendChild(element("line", {x1: left, x2: left + 18, y1: 14, y2: 14, stroke: s.colour, "stroke-width": Math.max(s.width, 2), ...(s.dash ? {"stroke-dasharray": s.dash} : {})}));
      item.appendChild(element("text", {x: left + 23, y: 18}, s.label));
      legend.appendChild(item);
      left += 36 + s.label.length * 7;
    }
    svg.appendChild(legend);
  }

  // Samples as a grid: a row per step, a column per sample prompt (by its index), each cell its image.
  function renderSampleGrid(container, samples) {
    const signature = JSON.stringify((samples || []).map(s => [s.step, s.index]));
    if (container.dataset.signature === signature) return;  // unchanged: keep the images already loaded
    container.dataset.signature = signature;
    container.replaceChildren();
    if (!samples || !samples.length) {
      const empty = document.createElement("p");
      empty.id = "no-samples";
      empty.textContent = "No samples yet (set sample_prompts).";
      container.appendChild(empty);
      return;
    }
    const prompts = new Map(), steps = new Map();
    for (const sample of samples) {
      if (!prompts.has(sample.index)) prompts.set(sample.index, sample.prompt);
      if (!steps.has(sample.step)) steps.set(sample.step, new Map());
      steps.get(sample.step).set(sample.index, sample);
    }
    const columns = [...prompts.keys()].sort((a, b) => a - b);
    const table = document.createElement("table");
    table.className = "sample-grid";
    table.id = "sample-grid";
    const head = table.createTHead().insertRow();
    const corner = document.createElement("th");
    corner.textContent = "step";
    head.appendChild(corner);
    for (const index of columns) {
      const th = document.createElement("th");
      th.className = "prompt";
      th.scope = "col";
      th.textContent = prompts.get(index);
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const step of [...steps.keys()].sort((a, b) => a - b)) {
      const row = body.insertRow();
      row.dataset.step = step;
      const label = document.createElement("th");
      label.scope = "row";
      label.textContent = step;
      row.appendChild(label);
      for (const index of columns) {
        const cell = row.insertCell();
        const sample = steps.get(step).get(index);
        if (!sample) { cell.textContent = "—"; continue; }
        const link = document.createElement("a");
        link.href = sample.url;
        link.className = "sample-cell";
        link.title = `step ${step} · ${sample.prompt} (click to enlarge)`;
        const image = document.createElement("img");
        image.src = sample.url;
        image.alt = `step ${step}: ${sample.prompt}`;
        image.loading = "lazy";
        link.appendChild(image);
        link.addEventListener("click", event => { event.preventDefault(); enlarge(sample); });
        cell.appendChild(link);
      }
    }
    container.appendChild(table);
  }

  // A click shows the sample large over the page; a click anywhere or Escape closes it.
  function enlarge(sample) {
    const overlay = document.createElement("div");
    overlay.className = "sample-zoom";
    overlay.id = "sample-zoom";
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = sample.url;
    image.alt = sample.prompt;
    const caption = document.createElement("figcaption");
    caption.textContent = `step ${sample.step} · ${sample.prompt}`;
    figure.append(image, caption);
    overlay.appendChild(figure);
    const close = () => { overlay.remove(); document.removeEventListener("keydown", onKey); };
    const onKey = event => { if (event.key === "Escape") close(); };
    overlay.addEventListener("click", close);
    document.addEventListener("keydown", onKey);
    document.getElementById("sample-zoom")?.remove();
    document.body.appendChild(overlay);
  }

  window.TaskPage = {drawLossChart, renderSampleGrid, ticks};
})();
