/* chat-engine inbox: the agents' page. Logs in with email + password (an HttpOnly cookie; writes
 * carry the CSRF token from the login answer), lists the queue with waiting times and SLA state,
 * follows the agent's live stream (/v1/inbox/events, resumed by the browser with Last-Event-ID),
 * shows a browser notification for each new escalation, and opens a conversation with its
 * sources, private notes and handoff context. Text is never parsed as HTML. */
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var CHANNELS = { widget: "Website", whatsapp: "WhatsApp", telegram: "Telegram", sms: "SMS",
                   email: "Email", slack: "Slack" };
  var STATUS = { ai_handled: "With the bot", human_escalated: "Waiting for a human",
                 human_assigned: "With an agent", closed: "Closed" };
  var FILTERS = { open: "", waiting: "status=human_escalated", mine: "assignee=me",
                  bot: "status=ai_handled", closed: "status=closed" };

  var me = null, csrf = "", canned = [], rows = {}, current = null, currentData = null;
  var stream = null, convStream = null, queueTimer = null, convTimer = null, tickTimer = null, pollTimer = null;
  var suggestions = [], picked = 0, dashboardMounted = false;

  // ---------------------------------------------------------------- HTTP
  function api(method, path, body) {
    var headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    return fetch(path, {
      method: method, headers: headers, credentials: "same-origin",
      body: body !== undefined ? JSON.stringify(body) : undefined,
    }).then(function (res) {
      if (res.status === 401 && path !== "/v1/auth/login") { showLogin(); throw new Error("logged out"); }
      return res;
    });
  }

  function json(res) {
    return res.json().catch(function () { return {}; }).then(function (body) {
      if (!res.ok) {
        var e = new Error((body && body.error && body.error.message) || ("HTTP " + res.status));
        e.status = res.status;
        throw e;
      }
      return body;
    });
  }

  // ---------------------------------------------------------------- login
  function showLogin() {
    stopStreams();
    me = null;
    $("app").hidden = true;
    $("login-view").hidden = false;
    $("login-email").focus();
  }

  $("login-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var err = $("login-error");
    err.hidden = true;
    $("login-submit").disabled = true;
    api("POST", "/v1/auth/login", { email: $("login-email").value, password: $("login-password").value })
      .then(json).then(function (body) {
        $("login-password").value = "";
        askNotificationPermission();
        start(body);
      }, function (e) {
        err.textContent = e.status === 429 ? "Too many attempts. Please wait a minute and try again."
          : e.status === 401 ? "Email or password is wrong." : "Signing in failed: " + e.message;
        err.hidden = false;
      }).then(function () { $("login-submit").disabled = false; });
  });

  $("logout").addEventListener("click", function () {
    api("POST", "/v1/auth/logout").then(showLogin, showLogin);
  });

  function askNotificationPermission() {
    if (window.Notification && Notification.permission === "default") {
      try { Notification.requestPermission(); } catch (e) { /* old browsers: no prompt */ }
    }
  }

  function canWrite() { return me && me.role !== "viewer"; }

  function start(who) {
    me = who;
    csrf = who.csrf_token || "";
    $("login-view").hidden = true;
    $("app").hidden = false;
    $("me").textContent = who.name + " · " + who.role;
    if (!canWrite()) {  // viewers read only: the write controls are not on the page at all
      ["reply-form", "actions", "label-form"].forEach(function (id) { var n = $(id); if (n) n.remove(); });
    }
    if (who.role === "owner" || who.role === "admin") loadDashboard();
    api("GET", "/v1/inbox/canned").then(json).then(function (list) { canned = list; }, function () {});
    loadQueue();
    connect();
    // A ticket's or a Slack message's link (/inbox?session=<id>) opens that conversation.
    var linked = new URLSearchParams(window.location.search).get("session");
    if (linked && /^[0-9a-f-]{36}$/i.test(linked)) open(linked);
    clearInterval(tickTimer);
    tickTimer = setInterval(tick, 1000);
    clearInterval(pollTimer);  // conversations with the bot send no inbox events: refresh now and then
    pollTimer = setInterval(function () { if (!document.hidden) loadQueue(); }, 30000);
  }

  // ---------------------------------------------------------------- queue
  function channelName(type) { return CHANNELS[type] || type || "Chat"; }
  function contactName(c) { return (c && (c.name || c.email || c.phone)) || "Visitor"; }

  function duration(s) {
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  }

  // Loads overlap when events come in bursts: only the newest one renders, so a slow older answer
  // never paints over a newer queue. A failed load retries (after 1, 2, 4, then every 8 s) instead
  // of leaving the queue stale until the next poll.
  var queueSeq = 0, queueRetry = 0;
  function loadQueue() {
    var seq = ++queueSeq;
    var q = FILTERS[$("filter").value] || "";
    return api("GET", "/v1/inbox/sessions" + (q ? "?" + q : "")).then(json).then(function (list) {
      if (seq !== queueSeq) return;
      queueRetry = 0;
      renderQueue(list);
    }, function () {
      if (seq !== queueSeq || !me) return;
      queueRetry = Math.min(queueRetry + 1, 4);
      clearTimeout(queueTimer);
      queueTimer = setTimeout(loadQueue, 1000 * Math.pow(2, queueRetry - 1));
    });
  }

  function scheduleQueue() {
    clearTimeout(queueTimer);
    queueTimer = setTimeout(loadQueue, 150);
  }

  $("filter").addEventListener("change", loadQueue);

  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text != null) n.textContent = String(text);
    return n;
  }

  function renderQueue(list) {
    var ul = $("queue");
    ul.textContent = "";
    rows = {};
    list.forEach(function (r) {
      rows[r.id] = r;
      var li = el("li");
      li.setAttribute("data-id", r.id);
      li.setAttribute("data-status", r.status);
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", String(r.id === current));
      li.appendChild(el("span", "who", contactName(r.contact)));
      li.appendChild(el("span", "channel muted", channelName(r.channel.type)));
      li.appendChild(el("span", "last", r.last_message ? r.last_message.text : ""));
      var badges = el("span", "badges");
      badges.appendChild(el("span", "badge " + r.status, STATUS[r.status] || r.status));
      if (r.status === "human_escalated") {
        var sla = el("span", "badge sla sla-" + r.sla.state, "SLA " + r.sla.state);
        sla.setAttribute("data-sla", r.sla.state);
        badges.appendChild(sla);
      }
      if (r.priority && r.priority !== "normal" && r.status !== "ai_handled") {
        badges.appendChild(el("span", "badge prio-" + r.priority, r.priority));
      }
      if (r.assignee) badges.appendChild(el("span", "badge", "→ " + (r.assignee.name || "agent")));
      (r.labels || []).forEach(function (l) { badges.appendChild(el("span", "badge", "#" + l)); });
      if (r.waiting_since) {
        var w = el("span", "waiting");
        w.setAttribute("data-since", r.waiting_since);
        badges.appendChild(w);
      }
      li.appendChild(badges);
      li.addEventListener("click", function () { open(r.id); });
      ul.appendChild(li);
    });
    $("queue-empty").hidden = list.length > 0;
    tick();
  }

  function tick() {
    var now = Date.now();
    Array.prototype.forEach.call(document.querySelectorAll(".waiting[data-since]"), function (w) {
      w.textContent = "waiting " + duration((now - Date.parse(w.getAttribute("data-since"))) / 1000);
    });
  }

  // ---------------------------------------------------------------- live stream
  var KINDS = ["escalation", "message", "assigned", "status", "note", "labels", "csat", "sla_breached",
               "lead", "delivery_failed", "credits_low", "credits_exhausted"];

  function connect() {
    if (stream) stream.close();
    var es = stream = new EventSource("/v1/inbox/events");
    es.addEventListener("open", function () { $("live").classList.add("on"); scheduleQueue(); });
    es.addEventListener("error", function () { $("live").classList.remove("on"); });
    KINDS.forEach(function (kind) {
      es.addEventListener(kind, function (ev) {
        var data;
        try { data = JSON.parse(ev.data); } catch (e) { return; }
        if (kind === "escalation") notifyEscalation(data);
        scheduleQueue();
        if (data.session_id && data.session_id === current) scheduleConversation();
      });
    });
  }

  function stopStreams() {
    if (stream) { stream.close(); stream = null; }
    if (convStream) { convStream.close(); convStream = null; }
    clearInterval(tickTimer);
    clearInterval(pollTimer);
    clearTimeout(queueTimer);
  }

  function notifyEscalation(d) {
    if (!window.Notification || Notification.permission !== "granted") return;
    var title = "Human required: " + channelName(d.channel_type) + " (" + (d.contact_name || "Visitor") + ")";
    var n = new Notification(title, {
      body: d.question || d.reason || "A customer is waiting for a human.",
      tag: "escalation:" + d.session_id,
    });
    n.onclick = function () { window.focus(); open(d.session_id); };
  }

  // ---------------------------------------------------------------- conversation
  function open(id) {
    current = id;
    Array.prototype.forEach.call(document.querySelectorAll("#queue li"), function (li) {
      li.setAttribute("aria-selected", String(li.getAttribute("data-id") === id));
    });
    $("empty").hidden = true;
    $("conversation").hidden = false;
    $("conversation").setAttribute("data-id", id);
    $("messages").textContent = "";
    hideTyping();
    loadConversation();
    followConversation(id);
  }

  function scheduleConversation() {
    clearTimeout(convTimer);
    convTimer = setTimeout(loadConversation, 100);
  }

  function loadConversation() {
    var id = current;
    if (!id) return Promise.resolve();
    return api("GET", "/v1/inbox/sessions/" + id).then(json).then(function (c) {
      if (id === current) renderConversation(c);
    }, function (e) { showError(e.message); });
  }

  // The conversation's own events: a customer message the bot is answering (the agent may jump
  // in: claiming aborts the answer), the AI's text as it streams, and anything new.
  function followConversation(id) {
    if (convStream) convStream.close();
    var es = convStream = new EventSource("/v1/inbox/sessions/" + id + "/events");
    var parts = {};
    es.addEventListener("token", function (ev) {
      var t; try { t = JSON.parse(ev.data); } catch (e) { return; }
      parts[t.message_id] = (parts[t.message_id] || "") + (t.text || "");
      showTyping(parts[t.message_id]);
    });
    ["message", "done", "aborted", "handoff", "agent_joined"].forEach(function (kind) {
      es.addEventListener(kind, function (ev) {
        if (ev.data === undefined) return;
        var d; try { d = JSON.parse(ev.data); } catch (e) { d = {}; }
        var answering = kind === "message" && d.sender === "customer" && currentData &&
          currentData.session.status === "ai_handled";
        if (answering) showTyping("");
        else if (kind !== "message" || d.sender !== "customer") { hideTyping(); parts = {}; }
        if (id === current) scheduleConversation();
      });
    });
  }

  function showTyping(text) {
    $("ai-typing").hidden = false;
    $("ai-partial").textContent = text;
  }

  function hideTyping() {
    $("ai-typing").hidden = true;
    $("ai-partial").textContent = "";
  }

  var URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/g;
  function renderText(node, text) {
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
    var a = el("a", null, label);
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  function renderConversation(c) {
    currentData = c;
    var s = c.session;
    $("conv-title").textContent = contactName(s.contact) + " · " + channelName(s.channel.type);
    $("conversation").setAttribute("data-status", s.status);
    var meta = STATUS[s.status] || s.status;
    if (s.assignee) meta += " · " + (s.assignee.name || "agent");
    if (s.waiting_since) meta += " · waiting since " + new Date(s.waiting_since).toLocaleTimeString();
    if (s.resolution) meta += " · " + s.resolution.replace(/_/g, " ");
    if (c.csat && c.csat.score) meta += " · CSAT " + c.csat.score + "/5";
    $("conv-meta").textContent = meta;

    // handoff context
    var h = c.handoff || {};
    $("handoff-summary").textContent = h.summary || "";
    var facts = $("handoff-facts");
    facts.textContent = "";
    function fact(k, v) { if (!v) return; facts.appendChild(el("dt", null, k)); facts.appendChild(el("dd", null, v)); }
    if (h.trigger) fact("Trigger", h.trigger.reason + " (" + h.trigger.priority + " priority" +
                         (h.trigger.signal ? ", " + h.trigger.signal : "") + ")");
    fact("Question", h.question);
    if (h.contact) fact("Contact", [h.contact.name, h.contact.email, h.contact.phone].filter(Boolean).join(", "));

    // labels
    var labels = $("labels");
    labels.textContent = "";
    (s.labels || []).forEach(function (l) {
      var li = el("li", null, l);
      li.setAttribute("data-label", l);
      if (canWrite()) {
        var x = el("button", null, "×");
        x.type = "button";
        x.setAttribute("aria-label", "Remove label " + l);
        x.addEventListener("click", function () {
          api("DELETE", "/v1/inbox/sessions/" + s.id + "/labels/" + encodeURIComponent(l)).then(json)
            .then(loadConversation, function (e) { showError(e.message); });
        });
        li.appendChild(x);
      }
      labels.appendChild(li);
    });

    // messages and notes, in time order
    var items = c.messages.map(function (m) { return { at: m.created_at, m: m }; })
      .concat(c.notes.map(function (n) { return { at: n.created_at, n: n }; }));
    items.sort(function (a, b) { return Date.parse(a.at) - Date.parse(b.at); });
    var ol = $("messages");
    ol.textContent = "";
    items.forEach(function (it) { ol.appendChild(it.m ? messageItem(it.m) : noteItem(it.n)); });
    ol.scrollTop = ol.scrollHeight;

    // actions for this state
    if (canWrite()) {
      $("claim").hidden = s.status === "closed" || (s.status === "human_assigned" && s.assignee && s.assignee.id === me.user_id);
      $("hand-back").hidden = s.status === "ai_handled" || s.status === "closed";
      $("close").hidden = $("resolution").hidden = s.status === "closed";
    }
  }

  function messageItem(m) {
    var li = el("li", "msg " + m.sender);
    li.setAttribute("data-id", m.id);
    li.setAttribute("data-sender", m.sender);
    var name = m.sender === "agent" ? (m.agent_name || "Agent") : m.sender === "ai" ? "AI"
      : m.sender === "customer" ? "Customer" : "System";
    li.appendChild(el("span", "name", name));
    var text = el("span", "text");
    renderText(text, m.text);
    li.appendChild(text);
    if (m.sender === "customer" && m.status === "inbox") li.appendChild(el("span", "state", " · waiting for an agent"));
    var sources = (m.sources || []).filter(function (x) { return x && x.source; });
    if (sources.length) {
      var ul = el("ul", "sources");
      ul.setAttribute("aria-label", "Sources");
      sources.forEach(function (x) {
        var item = el("li");
        var label = (x.title || x.source) + (x.page ? " (page " + x.page + ")" : "");
        if (/^https?:\/\//.test(x.source)) item.appendChild(link(x.source, label));
        else item.textContent = label;
        if (x.snippet) item.title = x.snippet;
        ul.appendChild(item);
      });
      li.appendChild(ul);
    }
    return li;
  }

  function noteItem(n) {
    var li = el("li", "msg note");
    li.setAttribute("data-note", n.id);
    li.appendChild(el("span", "name", "Private note · " + (n.author_name || "agent")));
    var text = el("span", "text");
    renderText(text, n.text);
    li.appendChild(text);
    return li;
  }

  function showError(text) {
    var e = $("conv-error");
    e.textContent = text;
    e.hidden = !text;
    if (text) setTimeout(function () { e.hidden = true; }, 6000);
  }

  function act(method, suffix, body) {
    var id = current;
    return api(method, "/v1/inbox/sessions/" + id + suffix, body).then(json).then(function (out) {
      showError("");
      scheduleConversation();
      scheduleQueue();
      return out;
    }, function (e) { showError(e.message); throw e; });
  }

  if ($("claim")) {
    $("claim").addEventListener("click", function () { act("POST", "/claim").catch(function () {}); });
    $("hand-back").addEventListener("click", function () { act("POST", "/hand-back").catch(function () {}); });
    $("close").addEventListener("click", function () {
      var r = $("resolution").value;
      act("POST", "/close", r ? { resolution: r } : {}).catch(function () {});
    });
    $("label-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var v = $("label-input").value.trim();
      if (!v) return;
      act("POST", "/labels", { label: v }).then(function () { $("label-input").value = ""; }, function () {});
    });
    $("reply-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var input = $("reply-input"), text = input.value.trim();
      if (!text || !current) return;
      $("reply").disabled = true;
      act("POST", "/reply", { text: text }).then(function () { input.value = ""; }, function () {})
        .then(function () { $("reply").disabled = false; });
    });
    $("add-note").addEventListener("click", function () {
      var input = $("reply-input"), text = input.value.trim();
      if (!text || !current) return;
      act("POST", "/notes", { text: text }).then(function () { input.value = ""; }, function () {});
    });
    $("reply-input").addEventListener("input", suggest);
    $("reply-input").addEventListener("keydown", function (ev) {
      if (!$("canned").hidden && suggestions.length) {
        if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
          ev.preventDefault();
          picked = (picked + (ev.key === "ArrowDown" ? 1 : suggestions.length - 1)) % suggestions.length;
          drawSuggestions();
          return;
        }
        if (ev.key === "Tab" || ev.key === "Enter") { ev.preventDefault(); expand(suggestions[picked]); return; }
        if (ev.key === "Escape") { $("canned").hidden = true; return; }
      }
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); $("reply-form").requestSubmit(); }
    });
  }

  // ---------------------------------------------------------------- canned responses
  // "/refund" typed at the start of the reply box offers the canned responses whose shortcut
  // starts so; Tab, Enter or a click expands the chosen one in place.
  function suggest() {
    var v = $("reply-input").value, m = /^\/([a-z0-9_-]*)$/.exec(v);
    suggestions = m ? canned.filter(function (c) { return c.shortcut.indexOf(m[1]) === 0; }) : [];
    picked = 0;
    drawSuggestions();
  }

  function drawSuggestions() {
    var ul = $("canned");
    ul.textContent = "";
    suggestions.forEach(function (c, i) {
      var li = el("li");
      li.setAttribute("role", "option");
      li.setAttribute("data-shortcut", c.shortcut);
      li.setAttribute("aria-selected", String(i === picked));
      li.appendChild(el("span", "sc", "/" + c.shortcut));
      li.appendChild(el("span", null, c.title));
      li.addEventListener("mousedown", function (ev) { ev.preventDefault(); expand(c); });
      ul.appendChild(li);
    });
    ul.hidden = !suggestions.length;
  }

  function expand(c) {
    var input = $("reply-input");
    input.value = c.text;
    suggestions = [];
    $("canned").hidden = true;
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  // ---------------------------------------------------------------- views and the dashboard
  function showView(name) {
    $("inbox-view").hidden = name !== "inbox";
    $("dashboard-view").hidden = name !== "dashboard";
    $("tab-inbox").setAttribute("aria-pressed", String(name === "inbox"));
    $("tab-dashboard").setAttribute("aria-pressed", String(name === "dashboard"));
    if (name === "dashboard" && !dashboardMounted && window.ChatEngineDashboard) {
      dashboardMounted = true;
      window.ChatEngineDashboard.mount($("dashboard"), {
        fetch: function (path, init) {
          init = init || {};
          var headers = init.headers || {};
          if (init.method && init.method !== "GET") headers["X-CSRF-Token"] = csrf;
          return fetch(path, Object.assign({}, init, { headers: headers, credentials: "same-origin" }));
        },
        user: { id: me.user_id, name: me.name, role: me.role },
      });
    }
  }
  $("tab-inbox").addEventListener("click", function () { showView("inbox"); });
  $("tab-dashboard").addEventListener("click", function () { showView("dashboard"); });

  // The owner's dashboard ships separately (/widget/dashboard.js); its tab shows only once the
  // script has loaded and defined window.ChatEngineDashboard.
  function loadDashboard() {
    if (document.querySelector("script[data-dashboard]")) return;
    var css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = "/widget/dashboard.css";
    css.onerror = function () { css.remove(); };
    document.head.appendChild(css);
    var s = document.createElement("script");
    s.src = "/widget/dashboard.js";
    s.setAttribute("data-dashboard", "1");
    s.onload = function () { if (window.ChatEngineDashboard) $("tab-dashboard").hidden = false; };
    s.onerror = function () { s.remove(); };
    document.body.appendChild(s);
  }

  // ---------------------------------------------------------------- boot
  fetch("/v1/auth/me", { credentials: "same-origin" }).then(function (res) {
    if (!res.ok) throw res;
    return res.json();
  }).then(function (who) {
    if (!who.csrf_token) throw new Error("no cookie");
    start(who);
  }).catch(showLogin);
})();
