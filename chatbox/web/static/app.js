// chatbox browser client: the classic-chatbox v2 protocol (docs/PROTOCOL.md)
// plus its extensions (message ids, paged history). No build step: served as is.
//
// Replies are matched by type, and a reply to a `name` may overtake earlier
// `send` replies (docs/PROTOCOL.md, ordering), so this client keeps at most
// one `send` and one `get` in flight, where each reply is unambiguous.
// Every piece of user text reaches the page through textContent, never HTML.
"use strict";

(() => {
  const PAGE = 50;
  const TEXT = {
    en: {
      language: "Language", chat: "Chat", nickname: "Nickname", join: "Join",
      change: "Change", message: "Message", send: "Send", online: "Online",
      messages: "Messages", enterHint: "Enter to send, Shift+Enter for a new line",
      historyStart: "Beginning of the conversation", connect: "Connect",
      disconnect: "Disconnect", connecting: "Connecting…", connected: "Connected",
      disconnected: "Disconnected", reconnecting: (s) => `Connection lost, retrying in ${s} s…`,
      pickName: "Pick a nickname to start chatting.", you: "you",
      NameAlreadyUsed: "That nickname is taken.",
      WrongFormatName: "Nicknames are 1–100 visible characters.",
      RateLimited: (s) => `Too fast: wait ${s} s.`,
      WrongFormatContent: "Messages are 1–4000 characters.",
      UnknownRegister: "Pick a nickname first.",
      failedGeneric: (r) => `Failed: ${r}`,
      pending: "sending…", sent: "sent", failed: "not sent", retry: "Retry",
      lost: "connection lost",
      joined: (n) => `${n} joined`, left: (n) => `${n} left`,
      renamed: (a, b) => `${a} is now ${b}`,
      unread: (n) => `${n} new message${n === 1 ? "" : "s"} ↓`,
    },
    vi: {
      language: "Ngôn ngữ", chat: "Trò chuyện", nickname: "Biệt danh", join: "Tham gia",
      change: "Đổi tên", message: "Tin nhắn", send: "Gửi", online: "Trực tuyến",
      messages: "Tin nhắn", enterHint: "Enter để gửi, Shift+Enter để xuống dòng",
      historyStart: "Đầu cuộc trò chuyện", connect: "Kết nối",
      disconnect: "Ngắt kết nối", connecting: "Đang kết nối…", connected: "Đã kết nối",
      disconnected: "Đã ngắt kết nối", reconnecting: (s) => `Mất kết nối, thử lại sau ${s} giây…`,
      pickName: "Chọn một biệt danh để bắt đầu.", you: "bạn",
      NameAlreadyUsed: "Biệt danh này đã có người dùng.",
      WrongFormatName: "Biệt danh gồm 1–100 ký tự nhìn thấy được.",
      RateLimited: (s) => `Quá nhanh: chờ ${s} giây.`,
      WrongFormatContent: "Tin nhắn dài 1–4000 ký tự.",
      UnknownRegister: "Hãy chọn biệt danh trước.",
      failedGeneric: (r) => `Không thành công: ${r}`,
      pending: "đang gửi…", sent: "đã gửi", failed: "chưa gửi được", retry: "Gửi lại",
      lost: "mất kết nối",
      joined: (n) => `${n} đã tham gia`, left: (n) => `${n} đã rời đi`,
      renamed: (a, b) => `${a} đổi tên thành ${b}`,
      unread: (n) => `${n} tin nhắn mới ↓`,
    },
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"), connection: $("connection"), language: $("language"),
    nameForm: $("name-form"), name: $("name"), nameButton: $("name-button"),
    nameError: $("name-error"), messages: $("messages"), list: $("message-list"),
    historyStart: $("history-start"), unread: $("unread"), composer: $("composer"),
    content: $("content"), send: $("send"), onlineList: $("online-list"),
    onlineCount: $("online-count"),
  };

  const state = {
    lang: "en", ws: null, wanted: true, backoff: 1000, retryTimer: null,
    myName: null, askedName: null, pendingName: null, online: [],
    seen: new Set(), lastId: 0, oldestId: null, atStart: false,
    outbox: [], sending: null, gets: [], getInFlight: null, unread: 0,
  };

  // -- language --------------------------------------------------------------

  function t(key, ...args) {
    const value = TEXT[state.lang][key] ?? TEXT.en[key];
    return typeof value === "function" ? value(...args) : value ?? key;
  }

  function setLanguage(lang) {
    state.lang = TEXT[lang] ? lang : "en";
    document.documentElement.lang = state.lang;
    ui.language.value = state.lang;
    try { localStorage.setItem("chatbox.lang", state.lang); } catch (e) { /* private mode */ }
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-label]")) {
      el.setAttribute("aria-label", t(el.dataset.i18nLabel));
    }
    ui.nameButton.textContent = state.myName ? t("change") : t("join");
    renderConnection();
    for (const item of ui.list.querySelectorAll(".message.mine")) renderState(item);
    renderUnread();
  }

  // -- connection ------------------------------------------------------------

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/`;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    state.wanted = true;
    const ws = new WebSocket(socketUrl());
    state.ws = ws;
    setStatus(t("connecting"));
    ws.onopen = () => {
      state.backoff = 1000;
      renderConnection();
      setStatus(state.myName ? t("connected") : t("pickName"));
      const name = state.myName || state.pendingName;  // take our name back
      state.pendingName = null;
      if (name) requestName(name);
    };
    ws.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      handle(message);
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      dropInFlight();
      renderConnection();
      if (!state.wanted) { setStatus(t("disconnected")); return; }
      const wait = state.backoff + Math.floor(Math.random() * 500);
      state.backoff = Math.min(state.backoff * 2, 30000);
      setStatus(t("reconnecting", Math.ceil(wait / 1000)));
      state.retryTimer = setTimeout(connect, wait);
    };
  }

  function disconnect() {
    state.wanted = false;
    clearTimeout(state.retryTimer);
    if (state.ws) state.ws.close(1000);
    state.ws = null;
    dropInFlight();
    renderConnection();
    setStatus(t("disconnected"));
  }

  function isOpen() { return state.ws && state.ws.readyState === WebSocket.OPEN; }

  function transmit(message) {
    if (!isOpen()) return false;
    state.ws.send(JSON.stringify(message));
    return true;
  }

  function dropInFlight() {
    state.askedName = null;
    state.gets = [];
    state.getInFlight = null;
    if (state.sending) { fail(state.sending, t("lost")); state.sending = null; }
    for (const item of state.outbox) fail(item, t("lost"));
    state.outbox = [];
    renderComposer();
  }

  // -- replies and events ------------------------------------------------------

  function handle(message) {
    switch (message.type) {
      case "name": return onName(message);
      case "send": return onSend(message);
      case "get": return onGet(message);
      case "receive": return onEvent(message);
      default: return undefined;  // ping, and anything newer than this client
    }
  }

  function reason(message) {
    const text = TEXT[state.lang][message.reason];
    if (typeof text === "function") return text(message.retry_after);
    return text || t("failedGeneric", message.error || message.reason);
  }

  function requestName(name) {
    state.askedName = name;
    ui.nameError.textContent = "";
    transmit({ type: "name", name });
  }

  function onName(message) {
    state.askedName = null;
    if (!message.status) {
      ui.nameError.textContent = reason(message);
      // A refused register means this connection holds no name (on a
      // reconnect, someone else may have taken ours meanwhile).
      if (message.action === "register") state.myName = null;
      renderComposer();
      return;
    }
    const first = !state.myName || message.action === "register";
    state.myName = message.action === "change" ? message.newname : message.name;
    ui.name.value = state.myName;
    ui.nameButton.textContent = t("change");
    setStatus(t("connected"));
    renderComposer();
    if (first) {
      // A new session: the latest page, or everything missed since lastId.
      if (state.lastId) requestGet({ after: state.lastId }, "catchup");
      else requestGet({ limit: PAGE }, "latest");
    } else {
      renameInOnline(message.oldname, message.newname);
    }
  }

  function onEvent(message) {
    switch (message.datatype) {
      case "message":
        if (addMessages([message], "append")) noteUnread(1);
        break;
      case "register":
        if (!state.online.includes(message.name)) state.online.push(message.name);
        notice(t("joined", message.name));
        break;
      case "change":
        renameInOnline(message.oldname, message.newname);
        notice(t("renamed", message.oldname, message.newname));
        break;
      case "leave":
        state.online = state.online.filter((n) => n !== message.name);
        notice(t("left", message.name));
        break;
      default:
        return;
    }
    renderOnline();
  }

  function renameInOnline(oldName, newName) {
    state.online = state.online.map((n) => (n === oldName ? newName : n));
    renderOnline();
  }

  // -- history -------------------------------------------------------------------------

  function requestGet(query, purpose) {
    state.gets.push({ query, purpose });
    pumpGets();
  }

  function pumpGets() {
    if (state.getInFlight || !state.gets.length || !isOpen()) return;
    state.getInFlight = state.gets.shift();
    transmit({ type: "get", ...state.getInFlight.query });
  }

  function onGet(message) {
    const request = state.getInFlight;
    state.getInFlight = null;
    if (message.status && request) {
      const entries = message.data.message;
      state.online = message.data.online.slice();
      renderOnline();
      if (request.purpose === "older") {
        const keep = ui.messages.scrollHeight - ui.messages.scrollTop;
        addMessages(entries, "prepend");
        ui.messages.scrollTop = ui.messages.scrollHeight - keep;
        if (entries.length < PAGE) markStart();
      } else {
        const stick = atBottom();
        addMessages(entries, "append");
        if (request.purpose === "latest" && entries.length < PAGE) markStart();
        if (stick || request.purpose === "latest") scrollToBottom();
      }
    } else if (!message.status && message.reason === "RateLimited" && request) {
      setTimeout(() => { state.gets.unshift(request); pumpGets(); }, message.retry_after * 1000);
    }
    pumpGets();
  }

  function markStart() {
    state.atStart = true;
    ui.historyStart.hidden = false;
  }

  function loadOlder() {
    if (state.atStart || state.oldestId === null || !state.myName) return;
    if (state.getInFlight || state.gets.some((g) => g.purpose === "older")) return;
    requestGet({ before: state.oldestId, limit: PAGE }, "older");
  }

  // Adds entries not seen yet, keeping the list in id order; returns how many.
  function addMessages(entries, where) {
    const fresh = entries.filter((m) => typeof m.id !== "number" || !state.seen.has(m.id));
    const nodes = fresh.map((m) => {
      if (typeof m.id === "number") {
        state.seen.add(m.id);
        state.lastId = Math.max(state.lastId, m.id);
        state.oldestId = state.oldestId === null ? m.id : Math.min(state.oldestId, m.id);
      }
      return messageNode(m.name, m.content, m.timestamp, m.id, m.name === state.myName);
    });
    if (where === "prepend") ui.list.prepend(...nodes);
    else ui.list.append(...nodes);
    return nodes.length;
  }

  function messageNode(name, content, timestamp, id, mine) {
    const item = document.createElement("li");
    item.className = "message" + (mine ? " mine" : "");
    if (typeof id === "number") item.dataset.id = String(id);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = name;
    const when = document.createElement("time");
    when.className = "when";
    when.textContent = (timestamp || "").split(", ")[1]?.slice(0, 5) || "";
    when.title = timestamp || "";
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = content;
    item.append(who, when, text);
    return item;
  }

  function notice(text) {
    const item = document.createElement("li");
    item.className = "notice";
    item.textContent = text;
    const stick = atBottom();
    ui.list.append(item);
    if (stick) scrollToBottom();
  }

  // -- sending -------------------------------------------------------------------------------

  function queueSend(content) {
    const item = messageNode(state.myName, content, "", null, true);
    item.dataset.state = "pending";
    const entry = { content, item };
    ui.list.append(item);
    renderState(item);
    scrollToBottom();
    state.outbox.push(entry);
    pumpSend();
  }

  function pumpSend() {
    if (state.sending || !state.outbox.length || !isOpen()) return;
    state.sending = state.outbox.shift();
    transmit({ type: "send", content: state.sending.content });
  }

  function onSend(message) {
    const entry = state.sending;
    state.sending = null;
    if (!entry) return;
    if (message.status) {
      entry.item.dataset.state = "sent";
      entry.item.dataset.id = String(message.id);
      state.seen.add(message.id);
      state.lastId = Math.max(state.lastId, message.id);
      entry.item.querySelector(".when").textContent = message.timestamp.split(", ")[1].slice(0, 5);
      renderState(entry.item);
    } else if (message.reason === "RateLimited") {
      state.outbox.unshift(entry);
      setTimeout(pumpSend, message.retry_after * 1000);
      return;
    } else {
      fail(entry, reason(message));
    }
    pumpSend();
  }

  function fail(entry, why) {
    entry.item.dataset.state = "failed";
    entry.item.dataset.reason = why;
    renderState(entry.item);
  }

  function renderState(item) {
    item.classList.toggle("failed", item.dataset.state === "failed");
    let label = item.querySelector(".state");
    if (!label) {
      label = document.createElement("span");
      label.className = "state";
      item.querySelector(".when").after(label);
    }
    const key = item.dataset.state;
    label.textContent = key === "failed" ? `${t("failed")}: ${item.dataset.reason}` : t(key || "sent");
    item.querySelector(".retry")?.remove();
    if (key === "failed") {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.className = "retry";
      retry.textContent = t("retry");
      retry.addEventListener("click", () => {
        item.remove();
        queueSend(item.querySelector(".text").textContent);
      });
      label.after(retry);
    }
  }

  // -- rendering --------------------------------------------------------------------------------

  function setStatus(text) { ui.status.textContent = text; }

  function renderConnection() {
    ui.connection.textContent = state.ws ? t("disconnect") : t("connect");
    renderComposer();
  }

  function renderComposer() {
    const ready = Boolean(isOpen() && state.myName);
    ui.content.disabled = !ready;
    ui.send.disabled = !ready;
  }

  function renderOnline() {
    ui.onlineCount.textContent = String(state.online.length);
    ui.onlineList.replaceChildren(...state.online.map((name) => {
      const item = document.createElement("li");
      item.textContent = name === state.myName ? `${name} (${t("you")})` : name;
      if (name === state.myName) item.className = "me";
      return item;
    }));
  }

  function atBottom() {
    const box = ui.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    state.unread = 0;
    renderUnread();
  }

  function noteUnread(count) {
    if (atBottom()) { scrollToBottom(); return; }
    state.unread += count;
    renderUnread();
  }

  function renderUnread() {
    ui.unread.hidden = state.unread === 0;
    ui.unread.textContent = t("unread", state.unread);
  }

  // -- wiring -------------------------------------------------------------------------------------

  ui.nameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.name.value;
    if (isOpen()) requestName(name);
    else {
      state.pendingName = name;  // sent as soon as the socket opens
      if (!state.ws) connect();
    }
  });

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = ui.content.value;
    if (!content.trim() || !state.myName) return;
    ui.content.value = "";
    queueSend(content);
  });

  ui.content.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });

  ui.messages.addEventListener("scroll", () => {
    if (ui.messages.scrollTop < 40) loadOlder();
    if (atBottom() && state.unread) { state.unread = 0; renderUnread(); }
  });

  ui.unread.addEventListener("click", scrollToBottom);
  ui.connection.addEventListener("click", () => (state.ws ? disconnect() : connect()));
  ui.language.addEventListener("change", () => setLanguage(ui.language.value));

  let saved = null;
  try { saved = localStorage.getItem("chatbox.lang"); } catch (e) { /* private mode */ }
  const browser = (navigator.language || "en").toLowerCase().startsWith("vi") ? "vi" : "en";
  setLanguage(saved || browser);
  connect();
  window.chatbox = { state };  // for tests and curious people
})();
