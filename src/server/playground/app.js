// pagedllm playground (browser side). Chats with the served model through POST /v1/chat/completions with
// `stream: true` (SSE, read from the fetch body; Stop aborts the fetch, which makes the server abort the engine
// request), shows the model id from GET /v1/models, and polls GET /metrics every second for the engine numbers
// (tokens/s is the delta of the vllm:generation_tokens_total counter over the wall time between two polls).
// Plain JavaScript, no dependencies, no external requests; the server inlines it into the page.
'use strict';

(() => {
  const STORAGE_KEY = 'pagedllm.playground.apiKey';
  const SETTINGS_KEY = 'pagedllm.playground.settings';
  const METRICS_INTERVAL_MS = 1000;
  const CHART_POINTS = 60;

  const $ = (id) => /** @type {any} */ (document.getElementById(id));
  const ui = {
    apiKey: $('api-key'),
    modelName: $('model-name'),
    connDot: $('conn-dot'),
    messages: $('messages'),
    emptyHint: $('empty-hint'),
    composer: $('composer'),
    prompt: $('prompt'),
    send: $('send'),
    stop: $('stop'),
    clear: $('clear'),
    temperature: $('temperature'),
    temperatureValue: $('temperature-value'),
    maxTokens: $('max-tokens'),
    systemPrompt: $('system-prompt'),
    running: $('stat-running'),
    waiting: $('stat-waiting'),
    kv: $('stat-kv'),
    kvBar: $('kv-bar'),
    tps: $('stat-tps'),
    tpsChart: $('tps-chart'),
    metricsStatus: $('metrics-status'),
    stats: $('stats'),
  };

  const state = {
    model: /** @type {string|null} */ (null),
    modelLoading: false,
    modelReload: false,
    modelTriedAt: 0,
    history: /** @type {{role: string, content: string}[]} */ ([]),
    controller: /** @type {AbortController|null} */ (null),
    lastCounter: /** @type {{value: number, at: number}|null} */ (null),
    tpsHistory: /** @type {number[]} */ ([]),
  };

  // ---- storage (may be unavailable, e.g. in some private modes) ----
  function load(key) {
    try {
      return localStorage.getItem(key);
    } catch {
      return null;
    }
  }
  function store(key, value) {
    try {
      if (value === null || value === '') localStorage.removeItem(key);
      else localStorage.setItem(key, value);
    } catch {
      // not persisted; the page still works
    }
  }

  function authHeaders() {
    const key = ui.apiKey.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  /** The error message of a failed response: the OpenAI `{error: {message}}` body when there is one. */
  async function responseError(res) {
    let detail = '';
    try {
      const text = await res.text();
      try {
        const body = JSON.parse(text);
        detail = body?.error?.message ?? body?.message ?? text;
      } catch {
        detail = text;
      }
    } catch {
      // no body
    }
    const hint = res.status === 401 ? ' (set the API key at the top right)' : '';
    return `${res.status} ${res.statusText}${detail ? `: ${detail}` : ''}${hint}`;
  }

  // ---- model ----
  function showModel(text, problem) {
    ui.modelName.textContent = text;
    ui.modelName.classList.toggle('problem', problem);
    ui.modelName.title = text;
  }

  async function loadModel() {
    if (state.modelLoading) {
      // The key may have changed since that request left: ask again once it is back.
      state.modelReload = true;
      return;
    }
    state.modelLoading = true;
    state.modelTriedAt = Date.now();
    try {
      const res = await fetch('/v1/models', { headers: authHeaders(), signal: AbortSignal.timeout(5000) });
      if (res.status === 401) {
        state.model = null;
        showModel('API key required', true);
        return;
      }
      if (!res.ok) throw new Error(await responseError(res));
      const body = await res.json();
      const id = body?.data?.[0]?.id;
      if (typeof id !== 'string') throw new Error('no model listed');
      state.model = id;
      showModel(id, false);
    } catch (err) {
      state.model = null;
      showModel(`unavailable (${err instanceof Error ? err.message : String(err)})`, true);
    } finally {
      state.modelLoading = false;
      if (state.modelReload) {
        state.modelReload = false;
        void loadModel();
      }
    }
  }

  // ---- metrics ----
  /** Parses Prometheus text exposition into samples: {name, labels, value}. */
  function parseMetrics(text) {
    const samples = [];
    const lineRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const line of text.split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      const m = lineRe.exec(line);
      if (!m) continue;
      const labels = {};
      for (const l of (m[2] ?? '').matchAll(labelRe)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      const value = Number(m[3]);
      if (!Number.isNaN(value)) samples.push({ name: m[1], labels, value });
    }
    return samples;
  }

  /** Sum of a metric's samples for this page's model (all samples when the model is unknown); null when absent. */
  function metric(samples, name) {
    let total = null;
    for (const s of samples) {
      if (s.name !== name) continue;
      if (state.model !== null && s.labels.model_name !== undefined && s.labels.model_name !== state.model) continue;
      total = (total ?? 0) + s.value;
    }
    return total;
  }

  function formatCount(v) {
    return v === null ? '–' : String(Math.round(v));
  }

  function renderTpsChart() {
    const canvas = ui.tpsChart;
    const ctx = canvas.getContext('2d');
    if (!ctx) return;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width;
    const h = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
    if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const points = state.tpsHistory;
    if (points.length < 2) return;
    const max = Math.max(1, ...points);
    const step = w / (CHART_POINTS - 1);
    const x0 = w - (points.length - 1) * step;
    const accent = getComputedStyle(document.documentElement).getPropertyValue('--accent').trim() || '#2f6fed';
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = x0 + i * step;
      const y = h - 2 - (p / max) * (h - 4);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = accent;
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(x0 + (points.length - 1) * step, h);
    ctx.lineTo(x0, h);
    ctx.closePath();
    ctx.globalAlpha = 0.15;
    ctx.fillStyle = accent;
    ctx.fill();
    ctx.globalAlpha = 1;
  }

  function showMetrics(samples, at) {
    ui.running.textContent = formatCount(metric(samples, 'vllm:num_requests_running'));
    ui.waiting.textContent = formatCount(metric(samples, 'vllm:num_requests_waiting'));
    const kv = metric(samples, 'vllm:kv_cache_usage_perc');
    if (kv === null) {
      ui.kv.textContent = '–';
    } else {
      const pct = Math.min(100, Math.max(0, kv * 100));
      ui.kv.textContent = `${pct.toFixed(1)} %`;
      ui.kvBar.style.width = `${pct}%`;
    }
    const counter = metric(samples, 'vllm:generation_tokens_total');
    if (counter === null) {
      ui.tps.textContent = '–';
      state.lastCounter = null;
      return;
    }
    const prev = state.lastCounter;
    state.lastCounter = { value: counter, at };
    // A counter that went down means the server restarted: start over from this sample.
    if (prev === null || counter < prev.value || at <= prev.at) return;
    const tps = ((counter - prev.value) * 1000) / (at - prev.at);
    ui.tps.textContent = tps.toFixed(1);
    state.tpsHistory.push(tps);
    if (state.tpsHistory.length > CHART_POINTS) state.tpsHistory.shift();
    renderTpsChart();
  }

  async function pollMetrics() {
    try {
      const res = await fetch('/metrics', { headers: authHeaders(), cache: 'no-store', signal: AbortSignal.timeout(3000) });
      if (!res.ok) throw new Error(`${res.status}`);
      const text = await res.text();
      showMetrics(parseMetrics(text), performance.now());
      ui.connDot.className = 'dot ok';
      ui.metricsStatus.textContent = '';
      ui.stats.classList.remove('stale');
    } catch (err) {
      ui.connDot.className = 'dot bad';
      ui.stats.classList.add('stale');
      ui.metricsStatus.textContent = `· metrics unavailable (${err instanceof Error ? err.message : String(err)})`;
      state.lastCounter = null;
    }
    if (state.model === null && !state.modelLoading && Date.now() - state.modelTriedAt > 3000) void loadModel();
    setTimeout(pollMetrics, METRICS_INTERVAL_MS);
  }

  // ---- chat ----
  function scrolledToBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }
  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  /** Appends a message bubble; returns its parts. */
  function addMessage(role, content) {
    ui.emptyHint.hidden = true;
    const article = document.createElement('article');
    article.className = `message ${role}`;
    const who = document.createElement('div');
    who.className = 'role';
    who.textContent = role === 'user' ? 'You' : (state.model ?? 'assistant');
    const text = document.createElement('div');
    text.className = 'text';
    text.textContent = content;
    const meta = document.createElement('div');
    meta.className = 'meta';
    article.append(who, text, meta);
    ui.messages.append(article);
    scrollToBottom();
    return { article, text, meta };
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.disabled = !busy;
    ui.clear.disabled = busy;
    ui.messages.setAttribute('aria-busy', String(busy));
  }

  /** Yields the `data:` payload of each server-sent event in a fetch body. */
  async function* sseEvents(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let nl;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, '');
          buffer = buffer.slice(nl + 1);
          if (line === '') {
            if (data.length > 0) yield data.join('\n');
            data = [];
          } else if (line.startsWith('data:')) {
            data.push(line.slice(5).replace(/^ /, ''));
          }
        }
      }
      if (data.length > 0) yield data.join('\n');
    } finally {
      reader.releaseLock();
    }
  }

  function readSettings() {
    const temperature = Number(ui.temperature.value);
    const maxTokens = Math.max(1, Math.floor(Number(ui.maxTokens.value) || 1));
    return { temperature, maxTokens, system: ui.systemPrompt.value.trim() };
  }

  async function send() {
    const content = ui.prompt.value.trim();
    if (content === '' || state.controller !== null) return;
    if (state.model === null) await loadModel();
    const { temperature, maxTokens, system } = readSettings();

    const userMsg = { role: 'user', content };
    state.history.push(userMsg);
    const user = addMessage('user', content);
    ui.prompt.value = '';
    const reply = addMessage('assistant', '');
    reply.article.classList.add('streaming');

    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    const messages = system ? [{ role: 'system', content: system }, ...state.history] : [...state.history];
    const body = {
      messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature,
      max_tokens: maxTokens,
    };
    if (state.model !== null) body.model = state.model;

    let text = '';
    let usage = null;
    let finishReason = null;
    let firstTokenAt = null;
    const startedAt = performance.now();
    try {
      const res = await fetch('/v1/chat/completions', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream', ...authHeaders() },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      if (!res.ok || res.body === null) throw new Error(await responseError(res));
      for await (const data of sseEvents(res.body)) {
        if (data === '[DONE]') break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message ?? 'the server reported an error');
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices?.[0];
        if (!choice) continue;
        const piece = choice.delta?.content;
        if (typeof piece === 'string' && piece !== '') {
          firstTokenAt ??= performance.now();
          const follow = scrolledToBottom();
          text += piece;
          reply.text.textContent = text;
          if (follow) scrollToBottom();
        }
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
      state.history.push({ role: 'assistant', content: text });
      reply.meta.textContent = describeReply(usage, finishReason, startedAt, firstTokenAt);
    } catch (err) {
      if (controller.signal.aborted) {
        // Keep what arrived; the partial reply stays in the conversation.
        state.history.push({ role: 'assistant', content: text });
        reply.meta.textContent = 'stopped';
      } else {
        const message = err instanceof Error ? err.message : String(err);
        if (text === '') {
          // Nothing came back: take the question out of the conversation so it can be sent again.
          state.history.splice(state.history.indexOf(userMsg), 1);
          user.article.classList.add('failed');
          reply.article.remove();
          user.meta.textContent = `not sent: ${message}`;
          user.meta.classList.add('error');
          if (ui.prompt.value === '') ui.prompt.value = content;
        } else {
          state.history.push({ role: 'assistant', content: text });
          reply.meta.textContent = `error: ${message}`;
          reply.meta.classList.add('error');
        }
      }
    } finally {
      reply.article.classList.remove('streaming');
      state.controller = null;
      setBusy(false);
      ui.prompt.focus();
    }
  }

  function describeReply(usage, finishReason, startedAt, firstTokenAt) {
    const parts = [];
    const elapsed = (performance.now() - startedAt) / 1000;
    if (usage?.completion_tokens !== undefined) {
      parts.push(`${usage.completion_tokens} tokens`);
      const genTime = firstTokenAt === null ? elapsed : (performance.now() - firstTokenAt) / 1000;
      if (usage.completion_tokens > 1 && genTime > 0) parts.push(`${(usage.completion_tokens / genTime).toFixed(1)} tok/s`);
    }
    if (firstTokenAt !== null) parts.push(`first token ${Math.round(firstTokenAt - startedAt)} ms`);
    parts.push(`${elapsed.toFixed(1)} s`);
    if (finishReason) parts.push(`finish: ${finishReason}`);
    return parts.join(' · ');
  }

  function stop() {
    state.controller?.abort();
  }

  function clearChat() {
    if (state.controller !== null) return;
    state.history = [];
    for (const el of [...ui.messages.querySelectorAll('.message')]) el.remove();
    ui.emptyHint.hidden = false;
    ui.prompt.focus();
  }

  // ---- settings ----
  function saveSettings() {
    const s = readSettings();
    store(SETTINGS_KEY, JSON.stringify({ temperature: s.temperature, maxTokens: s.maxTokens, system: ui.systemPrompt.value }));
  }
  function restoreSettings() {
    ui.apiKey.value = load(STORAGE_KEY) ?? '';
    try {
      const s = JSON.parse(load(SETTINGS_KEY) ?? 'null');
      if (s && typeof s === 'object') {
        if (typeof s.temperature === 'number') ui.temperature.value = String(s.temperature);
        if (typeof s.maxTokens === 'number') ui.maxTokens.value = String(s.maxTokens);
        if (typeof s.system === 'string') ui.systemPrompt.value = s.system;
      }
    } catch {
      // ignore unreadable settings
    }
    ui.temperatureValue.textContent = Number(ui.temperature.value).toFixed(2);
  }

  // ---- wiring ----
  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    void send();
  });
  ui.prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      void send();
    }
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') stop();
  });
  ui.stop.addEventListener('click', stop);
  ui.clear.addEventListener('click', clearChat);
  ui.temperature.addEventListener('input', () => {
    ui.temperatureValue.textContent = Number(ui.temperature.value).toFixed(2);
    saveSettings();
  });
  ui.maxTokens.addEventListener('change', saveSettings);
  ui.systemPrompt.addEventListener('change', saveSettings);
  let keyTimer = 0;
  const keyChanged = () => {
    clearTimeout(keyTimer);
    store(STORAGE_KEY, ui.apiKey.value.trim());
    void loadModel();
  };
  ui.apiKey.addEventListener('change', keyChanged);
  ui.apiKey.addEventListener('input', () => {
    clearTimeout(keyTimer);
    keyTimer = setTimeout(keyChanged, 400);
  });

  restoreSettings();
  setBusy(false);
  void loadModel();
  void pollMetrics();
  ui.prompt.focus();
})();
