/* chat-engine: the owner's dashboard. window.ChatEngineDashboard.mount(element, options) renders
 * the analytics of GET /v1/analytics (totals, per channel, daily stacked bars, the lead funnel,
 * CSAT) and the unanswered questions of GET /v1/analytics/unanswered with an "Add to knowledge
 * base" form per cluster (POST /v1/analytics/unanswered/add-to-kb).
 *
 * options: fetch(url, init) -> Promise<Response> (default: window.fetch with same-origin
 * credentials; the inbox page passes one adding its CSRF header), base (API base URL, default ""),
 * from / to ("YYYY-MM-DD", default the last 7 days), channel (a channel type), chartSrc (Chart.js,
 * default base + "/widget/vendor/chart.umd.min.js", loaded when window.Chart is missing).
 * Returns {refresh(), destroy()}.
 *
 * CSP-compatible (script-src 'self', style-src 'self'): no eval, no inline handlers, styles only
 * through the CSSOM (element.style), text only as text nodes (nothing from the API is parsed as
 * HTML), charts drawn by the vendored Chart.js on canvases. */
(function () {
  "use strict";

  // The outcome stack; colours match runtime/analytics/chart.py.
  var STACK = [
    ["handled_by_ai", "Handled by AI", "#2563eb"],
    ["resolved_by_human", "Resolved by a human", "#16a34a"],
    ["other", "With a human / handed back", "#f59e0b"],
    ["abandoned", "Abandoned", "#9ca3af"]
  ];
  var LEADS = "#db2777";
  var CHANNELS = ["", "widget", "whatsapp", "telegram", "email", "sms", "slack"];
  var chartLoading = null;

  function el(tag, style, text) {
    var node = document.createElement(tag);
    if (style) Object.assign(node.style, style);
    if (text != null) node.textContent = String(text);
    return node;
  }

  function isoDay(d) { return d.toISOString().slice(0, 10); }

  function seconds(v) {
    if (v == null) return "–";
    if (v < 120) return v.toFixed(1) + " s";
    return v < 7200 ? (v / 60).toFixed(1) + " min" : (v / 3600).toFixed(1) + " h";
  }

  function rate(v) { return v == null ? "–" : (v * 100).toFixed(1) + "%"; }

  function loadChart(src) {
    if (window.Chart) return Promise.resolve(window.Chart);
    if (!chartLoading) {
      chartLoading = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = src;
        s.addEventListener("load", function () { resolve(window.Chart); });
        s.addEventListener("error", function () { chartLoading = null; reject(new Error("chart library")); });
        document.head.appendChild(s);
      });
    }
    return chartLoading;
  }

  function mount(root, options) {
    var opts = options || {};
    var base = opts.base || "";
    var doFetch = opts.fetch || function (url, init) {
      return window.fetch(url, Object.assign({ credentials: "same-origin" }, init || {}));
    };
    var charts = [];
    var today = new Date();
    var state = {
      from: opts.from || isoDay(new Date(today.getTime() - 6 * 86400000)),
      to: opts.to || isoDay(today),
      channel: opts.channel || ""
    };

    root.textContent = "";
    var box = el("div", { font: "14px system-ui, sans-serif", color: "#111827", display: "grid", gap: "16px" });
    box.className = "ce-dashboard";
    root.appendChild(box);

    // controls
    var controls = el("form", { display: "flex", gap: "8px", alignItems: "end", flexWrap: "wrap" });
    function field(label, input) {
      var l = el("label", { display: "grid", gap: "2px", fontSize: "12px", color: "#4b5563" }, label);
      l.appendChild(input);
      controls.appendChild(l);
      return input;
    }
    var fromIn = field("From", el("input"));
    fromIn.type = "date"; fromIn.name = "from"; fromIn.value = state.from;
    var toIn = field("To", el("input"));
    toIn.type = "date"; toIn.name = "to"; toIn.value = state.to;
    var chSel = field("Channel", el("select"));
    chSel.name = "channel";
    CHANNELS.forEach(function (c) {
      var o = el("option", null, c || "all channels");
      o.value = c;
      chSel.appendChild(o);
    });
    chSel.value = state.channel;
    var go = el("button", null, "Show");
    go.type = "submit";
    controls.appendChild(go);
    controls.addEventListener("submit", function (ev) {
      ev.preventDefault();
      state.from = fromIn.value; state.to = toIn.value; state.channel = chSel.value;
      refresh();
    });
    box.appendChild(controls);

    var status = el("div", { color: "#b91c1c" });
    status.className = "ce-dash-status";
    status.setAttribute("role", "status");
    box.appendChild(status);
    var cards = el("div", { display: "grid", gridTemplateColumns: "repeat(auto-fill, minmax(150px, 1fr))", gap: "8px" });
    cards.className = "ce-dash-totals";
    box.appendChild(cards);
    var daily = section("Conversations per day");
    var dailyCanvas = canvasIn(daily, 280);
    dailyCanvas.className = "ce-dash-daily";
    var row = el("div", { display: "grid", gridTemplateColumns: "repeat(auto-fit, minmax(280px, 1fr))", gap: "16px" });
    box.appendChild(row);
    var funnel = section("Lead funnel", row);
    var funnelCanvas = canvasIn(funnel, 220);
    funnelCanvas.className = "ce-dash-funnel";
    var csat = section("Customer satisfaction", row);
    var csatLine = el("div", { marginBottom: "4px" });
    csatLine.className = "ce-dash-csat";
    csat.appendChild(csatLine);
    var csatCanvas = canvasIn(csat, 190);
    var perChannel = section("Per channel");
    var table = el("table", { borderCollapse: "collapse", width: "100%" });
    table.className = "ce-dash-channels";
    perChannel.appendChild(table);
    var unanswered = section("Top unanswered questions");
    var clusterList = el("div", { display: "grid", gap: "10px" });
    clusterList.className = "ce-dash-unanswered";
    unanswered.appendChild(clusterList);

    function section(title, parent) {
      var s = el("section", { border: "1px solid #e5e7eb", borderRadius: "8px", padding: "12px" });
      s.appendChild(el("h3", { margin: "0 0 8px", fontSize: "15px" }, title));
      (parent || box).appendChild(s);
      return s;
    }

    function canvasIn(parent, height) {
      var wrap = el("div", { position: "relative", height: height + "px" });
      var c = el("canvas");
      wrap.appendChild(c);
      parent.appendChild(wrap);
      return c;
    }

    function api(path, init) {
      return doFetch(base + path, init).then(function (res) {
        return res.json().catch(function () { return {}; }).then(function (body) {
          if (!res.ok) {
            var e = (body && body.error) || {};
            var err = new Error(e.message || ("HTTP " + res.status));
            err.status = res.status;
            throw err;
          }
          return body;
        });
      });
    }

    function query() {
      var q = "?from=" + encodeURIComponent(state.from) + "&to=" + encodeURIComponent(state.to);
      return state.channel ? q + "&channel=" + encodeURIComponent(state.channel) : q;
    }

    function card(label, value, hint) {
      var c = el("div", { border: "1px solid #e5e7eb", borderRadius: "8px", padding: "8px 10px" });
      c.appendChild(el("div", { fontSize: "12px", color: "#6b7280" }, label));
      var v = el("div", { fontSize: "22px", fontWeight: "600" }, value);
      v.setAttribute("data-figure", label);
      c.appendChild(v);
      if (hint) c.appendChild(el("div", { fontSize: "11px", color: "#6b7280" }, hint));
      cards.appendChild(c);
    }

    function drawChart(canvas, config) {
      var C = window.Chart;
      var old = C.getChart(canvas);
      if (old) old.destroy();
      var chart = new C(canvas, config);
      charts.push(chart);
      return chart;
    }

    function render(a) {
      var t = a.totals;
      cards.textContent = "";
      card("Conversations", t.conversations);
      card("Handled by AI", t.handled_by_ai);
      card("Escalated", t.escalated, "handoff rate " + rate(t.handoff_rate));
      card("Resolved by a human", t.resolved_by_human);
      card("Abandoned", t.abandoned);
      card("Leads", t.leads);
      card("AI first response", seconds(t.ai_first_response.p50_s), "p90 " + seconds(t.ai_first_response.p90_s));
      card("Human first response", seconds(t.human_first_response.p50_s),
        "p90 " + seconds(t.human_first_response.p90_s));
      charts.forEach(function (c) { c.destroy(); });
      charts = [];
      var labels = a.daily.map(function (d) { return d.day; });
      var sets = STACK.map(function (s) {
        return { type: "bar", label: s[1], backgroundColor: s[2], stack: "outcome", order: 1,
                 data: a.daily.map(function (d) { return d[s[0]]; }) };
      });
      // order 0: the leads line is drawn over the bars
      sets.push({ type: "line", label: "Leads", borderColor: LEADS, backgroundColor: LEADS, order: 0, stack: "leads",
                  data: a.daily.map(function (d) { return d.leads; }) });
      drawChart(dailyCanvas, {
        type: "bar", data: { labels: labels, datasets: sets },
        options: { maintainAspectRatio: false, animation: false,
                   scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } }
      });
      var f = t.funnel;
      drawChart(funnelCanvas, {
        type: "bar",
        data: { labels: ["Visitors", "Chatted", "Email captured", "Leads"],
                datasets: [{ label: "sessions", backgroundColor: ["#93c5fd", "#60a5fa", "#3b82f6", LEADS],
                             data: [f.visitors, f.chatted, f.email_captured, f.leads] }] },
        options: { indexAxis: "y", maintainAspectRatio: false, animation: false,
                   plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } }
      });
      csatLine.textContent = t.csat.average == null ? "No answers yet"
        : "Average " + t.csat.average.toFixed(2) + " of 5 (" + t.csat.responses + " answers)";
      drawChart(csatCanvas, {
        type: "bar",
        data: { labels: ["1", "2", "3", "4", "5"],
                datasets: [{ label: "answers", backgroundColor: ["#ef4444", "#f97316", "#eab308", "#84cc16", "#22c55e"],
                             data: ["1", "2", "3", "4", "5"].map(function (k) { return t.csat.distribution[k] || 0; }) }] },
        options: { maintainAspectRatio: false, animation: false, plugins: { legend: { display: false } },
                   scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
      });
      renderTable([t].concat(a.channels));
    }

    function renderTable(cols) {
      table.textContent = "";
      var head = el("tr");
      head.appendChild(el("th", { textAlign: "left" }, ""));
      cols.forEach(function (c) { head.appendChild(el("th", { textAlign: "right", padding: "2px 8px" }, c.channel || "total")); });
      table.appendChild(head);
      [["Conversations", function (c) { return c.conversations; }],
       ["Handled by AI", function (c) { return c.handled_by_ai; }],
       ["Escalated", function (c) { return c.escalated; }],
       ["Handoff rate", function (c) { return rate(c.handoff_rate); }],
       ["Resolved by a human", function (c) { return c.resolved_by_human; }],
       ["Abandoned", function (c) { return c.abandoned; }],
       ["Leads", function (c) { return c.leads; }],
       ["AI first response p50 / p90", function (c) {
         return seconds(c.ai_first_response.p50_s) + " / " + seconds(c.ai_first_response.p90_s); }],
       ["Human first response p50 / p90", function (c) {
         return seconds(c.human_first_response.p50_s) + " / " + seconds(c.human_first_response.p90_s); }],
       ["CSAT", function (c) { return c.csat.average == null ? "–" : c.csat.average.toFixed(2); }]
      ].forEach(function (r) {
        var tr = el("tr", { borderTop: "1px solid #f3f4f6" });
        tr.appendChild(el("td", null, r[0]));
        cols.forEach(function (c) { tr.appendChild(el("td", { textAlign: "right", padding: "2px 8px" }, r[1](c))); });
        table.appendChild(tr);
      });
    }

    function renderClusters(body) {
      clusterList.textContent = "";
      if (!body.clusters.length) {
        clusterList.appendChild(el("div", { color: "#6b7280" }, "Nothing unanswered in this range."));
        return;
      }
      body.clusters.forEach(function (c) {
        var item = el("div", { border: "1px solid #e5e7eb", borderRadius: "6px", padding: "8px" });
        item.className = "ce-dash-cluster";
        var title = el("div", { fontWeight: "600" }, c.question);
        title.className = "ce-dash-question";
        item.appendChild(title);
        item.appendChild(el("div", { fontSize: "12px", color: "#6b7280" },
          "asked " + c.count + "× (" + c.escalations + " not answered, " + c.weak_answers + " weakly answered)"));
        var others = c.examples.filter(function (e) { return e !== c.question; });
        if (others.length) item.appendChild(el("div", { fontSize: "12px", color: "#374151" }, "Also: " + others.join(" · ")));
        var form = el("form", { display: "grid", gap: "4px", marginTop: "6px" });
        var q = el("input");
        q.name = "question"; q.value = c.question; q.maxLength = 1000; q.required = true;
        var answer = el("textarea");
        answer.name = "answer"; answer.rows = 3; answer.maxLength = 20000; answer.required = true;
        answer.placeholder = "The answer the bot should give";
        var add = el("button", { justifySelf: "start" }, "Add to knowledge base");
        add.type = "submit";
        var note = el("span", { fontSize: "12px" });
        form.appendChild(q); form.appendChild(answer); form.appendChild(add); form.appendChild(note);
        form.addEventListener("submit", function (ev) {
          ev.preventDefault();
          if (!answer.value.trim() || !q.value.trim()) { note.textContent = "Write the question and its answer."; return; }
          add.disabled = true;
          note.textContent = "Adding…";
          api("/v1/analytics/unanswered/add-to-kb", {
            method: "POST", headers: { "content-type": "application/json" },
            body: JSON.stringify({ question: q.value.trim(), answer: answer.value.trim(),
                                   escalation_ids: c.escalation_ids, message_ids: c.message_ids })
          }).then(function () {
            note.textContent = "Added: the bot answers it from now on.";
            return loadUnanswered();
          }).catch(function (e) {
            add.disabled = false;
            note.textContent = "Not added: " + e.message;
          });
        });
        item.appendChild(form);
        clusterList.appendChild(item);
      });
    }

    function loadUnanswered() {
      return api("/v1/analytics/unanswered" + query()).then(renderClusters, function (e) {
        clusterList.textContent = "";
        clusterList.appendChild(el("div", { color: "#6b7280" }, e.status === 503
          ? "Clustering needs the embedding model: start the service with models." : "Could not load: " + e.message));
      });
    }

    function refresh() {
      status.textContent = "";
      root.setAttribute("aria-busy", "true");
      var figures = Promise.all([api("/v1/analytics" + query()), loadChart(opts.chartSrc || base + "/widget/vendor/chart.umd.min.js")])
        .then(function (r) { render(r[0]); }, function (e) { status.textContent = "Could not load the figures: " + e.message; });
      return Promise.all([figures, loadUnanswered()]).then(function () {
        root.removeAttribute("aria-busy");
        root.setAttribute("data-loaded", state.from + ".." + state.to);
      });
    }

    refresh();
    return {
      refresh: refresh,
      destroy: function () {
        charts.forEach(function (c) { c.destroy(); });
        charts = [];
        root.textContent = "";
      }
    };
  }

  window.ChatEngineDashboard = { mount: mount };
})();
