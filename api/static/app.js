// Crypton's live market page: plain JavaScript over the public API, no build step.
//
// Market data comes from GET routes first, then from the market's SSE stream, resumed
// with the cursor those routes give ("<trade seq>:<depth seq>"), so nothing between the
// snapshot and the stream is lost. A dropped stream reconnects with Last-Event-ID; a
// `resync` event (the server no longer keeps what we missed) reloads the market.
// With an API key (sessionStorage only, never localStorage or a cookie) the page also
// follows the caller's own stream: balances, open orders, fills and an order form.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "crypton.apiKey";
  const LEVELS = 12;
  const TAPE = 40;
  const OPEN = new Set(["PENDING", "NEW", "OPEN", "PARTIALLY_FILLED"]);

  const state = {
    markets: {},
    market: null,
    marketStream: null,
    tradeSeq: 0,
    trades: [],
    candles: new Map(), // minute start (s) -> bar
    hours: new Map(), // hour start (ms) -> {open, high, low, close, volume}
    lastPrice: null,
    key: null,
    userStream: null,
    orders: new Map(),
    fillsTimer: null,
    placed: null, // the last order placed from the form
  };

  // --- exact decimals: display arithmetic on strings, never floats for amounts ---------

  function units(text, precision) {
    const [whole, frac = ""] = String(text).split(".");
    return BigInt(whole + frac.padEnd(precision, "0").slice(0, precision));
  }

  function decimal(value, precision) {
    const negative = value < 0n;
    const digits = (negative ? -value : value).toString().padStart(precision + 1, "0");
    const text = precision
      ? `${digits.slice(0, -precision)}.${digits.slice(-precision)}`
      : digits;
    return (negative ? "-" : "") + text;
  }

  // Decimals of a tick or step ("0.01" -> 2): totals and spreads are shown at that scale.
  const scale = (text) => (String(text).split(".")[1] ?? "").replace(/0+$/, "").length;
  const trimmed = (value, precision, shown) => decimal(value / 10n ** BigInt(precision - shown), shown);

  const clock = (ms) => new Date(ms).toISOString().slice(11, 19);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name === "style") node.setAttribute("style", value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : String(child));
    return node;
  }

  // --- HTTP ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const what = body && body.message
        ? `${body.code}: ${body.message}${body.field ? ` (${body.field})` : ""}`
        : `HTTP ${status}`;
      super(what);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, { method = "GET", body, key } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // --- server-sent events over fetch (EventSource cannot send Authorization) -----------

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  class EventStream {
    constructor(url, { key = null, cursor = null, onEvent, onStatus = () => {}, onOpen = () => {} }) {
      Object.assign(this, { url, key, cursor, onEvent, onStatus, onOpen });
      this.stopped = false;
      this.controller = null;
    }

    start() {
      this.run();
      return this;
    }

    stop() {
      this.stopped = true;
      if (this.controller) this.controller.abort();
    }

    async run() {
      let delay = 500;
      while (!this.stopped) {
        this.controller = new AbortController();
        try {
          const headers = { Accept: "text/event-stream" };
          if (this.key) headers.Authorization = `Bearer ${this.key}`;
          if (this.cursor) headers["Last-Event-ID"] = this.cursor;
          const response = await fetch(this.url, {
            headers,
            signal: this.controller.signal,
            cache: "no-store",
          });
          if (!response.ok) throw new ApiError(response.status, null);
          this.onOpen(!this.cursor);
          this.onStatus("live");
          delay = 500;
          await this.read(response.body);
        } catch (error) {
          if (this.stopped) return;
          if (error instanceof ApiError && error.status === 401) {
            this.onStatus("unauthorized");
            return;
          }
        }
        if (this.stopped) return;
        this.onStatus("reconnecting");
        await sleep(delay);
        delay = Math.min(delay * 2, 5000);
      }
    }

    async read(body) {
      const reader = body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = { type: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.stopped) return;
        buffer += value;
        for (;;) {
          const end = buffer.search(/\r\n|\r|\n/);
          // A lone CR at the end may be the first half of CRLF: wait for more.
          if (end < 0 || (buffer[end] === "\r" && end === buffer.length - 1)) break;
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
          if (line === "") {
            if (event.id !== null) this.cursor = event.id;
            if (event.data.length) this.dispatch(event.type, event.data.join("\n"));
            event = { type: "message", data: [], id: null };
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") event.type = text;
            else if (field === "data") event.data.push(text);
            else if (field === "id") event.id = text;
          }
        }
      }
    }

    dispatch(type, data) {
      if (this.stopped) return;
      let payload = null;
      try {
        payload = JSON.parse(data);
      } catch {
        return;
      }
      this.onEvent(type, payload, this);
    }
  }

  // --- market ----------------------------------------------------------------------------

  let chart = null;
  let series = null;

  function setupChart() {
    if (!window.LightweightCharts) return;
    const box = $("chart");
    chart = LightweightCharts.createChart(box, {
      autoSize: true,
      layout: { background: { color: "#11161d" }, textColor: "#c7d0db" },
      grid: { vertLines: { color: "#1d2530" }, horzLines: { color: "#1d2530" } },
      timeScale: { timeVisible: true, secondsVisible: false },
    });
    series = chart.addCandlestickSeries({
      upColor: "#26a69a",
      downColor: "#ef5350",
      borderVisible: false,
      wickUpColor: "#26a69a",
      wickDownColor: "#ef5350",
    });
  }

  function market() {
    return state.markets[state.market];
  }

  function renderBook(depth) {
    const m = market();
    const side = (levels, klass) => {
      const shown = levels.slice(0, LEVELS);
      let total = 0n;
      const cumulative = shown.map(([, qty]) => (total += units(qty, m.base_precision)));
      const most = cumulative.length ? cumulative[cumulative.length - 1] : 1n;
      return shown.map(([price, qty], i) => {
        const width = Number((cumulative[i] * 1000n) / (most || 1n)) / 10;
        return el(
          "tr",
          { class: klass, style: `--depth:${width}%` },
          el("td", { class: "price" }, price),
          el("td", {}, qty),
          el("td", {}, trimmed(cumulative[i], m.base_precision, scale(m.step))),
        );
      });
    };
    $("asks").replaceChildren(...side(depth.asks, "ask").reverse());
    $("bids").replaceChildren(...side(depth.bids, "bid"));
    if (depth.bids.length && depth.asks.length) {
      const bid = units(depth.bids[0][0], m.quote_precision);
      const ask = units(depth.asks[0][0], m.quote_precision);
      const bps = Number(((ask - bid) * 1000000n) / ask) / 100;
      $("spread").textContent = `spread ${trimmed(ask - bid, m.quote_precision, scale(m.tick))} (${bps} bps)`;
    } else {
      $("spread").textContent = "spread –";
    }
  }

  function renderTrades() {
    $("trades").replaceChildren(
      ...state.trades.map((t) =>
        el(
          "tr",
          { class: t.taker_side === "buy" ? "bid" : "ask" },
          el("td", { class: "price" }, t.price),
          el("td", {}, t.quantity),
          el("td", {}, clock(t.time)),
        ),
      ),
    );
  }

  function addCandle(bar) {
    state.candles.set(bar.time, bar);
    if (series) series.update(bar);
    $("chart").dataset.candles = String(state.candles.size);
  }

  function applyTrade(t) {
    const m = market();
    const price = Number(t.price);
    const minute = Math.floor(t.time / 60000) * 60;
    const bar = state.candles.get(minute);
    if (bar) {
      addCandle({ ...bar, high: Math.max(bar.high, price), low: Math.min(bar.low, price), close: price });
    } else {
      addCandle({ time: minute, open: price, high: price, low: price, close: price });
    }
    const hour = Math.floor(t.time / 3600000) * 3600000;
    const volume = units(t.quantity, m.base_precision);
    const h = state.hours.get(hour);
    if (h) {
      if (price > Number(h.high)) h.high = t.price;
      if (price < Number(h.low)) h.low = t.price;
      h.close = t.price;
      h.volume += volume;
    } else {
      state.hours.set(hour, { open: t.price, high: t.price, low: t.price, close: t.price, volume });
    }
    state.lastPrice = t.price;
  }

  // The 24 h ticker from the hourly candles and the live trades: the window is the
  // hours that started less than 24 h ago (so it covers 23 to 24 hours).
  function renderTicker() {
    const m = market();
    const since = Date.now() - 24 * 3600000;
    const hours = [...state.hours.entries()].filter(([start]) => start > since).sort((a, b) => a[0] - b[0]);
    const show = (id, text, klass = "") => {
      $(id).textContent = text;
      $(id).className = klass;
    };
    show("t-last", state.lastPrice ?? "–");
    if (!hours.length) {
      for (const id of ["t-change", "t-high", "t-low"]) show(id, "–");
      show("t-volume", `0 ${m.base}`);
      return;
    }
    const open = units(hours[0][1].open, m.quote_precision);
    const last = units(state.lastPrice ?? hours[hours.length - 1][1].close, m.quote_precision);
    const change = open ? Number(((last - open) * 10000n) / open) / 100 : 0;
    show("t-change", `${change >= 0 ? "+" : ""}${change.toFixed(2)}%`, change >= 0 ? "up" : "down");
    const pick = (key, better) =>
      hours.map(([, h]) => h[key]).reduce((a, b) => (better(Number(b), Number(a)) ? b : a));
    show("t-high", pick("high", (a, b) => a > b));
    show("t-low", pick("low", (a, b) => a < b));
    const volume = hours.reduce((sum, [, h]) => sum + h.volume, 0n);
    show("t-volume", `${decimal(volume, m.base_precision)} ${m.base}`);
  }

  function onMarketEvent(type, data, stream) {
    if (stream !== state.marketStream) return;
    if (type === "trade") {
      if (data.seq <= state.tradeSeq) return;
      state.tradeSeq = data.seq;
      state.trades = [data, ...state.trades].slice(0, TAPE);
      applyTrade(data);
      renderTrades();
      renderTicker();
    } else if (type === "depth") {
      renderBook(data);
    } else if (type === "resync") {
      selectMarket(state.market);
    }
  }

  async function selectMarket(symbol) {
    if (state.marketStream) state.marketStream.stop();
    state.marketStream = null;
    state.market = symbol;
    const path = `/v1/markets/${encodeURIComponent(symbol)}`;
    const [trades, depth, minutes, hours] = await Promise.all([
      api(`${path}/trades?limit=${TAPE}`),
      api(`${path}/depth?levels=${LEVELS}`),
      api(`${path}/candles?interval=1m&limit=500`),
      api(`${path}/candles?interval=1h&limit=25`),
    ]);
    if (state.market !== symbol) return; // another market was picked meanwhile
    const m = market();
    state.trades = trades.items;
    state.tradeSeq = trades.items.length ? trades.items[0].seq : 0;
    state.lastPrice = trades.items.length ? trades.items[0].price : null;
    state.candles = new Map();
    for (const c of minutes.items) {
      const time = c.start / 1000;
      state.candles.set(time, { time, open: +c.open, high: +c.high, low: +c.low, close: +c.close });
    }
    if (series) series.setData([...state.candles.values()]);
    $("chart").dataset.candles = String(state.candles.size);
    state.hours = new Map(
      hours.items.map((c) => [
        c.start,
        { open: c.open, high: c.high, low: c.low, close: c.close, volume: units(c.volume, m.base_precision) },
      ]),
    );
    renderBook(depth);
    renderTrades();
    renderTicker();
    document.title = `${symbol} — Crypton`;
    state.marketStream = new EventStream(`${path.replace("/v1/markets", "/v1/stream/markets")}`, {
      cursor: `${state.tradeSeq}:${depth.seq}`,
      onEvent: onMarketEvent,
      onStatus: (status) => {
        $("conn").textContent = status;
        $("conn").className = `conn ${status}`;
      },
    }).start();
  }

  // --- account ---------------------------------------------------------------------------

  function renderBalances(table) {
    $("balances").replaceChildren(
      ...Object.entries(table)
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([asset, b]) => el("tr", {}, el("td", {}, asset), el("td", {}, b.available), el("td", {}, b.held))),
    );
  }

  function renderOrders() {
    const rows = [...state.orders.values()].sort((a, b) => b.created_at - a.created_at);
    $("open-orders").replaceChildren(
      ...rows.map((o) =>
        el(
          "tr",
          { class: o.side === "buy" ? "bid" : "ask", "data-order-id": o.order_id },
          el("td", {}, o.market),
          el("td", {}, o.side),
          el("td", { class: "price" }, o.price ?? "market"),
          el("td", {}, o.quantity ?? `${o.funds} funds`),
          el("td", {}, o.filled_quantity),
          el("td", {}, o.status),
          el("td", {}, el("button", { class: "cancel", onclick: () => cancel(o.order_id) }, "Cancel")),
        ),
      ),
    );
  }

  function applyOrder(order) {
    if (OPEN.has(order.status)) state.orders.set(order.order_id, order);
    else state.orders.delete(order.order_id);
    renderOrders();
  }

  async function loadFills() {
    if (!state.key) return;
    const page = await api("/v1/fills?limit=20", { key: state.key });
    $("fills").replaceChildren(
      ...page.items.map((f) =>
        el(
          "tr",
          { class: f.side === "buy" ? "bid" : "ask" },
          el("td", {}, f.market),
          el("td", {}, f.side),
          el("td", { class: "price" }, f.price),
          el("td", {}, f.quantity),
          el("td", {}, `${f.fee} ${f.fee_asset}`),
          el("td", {}, f.liquidity),
          el("td", {}, clock(f.time)),
        ),
      ),
    );
  }

  function fillsSoon() {
    clearTimeout(state.fillsTimer);
    state.fillsTimer = setTimeout(() => loadFills().catch(() => {}), 250);
  }

  function onUserEvent(type, data, stream) {
    if (stream !== state.userStream) return;
    if (type === "balance") {
      renderBalances(data);
    } else if (type === "order") {
      const before = state.orders.get(data.order_id);
      applyOrder(data);
      if (data.order_id === state.placed) showResult(data);
      if (data.filled_quantity !== (before ? before.filled_quantity : "0") && Number(data.filled_quantity) > 0) fillsSoon();
    }
  }

  function userStatus(text) {
    $("user-conn").textContent = text;
    $("user-conn").className = `conn ${text.split(" ")[0]}`;
  }

  async function useKey(key) {
    if (state.userStream) state.userStream.stop();
    state.userStream = null;
    try {
      renderBalances(await api("/v1/balances", { key }));
    } catch (error) {
      userStatus(error.message);
      return;
    }
    state.key = key;
    sessionStorage.setItem(KEY, key);
    $("account-body").hidden = false;
    $("api-key").value = "";
    loadFills().catch(() => {});
    state.userStream = new EventStream("/v1/stream/me", {
      key,
      onEvent: onUserEvent,
      onStatus: userStatus,
      // Without a cursor the stream starts with a snapshot of the open orders.
      onOpen: (fresh) => {
        if (fresh) state.orders.clear();
        renderOrders();
      },
    }).start();
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY);
    if (state.userStream) state.userStream.stop();
    Object.assign(state, { key: null, userStream: null });
    state.orders.clear();
    $("account-body").hidden = true;
    userStatus("");
  }

  async function cancel(orderId) {
    const result = $("order-result");
    try {
      const order = await api(`/v1/orders/${encodeURIComponent(orderId)}?wait=true`, {
        method: "DELETE",
        key: state.key,
      });
      applyOrder(order);
      if (orderId === state.placed) state.placed = null;
      result.textContent = `Order ${orderId}: ${order.status}`;
      result.className = "ok";
    } catch (error) {
      result.textContent = `Cancel refused — ${error.message}`;
      result.className = "error";
    }
  }

  function formShape() {
    const form = $("order-form");
    const limit = form.elements.type.value === "limit";
    const buy = form.elements.side.value === "buy";
    for (const label of form.querySelectorAll("[data-for]")) {
      const what = label.dataset.for;
      label.hidden = what === "limit" ? !limit : what === "funds" ? limit || !buy : !limit && buy;
    }
  }

  // The answer to ?wait=true is the order's first state (funds held); the book decides
  // later (rest, fill, or a post-only refusal), so the user stream keeps this line current.
  function showResult(order) {
    const result = $("order-result");
    const refused = ["REJECTED", "EXPIRED"].includes(order.status);
    result.textContent = refused
      ? `Order ${order.status} — ${order.reason ?? "no reason given"}`
      : `Order ${order.order_id}: ${order.status}${order.reason ? ` (${order.reason})` : ""}`;
    result.className = refused ? "error" : "ok";
  }

  async function placeOrder(event) {
    event.preventDefault();
    const form = event.target;
    const f = form.elements;
    const result = $("order-result");
    const order = {
      market: state.market,
      side: f.side.value,
      type: f.type.value,
      time_in_force: f.time_in_force.value,
    };
    if (order.type === "limit") {
      Object.assign(order, { price: f.price.value.trim(), quantity: f.quantity.value.trim(), post_only: f.post_only.checked });
    } else if (order.side === "buy") {
      order.funds = f.funds.value.trim();
    } else {
      order.quantity = f.quantity.value.trim();
    }
    $("place").disabled = true;
    try {
      const placed = await api("/v1/orders?wait=true", { method: "POST", body: order, key: state.key });
      state.placed = placed.order_id;
      applyOrder(placed);
      showResult(placed);
    } catch (error) {
      result.textContent = `Rejected — ${error.message}`;
      result.className = "error";
    } finally {
      $("place").disabled = false;
    }
  }

  // --- start -----------------------------------------------------------------------------

  async function main() {
    setupChart();
    const page = await api("/v1/markets");
    const select = $("market");
    for (const m of page.items) {
      state.markets[m.market] = m;
      select.append(el("option", { value: m.market }, m.market));
    }
    const wanted = new URLSearchParams(location.search).get("market");
    if (wanted && state.markets[wanted]) select.value = wanted;
    select.addEventListener("change", () => {
      history.replaceState(null, "", `?market=${encodeURIComponent(select.value)}`);
      selectMarket(select.value);
    });
    setInterval(() => state.market && renderTicker(), 60000);
    await selectMarket(select.value);

    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (key) useKey(key);
    });
    $("forget-key").addEventListener("click", forgetKey);
    $("order-form").addEventListener("submit", placeOrder);
    $("order-form").addEventListener("change", formShape);
    formShape();
    const saved = sessionStorage.getItem(KEY);
    if (saved) useKey(saved);
  }

  main().catch((error) => {
    $("conn").textContent = `error: ${error.message}`;
    $("conn").className = "conn error";
  });
})();
