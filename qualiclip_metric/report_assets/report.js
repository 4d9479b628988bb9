// qualiclip report: draws the strips, the table and the failed list from the JSON data block.
// Sorting and filtering work on the data array; only the rows of the visible page are in the DOM.
// The state (sort, dir, q, show, min, max, page, size, maps) is read from the URL's query or fragment
// and written back to the fragment, so a view can be bookmarked: report.html?sort=score&dir=asc
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const rows = data.rows;
  const pairs = data.pairs || [];
  const byId = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // -- sorting ---------------------------------------------------------------------------------
  const sortKeys = [["index", "input order"], ["name", "file name"], ["score", "score"]];
  if (data.mos) sortKeys.push(["mos", "MOS"]);
  sortKeys.push(["size", "size (pixels)"], ["error", "error"]);
  pairs.forEach((name, k) => sortKeys.push(["pair" + k, name]));
  const known = new Set(sortKeys.map((entry) => entry[0]));

  function value(row, key) {
    switch (key) {
      case "index": return row.i;
      case "name": return row.r;
      case "score": return row.s;
      case "mos": return row.m;
      case "size": return row.w != null && row.h != null ? row.w * row.h : null;
      case "error": return row.e;
      default: return row.q ? row.q[Number(key.slice(4))] : null;
    }
  }

  function comparator(key, descending) {
    const sign = descending ? -1 : 1;
    return (a, b) => {
      const x = value(a, key), y = value(b, key);
      if (x == null || y == null) {  // missing values last, whatever the direction
        if (x == null && y == null) return a.i - b.i;
        return x == null ? 1 : -1;
      }
      let order = typeof x === "string" ? x.localeCompare(y) : x - y;
      return order !== 0 ? sign * order : a.i - b.i;
    };
  }

  // -- state -------------------------------------------------------------------------------------
  const defaults = { sort: "index", dir: "asc", q: "", show: "all", min: "", max: "", page: 1, size: 50, maps: false };
  const state = Object.assign({}, defaults);

  function readState() {
    const params = new URLSearchParams(location.search);
    new URLSearchParams(location.hash.slice(1)).forEach((v, k) => params.set(k, v));
    if (known.has(params.get("sort"))) state.sort = params.get("sort");
    if (params.get("dir") === "desc" || params.get("dir") === "asc") state.dir = params.get("dir");
    if (params.has("q")) state.q = params.get("q");
    if (["all", "scored", "failed"].includes(params.get("show"))) state.show = params.get("show");
    for (const key of ["min", "max"]) {
      if (params.has(key) && isFinite(parseFloat(params.get(key)))) state[key] = params.get(key);
    }
    const page = parseInt(params.get("page"), 10);
    if (page > 0) state.page = page;
    const size = params.get("size");
    if (size === "all") state.size = "all";
    else if (parseInt(size, 10) > 0) state.size = parseInt(size, 10);
    state.maps = params.get("maps") === "1";
  }

  function writeState() {
    const params = new URLSearchParams();
    for (const key of Object.keys(defaults)) {
      const current = key === "maps" ? (state.maps ? "1" : "") : String(state[key]);
      const initial = key === "maps" ? "" : String(defaults[key]);
      if (current !== initial) params.set(key, current);
    }
    try {
      history.replaceState(null, "", location.pathname + location.search + (params.toString() ? "#" + params : ""));
    } catch (error) {
      // some browsers refuse history changes on file: pages; the view still works
    }
  }

  // -- cells ---------------------------------------------------------------------------------------
  const failedRow = (row) => row.e != null;

  function thumb(row) {
    const box = el("div", "thumb");
    if (row.t) {
      const image = el("img");
      image.alt = "";
      image.decoding = "async";
      image.loading = "lazy";
      if (row.ts) { image.width = row.ts[0]; image.height = row.ts[1]; }
      image.src = row.t;
      box.appendChild(image);
      if (row.k) {
        const map = el("img", "map");
        map.alt = "quality map";
        if (row.ts) { map.style.width = row.ts[0] + "px"; map.style.height = row.ts[1] + "px"; }
        map.src = row.k;
        box.appendChild(map);
        box.title = "quality map: hover, or click to pin";
        box.addEventListener("click", (event) => { event.stopPropagation(); box.classList.toggle("pinned"); });
      }
    } else {
      box.appendChild(el("span", "missing", failedRow(row) ? "not readable" : "no preview"));
      if (row.te) box.title = row.te;
    }
    return box;
  }

  const format = (number, digits) => (number == null ? "\u2014" : Number(number).toFixed(digits));

  function tableRow(row) {
    const tr = el("tr", failedRow(row) ? "failed" : "");
    tr.dataset.index = row.i;
    if (row.s != null) tr.dataset.score = row.s;
    tr.appendChild(el("td", "num index", row.i + 1));
    const image = el("td", "image");
    image.appendChild(thumb(row));
    tr.appendChild(image);
    const name = el("td", "name");
    const link = el(row.u ? "a" : "span", "", row.r);
    if (row.u) link.href = row.u;
    link.title = row.p;
    name.appendChild(link);
    tr.appendChild(name);
    const score = el("td", "num score", format(row.s, 4));
    if (row.s != null) {
      const bar = el("span", "scorebar");
      const fill = el("span");
      fill.style.width = Math.max(0, Math.min(1, row.s)) * 100 + "%";
      bar.appendChild(fill);
      score.appendChild(bar);
    }
    tr.appendChild(score);
    if (data.mos) tr.appendChild(el("td", "num mos", format(row.m, 2)));
    tr.appendChild(el("td", "num size", row.w != null && row.h != null ? row.w + " \u00d7 " + row.h : "\u2014"));
    if (pairs.length) {
      const cell = el("td", "pairs-cell");
      if (row.q) {
        const box = el("div", "pairs");
        row.q.forEach((p, k) => {
          const bar = el("span");
          bar.title = pairs[k] + ": " + format(p, 3);
          const fill = el("i");
          fill.style.height = (p == null ? 0 : Math.max(0, Math.min(1, p)) * 100) + "%";
          bar.appendChild(fill);
          box.appendChild(bar);
        });
        cell.appendChild(box);
      }
      tr.appendChild(cell);
    }
    tr.appendChild(el("td", "error", row.e || ""));
    return tr;
  }

  // -- header --------------------------------------------------------------------------------------
  const headers = [["index", "#"], [null, "image"], ["name", "file"], ["score", "score"]];
  if (data.mos) headers.push(["mos", "MOS"]);
  headers.push(["size", "size"]);
  if (pairs.length) headers.push([null, "pairs"]);
  headers.push(["error", "error"]);
  const head = byId("head");
  const sortButtons = {};
  headers.forEach(([key, label]) => {
    const th = el("th");
    th.scope = "col";
    if (key) {
      const button = el("button", "", label);
      button.type = "button";
      button.dataset.sort = key;
      button.title = "sort by " + label;
      button.addEventListener("click", () => {
        if (state.sort === key) state.dir = state.dir === "asc" ? "desc" : "asc";
        else { state.sort = key; state.dir = "asc"; }
        state.page = 1;
        render();
      });
      sortButtons[key] = button;
      th.appendChild(button);
    } else {
      th.textContent = label;
      if (label === "pairs") th.title = pairs.join("\n");
    }
    head.appendChild(th);
  });
  const sortSelect = byId("sort");
  for (const [key, label] of sortKeys) {
    const option = el("option", "", label);
    option.value = key;
    sortSelect.appendChild(option);
  }

  // -- drawing ---------------------------------------------------------------------------------------
  function visibleRows() {
    const query = state.q.trim().toLowerCase();
    const low = state.min === "" ? null : parseFloat(state.min);
    const high = state.max === "" ? null : parseFloat(state.max);
    const kept = rows.filter((row) => {
      if (state.show === "failed" && !failedRow(row)) return false;
      if (state.show === "scored" && failedRow(row)) return false;
      if (low != null && !(row.s != null && row.s >= low)) return false;
      if (high != null && !(row.s != null && row.s <= high)) return false;
      if (query && row.p.toLowerCase().indexOf(query) < 0 && (row.e || "").toLowerCase().indexOf(query) < 0) {
        return false;
      }
      return true;
    });
    return kept.sort(comparator(state.sort, state.dir === "desc"));
  }

  let highlighted = null;

  function render() {
    const list = visibleRows();
    const size = state.size === "all" ? Math.max(1, list.length) : state.size;
    const pages = Math.max(1, Math.ceil(list.length / size));
    state.page = Math.min(Math.max(1, state.page), pages);
    const start = (state.page - 1) * size;
    const shown = list.slice(start, start + size);
    const fragment = document.createDocumentFragment();
    for (const row of shown) {
      const tr = tableRow(row);
      if (row.i === highlighted) tr.classList.add("highlight");
      fragment.appendChild(tr);
    }
    byId("rows").replaceChildren(fragment);
    byId("page-info").textContent = list.length
      ? "rows " + (start + 1) + "\u2013" + (start + shown.length) + " of " + list.length +
        (list.length < rows.length ? " (filtered from " + rows.length + ")" : "") +
        " \u00b7 page " + state.page + " of " + pages
      : "no rows match";
    byId("prev").disabled = state.page <= 1;
    byId("next").disabled = state.page >= pages;
    for (const [key, button] of Object.entries(sortButtons)) {
      if (key === state.sort) button.setAttribute("aria-sort", state.dir === "asc" ? "ascending" : "descending");
      else button.removeAttribute("aria-sort");
    }
    byId("filter").value = state.q;
    byId("show").value = state.show;
    byId("min").value = state.min;
    byId("max").value = state.max;
    sortSelect.value = state.sort;
    byId("direction").textContent = state.dir === "asc" ? "ascending" : "descending";
    byId("size").value = String(state.size);
    byId("maps").checked = state.maps;
    document.body.classList.toggle("maps", state.maps);
    writeState();
  }

  function show(row) {
    Object.assign(state, { q: "", show: "all", min: "", max: "" });
    const list = visibleRows();
    const size = state.size === "all" ? list.length : state.size;
    state.page = Math.floor(list.indexOf(row) / size) + 1;
    highlighted = row.i;
    render();
    const tr = byId("rows").querySelector('tr[data-index="' + row.i + '"]');
    if (tr) tr.scrollIntoView({ block: "center" });
  }

  function strips() {
    const scored = rows.filter((row) => !failedRow(row) && row.s != null).sort(comparator("score", false));
    const count = Math.min(data.strip, scored.length);
    const draw = (id, list, label) => {
      byId(id + "-title").textContent = label + " " + count;
      const box = byId(id);
      for (const row of list) {
        const tile = el("button", "tile");
        tile.type = "button";
        tile.title = row.p;
        tile.dataset.index = row.i;
        tile.appendChild(thumb(row));
        tile.appendChild(el("span", "score", format(row.s, 4)));
        tile.appendChild(el("span", "name", row.r));
        tile.addEventListener("click", () => show(row));
        box.appendChild(tile);
      }
      if (!list.length) box.appendChild(el("p", "note", "no scored images"));
    };
    draw("worst", scored.slice(0, count), "Worst");
    draw("best", scored.slice(scored.length - count).reverse(), "Best");
  }

  function failedList() {
    const failed = rows.filter(failedRow);
    byId("failed-title").textContent = "Failed: " + failed.length;
    const list = byId("failed");
    const limit = 1000;
    for (const row of failed.slice(0, limit)) {
      const item = el("li");
      item.appendChild(el("span", "path", row.r));
      item.appendChild(document.createTextNode(": "));
      item.appendChild(el("span", "error", row.e));
      list.appendChild(item);
    }
    if (failed.length > limit) {
      list.appendChild(el("li", "note", "and " + (failed.length - limit) + " more: show the failed rows in the table"));
    }
    if (!failed.length) list.appendChild(el("li", "note", "none"));
  }

  // -- controls ----------------------------------------------------------------------------------------
  let typing = null;
  byId("filter").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.q = event.target.value; state.page = 1; render(); }, 150);
  });
  for (const key of ["show", "min", "max"]) {
    byId(key).addEventListener("change", (event) => { state[key] = event.target.value; state.page = 1; render(); });
  }
  sortSelect.addEventListener("change", () => { state.sort = sortSelect.value; state.page = 1; render(); });
  byId("direction").addEventListener("click", () => { state.dir = state.dir === "asc" ? "desc" : "asc"; render(); });
  byId("size").addEventListener("change", (event) => {
    state.size = event.target.value === "all" ? "all" : parseInt(event.target.value, 10);
    state.page = 1;
    render();
  });
  byId("prev").addEventListener("click", () => { state.page -= 1; render(); });
  byId("next").addEventListener("click", () => { state.page += 1; render(); });
  if (rows.some((row) => row.k)) {
    byId("maps-toggle").hidden = false;
    byId("maps").addEventListener("change", (event) => { state.maps = event.target.checked; render(); });
  }

  readState();
  strips();
  failedList();
  render();
  performance.mark("qualiclip-report-rendered");
  document.documentElement.dataset.rendered = "true";
})();
