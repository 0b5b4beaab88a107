/* chat-engine widget: the chat window (iframe). The session comes from the parent page by
 * postMessage; answers stream from the POST response and the session EventSource (resumed with
 * Last-Event-ID), de-duplicated by message id and token seq. Text is never parsed as HTML. */
(function () {
  "use strict";

  var api = location.origin + location.pathname.replace(/\/widget\/frame$/, "");
  var allowed = (document.body.getAttribute("data-allowed-origins") || "").split(" ").filter(Boolean);
  var $ = function (id) { return document.getElementById(id); };
  var log = $("log"), input = $("input"), send = $("send"), human = $("human"), form = $("form");
  var statusBar = $("status"), typing = $("typing");

  var parentOrigin = null;
  var sid = null, token = null, botName = "Assistant";
  // bubbles by message id; aborted ids; customer bubbles awaiting their id; newest delivered id
  var bubbles = {}, gone = {}, pending = [], maxFinal = 0;
  var es = null, esLastId = "", esRetry = 0, esTimer = null;
  var status = "ai_handled", agentName = "";
  var recovering = null;

  // handshake with the host page
  window.addEventListener("message", function (ev) {
    if (ev.source !== window.parent) return;
    if (allowed.length && allowed.indexOf(ev.origin) < 0) return;
    var d = ev.data;
    if (!d || typeof d !== "object" || typeof d.type !== "string") return;
    if (d.type === "chat-engine:focus") { if (!input.disabled) input.focus(); return; }
    if (d.type !== "chat-engine:init") return;
    if (typeof d.session_id !== "string" || !/^[0-9a-f-]{36}$/i.test(d.session_id)) return;
    if (typeof d.session_token !== "string" || d.session_token.length > 4096) return;
    parentOrigin = ev.origin;
    if (typeof d.bot_name === "string") {
      botName = d.bot_name.slice(0, 60);
      $("title").textContent = botName;
    }
    var same = d.session_id === sid;
    token = d.session_token;
    if (same) { connect(); return; }
    reset();
    sid = d.session_id;
    if (typeof d.greeting === "string" && d.greeting) notice(d.greeting, "greeting");
    loadHistory();
  });
  window.parent.postMessage({ type: "chat-engine:ready" }, "*");

  function toParent(msg) {
    if (parentOrigin) window.parent.postMessage(msg, parentOrigin);
  }

  function reset() {
    if (es) es.close();
    es = null; esLastId = ""; bubbles = {}; gone = {}; pending = []; maxFinal = 0; seen = {};
    log.textContent = "";
  }

  function call(method, path, body) {
    var headers = { Authorization: "Bearer " + token };
    if (body) headers["content-type"] = "application/json";
    return fetch(api + "/v1/widget/sessions/" + sid + path, {
      method: method, headers: headers, body: body ? JSON.stringify(body) : undefined,
    }).then(function (res) {
      if (res.status === 401) toParent({ type: "chat-engine:expired" });
      return res;
    });
  }

  function politeError(res) {
    return res.json().catch(function () { return {}; }).then(function (b) {
      var e = (b && b.error) || {};
      if (res.status === 429) {
        var s = parseInt(res.headers.get("Retry-After") || "", 10) || e.retry_after_s || 60;
        return "You're sending messages a little fast. Please wait " + s +
          " seconds and try again.";
      }
      return "Sorry, your message could not be sent. Please try again.";
    });
  }

  function loadHistory() {
    return call("GET", "/messages?after=0").then(function (res) {
      if (!res.ok) throw res;
      return res.json();
    }).then(function (body) {
      if (body.csat) csat = body.csat;
      body.messages.forEach(onMessage);
      setOffline(!!body.offline);
      setStatus(body.status);
      input.disabled = false;
      send.disabled = false;
      input.focus();
      connect();
    }).catch(function () {
      notice("We can't load the conversation right now. Retrying…");
      setTimeout(function () { if (sid) loadHistory(); }, 3000);
    });
  }

  // Missed messages (a dropped stream, a reload mid-answer): everything after what we have.
  function fillGap() {
    var after = maxFinal;
    Object.keys(bubbles).forEach(function (id) {
      if (!bubbles[id].final && +id <= after) after = +id - 1;
    });
    return call("GET", "/messages?after=" + after).then(function (res) {
      return res.ok ? res.json() : null;
    }).then(function (body) {
      if (!body) return;
      body.messages.forEach(onMessage);
      if (body.status !== status) setStatus(body.status);
    }, function () { /* offline: the next reconnect tries again */ });
  }

  // session event stream
  var KINDS = ["token", "message", "handoff", "agent_joined", "aborted", "done", "error"];

  function connect() {
    if (es && es.readyState !== 2) return;
    if (es) es.close();
    clearTimeout(esTimer);
    var url = api + "/v1/widget/sessions/" + sid + "/events?token=" + encodeURIComponent(token);
    if (esLastId) url += "&last_event_id=" + encodeURIComponent(esLastId);
    var source = es = new EventSource(url);
    KINDS.forEach(function (kind) {
      source.addEventListener(kind, function (ev) {
        if (ev.data === undefined) {  // a connection error, not an `error` event
          if (source.readyState === 2 && es === source) {  // closed for good: reconnect ourselves
            esRetry = Math.min(esRetry + 1, 5);
            esTimer = setTimeout(connect, 1000 * Math.pow(2, esRetry - 1));
          }
          return;
        }
        if (ev.lastEventId) esLastId = ev.lastEventId;
        dispatch(kind, ev.data, ev.lastEventId);
      });
    });
    source.addEventListener("open", function () { esRetry = 0; fillGap(); });
  }

  var seen = {};  // ids of one-off events already shown (both streams carry them)
  function dispatch(kind, raw, id) {
    if (id && kind !== "token" && kind !== "message") {
      if (seen[id]) return;
      seen[id] = 1;
    }
    var data;
    try { data = JSON.parse(raw); } catch (e) { return; }
    if (!data || typeof data !== "object") return;
    if (kind === "token") onToken(data);
    else if (kind === "message") onMessage(data);
    else if (kind === "handoff") setStatus("human_escalated");
    else if (kind === "agent_joined") {
      agentName = String(data.agent_name || "");
      setStatus("human_assigned");
      notice((agentName || "Someone from our team") + " joined the chat.");
      hideTyping();
    } else if (kind === "aborted") onAborted(data.message_id, data.superseded);
    else if (kind === "error") {
      hideTyping();
      notice(String(data.message || "Something went wrong."));
    } else if (kind === "done") {
      hideTyping();
      if (recovering) stopRecovery();
    }
  }

  // ONE rendering path for AI, agent, system and customer text: renderText() makes only text
  // nodes and <a> elements; nothing from the model or an agent is parsed as HTML.
  var URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/g;

  function renderText(node, text) {
    node.textContent = "";
    text = String(text == null ? "" : text);
    var last = 0, m;
    URL_RE.lastIndex = 0;
    while ((m = URL_RE.exec(text))) {
      var url = m[0].replace(/[.,;:!?)\]}]+$/, "");
      node.appendChild(document.createTextNode(text.slice(last, m.index)));
      node.appendChild(link(url, url));
      last = m.index + url.length;
      URL_RE.lastIndex = last;
    }
    node.appendChild(document.createTextNode(text.slice(last)));
  }

  function link(href, label) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = label;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  function bubble(id, sender, name) {
    var b = id != null ? bubbles[id] : null;
    if (b) return b;
    var el = document.createElement("div");
    el.className = "msg " + sender;
    el.setAttribute("data-sender", sender);
    var label = sender === "agent" ? (name || "Support") : sender === "ai" ? botName : "";
    var nameEl = document.createElement("span");
    nameEl.className = "name";
    nameEl.textContent = label;
    if (!label) nameEl.hidden = true;
    var textEl = document.createElement("span");
    textEl.className = "text";
    el.appendChild(nameEl);
    el.appendChild(textEl);
    b = { id: id, el: el, text: textEl, name: nameEl, parts: [], final: false };
    if (id != null) { el.setAttribute("data-id", id); bubbles[id] = b; }
    insert(b);
    return b;
  }

  function insert(b) {  // keep message order by id; bubbles without an id go last
    var next = null;
    if (b.id != null) {
      var kids = log.children;
      for (var i = 0; i < kids.length; i++) {
        var kid = +kids[i].getAttribute("data-id");
        if (kid && kid > +b.id) { next = kids[i]; break; }
      }
    }
    log.insertBefore(b.el, next);
    log.scrollTop = log.scrollHeight;
  }

  // Shared by AI answers, agent replies, system notes and customer messages.
  function renderMessage(b, m) {
    if (m.sender === "agent" && m.agent_name) b.name.textContent = m.agent_name;
    renderText(b.text, m.text);
    b.final = true;
    b.el.classList.remove("streaming", "pending");
    b.el.setAttribute("data-state", "final");
    var old = b.el.querySelector(".sources");
    if (old) old.remove();
    var links = (m.sources || []).filter(function (s) { return /^https?:\/\//.test(s.source || ""); });
    if (links.length) {
      var ul = document.createElement("ul");
      ul.className = "sources";
      ul.setAttribute("aria-label", "Sources");
      var uniq = {};
      links.forEach(function (s) {
        if (uniq[s.source]) return;
        uniq[s.source] = 1;
        var li = document.createElement("li");
        li.appendChild(link(s.source, s.title || s.source));
        ul.appendChild(li);
      });
      b.el.appendChild(ul);
    }
  }

  function onMessage(m) {
    if (!m || m.id == null || typeof m.sender !== "string") return;
    var id = +m.id;
    if (id > maxFinal) maxFinal = id;
    if (bubbles[id] && bubbles[id].final) return;
    var sender = ["customer", "ai", "agent", "system"].indexOf(m.sender) >= 0 ? m.sender : "system";
    if (sender === "agent" && m.agent_name) agentName = String(m.agent_name);
    if (sender === "customer" && !bubbles[id]) {
      for (var i = 0; i < pending.length; i++) {
        if (pending[i].sent === m.text) {
          var p = pending.splice(i, 1)[0];
          p.id = id;
          p.el.setAttribute("data-id", id);
          bubbles[id] = p;
          p.el.remove();
          insert(p);
          break;
        }
      }
    }
    delete gone[id];
    var b = bubble(id, sender, m.agent_name);
    renderMessage(b, m);
    if (m.intent === "csat") csatButtons(b);
    if (m.intent === "csat_thanks") { csat.score = csat.score || -1; dropCsatButtons(); }
    if (sender !== "customer") hideTyping();
  }

  // The satisfaction question after an agent closes the conversation: 1-5 buttons under it
  // (typing a number works too); gone once answered.
  var csat = { asked: false, score: null };
  function csatButtons(b) {
    if (csat.score || b.el.querySelector(".csat")) return;
    var row = document.createElement("div");
    row.className = "csat";
    row.setAttribute("role", "group");
    row.setAttribute("aria-label", "Rate this conversation");
    [1, 2, 3, 4, 5].forEach(function (n) {
      var btn = document.createElement("button");
      btn.type = "button";
      btn.textContent = String(n);
      btn.setAttribute("data-score", n);
      btn.setAttribute("aria-label", n + " out of 5");
      btn.addEventListener("click", function () { rate(n, row); });
      row.appendChild(btn);
    });
    b.el.appendChild(row);
  }
  function dropCsatButtons() {
    Array.prototype.forEach.call(log.querySelectorAll(".csat"), function (r) { r.remove(); });
  }
  function rate(n, row) {
    Array.prototype.forEach.call(row.querySelectorAll("button"), function (x) { x.disabled = true; });
    call("POST", "/csat", { score: n }).then(function (res) {
      if (!res.ok) throw res;
      csat.score = n;
      dropCsatButtons();
      fillGap();
    }).catch(function () {
      Array.prototype.forEach.call(row.querySelectorAll("button"), function (x) { x.disabled = false; });
    });
  }

  // Outside the team's business hours: say so, and the button leaves a message instead.
  var offline = false;
  function setOffline(value) {
    offline = value;
    document.body.setAttribute("data-offline", value ? "1" : "0");
    human.textContent = value ? "Leave a message for our team" : "Talk to a human";
    setStatus(status);
  }

  function onToken(t) {
    var id = +t.message_id, seq = +t.seq;
    if (!id || gone[id] || isNaN(seq) || typeof t.text !== "string") return;
    var b = bubble(id, "ai");
    if (b.final) return;
    b.parts[seq] = t.text;
    var s = "";
    for (var i = 0; i < b.parts.length && b.parts[i] !== undefined; i++) s += b.parts[i];
    b.el.classList.add("streaming");
    b.el.setAttribute("data-state", "streaming");
    renderText(b.text, s);
    log.scrollTop = log.scrollHeight;
    if (s) hideTyping();
  }

  // superseded: an earlier attempt's half answer goes, and the turn goes on (keep typing).
  function onAborted(id, superseded) {
    id = +id;
    gone[id] = true;
    var b = bubbles[id];
    if (b && !b.final) { b.el.remove(); delete bubbles[id]; }
    if (!superseded) hideTyping();
  }

  function notice(text, kind) {
    var p = document.createElement("p");
    p.className = "notice" + (kind ? " " + kind : "");
    p.textContent = text;
    log.appendChild(p);
    log.scrollTop = log.scrollHeight;
    return p;
  }

  function showTyping() {
    typing.hidden = false;
    typing.setAttribute("data-active", "1");
  }
  function hideTyping() {
    typing.hidden = true;
    typing.removeAttribute("data-active");
  }

  function setStatus(s) {
    status = s;
    var text = "";
    if (s === "human_escalated") {
      text = offline ? "Our team is offline right now. We'll reply here as soon as we're back."
        : "Connecting you to our team… Someone will reply here shortly.";
    } else if (offline && s !== "human_assigned" && s !== "closed") {
      text = "Our team is offline right now; the assistant can still help.";
    } else if (s === "human_assigned") text = "You're chatting with " + (agentName || "our team") + ".";
    else if (s === "closed") text = "This conversation was closed. Send a message to start again.";
    statusBar.textContent = text;
    statusBar.hidden = !text;
    statusBar.setAttribute("data-status", s);
    log.scrollTop = log.scrollHeight;
    human.disabled = s === "human_escalated" || s === "human_assigned";
    $("subtitle").textContent = s === "ai_handled" || s === "closed"
      ? "Usually replies instantly" : "Our team is here to help";
  }

  // sending
  function newId() {
    var a = new Uint8Array(12);
    crypto.getRandomValues(a);
    return Array.prototype.map.call(a, function (x) { return ("0" + x.toString(16)).slice(-2); }).join("");
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = input.value.trim();
    if (!text || !sid) return;
    input.value = "";
    var b = bubble(null, "customer");
    b.sent = text;
    b.el.classList.add("pending");
    renderText(b.text, text);
    pending.push(b);
    if (status === "ai_handled" || status === "closed") showTyping();
    post(text, newId(), b);
  });

  input.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") toParent({ type: "chat-engine:close" });
  });
  $("close").addEventListener("click", function () { toParent({ type: "chat-engine:close" }); });

  // client_msg_id makes a retry safe: the server answers a repeat with the original turn.
  function post(text, cmid, b, attempt) {
    attempt = attempt || 0;
    call("POST", "/messages", { text: text, client_msg_id: cmid }).then(function (res) {
      if (!res.ok) {
        return politeError(res).then(function (msg) {
          hideTyping();
          pending.splice(pending.indexOf(b), 1);
          b.el.remove();
          if (!input.value) input.value = text;
          notice(msg, "error");
        });
      }
      return readSSE(res.body, dispatch).then(null, startRecovery);
    }, function () {
      if (attempt < 3) { setTimeout(function () { post(text, cmid, b, attempt + 1); }, 2000); return; }
      hideTyping();
      notice("We couldn't send your message. Please check your connection and try again.", "error");
    });
  }

  // Parse "event:/data:/id:" blocks from a fetch body (the turn's own SSE stream).
  function readSSE(body, onEvent) {
    var reader = body.getReader(), dec = new TextDecoder(), raw = "", buf = "";
    function pump() {
      return reader.read().then(function (r) {
        if (r.done) return;
        raw += dec.decode(r.value, { stream: true });
        var cut = raw.slice(-1) === "\r" ? raw.length - 1 : raw.length;  // a CR LF may be split
        buf += raw.slice(0, cut).replace(/\r\n?/g, "\n");
        raw = raw.slice(cut);
        var i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          var block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          var kind = "message", data = [], id = "";
          block.split("\n").forEach(function (line) {
            var c = line.indexOf(":");
            if (c === 0) return;
            var f = c < 0 ? line : line.slice(0, c), v = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
            if (f === "event") kind = v;
            else if (f === "data") data.push(v);
            else if (f === "id") id = v;
          });
          if (data.length) onEvent(kind, data.join("\n"), id);
        }
        return pump();
      });
    }
    return pump();
  }

  // The turn's stream dropped: the event stream reconnects by itself (Last-Event-ID); until a
  // `done` arrives, also fetch what was delivered meanwhile so the reply completes either way.
  function startRecovery() {
    if (recovering) return;
    var tries = 0;
    recovering = setInterval(function () {
      tries += 1;
      connect();
      fillGap();
      if (tries > 30) stopRecovery();
    }, 2000);
  }
  function stopRecovery() {
    clearInterval(recovering);
    recovering = null;
  }

  human.addEventListener("click", function () {
    if (!sid) return;
    human.disabled = true;
    call("POST", "/handoff").then(function (res) {
      if (!res.ok) {
        human.disabled = false;
        return politeError(res).then(function (m) { notice(m, "error"); });
      }
      return res.json().then(function (b) { setStatus(b.status || "human_escalated"); });
    }, function () {
      human.disabled = false;
      notice("We can't reach our team right now. Please try again.", "error");
    });
  });
})();
