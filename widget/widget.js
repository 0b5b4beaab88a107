/* chat-engine widget, host page: a launcher with the greeting; the session is created/restored from
 * this page (its Origin), kept in localStorage and handed to the chat iframe by postMessage. */
(function () {
  "use strict";

  var script = document.currentScript || document.querySelector("script[data-widget-token]");
  if (!script || window.__chatEngineWidget) return;
  window.__chatEngineWidget = true;

  var widgetToken = script.getAttribute("data-widget-token") || "";
  var src = new URL(script.src, location.href);
  var api = src.origin + src.pathname.replace(/\/widget\.js$/, "");
  var frameOrigin = src.origin;
  var storeKey = "chat-engine:" + widgetToken;

  function load() {
    try { return JSON.parse(localStorage.getItem(storeKey) || "{}") || {}; } catch (e) { return {}; }
  }
  function save(patch) {
    try { localStorage.setItem(storeKey, JSON.stringify(Object.assign(load(), patch))); } catch (e) { /* private mode */ }
  }

  var CSS = [
    ":host{all:initial}",
    ".ce{position:fixed;right:20px;bottom:20px;z-index:2147483000;font:15px/1.4 system-ui,sans-serif}",
    ".ce-row{display:flex;align-items:flex-end;gap:10px;justify-content:flex-end}",
    ".ce-greet{background:#fff;color:#1f2937;border-radius:14px;padding:10px 14px;max-width:240px;",
    "box-shadow:0 4px 18px rgba(0,0,0,.16);cursor:pointer;border:0;font:inherit;text-align:left}",
    ".ce-launch{width:58px;height:58px;border-radius:50%;border:0;background:#2563eb;color:#fff;",
    "cursor:pointer;box-shadow:0 4px 18px rgba(0,0,0,.25);display:flex;align-items:center;",
    "justify-content:center;flex:none}",
    ".ce-launch:focus-visible,.ce-greet:focus-visible{outline:3px solid #f59e0b;outline-offset:2px}",
    ".ce-launch svg{width:28px;height:28px;fill:currentColor}",
    ".ce-win{position:absolute;right:0;bottom:72px;width:370px;max-width:calc(100vw - 24px);",
    "height:560px;max-height:calc(100vh - 110px);border-radius:14px;overflow:hidden;",
    "box-shadow:0 10px 40px rgba(0,0,0,.28);background:#fff}",
    ".ce-win iframe{border:0;width:100%;height:100%;display:block}",
    ".ce-note{position:absolute;right:0;bottom:72px;width:260px;background:#fff;color:#7f1d1d;",
    "border-radius:12px;padding:10px 14px;box-shadow:0 4px 18px rgba(0,0,0,.16)}",
    "[hidden]{display:none!important}",
  ].join("");

  var host = document.createElement("div");
  host.setAttribute("data-chat-engine", "");
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var style = document.createElement("style");
  style.textContent = CSS;
  root.appendChild(style);

  var box = el("div", "ce");
  var row = el("div", "ce-row");
  var greet = el("button", "ce-greet");
  greet.type = "button";
  greet.hidden = true;
  greet.setAttribute("data-ce", "greeting");
  var launch = el("button", "ce-launch");
  launch.type = "button";
  launch.setAttribute("data-ce", "launcher");
  launch.setAttribute("aria-label", "Open chat");
  launch.setAttribute("aria-expanded", "false");
  launch.appendChild(icon("M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z"));
  var note = el("div", "ce-note");
  note.setAttribute("role", "alert");
  note.setAttribute("data-ce", "notice");
  note.hidden = true;
  var win = el("div", "ce-win");
  win.hidden = true;
  row.appendChild(greet);
  row.appendChild(launch);
  box.appendChild(note);
  box.appendChild(win);
  box.appendChild(row);
  root.appendChild(box);

  var frame = null;
  var session = null;
  var opening = false, ready = false;

  function el(tag, cls) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    return e;
  }
  function icon(d) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    var p = document.createElementNS(ns, "path");
    p.setAttribute("d", d);
    svg.appendChild(p);
    return svg;
  }
  function showNote(text) {
    note.textContent = text;
    note.hidden = !text;
  }
  function setGreeting(text) {
    if (!text) return;
    greet.textContent = text;
    greet.hidden = !win.hidden;
  }

  function retryText(res, body) {
    var s = parseInt(res.headers.get("Retry-After") || "", 10);
    if (!s && body && body.error) s = body.error.retry_after_s;
    return s ? " Please try again in " + s + " seconds." : " Please try again in a minute.";
  }

  function createSession() {
    var stored = load();
    return fetch(api + "/v1/widget/sessions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ widget_token: widgetToken, session_token: stored.session_token || null,
                             visitor_id: stored.visitor_id || null }),
    }).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (body) {
        if (res.ok && body && body.session_token) return body;
        var err = new Error("session");
        err.status = res.status;
        err.note = res.status === 429
          ? "We're getting a lot of messages right now." + retryText(res, body)
          : "Sorry, the chat is not available on this page right now.";
        throw err;
      });
    }, function () {
      var err = new Error("network");
      err.note = "Sorry, the chat is not available right now. Please try again later.";
      throw err;
    });
  }

  function handOver() {
    if (!ready || !session) return;
    frame.contentWindow.postMessage({
      type: "chat-engine:init", session_id: session.session_id,
      session_token: session.session_token, greeting: session.greeting, bot_name: session.bot_name,
      status: session.status,
    }, frameOrigin);
  }

  function open() {
    if (opening) return;
    if (session && frame) { show(true); return; }
    opening = true;
    host.setAttribute("data-state", "opening");
    launch.setAttribute("aria-busy", "true");
    createSession().then(function (s) {
      session = s;
      save({ session_token: s.session_token, session_id: s.session_id, open: true });
      if (s.visitor_id) save({ visitor_id: s.visitor_id });
      showNote("");
      setGreeting(s.greeting);
      if (!frame) {
        frame = document.createElement("iframe");
        frame.title = (s.bot_name || "Support") + " chat";
        frame.setAttribute("data-ce", "frame");
        frame.src = api + "/widget/frame?wt=" + encodeURIComponent(widgetToken);
        win.appendChild(frame);
      } else {
        handOver();
      }
      show(true);
    }, function (err) {
      host.setAttribute("data-state", "unavailable");
      showNote(err.note);
    }).then(function () {
      opening = false;
      launch.removeAttribute("aria-busy");
    });
  }

  function show(visible) {
    win.hidden = !visible;
    greet.hidden = visible || !greet.textContent;
    launch.setAttribute("aria-expanded", visible ? "true" : "false");
    launch.setAttribute("aria-label", visible ? "Close chat" : "Open chat");
    host.setAttribute("data-state", visible ? "open" : "closed");
    save({ open: visible });
    if (visible && ready) {
      frame.contentWindow.postMessage({ type: "chat-engine:focus" }, frameOrigin);
    }
    if (!visible) launch.focus();
  }

  function toggle() {
    if (!win.hidden) show(false); else open();
  }

  launch.addEventListener("click", toggle);
  greet.addEventListener("click", open);

  window.addEventListener("message", function (ev) {
    if (!frame || ev.source !== frame.contentWindow || ev.origin !== frameOrigin) return;
    var d = ev.data;
    if (!d || typeof d.type !== "string") return;
    if (d.type === "chat-engine:ready") { ready = true; handOver(); }
    else if (d.type === "chat-engine:close") show(false);
    else if (d.type === "chat-engine:expired") {
      save({ session_token: null });
      createSession().then(function (s) {
        session = s;
        save({ session_token: s.session_token, session_id: s.session_id });
        if (s.visitor_id) save({ visitor_id: s.visitor_id });
        handOver();
      }, function (err) { showNote(err.note); });
    }
  });

  function greeting() {
    fetch(api + "/widget/config?wt=" + encodeURIComponent(widgetToken))
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (c) { if (c) setGreeting(c.greeting); }, function () { /* offline */ });
  }

  function start() {
    document.body.appendChild(host);
    host.setAttribute("data-state", "closed");
    if (load().open && load().session_token) open(); else greeting();
  }
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
