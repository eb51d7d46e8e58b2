// The demo page: plain browser APIs, no build step. What each panel saw is kept in
// window.demo as well, so that a test driving a headless browser can read it.
"use strict";

const demo = (window.demo = {
  clock: { ticks: 0, firstAt: null, lastId: null, resumedFrom: [], deadlines: 0, opens: 0, openedAt: [], deadlineAt: [] },
  tokens: { runs: 0, count: 0, done: false, text: "" },
  rows: { runs: 0, count: 0, done: false, error: null },
  quote: { polls: 0, last: null, xCache: null, stale: 0 },
  streams: { updates: 0, last: null },
});

const $ = (id) => document.getElementById(id);

function log(listId, text) {
  const list = $(listId);
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  list.prepend(item);
  while (list.children.length > 6) list.lastChild.remove();
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
}

// -- clock: heartbeats, a deadline with a retry: hint, and Last-Event-ID on reconnection ------

function startClock() {
  const source = new EventSource("/clock");
  source.addEventListener("open", () => {
    demo.clock.opens += 1;
    demo.clock.openedAt.push(performance.now());
    if (demo.clock.opens > 1) log("clock-log", `reconnected (last id ${demo.clock.lastId})`);
  });
  source.addEventListener("tick", (event) => {
    const tick = JSON.parse(event.data);
    demo.clock.ticks += 1;
    if (demo.clock.firstAt === null) demo.clock.firstAt = performance.now();
    demo.clock.lastId = event.lastEventId;
    $("clock-time").textContent = tick.time;
    $("clock-tick").textContent = tick.tick;
    $("clock-id").textContent = event.lastEventId;
  });
  source.addEventListener("resumed", (event) => {
    demo.clock.resumedFrom.push(event.data);
    log("clock-log", `server resumed after id ${event.data}`);
  });
  source.addEventListener("deadline", () => {
    demo.clock.deadlines += 1;
    demo.clock.deadlineAt.push(performance.now());
    log("clock-log", "max_duration reached: the server asked for a reconnection");
  });
  source.addEventListener("shutdown", () => log("clock-log", "server shutting down"));
}

// -- tokens from the fake LLM -------------------------------------------------------------------

let tokenSource = null;

function stopTokens(status) {
  if (tokenSource !== null) {
    tokenSource.close();
    tokenSource = null;
  }
  $("tokens-status").textContent = status;
}

function askTokens() {
  stopTokens("asking");
  demo.tokens.runs += 1;
  demo.tokens.count = 0;
  demo.tokens.done = false;
  demo.tokens.text = "";
  $("tokens-text").textContent = "";
  const source = (tokenSource = new EventSource("/tokens?prompt=" + encodeURIComponent("Why do streams leak?")));
  source.addEventListener("token", (event) => {
    demo.tokens.count += 1;
    demo.tokens.text += event.data;
    $("tokens-text").textContent = demo.tokens.text;
    $("tokens-count").textContent = demo.tokens.count;
    $("tokens-status").textContent = "streaming";
  });
  source.addEventListener("done", () => {
    demo.tokens.done = true;
    // Closed here: an EventSource would otherwise reconnect when the stream ends.
    stopTokens("done");
  });
  source.addEventListener("error", () => {
    if (tokenSource === source) stopTokens("interrupted");
  });
}

// -- NDJSON rows, read with fetch() and a stream reader ----------------------------------------

let rowsAbort = null;

async function loadRows() {
  if (rowsAbort !== null) rowsAbort.abort();
  const controller = (rowsAbort = new AbortController());
  demo.rows.runs += 1;
  demo.rows.count = 0;
  demo.rows.done = false;
  const body = $("rows-body");
  body.replaceChildren();
  $("rows-status").textContent = "streaming";
  try {
    const response = await fetch("/rows?limit=300", { signal: controller.signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines) {
        if (line === "") continue; // a heartbeat
        const order = JSON.parse(line);
        demo.rows.count += 1;
        const row = document.createElement("tr");
        for (const value of [order.id, order.customer, order.product, order.quantity,
                             (order.price_cents / 100).toFixed(2)]) cell(row, value);
        body.prepend(row);
        while (body.children.length > 40) body.lastChild.remove();
      }
      $("rows-count").textContent = demo.rows.count;
    }
    demo.rows.done = true;
    $("rows-status").textContent = "done";
  } catch (error) {
    demo.rows.error = String(error);
    $("rows-status").textContent = controller.signal.aborted ? "cancelled" : "failed";
  }
}

// -- the cached fallback, polled ----------------------------------------------------------------

async function pollQuote() {
  try {
    const response = await fetch("/quote?symbol=ACME", { cache: "no-store" });
    const quote = await response.json();
    demo.quote.polls += 1;
    demo.quote.last = quote;
    demo.quote.xCache = response.headers.get("x-cache");
    if (demo.quote.xCache === "stale") demo.quote.stale += 1;
    if (response.ok) {
      $("quote-price").textContent = `${quote.symbol} ${quote.price.toFixed(2)}`;
      $("quote-cached").textContent = String(quote.cached);
      $("quote-xcache").textContent = demo.quote.xCache;
      $("quote-age").textContent = response.headers.get("age") ?? "0";
      log("quote-log", `${demo.quote.xCache}: ${quote.price.toFixed(2)}`);
    } else {
      log("quote-log", `${response.status}: ${quote.detail}`);
    }
  } catch (error) {
    log("quote-log", `failed: ${error}`);
  }
}

// -- the server's streams ------------------------------------------------------------------------

function showStreams(snapshot) {
  $("backend").textContent = snapshot.backend;
  $("streams-active-count").textContent = snapshot.active.length;
  const active = $("streams-active");
  active.replaceChildren();
  for (const stream of snapshot.active) {
    const row = document.createElement("tr");
    for (const value of [stream.path, stream.age.toFixed(1), stream.items_sent, stream.bytes_sent])
      cell(row, value);
    active.append(row);
  }
  const recent = $("streams-recent");
  recent.replaceChildren();
  for (const end of snapshot.recent) {
    const row = document.createElement("tr");
    row.className = end.reason;
    for (const value of [end.path, end.reason, end.duration.toFixed(2), end.items_sent,
                         (end.cleanup_duration * 1000).toFixed(1)]) cell(row, value);
    recent.append(row);
  }
  $("streams-ended").textContent = Object.entries(snapshot.ended)
    .filter(([, count]) => count > 0)
    .map(([reason, count]) => `${reason} ${count}`)
    .join(" · ") || "none yet";
  const upstream = snapshot.upstream;
  $("streams-upstream").textContent =
    `${upstream.open_calls} open · ${upstream.completed} completed · ` +
    `${upstream.aborted} aborted · ${upstream.tokens_generated} tokens generated`;
}

function startStreams() {
  const source = new EventSource("/streams");
  source.addEventListener("streams", (event) => {
    demo.streams.updates += 1;
    demo.streams.last = JSON.parse(event.data);
    showStreams(demo.streams.last);
  });
}

$("tokens-ask").addEventListener("click", askTokens);
$("tokens-stop").addEventListener("click", () => stopTokens("stopped"));
$("rows-load").addEventListener("click", loadRows);
$("rows-cancel").addEventListener("click", () => rowsAbort && rowsAbort.abort());

startStreams();
startClock();
askTokens();
loadRows();
pollQuote();
setInterval(pollQuote, 1500);
