// chatbox browser client: the classic-chatbox v2 protocol (docs/PROTOCOL.md)
// plus its extensions (message ids, paged history, `time`, `send_id`,
// typing, online count). No build step: served as is.
//
// Replies are matched by type, and a reply to a `name` may overtake earlier
// `send` replies (docs/PROTOCOL.md, ordering), so this client keeps at most
// one `send` and one `get` in flight, where each reply is unambiguous.
// Every piece of user text reaches the page through textContent or text
// nodes, never HTML; links are built as elements.
"use strict";

(() => {
  const PAGE = 50;
  const MAX_CONTENT = 4000;
  const COUNTER_FROM = 3500;
  const TYPING_EVERY = 3000;   // at most one typing request per this (ms)
  const TYPING_SHOWN = 6000;   // "X is typing" lasts this long after X's last event
  const CONNECT_TIMEOUT = 10000;  // a server that accepts TCP but never answers
  const REJOIN_TRIES = 3;      // our old connection may not be closed yet on the server
  const TITLE = "chatbox";
  const ROOMS_EVERY = 10000;   // the room list is fetched at most this often (ms)
  const ROOM_NAME = /^[a-z0-9][a-z0-9_-]{0,39}$/;  // docs/PROTOCOL.md, rooms
  const FEEDBACK_SHOWN = 4000;
  // The room is the page's own path, "" for the default room at "/". The
  // server answers a non-canonical path with a redirect, so this one is
  // canonical. It is read once: every reconnect goes back to this room.
  const ROOM_PATH = location.pathname.replace(/\/$/, "");
  const ROOM = (() => {
    try { return decodeURIComponent(ROOM_PATH.slice(1)); } catch (e) { return ROOM_PATH.slice(1); }
  })();
  const PAGE_TITLE = ROOM ? `${ROOM} · ${TITLE}` : TITLE;
  const LINK = /https?:\/\/[^\s<>"]+/gi;

  const TEXT = {
    en: {
      language: "Language", chat: "Chat", nickname: "Nickname", join: "Join",
      changeName: "Change nickname", newName: "New nickname", save: "Save", cancel: "Cancel",
      menu: "Menu", theme: "Theme", themeSystem: "System", themeLight: "Light", themeDark: "Dark",
      sound: "Sound for new messages", notifications: "Desktop notifications",
      message: "Message", send: "Send", online: "Online",
      messages: "Messages", enterHint: "Enter to send, Shift+Enter for a new line",
      touchHint: "Enter for a new line, tap Send to send",
      historyStart: "Beginning of the conversation", connect: "Connect",
      disconnect: "Disconnect", connecting: "Connecting…", connected: "Connected",
      disconnected: "Disconnected", retryNow: "Retry now",
      reconnecting: (s) => `Connection lost, retrying in ${s} s…`,
      pickName: "Pick a nickname to start chatting.", you: "you",
      rejoining: (n) => `Rejoining as ${n}…`, tooLong: "Messages are at most 4,000 characters.",
      welcome: (n) => (n === 0 ? "Welcome! Nobody is online yet."
        : n === 1 ? "Welcome! 1 person is online." : `Welcome! ${n} people are online.`),
      NameAlreadyUsed: "That nickname is taken.",
      Muted: (s) => `You are muted here: you can join again in ${Math.ceil(s / 60)} min.`,
      WrongFormatName: "Nicknames are 1–100 visible characters.",
      RateLimited: (s) => `Too fast: wait ${s} s.`,
      WrongFormatContent: "Messages are 1–4000 characters.",
      UnknownRegister: "Pick a nickname first.",
      failedGeneric: (r) => `Failed: ${r}`,
      pending: "sending…", waiting: "waiting for the connection…", sent: "sent",
      failed: "not sent", retry: "Retry", lost: "connection lost",
      joined: (n) => `${n} joined`, left: (n) => `${n} left`,
      twoPeople: (a, b) => `${a} and ${b}`,
      manyPeople: (a, b, more) => `${a}, ${b} and ${more} others`,
      renamed: (a, b) => `${a} is now ${b}`, youRenamed: (b) => `You are now ${b}`,
      unread: (n) => `${n} new message${n === 1 ? "" : "s"} ↓`,
      today: "Today", yesterday: "Yesterday",
      typing1: (a) => `${a} is typing…`, typing2: (a, b) => `${a} and ${b} are typing…`,
      typingMany: (n) => `${n} people are typing…`,
      counter: (n) => `${n} / ${MAX_CONTENT}`,
      mentioned: (n) => `${n} mentioned you`,
      rooms: "Rooms", mainRoom: "Main room", roomOnline: (n) => `${n} online`,
      shareLink: "Link to this room", copy: "Copy", copied: "Copied",
      copyByHand: "Selected: press Ctrl+C to copy", copyByTouch: "Selected: touch and hold to copy",
      noRoom: "This room does not exist on this server.", noRoomStatus: "No such room",
      goElsewhere: "Go to another room:",
      announcement: "Announcement",
      kicked: "A moderator removed you from the chat.", kickedStatus: "Removed from the chat",
      rejoin: "Rejoin",
      bannedUntil: (w) => `You are banned from this chat until ${w}.`,
      bannedForever: "You are banned from this chat permanently.",
      bannedUnknown: "You are banned from this chat.", bannedStatus: "Banned",
      banEnds: "You will be reconnected when the ban ends.",
      reasonIs: (r) => `Reason: ${r}`,
      mutedUntil: (w) => `You are muted until ${w}.`, mutedForever: "You are muted.",
      unmuted: "You can send messages again.",
      SlowMode: (s) => `Slow mode: you can send again in ${s} s.`,
      sendWait: (s) => `Send (${s})`,
      nameReserved: "It is reserved on this server.", nameBanned: "It is not allowed on this server.",
      nameVerified: "This nickname belongs to a verified user.",
      nameToken: (n) => `Your sign-in link is for ${n}.`,
      verified: "verified", signingIn: "Signing in…",
      signedInAs: (n) => `Signed in with your link as ${n}.`,
      TokenExpired: "Your sign-in link has expired; ask for a new one.",
      TokenNotYetValid: "Your sign-in link is not valid yet; check your device's clock or try again later.",
      TokenWrongRoom: "Your sign-in link is for another room.",
      TokenMalformed: "This sign-in link is not valid; ask for a new one.",
      TokenAlgorithm: "This sign-in link is not valid here; ask for a new one.",
      TokenBadSignature: "This sign-in link is not valid here; ask for a new one.",
      TokenWrongIssuer: "This sign-in link is not valid here; ask for a new one.",
      TokenWrongAudience: "This sign-in link is not valid here; ask for a new one.",
      tokenRefused: "Your sign-in link was not accepted; ask for a new one.",
      signInStatus: "Not signed in", guestJoin: "Continue as a guest",
      needsSignInRetry: (s) => `This chat needs a sign-in link: open the link you were given. Trying again in ${s} s…`,
      modTools: "Moderator tools", slowMode: "Slow mode", slowOff: "Off",
      seconds: (s) => `${s} s`, minutes: (m) => `${m} min`, hours: (h) => `${h} h`,
      days: (d) => (d === 1 ? "1 day" : `${d} days`), apply: "Apply",
      deleteMessage: "Delete", deleteFrom: (n) => `message from ${n}`,
      moderate: (n) => `Moderate ${n}`, moderating: (n) => `Moderate ${n}`,
      muteFor: "Mute for", mute: "Mute", unmute: "Unmute", kick: "Kick", close: "Close",
      kickConfirm: (n) => `Remove ${n} from the chat?`, kickYes: "Yes, remove",
      modDeleted: (k) => (k === 0 ? "That message was already gone." : k === 1
        ? "Message deleted." : `${k} messages deleted.`),
      modKicked: (n) => `${n} was removed from the chat.`,
      modMuted: (n, w) => `${n} is muted until ${w}.`,
      modUnmuted: (n) => `${n} can send messages again.`,
      modSlow: (s) => (s === 0 ? "Slow mode is off." : `Slow mode: one message every ${s} s.`),
      modNotModerator: "You are not a moderator of this room.",
      modNoSuchUser: "Nobody here by that name.", modNoSuchMute: (n) => `${n} is not muted.`,
      modRefused: (e) => `Refused: ${e}`, modWrong: (f) => `Refused: the ${f} is not valid.`,
      modError: "The server could not do that now; try again.",
    },
    vi: {
      language: "Ngôn ngữ", chat: "Trò chuyện", nickname: "Biệt danh", join: "Tham gia",
      changeName: "Đổi biệt danh", newName: "Biệt danh mới", save: "Lưu", cancel: "Huỷ",
      menu: "Trình đơn", theme: "Giao diện", themeSystem: "Theo hệ thống", themeLight: "Sáng",
      themeDark: "Tối", sound: "Âm báo tin nhắn mới", notifications: "Thông báo trên máy",
      message: "Tin nhắn", send: "Gửi", online: "Trực tuyến",
      messages: "Tin nhắn", enterHint: "Enter để gửi, Shift+Enter để xuống dòng",
      touchHint: "Enter để xuống dòng, chạm Gửi để gửi",
      historyStart: "Đầu cuộc trò chuyện", connect: "Kết nối",
      disconnect: "Ngắt kết nối", connecting: "Đang kết nối…", connected: "Đã kết nối",
      disconnected: "Đã ngắt kết nối", retryNow: "Thử lại ngay",
      reconnecting: (s) => `Mất kết nối, thử lại sau ${s} giây…`,
      pickName: "Chọn một biệt danh để bắt đầu.", you: "bạn",
      rejoining: (n) => `Đang vào lại với tên ${n}…`, tooLong: "Tin nhắn dài tối đa 4.000 ký tự.",
      welcome: (n) => (n === 0 ? "Chào mừng! Chưa có ai trực tuyến."
        : `Chào mừng! Có ${n} người đang trực tuyến.`),
      NameAlreadyUsed: "Biệt danh này đã có người dùng.",
      Muted: (s) => `Bạn đang bị tắt tiếng ở đây: có thể tham gia lại sau ${Math.ceil(s / 60)} phút.`,
      WrongFormatName: "Biệt danh gồm 1–100 ký tự nhìn thấy được.",
      RateLimited: (s) => `Quá nhanh: chờ ${s} giây.`,
      WrongFormatContent: "Tin nhắn dài 1–4000 ký tự.",
      UnknownRegister: "Hãy chọn biệt danh trước.",
      failedGeneric: (r) => `Không thành công: ${r}`,
      pending: "đang gửi…", waiting: "đang chờ kết nối…", sent: "đã gửi",
      failed: "chưa gửi được", retry: "Gửi lại", lost: "mất kết nối",
      joined: (n) => `${n} đã tham gia`, left: (n) => `${n} đã rời đi`,
      twoPeople: (a, b) => `${a} và ${b}`,
      manyPeople: (a, b, more) => `${a}, ${b} và ${more} người khác`,
      renamed: (a, b) => `${a} đổi tên thành ${b}`, youRenamed: (b) => `Bạn đã đổi tên thành ${b}`,
      unread: (n) => `${n} tin nhắn mới ↓`,
      today: "Hôm nay", yesterday: "Hôm qua",
      typing1: (a) => `${a} đang soạn tin…`, typing2: (a, b) => `${a} và ${b} đang soạn tin…`,
      typingMany: (n) => `${n} người đang soạn tin…`,
      counter: (n) => `${n} / ${MAX_CONTENT}`,
      mentioned: (n) => `${n} đã nhắc đến bạn`,
      rooms: "Phòng", mainRoom: "Phòng chung", roomOnline: (n) => `${n} trực tuyến`,
      shareLink: "Liên kết tới phòng này", copy: "Sao chép", copied: "Đã sao chép",
      copyByHand: "Đã chọn: nhấn Ctrl+C để sao chép",
      copyByTouch: "Đã chọn: chạm và giữ để sao chép",
      noRoom: "Phòng này không có trên máy chủ này.", noRoomStatus: "Không có phòng này",
      goElsewhere: "Đến một phòng khác:",
      announcement: "Thông báo",
      kicked: "Người điều hành đã mời bạn ra khỏi phòng trò chuyện.", kickedStatus: "Đã bị mời ra",
      rejoin: "Vào lại",
      bannedUntil: (w) => `Bạn bị cấm tham gia trò chuyện đến ${w}.`,
      bannedForever: "Bạn bị cấm tham gia trò chuyện vĩnh viễn.",
      bannedUnknown: "Bạn bị cấm tham gia trò chuyện.", bannedStatus: "Bị cấm",
      banEnds: "Bạn sẽ được kết nối lại khi lệnh cấm hết hạn.",
      reasonIs: (r) => `Lý do: ${r}`,
      mutedUntil: (w) => `Bạn bị cấm gửi tin nhắn đến ${w}.`, mutedForever: "Bạn bị cấm gửi tin nhắn.",
      unmuted: "Bạn đã có thể gửi tin nhắn trở lại.",
      SlowMode: (s) => `Chế độ chậm: bạn có thể gửi tiếp sau ${s} giây.`,
      sendWait: (s) => `Gửi (${s})`,
      nameReserved: "Biệt danh này được máy chủ giữ riêng.",
      nameBanned: "Biệt danh này không được phép dùng ở đây.",
      nameVerified: "Biệt danh này thuộc về một người dùng đã xác minh.",
      nameToken: (n) => `Liên kết đăng nhập của bạn dành cho ${n}.`,
      verified: "đã xác minh", signingIn: "Đang đăng nhập…",
      signedInAs: (n) => `Đã đăng nhập bằng liên kết với tên ${n}.`,
      TokenExpired: "Liên kết đăng nhập của bạn đã hết hạn; hãy xin một liên kết mới.",
      TokenNotYetValid: "Liên kết đăng nhập của bạn chưa có hiệu lực; hãy kiểm tra đồng hồ của máy hoặc thử lại sau.",
      TokenWrongRoom: "Liên kết đăng nhập của bạn dành cho một phòng khác.",
      TokenMalformed: "Liên kết đăng nhập này không hợp lệ; hãy xin một liên kết mới.",
      TokenAlgorithm: "Liên kết đăng nhập này không dùng được ở đây; hãy xin một liên kết mới.",
      TokenBadSignature: "Liên kết đăng nhập này không dùng được ở đây; hãy xin một liên kết mới.",
      TokenWrongIssuer: "Liên kết đăng nhập này không dùng được ở đây; hãy xin một liên kết mới.",
      TokenWrongAudience: "Liên kết đăng nhập này không dùng được ở đây; hãy xin một liên kết mới.",
      tokenRefused: "Liên kết đăng nhập của bạn không được chấp nhận; hãy xin một liên kết mới.",
      signInStatus: "Chưa đăng nhập", guestJoin: "Tiếp tục với tư cách khách",
      needsSignInRetry: (s) => `Phòng trò chuyện này cần liên kết đăng nhập: hãy mở liên kết bạn được gửi. Thử lại sau ${s} giây…`,
      modTools: "Công cụ điều hành", slowMode: "Chế độ chậm", slowOff: "Tắt",
      seconds: (s) => `${s} giây`, minutes: (m) => `${m} phút`, hours: (h) => `${h} giờ`,
      days: (d) => `${d} ngày`, apply: "Áp dụng",
      deleteMessage: "Xoá", deleteFrom: (n) => `tin nhắn của ${n}`,
      moderate: (n) => `Điều hành ${n}`, moderating: (n) => `Điều hành ${n}`,
      muteFor: "Cấm gửi trong", mute: "Cấm gửi", unmute: "Bỏ cấm gửi", kick: "Mời ra", close: "Đóng",
      kickConfirm: (n) => `Mời ${n} ra khỏi phòng trò chuyện?`, kickYes: "Đồng ý, mời ra",
      modDeleted: (k) => (k === 0 ? "Tin nhắn đó đã bị xoá từ trước." : `Đã xoá ${k} tin nhắn.`),
      modKicked: (n) => `Đã mời ${n} ra khỏi phòng trò chuyện.`,
      modMuted: (n, w) => `${n} bị cấm gửi tin nhắn đến ${w}.`,
      modUnmuted: (n) => `${n} đã có thể gửi tin nhắn trở lại.`,
      modSlow: (s) => (s === 0 ? "Đã tắt chế độ chậm." : `Chế độ chậm: mỗi người một tin nhắn mỗi ${s} giây.`),
      modNotModerator: "Bạn không phải người điều hành của phòng này.",
      modNoSuchUser: "Không có ai ở đây với tên đó.", modNoSuchMute: (n) => `${n} không bị cấm gửi.`,
      modRefused: (e) => `Bị từ chối: ${e}`, modWrong: (f) => `Bị từ chối: ${f} không hợp lệ.`,
      modError: "Máy chủ chưa làm được việc này; hãy thử lại.",
    },
  };
  const LOCALE = { en: "en-GB", vi: "vi-VN" };
  // Why a nickname was refused for good (the ext `error` of NameAlreadyUsed).
  const NAME_HINTS = {
    reserved: "nameReserved", banned: "nameBanned", verified: "nameVerified", token: "nameToken",
  };
  // Issue 15: what a moderator may choose (seconds), and the refusals of a token.
  const MUTES = [300, 3600, 86400];
  const SLOW = [0, 10, 30, 60];
  const TOKEN_REASONS = new Set(["TokenExpired", "TokenNotYetValid", "TokenWrongRoom",
    "TokenMalformed", "TokenAlgorithm", "TokenBadSignature", "TokenWrongIssuer", "TokenWrongAudience"]);
  const AUTH_WAIT = 5000;       // a server with --auth off never answers a token
  const URL_MAX = 2048;         // a longer handshake URL is refused: the token goes in an `auth` request
  const SIGN_IN_MISSES = 2;     // refused sockets in a row, page fine, no token: a sign-in is needed

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"), statusText: $("status-text"), retryNow: $("retry-now"),
    controls: $("controls"), menuControls: $("menu-controls"), connection: $("connection"),
    language: $("language"), theme: $("theme"), sound: $("opt-sound"), notify: $("opt-notify"),
    menuButton: $("menu-button"), menu: $("menu"), renameSection: $("rename-section"),
    renameOpen: $("rename-open"), renameForm: $("rename-form"), rename: $("rename"),
    renameCancel: $("rename-cancel"), renameError: $("rename-error"),
    nameForm: $("name-form"), name: $("name"), nameButton: $("name-button"),
    nameError: $("name-error"), welcome: $("welcome"), messages: $("messages"),
    list: $("message-list"), historyStart: $("history-start"), unread: $("unread"),
    typing: $("typing"), composer: $("composer"), content: $("content"), send: $("send"),
    hint: $("composer-hint"), counter: $("counter"), online: $("online"),
    onlineToggle: $("online-toggle"), onlineList: $("online-list"),
    onlineCount: $("online-count"), onlineCountShort: $("online-count-short"),
    heading: $("heading"), rooms: $("rooms"), roomList: $("room-list"),
    shareUrl: $("share-url"), shareCopy: $("share-copy"), shareFeedback: $("share-feedback"),
    gone: $("gone"), goneList: $("gone-list"),
    removed: $("removed"), removedTitle: $("removed-title"), removedReason: $("removed-reason"),
    removedWait: $("removed-wait"), rejoin: $("rejoin"), note: $("composer-note"),
    signedIn: $("signed-in"), modTools: $("mod-tools"), modTitle: $("mod-title"),
    slowSelect: $("slow-select"), slowApply: $("slow-apply"), modPerson: $("mod-person"),
    modPersonTitle: $("mod-person-title"), muteSelect: $("mute-select"), muteButton: $("mute-button"),
    unmuteButton: $("unmute-button"), kickButton: $("kick-button"), modClose: $("mod-close"),
    kickConfirm: $("kick-confirm"), kickQuestion: $("kick-question"), kickYes: $("kick-yes"),
    kickNo: $("kick-no"), modStatus: $("mod-status"),
  };
  const phone = window.matchMedia("(max-width: 700px)");
  const touch = window.matchMedia("(pointer: coarse)");

  const state = {
    lang: "en", ws: null, wanted: true, backoff: 1000, retryTimer: null, retryAt: 0,
    countdown: null, connectTimer: null, watchdog: null, pingTimeout: 0,
    status: { kind: "busy", key: "connecting", args: [] },
    myName: null, savedName: null, registered: false, askedName: null, pendingName: null, rejoins: 0,
    focusOnJoin: true, onlineCount: null, online: [],
    seen: new Set(), lastId: 0, oldestId: null, atStart: false,
    outbox: [], sending: null, holdUntil: 0, gets: [], getInFlight: null,
    unread: 0, typers: new Map(), typingSent: 0,
    sound: false, notify: false, audio: null,
    room: ROOM, rooms: [], roomsAt: 0, roomsLoading: false, feedback: null, feedbackTimer: null,
    checking: false, gone: false,
    // Moderation (docs/PROTOCOL.md): ids an operator deleted, never shown
    // again; a kick or ban that ended the connection (`removed`) and the
    // notice that came before its close (`parting`); a mute, and slow
    // mode's wait after a refused send (`slow`), both shown by the composer.
    deleted: new Set(), removed: null, parting: null, banTimer: null,
    mute: null, muteTimer: null, slow: null, slowTimer: null, flash: null, flashTimer: null,
    // Verified nicknames (issue 15): this tab's sign-in token for this room
    // (never shown, never in the address bar once read), what the server
    // said it vouches for (`auth`: name, roles, rooms, expires), whether we
    // wait for that answer, and the online nicknames that are verified.
    token: null, auth: null, authTimer: null, tokenIgnored: false, tokenInRequest: false,
    signInMisses: 0,
    verified: new Set(), meVerified: false,
    // Moderator controls: requests awaiting their reply (matched by action),
    // the person the panel acts on, and the last outcome shown.
    modAsked: [], modTarget: null, modConfirm: false, modStatus: null, modTimer: null,
  };
  const entries = new WeakMap();  // pending message <li> -> its outbox entry

  // -- storage (private modes throw) --------------------------------------------

  function load(key) {
    try { return localStorage.getItem(`chatbox.${key}`); } catch (e) { return null; }
  }

  function save(key, value) {
    try {
      if (value === null) localStorage.removeItem(`chatbox.${key}`);
      else localStorage.setItem(`chatbox.${key}`, value);
    } catch (e) { /* private mode: nothing remembered */ }
  }

  // The name this tab rejoins with on reload is this tab's own: two tabs of
  // one browser are two people, and must not take each other's name. The
  // browser-wide one (save "name") only fills the field of a new tab.
  function loadTabName() {
    try { return sessionStorage.getItem("chatbox.name"); } catch (e) { return null; }
  }

  function rememberName(name) {
    save("name", name);
    try { sessionStorage.setItem("chatbox.name", name); } catch (e) { /* private mode */ }
  }

  // A sign-in token is this tab's, for this room: kept in sessionStorage so
  // a reconnect or a reload still has it, never in localStorage (it would
  // outlive the tab) nor in the address bar (screenshots, shared links,
  // history). A token for another room is that room's tab's business.
  const TOKEN_KEY = `chatbox.token:${ROOM_PATH || "/"}`;

  function loadToken() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }

  function keepToken(token) {
    state.token = token;
    try {
      if (token === null) sessionStorage.removeItem(TOKEN_KEY);
      else sessionStorage.setItem(TOKEN_KEY, token);
    } catch (e) { /* private mode: kept in memory for this page only */ }
  }

  // A link `/ROOM?token=T`: the token is taken out of the address at once
  // (other query parameters and the fragment stay), before anything else
  // can read or share the address.
  // `/ROOM#token=T` works too: a fragment never reaches the server, so a
  // token too long for a request line (2,048 bytes) still fits there.
  function takeTokenFromAddress() {
    const params = new URLSearchParams(location.search);
    const fragment = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token") ?? fragment.get("token");
    if (token === null) return;
    params.delete("token");
    fragment.delete("token");
    const query = params.toString();
    const hash = location.hash.slice(1).includes("token=") ? fragment.toString() : location.hash.slice(1);
    history.replaceState(history.state, "", `${location.pathname}${query ? `?${query}` : ""}${hash ? `#${hash}` : ""}`);
    if (token) keepToken(token);
  }

  // -- language --------------------------------------------------------------

  function t(key, ...args) {
    const value = TEXT[state.lang][key] ?? TEXT.en[key];
    return typeof value === "function" ? value(...args) : value ?? key;
  }

  // Everything on screen is re-rendered from state, so nothing stays behind
  // in the old language.
  function setLanguage(lang) {
    state.lang = TEXT[lang] ? lang : "en";
    document.documentElement.lang = state.lang;
    ui.language.value = state.lang;
    save("lang", state.lang);
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-label]")) {
      el.setAttribute("aria-label", t(el.dataset.i18nLabel));
    }
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
      el.placeholder = t(el.dataset.i18nPlaceholder);
    }
    for (const item of ui.list.querySelectorAll(".notice[data-key]")) renderNotice(item);
    for (const when of ui.list.querySelectorAll(".when")) renderWhen(when);
    for (const label of ui.list.querySelectorAll(".announce-label")) label.textContent = t("announcement");
    for (const badge of ui.list.querySelectorAll(".verified-badge")) renderBadge(badge);
    for (const button of ui.list.querySelectorAll(".mod-delete")) fillDelete(button);
    renderModPanel();
    renderModStatus();
    renderSignedIn();
    renderStatus();
    renderConnection();
    renderWelcome();
    renderOnline();
    renderTyping();
    renderCounter();
    renderHint();
    decorate();
    renderUnread();
    renderRooms();
    renderFeedback();
    renderRemoved();
    renderNote();
  }

  // -- connection ------------------------------------------------------------

  // The token rides in the URL (so --auth required lets the socket in),
  // unless that makes the URL longer than the server takes; then it is
  // sent in an `auth` request right after the open (tokenInRequest).
  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const bare = `${scheme}//${location.host}${ROOM_PATH || "/"}`;
    const token = state.token ? `?token=${encodeURIComponent(state.token)}` : "";
    state.tokenInRequest = Boolean(token) && bare.length + token.length > URL_MAX;
    return state.tokenInRequest ? bare : bare + token;
  }

  function connect() {
    clearRetry();
    state.wanted = true;
    if (state.gone) { state.gone = false; renderJoined(); }
    if (state.removed) { clearRemoved(); renderJoined(); }
    let opened = false;
    const ws = new WebSocket(socketUrl());
    state.ws = ws;
    state.registered = false;
    state.pingTimeout = 0;
    setStatus("busy", "connecting");
    // A paused server accepts the TCP connection and never answers the upgrade.
    state.connectTimer = setTimeout(() => lose(ws, true), CONNECT_TIMEOUT);
    ws.onopen = () => {
      opened = true;
      clearTimeout(state.connectTimer);
      state.backoff = 1000;
      state.signInMisses = 0;
      renderConnection();
      // With a token the server says whom it vouches for right after the
      // open (the `auth` reply), and that nickname is the one we take. A
      // server with --auth off never says: after AUTH_WAIT we go on as a
      // guest, and do not wait again on this page.
      if (state.token && !state.tokenIgnored) {
        setStatus("busy", "signingIn");
        if (state.tokenInRequest) transmit({ type: "auth", token: state.token });
        transmit({ type: "online" });
        state.authTimer = setTimeout(() => {
          if (state.ws !== ws || !isOpen()) return;
          state.tokenIgnored = true;
          begin();
        }, AUTH_WAIT);
        return;
      }
      begin();
    };
    ws.onmessage = (event) => {
      noteFrame(ws);
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      handle(message);
    };
    ws.onclose = (event) => closed(ws, event, opened);
  }

  // Open, and the sign-in (if any) answered: take our name back, or wait
  // for one to be picked.
  function begin() {
    clearTimeout(state.authTimer);
    state.authTimer = null;
    const name = state.auth ? state.auth.name : state.myName || state.pendingName;
    state.pendingName = null;
    if (name) requestName(name);
    else {
      setStatus("busy", "pickName");
      transmit({ type: "online" });
    }
  }

  // An operator's kick (4001) or ban (4003) is not an outage: no retry
  // loop, but why, for how long, and (kicked) a way back. The notice just
  // before the close has the whole reason and the ban's end; the close
  // frame's reason is cut to 123 bytes, and is all there is without one.
  function closed(ws, event, opened) {
    if (state.ws !== ws) return;
    const parting = state.parting && state.parting.ws === ws ? state.parting : null;
    state.parting = null;
    const action = event.code === 4001 ? "kick" : event.code === 4003 ? "ban"
      : event.code === 4401 ? "auth" : parting ? parting.action : null;
    if (!action) { lose(ws, !opened); return; }
    const told = parting && parting.action === action;
    if (action === "auth") {
      // A refused token: said once, dropped, and never sent again.
      keepToken(null);
      removed("auth", told ? parting.reason : event.reason);
      return;
    }
    const why = told ? parting.reason : event.reason;
    removed(action, why, told ? parting.until : undefined);
    // A ban's end unknown: the page's own address may say (Retry-After).
    if (action === "ban" && !told) checkPage(true);
  }

  // The socket closed, or we gave up on it (no frame for too long, or no
  // answer to the upgrade). Its handlers are detached first: a close
  // handshake with a frozen server can take a minute, and nothing it says
  // afterwards may be mistaken for the next connection's replies.
  // `unopened`: it never opened (refused, unreachable, or no answer), so
  // the room itself may be gone.
  function lose(ws, unopened = false) {
    if (state.ws !== ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
      try { ws.close(); } catch (e) { /* already closing */ }
    }
    state.ws = null;
    state.registered = false;
    clearTimeout(state.connectTimer);
    clearTimeout(state.watchdog);
    clearTimeout(state.authTimer);
    state.authTimer = null;
    dropInFlight();
    clearTypers();
    renderConnection();
    if (state.wanted) {
      scheduleRetry();
      if (unopened) checkPage();
    } else setStatus("off", "disconnected");
  }

  // A refused handshake's status is hidden from the page's script, so the
  // page's own address answers for it: the server serves the page exactly
  // where a room may be joined, and refuses it as it refuses the socket.
  // A 404 means the room is gone (the server restarted with another
  // --rooms list; the default room always exists); a 403 that this
  // address is banned, until Retry-After if it says. Any other answer,
  // or none, is an outage like any other and the retries go on.
  // `afterBan`: the socket was closed with 4003 and only the end is asked.
  async function checkPage(afterBan = false) {
    if (state.checking) return;
    state.checking = true;
    let status = 0;
    let retryAfter = null;
    try {
      const options = { method: "HEAD", cache: "no-store" };
      if (typeof AbortSignal.timeout === "function") options.signal = AbortSignal.timeout(CONNECT_TIMEOUT);
      const response = await fetch(location.pathname, options);
      status = response.status;
      retryAfter = response.headers.get("retry-after");
    } catch (e) { /* no answer: retried as before */ }
    state.checking = false;
    if (afterBan) {
      const ban = state.removed;
      if (status === 403 && ban && ban.action === "ban" && ban.until === undefined) {
        removed("ban", ban.reason, banEnd(retryAfter));
      }
      return;
    }
    if (!state.wanted || isOpen()) return;
    if (status === 404 && ROOM) roomGone();
    else if (status === 403) removed("ban", null, banEnd(retryAfter));
    else if (status >= 200 && status < 300 && !state.token) {
      // The page answers but its socket is refused, again and again, and
      // we hold no token: most likely --auth required's 401, which the
      // page cannot read. The status line says so; the retries go on (a
      // socket refused for another reason looks the same for a while, a
      // room that is gone among them, until its page says 404).
      state.signInMisses += 1;
      if (state.signInMisses >= SIGN_IN_MISSES) renderCountdown();
    } else state.signInMisses = 0;
  }

  // Epoch ms on this clock from a Retry-After (seconds or an HTTP date);
  // null without one: the ban has no end.
  function banEnd(header) {
    if (header === null) return null;
    if (/^\s*\d+\s*$/.test(header)) return Date.now() + Number(header) * 1000;
    const date = Date.parse(header);
    return Number.isFinite(date) ? date : null;
  }

  // Retrying would never succeed: stop, say so, and show the way out.
  function roomGone() {
    state.gone = true;
    disconnect();
    state.online = [];
    state.onlineCount = null;
    setStatus("off", "noRoomStatus");
    renderJoined();
    renderWelcome();
    renderRooms();
    refreshRooms();
  }

  // Kicked or banned: `until` is the ban's end (epoch ms), null for none,
  // undefined if not known. No retries, except once a ban with an end is
  // over; pending messages fail as on Disconnect.
  function removed(action, why, until) {
    const focusLost = ui.composer.contains(document.activeElement)
      || ui.nameForm.contains(document.activeElement);
    state.removed = { action, reason: typeof why === "string" && why ? why : null, until };
    disconnect();
    state.online = [];
    state.onlineCount = null;
    clearTimeout(state.banTimer);
    if (action === "ban" && typeof until === "number") waitForBanEnd();
    setStatus("off", action === "kick" ? "kickedStatus" : action === "ban" ? "bannedStatus"
      : "signInStatus");
    if (action === "auth") { state.auth = null; renderSignedIn(); }
    renderJoined();
    renderWelcome();
    renderRemoved();
    if (focusLost) (action === "ban" ? ui.removed : ui.rejoin).focus();
  }

  // setTimeout fires at once past 2^31 - 1 ms (24.8 days): a longer ban
  // waits in steps.
  function waitForBanEnd() {
    const left = state.removed.until - Date.now();
    if (left <= 0) { connect(); return; }
    const jitter = Math.floor(Math.random() * 2000);
    state.banTimer = setTimeout(() => {
      if (state.removed && state.removed.action === "ban") waitForBanEnd();
    }, Math.min(left + jitter, 2 ** 31 - 1));
  }

  function clearRemoved() {
    clearTimeout(state.banTimer);
    state.removed = null;
    renderRemoved();
    decorate();  // the failed messages' Retry buttons are back
  }

  function renderRemoved() {
    const gone = state.removed;
    ui.removed.hidden = !gone;
    ui.rejoin.hidden = !gone || gone.action === "ban";
    if (!gone) {
      ui.removedTitle.textContent = ui.removedReason.textContent = ui.removedWait.textContent = "";
      return;
    }
    ui.rejoin.textContent = t(gone.action === "auth" ? "guestJoin" : "rejoin");
    if (gone.action === "auth") {
      ui.removedTitle.textContent = TOKEN_REASONS.has(gone.reason) ? t(gone.reason) : t("tokenRefused");
      ui.removedReason.textContent = ui.removedWait.textContent = "";
      return;
    }
    let title = t("kicked");
    if (gone.action === "ban") {
      title = gone.until === undefined ? t("bannedUnknown")
        : gone.until === null ? t("bannedForever") : t("bannedUntil", untilText(gone.until));
    }
    ui.removedTitle.textContent = title;
    ui.removedReason.textContent = gone.reason ? t("reasonIs", gone.reason) : "";
    ui.removedWait.textContent = gone.action === "ban" && typeof gone.until === "number" ? t("banEnds") : "";
  }

  // An end as this reader's clock shows it: the time if today, else the
  // date and time.
  function untilText(ms) {
    const date = new Date(ms);
    const time = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
    if (dayKey(ms) === dayKey(Date.now())) return time;
    return `${pad(date.getDate())}/${pad(date.getMonth() + 1)}/${date.getFullYear()} ${time}`;
  }

  function scheduleRetry() {
    const wait = state.backoff + Math.floor(Math.random() * 500);
    state.backoff = Math.min(state.backoff * 2, 30000);
    state.retryAt = Date.now() + wait;
    state.retryTimer = setTimeout(connect, wait);
    state.countdown = setInterval(renderCountdown, 1000);
    renderCountdown();
    ui.retryNow.hidden = false;
  }

  function renderCountdown() {
    const seconds = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
    const signIn = state.signInMisses >= SIGN_IN_MISSES && !state.token;
    setStatus("off", signIn ? "needsSignInRetry" : "reconnecting", seconds);
  }

  function clearRetry() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdown);
    ui.retryNow.hidden = true;
  }

  function disconnect() {
    state.wanted = false;
    clearRetry();
    if (state.ws) lose(state.ws);
    // Nothing will carry them now: say so, and offer Retry.
    for (const entry of state.outbox) fail(entry, { reason: "lost" });
    state.outbox = [];
    setStatus("off", "disconnected");
    renderConnection();  // between retries there was no socket to lose
  }

  // Server pings (every S seconds) prove the connection alive; once we have
  // seen one, silence for max(3S, 15) s means it is gone even though the
  // socket still looks open (a paused server, a dead NAT mapping).
  function noteFrame(ws) {
    if (!state.pingTimeout) return;
    clearTimeout(state.watchdog);
    // setTimeout fires at once past 2^31 - 1 ms: a huge --json-ping must
    // not make every client reconnect in a loop.
    const limit = Math.min(Math.max(3 * state.pingTimeout, 15) * 1000, 2 ** 31 - 1);
    state.watchdog = setTimeout(() => lose(ws), limit);
  }

  function isOpen() { return state.ws && state.ws.readyState === WebSocket.OPEN; }

  function transmit(message) {
    if (!isOpen()) return false;
    state.ws.send(JSON.stringify(message));
    return true;
  }

  // Messages in flight go back to the front of the outbox: each keeps its
  // send_id, so resending after the rejoin cannot store it twice.
  function dropInFlight() {
    state.askedName = null;
    state.gets = [];
    state.getInFlight = null;
    state.modAsked = [];
    if (state.sending) { state.outbox.unshift(state.sending); state.sending = null; }
    for (const entry of state.outbox) renderState(entry.item);
    renderComposer();
  }

  // -- replies and events ------------------------------------------------------

  function handle(message) {
    switch (message.type) {
      case "ping":
        if (typeof message.timeout === "number" && message.timeout > 0) {
          state.pingTimeout = message.timeout;
          noteFrame(state.ws);
        }
        return undefined;
      case "name": return onName(message);
      case "send": return onSend(message);
      case "get": return onGet(message);
      case "online": return onOnline(message);
      case "receive": return onEvent(message);
      case "moderation": return onModeration(message);
      case "auth": return onAuth(message);
      case "moderate": return onModerate(message);
      default: return undefined;  // anything newer than this client
    }
  }

  function reason(message) {
    const text = TEXT[state.lang][message.reason];
    if (typeof text === "function") return text(message.retry_after);
    // A reserved or banned nickname is refused as a taken one (v2's
    // reply, so the classic client shows its usual alert); the hint is ours.
    if (message.reason === "NameAlreadyUsed" && Object.hasOwn(NAME_HINTS, message.error)) {
      if (message.error === "token") return state.auth ? `${text} ${t("nameToken", state.auth.name)}` : text;
      return `${text} ${t(NAME_HINTS[message.error])}`;
    }
    return text || t("failedGeneric", message.error || message.reason);
  }

  function requestName(name) {
    state.askedName = name;
    ui.nameError.textContent = "";
    ui.renameError.textContent = "";
    transmit({ type: "name", name });
  }

  function onName(message) {
    const asked = state.askedName;
    state.askedName = null;
    if (!message.status) return onNameRefused(message, asked);
    if (message.action === "change") {
      state.myName = message.newname;
      state.meVerified = message.verified === true;
      noteVerified(message.oldname, false);
      noteVerified(message.newname, state.meVerified);
      rememberName(state.myName);
      renameInOnline(message.oldname, message.newname);
      notice("youRenamed", message.newname);
      openMenu(false);
      ui.content.focus();
      return undefined;
    }
    state.myName = message.name;
    state.registered = true;
    state.rejoins = 0;
    state.meVerified = message.verified === true;
    noteVerified(state.myName, state.meVerified);
    rememberName(state.myName);
    setStatus("ok", "connected");
    renderJoined();
    renderModeration();
    if (state.focusOnJoin) { state.focusOnJoin = false; ui.content.focus(); }
    // A new session: the latest page, or everything missed since lastId.
    if (state.lastId) requestGet({ after: state.lastId }, "catchup");
    else requestGet({ limit: PAGE }, "latest");
    pumpSend();
    return undefined;
  }

  function onNameRefused(message, asked) {
    if (message.action !== "register") {
      ui.renameError.textContent = reason(message);
      return;
    }
    // Rejoining after a drop or a reload: the server may not have noticed
    // yet that our previous connection is gone, so "taken" is retried.
    const ours = asked !== null && (asked === state.myName || asked === state.savedName
      || (state.auth !== null && asked === state.auth.name));
    const forGood = Object.hasOwn(NAME_HINTS, message.error);  // it will not come free
    if (message.reason === "NameAlreadyUsed" && ours && !forGood && state.rejoins < REJOIN_TRIES) {
      state.rejoins += 1;
      setStatus("busy", "rejoining", asked);
      setTimeout(() => { if (isOpen() && !state.registered) requestName(asked); }, 1500);
      return;
    }
    state.myName = null;
    state.rejoins = 0;
    renderJoined();
    if (asked) ui.name.value = asked;
    ui.nameError.textContent = reason(message);
    setStatus("busy", "pickName");
    transmit({ type: "online" });
  }

  // kick and ban: kept for the close that follows (closed()); mute and
  // unmute: the composer says so at once.
  function onModeration(message) {
    const until = Number.isFinite(message.until) ? message.until : null;
    const why = typeof message.reason === "string" && message.reason ? message.reason : null;
    if (message.action === "kick" || message.action === "ban") {
      state.parting = { ws: state.ws, action: message.action, reason: why, until };
    } else if (message.action === "mute") {
      setMute({ reason: why, until });
    } else if (message.action === "unmute") {
      setMute(null);
      flash("unmuted");
    }
  }

  // The server's word on our token. Good: its nickname is ours, the field
  // is locked to it, and we join with it. Refused: the token is dropped at
  // once; the close (4401) that follows says why on the page.
  function onAuth(message) {
    if (message.status === true && typeof message.name === "string") {
      const waiting = state.authTimer !== null;
      clearTimeout(state.authTimer);
      state.authTimer = null;
      state.auth = {
        name: message.name,
        roles: Array.isArray(message.roles) ? message.roles.filter((r) => typeof r === "string") : [],
        rooms: Array.isArray(message.rooms) ? message.rooms.filter((r) => typeof r === "string") : null,
        expires: Number.isFinite(message.expires) ? message.expires : Infinity,
      };
      ui.name.value = message.name;
      renderSignedIn();
      renderJoined();
      if (waiting && !state.registered && state.askedName === null) begin();
      else renderModeration();
    } else if (message.status === false && TOKEN_REASONS.has(message.reason)) {
      clearTimeout(state.authTimer);
      state.authTimer = null;
      keepToken(null);
      state.auth = null;
      state.parting = { ws: state.ws, action: "auth", reason: message.reason };
      // Refused in an `auth` request: no close follows; said the same way.
      if (state.tokenInRequest) removed("auth", message.reason);
    } else if (message.status === false && message.reason === "AuthDisabled"
               && state.authTimer !== null) {
      state.tokenIgnored = true;  // --auth off: on as a guest
      begin();
    }
  }

  // Signed in: the nickname field holds the token's name and cannot be
  // changed, and says why.
  function renderSignedIn() {
    ui.name.readOnly = state.auth !== null;
    ui.signedIn.textContent = state.auth ? t("signedInAs", state.auth.name) : "";
  }

  // -- moderator controls (issue 15) ------------------------------------------

  // A moderator of this room, by our token's word, until it expires. The
  // server decides each request again; this only says what to show.
  function moderating() {
    const auth = state.auth;
    return Boolean(auth && state.registered && auth.roles.includes("moderator")
      && (auth.rooms === null || auth.rooms.includes(ROOM)) && Date.now() < auth.expires);
  }

  function renderModeration() {
    const mod = moderating();
    clearTimeout(state.modTimer);
    if (mod && Number.isFinite(state.auth.expires)) {
      state.modTimer = setTimeout(renderModeration,
        Math.min(Math.max(state.auth.expires - Date.now(), 0) + 50, 2 ** 31 - 1));
    }
    ui.modTools.hidden = !mod;
    if (!mod) closePerson(false);
    decorate();
    renderOnline();
  }

  function deleteControl(node, on) {
    node.querySelector(".mod-delete")?.remove();
    node.toggleAttribute("data-mod", on);
    if (!on) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "mod-delete small quiet";
    button.addEventListener("click", () => {
      const id = Number(node.dataset.id);
      if (Number.isSafeInteger(id) && id > 0) moderate({ action: "delete", ids: [id] });
    });
    node.querySelector(".bubble").append(button);
    fillDelete(button);
  }

  // "Delete", and for a screen reader whose message it deletes.
  function fillDelete(button) {
    const name = button.closest(".message").dataset.name;
    const more = document.createElement("span");
    more.className = "visually-hidden";
    more.textContent = ` (${t("deleteFrom", name)})`;
    button.replaceChildren(t("deleteMessage"), more);
  }

  function personControl(name) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "mod-open small quiet";
    button.dataset.name = name;
    button.setAttribute("aria-expanded", String(state.modTarget === name));
    button.setAttribute("aria-controls", "mod-person");
    const dots = document.createElement("span");
    dots.setAttribute("aria-hidden", "true");
    dots.textContent = "⋯";
    const words = document.createElement("span");
    words.className = "visually-hidden";
    words.textContent = t("moderate", name);
    button.append(dots, words);
    button.addEventListener("click", () => openPerson(state.modTarget === name ? null : name));
    return button;
  }

  function openPerson(name) {
    state.modTarget = name;
    state.modConfirm = false;
    renderModPanel();
    renderOnline();
    if (name !== null) ui.modPersonTitle.focus();
  }

  function closePerson(refocus = true) {
    const was = state.modTarget;
    if (was === null) return;
    state.modTarget = null;
    state.modConfirm = false;
    renderModPanel();
    renderOnline();
    if (refocus) {
      // Back to the person's button, once the list is painted.
      requestAnimationFrame(() => {
        const button = Array.from(ui.onlineList.querySelectorAll(".mod-open"))
          .find((each) => each.dataset.name === was);
        (button || ui.modTitle).focus();
      });
    }
  }

  function options(select, values, label) {
    const chosen = select.value;
    select.replaceChildren(...values.map((value) => {
      const option = document.createElement("option");
      option.value = String(value);
      option.textContent = label(value);
      return option;
    }));
    if (chosen) select.value = chosen;
  }

  function duration(seconds) {
    if (seconds === 0) return t("slowOff");
    if (seconds % 86400 === 0) return t("days", seconds / 86400);
    if (seconds % 3600 === 0) return t("hours", seconds / 3600);
    if (seconds % 60 === 0) return t("minutes", seconds / 60);
    return t("seconds", seconds);
  }

  function renderModPanel() {
    options(ui.slowSelect, SLOW, duration);
    options(ui.muteSelect, MUTES, duration);
    const name = state.modTarget;
    ui.modPerson.hidden = name === null;
    ui.kickConfirm.hidden = name === null || !state.modConfirm;
    ui.kickButton.hidden = state.modConfirm;
    if (name === null) return;
    fillNames(ui.modPersonTitle, t("moderating", ...marks([name])), [name]);
    fillNames(ui.kickQuestion, t("kickConfirm", ...marks([name])), [name]);
  }

  function moderate(request) {
    if (!moderating()) return;
    if (!transmit({ type: "moderate", ...request })) return;
    state.modAsked.push({ action: request.action, name: request.name ?? null });
  }

  // Replies are matched by action: the oldest request of that action.
  function onModerate(message) {
    const at = state.modAsked.findIndex((asked) => asked.action === message.action);
    const asked = at >= 0 ? state.modAsked.splice(at, 1)[0] : { name: null };
    const name = typeof message.name === "string" ? message.name : asked.name ?? "";
    let said;
    if (message.status === true) {
      switch (message.action) {
        case "delete": said = ["modDeleted", Array.isArray(message.ids) ? message.ids.length : 0]; break;
        case "kick": said = ["modKicked", name]; break;
        case "mute":
          said = ["modMuted", name, Number.isFinite(message.until) ? untilText(message.until) : "?"];
          break;
        case "unmute": said = ["modUnmuted", name]; break;
        case "slow":
          if (Number.isSafeInteger(message.seconds)) {
            if (SLOW.includes(message.seconds)) ui.slowSelect.value = String(message.seconds);
            said = ["modSlow", message.seconds];
          }
          break;
        default: break;
      }
      if (message.action === "kick" && state.modTarget === name) closePerson();
    } else {
      const error = typeof message.error === "string" && message.error ? message.error : message.reason;
      switch (message.reason) {
        case "NotModerator": said = ["modNotModerator"]; break;
        case "NoSuchUser": said = message.action === "unmute" ? ["modNoSuchMute", name] : ["modNoSuchUser"]; break;
        case "Refused": said = ["modRefused", error]; break;
        case "WrongFormatArgument": said = ["modWrong", String(message.field ?? "")]; break;
        case "RateLimited": said = ["RateLimited", message.retry_after]; break;
        case "ErrorWhenModerate": said = ["modError"]; break;
        default: said = ["failedGeneric", error]; break;
      }
    }
    if (said) {
      state.modStatus = { key: said[0], args: said.slice(1) };
      renderModStatus();
    }
  }

  function renderModStatus() {
    ui.modStatus.textContent = state.modStatus ? t(state.modStatus.key, ...state.modStatus.args) : "";
  }

  function onOnline(message) {
    if (message.status && typeof message.count === "number") {
      state.onlineCount = message.count;
      renderWelcome();
      renderOnline();
    }
  }

  function onEvent(message) {
    switch (message.datatype) {
      case "message":
        stopTyping(message.name);
        receiveMessage(message);
        return;
      case "typing":
        if (message.name !== state.myName) startTyping(message.name);
        return;
      case "delete":
        removeMessages(message.ids);
        return;
      case "register":
        if (!state.online.includes(message.name)) state.online.push(message.name);
        noteVerified(message.name, message.verified === true);
        notice("joined", message.name);
        break;
      case "change":
        stopTyping(message.oldname);
        noteVerified(message.oldname, false);
        noteVerified(message.newname, message.verified === true);
        renameInOnline(message.oldname, message.newname);
        notice("renamed", message.oldname, message.newname);
        break;
      case "leave":
        stopTyping(message.name);
        state.online = state.online.filter((n) => n !== message.name);
        noteVerified(message.name, false);
        notice("left", message.name);
        break;
      default:
        return;
    }
    renderOnline();
  }

  // The online nicknames that are verified: from each `get`, then kept by
  // the events (a register or change says so; a leave or a change without
  // it ends it).
  function noteVerified(name, verified) {
    if (typeof name !== "string") return;
    if (verified) state.verified.add(name);
    else state.verified.delete(name);
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
      const got = message.data.message;
      state.online = message.data.online.slice();
      const verified = Array.isArray(message.data.verified) ? message.data.verified : [];
      state.verified = new Set(verified.filter((name) => typeof name === "string"));
      renderOnline();
      if (request.purpose === "older") {
        const keep = ui.messages.scrollHeight - ui.messages.scrollTop;
        addMessages(got, "prepend");
        ui.messages.scrollTop = ui.messages.scrollHeight - keep;
        if (got.length < PAGE) markStart();
      } else {
        const stick = atBottom();
        const added = addMessages(got, "append");
        if (request.purpose === "latest" && got.length < PAGE) markStart();
        if (stick || request.purpose === "latest") scrollToBottom();
        else if (added) noteUnread(added);
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
    if (state.atStart || state.oldestId === null || !state.registered) return;
    if (state.getInFlight || state.gets.some((g) => g.purpose === "older")) return;
    requestGet({ before: state.oldestId, limit: PAGE }, "older");
  }

  // -- messages ------------------------------------------------------------------------

  // An operator deleted these: off the screen, and never shown again, even
  // if a page of history fetched before the deletion still holds one. A
  // removal is not announced (the log region reads additions only): a
  // flood of spam deleted must not become a flood of words.
  function removeMessages(ids) {
    if (!Array.isArray(ids)) return;
    const nodes = [];
    for (const id of ids) {
      if (!Number.isSafeInteger(id)) continue;
      state.deleted.add(id);
      state.seen.delete(id);
      const node = ui.list.querySelector(`.message[data-id="${id}"]`);
      if (node) nodes.push(node);
    }
    if (!nodes.length) return;
    const stick = atBottom();
    // The unread ones are the latest few: those deleted are not waiting.
    if (state.unread) {
      const latest = new Set(Array.from(ui.list.querySelectorAll(".message")).slice(-state.unread));
      state.unread = Math.max(0, state.unread - nodes.filter((node) => latest.has(node)).length);
    }
    const focused = nodes.some((node) => node.contains(document.activeElement));
    for (const node of nodes) node.remove();
    if (focused) ui.messages.focus();
    decorate();
    if (stick) scrollToBottom();
    renderUnread();
  }

  // "At the bottom" is decided before the new node exists: measured after,
  // any message taller than the threshold looked like scrolling up.
  function receiveMessage(message) {
    const stick = atBottom();
    if (!addMessages([message], "append")) return;
    const mention = message.name !== state.myName && mentions(message.content);
    if (stick) scrollToBottom();
    if (!stick || document.hidden) noteUnread(1);
    if (document.hidden || (mention && !stick)) alertUser(message, mention);
    else if (mention && state.sound) beep();
  }

  // Adds entries not seen (nor deleted) yet, keeping the list in id order;
  // returns how many.
  function addMessages(list, where) {
    const fresh = list.filter((m) => typeof m.id !== "number"
      || (!state.seen.has(m.id) && !state.deleted.has(m.id)));
    const nodes = fresh.map((m) => {
      if (typeof m.id === "number") {
        state.seen.add(m.id);
        state.lastId = Math.max(state.lastId, m.id);
        state.oldestId = state.oldestId === null ? m.id : Math.min(state.oldestId, m.id);
      }
      const name = String(m.name ?? "");
      const content = String(m.content ?? "");
      const announcement = m.announcement === true;
      const node = messageNode(name, content, messageTime(m), m.id,
        !announcement && name === state.myName, announcement, !announcement && m.verified === true);
      return node;
    });
    if (!nodes.length) return 0;
    if (where === "prepend") ui.list.prepend(...nodes);
    else ui.list.append(...nodes);
    decorate();
    return nodes.length;
  }

  // Epoch ms: the ext `time`, else the v2 timestamp read as local time
  // (the server's zone is unknown; servers before `time` and v2 history).
  // Whatever a server sends, a page of history must still show: a time no
  // Date can hold falls back to the v2 text, and that to none.
  function messageTime(m) {
    if (Number.isFinite(m.time) && Math.abs(m.time) <= 8.64e15) return m.time;
    const match = /^(\d{2})\/(\d{2})\/(\d{4}), (\d{2}):(\d{2}):(\d{2})$/.exec(m.timestamp || "");
    if (!match) return null;
    const [, d, mo, y, h, mi, s] = match.map(Number);
    return new Date(y, mo - 1, d, h, mi, s).getTime();
  }

  function messageNode(name, content, time, id, mine, announcement = false, verified = false) {
    const item = document.createElement("li");
    item.className = "message" + (mine ? " mine" : "") + (announcement ? " announcement" : "");
    item.dataset.name = name;
    if (verified) item.dataset.verified = "1";
    if (typeof id === "number") item.dataset.id = String(id);
    const avatar = announcement ? announcerMark() : avatarOf(name);
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = name;
    const when = document.createElement("time");
    when.className = "when";
    if (announcement) {
      // Said in words, not by colour alone, and first, so a screen
      // reader reads it first too.
      const label = document.createElement("strong");
      label.className = "announce-label";
      label.textContent = t("announcement");
      meta.append(label, " ");
    }
    meta.append(who, " ");
    if (verified) meta.append(verifiedBadge(), " ");
    meta.append(when);
    const text = document.createElement("p");
    text.className = "text";
    const mention = !mine && mentions(content);
    renderText(text, content, !mine);
    item.classList.toggle("mention", mention);
    bubble.append(meta, text);
    item.append(avatar, bubble);
    setTime(item, time);
    return item;
  }

  function setTime(item, time) {
    const when = item.querySelector(".when");
    if (time === null) { delete item.dataset.time; when.textContent = ""; return; }
    item.dataset.time = String(time);
    when.dateTime = new Date(time).toISOString();
    renderWhen(when);
  }

  function renderWhen(when) {
    const time = Number(when.closest(".message").dataset.time);
    if (!time) return;
    const date = new Date(time);
    when.textContent = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
    when.title = date.toLocaleString(LOCALE[state.lang], {
      weekday: "long", day: "numeric", month: "long", year: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  // Text nodes, with http(s) links as <a> elements and our nickname marked.
  function renderText(into, content, marking) {
    let at = 0;
    for (const match of content.matchAll(LINK)) {
      const url = linkEnd(match[0]);
      appendMentions(into, content.slice(at, match.index), marking);
      let href = null;
      try { href = new URL(url); } catch (e) { /* not a URL after all */ }
      if (href && (href.protocol === "http:" || href.protocol === "https:")) {
        const link = document.createElement("a");
        link.href = href.href;
        // A link whose text reorders itself ("…/\u202Egpj.exe" shows as
        // "…exe.jpg") shows where it really goes instead.
        link.textContent = /[\u200E\u200F\u202A-\u202E\u2066-\u2069]/.test(url) ? href.href : url;
        link.rel = "noopener noreferrer";
        link.target = "_blank";
        into.append(link);
      } else {
        into.append(url);
      }
      at = match.index + url.length;
    }
    appendMentions(into, content.slice(at), marking);
  }

  // Punctuation after a link is the sentence's, and so is a closing
  // bracket the link did not open: "(see https://x.org/a)" but
  // "https://en.wikipedia.org/wiki/Python_(language)".
  function linkEnd(url) {
    const trailing = /[.,;:!?\]'"]+$/;
    url = url.replace(trailing, "");
    const count = (c) => url.split(c).length - 1;
    while (url.endsWith(")") && count(")") > count("(")) {
      url = url.slice(0, -1).replace(trailing, "");
    }
    return url;
  }

  function appendMentions(into, text, marking) {
    const pattern = marking ? mentionPattern() : null;
    if (!pattern || !text) { if (text) into.append(text); return; }
    let at = 0;
    for (const match of text.matchAll(pattern)) {
      if (!standsAlone(text, match.index, match[0].length)) continue;
      into.append(text.slice(at, match.index));
      const mark = document.createElement("mark");
      mark.textContent = match[0];
      into.append(mark);
      at = match.index + match[0].length;
    }
    into.append(text.slice(at));
  }

  // A mention is @ and the nickname, as in every chat app: a bare name
  // would not do here, where "An" and "Phím" are everyday words too.
  function mentionPattern() {
    if (!state.myName || !state.myName.trim()) return null;
    const escaped = state.myName.trim().replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    return new RegExp(`@${escaped}`, "giu");
  }

  // "@An" mentions An; "@Anh", "x@An" do not.
  function standsAlone(text, index, length) {
    const word = /[\p{L}\p{N}\p{M}]/u;
    return !word.test(text[index - 1] || "") && !word.test(text[index + length] || "");
  }

  function mentions(content) {
    const pattern = mentionPattern();
    if (!pattern) return false;
    for (const match of content.matchAll(pattern)) {
      if (standsAlone(content, match.index, match[0].length)) return true;
    }
    return false;
  }

  // An operator's announcement has a megaphone where a person's initial goes.
  function announcerMark() {
    const mark = document.createElement("span");
    mark.className = "avatar announcer";
    mark.setAttribute("aria-hidden", "true");
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "18");
    svg.setAttribute("height", "18");
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("fill", "currentColor");
    path.setAttribute("d", "M3 10v4a1 1 0 0 0 1 1h2l1.5 5h2.5l-1.4-5H9l8 4V5L9 9H4a1 1 0 0 0-1 1zm16-1.5v7a3.5 3.5 0 0 0 0-7z");
    svg.append(path);
    mark.append(svg);
    return mark;
  }

  // A verified nickname's check mark: a shape, a word for screen readers,
  // and a tooltip, so it is never colour alone.
  function verifiedBadge() {
    const badge = document.createElement("span");
    badge.className = "verified-badge";
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "14");
    svg.setAttribute("height", "14");
    svg.setAttribute("aria-hidden", "true");
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("fill", "currentColor");
    path.setAttribute("d", "M12 1l3 2.6 3.9-.3.9 3.8 3.3 2.1-1.6 3.6 1.6 3.6-3.3 2.1-.9 3.8-3.9-.3L12 23l-3-2.6-3.9.3-.9-3.8-3.3-2.1L2.5 11.2.9 7.6l3.3-2.1.9-3.8 3.9.3zm-1.2 14.6l6.3-6.3-1.5-1.5-4.8 4.8-2.3-2.3L7 11.8z");
    svg.append(path);
    const word = document.createElement("span");
    word.className = "visually-hidden verified-word";
    badge.append(svg, word);
    renderBadge(badge);
    return badge;
  }

  function renderBadge(badge) {
    badge.title = t("verified");
    badge.querySelector(".verified-word").textContent = `(${t("verified")})`;
  }

  // A stable colour and initial per nickname, from a hash of it.
  // The name beside it says who it is; the avatar only helps the eye.
  function avatarOf(name) {
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.setAttribute("aria-hidden", "true");
    paintPerson(avatar, name);
    return avatar;
  }

  // Twelve hues far apart, picked by FNV-1a: hue = hash % 360 gave
  // "Student 1" and "Student 2" colours one degree apart.
  const HUES = [210, 0, 130, 35, 275, 180, 330, 85, 245, 15, 300, 160];
  function paintPerson(el, name) {
    let hash = 0x811c9dc5;
    for (let i = 0; i < name.length; i++) {
      hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193) >>> 0;
    }
    el.style.setProperty("--hue", String(HUES[hash % HUES.length]));
    const first = name.trim() || "?";
    const segment = typeof Intl.Segmenter === "function"
      ? new Intl.Segmenter().segment(first)[Symbol.iterator]().next().value.segment
      : Array.from(first)[0];
    el.textContent = segment.toLocaleUpperCase();
  }

  function dayKey(time) {
    const d = new Date(time);
    return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
  }

  function dayLabel(time) {
    const now = new Date();
    if (dayKey(time) === dayKey(now.getTime())) return t("today");
    const yesterday = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1);
    if (dayKey(time) === dayKey(yesterday.getTime())) return t("yesterday");
    const d = new Date(time);
    return `${pad(d.getDate())}/${pad(d.getMonth() + 1)}/${d.getFullYear()}`;
  }

  // Day separators, grouping by sender and minute, and where "sent" shows.
  // One pass over the list after each change: cheap next to layout, and
  // separators already right stay untouched (the log region would
  // announce them again).
  function decorate() {
    const mod = moderating();
    const keep = new Set();
    let prev = null;
    let prevDay = null;
    let latestSent = null;
    for (const node of Array.from(ui.list.children)) {
      if (!node.classList.contains("message")) {
        if (node.classList.contains("notice")) prev = null;
        continue;
      }
      const time = Number(node.dataset.time) || null;
      const day = time ? dayKey(time) : prevDay;
      if (day !== prevDay && time) {
        let sep = node.previousElementSibling;
        if (!sep || !sep.classList.contains("day") || sep.dataset.day !== day || keep.has(sep)) {
          sep = document.createElement("li");
          sep.className = "day";
          sep.dataset.day = day;
          node.before(sep);
        }
        sep.textContent = dayLabel(time);
        keep.add(sep);
        prev = null;
      }
      prevDay = day;
      const sameGroup = prev && prev.dataset.name === node.dataset.name
        && prev.nextElementSibling === node
        && !node.classList.contains("announcement") && !prev.classList.contains("announcement")
        && prev.dataset.verified === node.dataset.verified
        && Math.floor(Number(prev.dataset.time) / 60000) === Math.floor((time || 0) / 60000);
      node.classList.toggle("cont", Boolean(sameGroup));
      if (Boolean(mod && node.dataset.id) !== node.hasAttribute("data-mod")) deleteControl(node, mod);
      prev = node;
      if (node.dataset.state === "sent") latestSent = node;
    }
    for (const sep of ui.list.querySelectorAll(".day")) if (!keep.has(sep)) sep.remove();
    for (const node of ui.list.querySelectorAll(".message[data-state]")) {
      renderState(node, node === latestSent);
    }
  }

  function notice(key, ...args) {
    const stick = atBottom();
    if (!foldNotice(key, args)) {
      const item = document.createElement("li");
      item.className = "notice";
      item.dataset.key = key;
      item.dataset.args = JSON.stringify(args);
      item.dataset.at = String(Date.now());
      renderNotice(item);
      ui.list.append(item);
      decorate();
    }
    if (stick) scrollToBottom();
  }

  // Joins (or leaves) in a row within a minute share one line, "A, B and
  // 298 others joined": a class reloading at once must not push the
  // conversation out of sight with 300 lines of it.
  function foldNotice(key, args) {
    const last = ui.list.lastElementChild;
    if ((key !== "joined" && key !== "left") || !last || last.dataset.key !== key) return false;
    if (Date.now() - Number(last.dataset.at) > 60000) return false;
    const names = JSON.parse(last.dataset.args);
    names.push(...args);
    last.dataset.args = JSON.stringify(names);
    renderNotice(last);
    return true;
  }

  function renderNotice(item) {
    const args = JSON.parse(item.dataset.args);
    const key = item.dataset.key;
    if ((key === "joined" || key === "left") && args.length > 1) {
      const shown = args.slice(0, 2);
      const who = args.length === 2 ? t("twoPeople", ...marks(shown))
        : t("manyPeople", ...marks(shown), args.length - 2);
      fillNames(item, t(key, who), shown);
      item.title = args.join(", ");
      return;
    }
    fillNames(item, t(key, ...marks(args)), args);
  }

  // -- sending -------------------------------------------------------------------------------

  // One id per message, kept across every retry: the server answers a
  // repeat with the original reply instead of storing it again.
  function newSendId() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));  // randomUUID needs https
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function queueSend(content) {
    const item = messageNode(state.myName, content, Date.now(), null, true, false, state.meVerified);
    item.dataset.state = "pending";
    const entry = { content, item, sendId: newSendId() };
    entries.set(item, entry);
    ui.list.append(item);
    decorate();
    scrollToBottom();
    state.outbox.push(entry);
    pumpSend();
  }

  function pumpSend() {
    if (state.sending || !state.outbox.length || !isOpen() || !state.registered) return;
    const wait = state.holdUntil - Date.now();
    if (wait > 0) { setTimeout(pumpSend, wait); return; }
    state.sending = state.outbox.shift();
    renderState(state.sending.item);
    transmit({ type: "send", content: state.sending.content, send_id: state.sending.sendId });
  }

  function onSend(message) {
    const entry = state.sending;
    state.sending = null;
    if (!entry) return;
    if (message.status && state.deleted.has(message.id)) {
      entry.item.remove();  // stored, then deleted before this reply came
      decorate();
    } else if (message.status) {
      const item = entry.item;
      // The history fetched after a reconnect may already hold it (stored
      // before the drop, the reply lost): ours takes its place, in id order.
      const twin = ui.list.querySelector(`.message[data-id="${Number(message.id)}"]`);
      if (twin && twin !== item) twin.replaceWith(item);
      item.dataset.state = "sent";
      if (typeof message.id === "number") {
        item.dataset.id = String(message.id);
        state.seen.add(message.id);
        state.lastId = Math.max(state.lastId, message.id);
      }
      setTime(item, messageTime(message) ?? Number(item.dataset.time));
      decorate();
    } else if (message.reason === "RateLimited") {
      state.outbox.unshift(entry);
      state.holdUntil = Date.now() + message.retry_after * 1000;
    } else if (message.reason === "Muted" || message.reason === "SlowMode") {
      held(entry, message);
    } else {
      fail(entry, message);
    }
    pumpSend();
  }

  // Muted, or slow mode: nothing is resent by itself. The words go back
  // into the box, where they were typed (with any queued behind them, as
  // they would be refused too), and the composer says how long to wait.
  function held(entry, message) {
    const wait = Number.isFinite(message.retry_after) && message.retry_after > 0
      ? message.retry_after : 1;
    const back = [entry, ...state.outbox];
    state.outbox = [];
    for (const each of back) each.item.remove();
    decorate();
    const typed = ui.content.value;
    ui.content.value = [...back.map((each) => each.content), typed].filter(Boolean).join("\n");
    renderCounter();
    if (message.reason === "Muted") {
      // The server's `error` is the operator's reason; the notice's, if
      // one came, is the same.
      const why = state.mute && state.mute.reason ? state.mute.reason
        : typeof message.error === "string" && message.error ? message.error : null;
      setMute({ reason: why, until: Date.now() + wait * 1000 });
    } else holdSlow(wait);
  }

  function holdSlow(seconds) {
    clearInterval(state.slowTimer);
    state.slow = { until: Date.now() + seconds * 1000, told: Math.ceil(seconds) };
    state.slowTimer = setInterval(tickSlow, 1000);
    renderNote();
    renderComposer();
  }

  function tickSlow() {
    if (state.slow && Date.now() >= state.slow.until) {
      clearInterval(state.slowTimer);
      state.slow = null;
      renderNote();
    }
    renderComposer();
  }

  function slowLeft() {
    return state.slow ? Math.max(1, Math.ceil((state.slow.until - Date.now()) / 1000)) : 0;
  }

  // `mute`: { reason, until } (until in epoch ms, null for no end), or null.
  function setMute(mute) {
    clearTimeout(state.muteTimer);
    state.mute = mute;
    if (mute && mute.until !== null) waitForMuteEnd();
    renderNote();
  }

  function waitForMuteEnd() {
    const left = state.mute.until - Date.now();
    if (left <= 0) { state.mute = null; flash("unmuted"); return; }
    state.muteTimer = setTimeout(waitForMuteEnd, Math.min(left, 2 ** 31 - 1));
  }

  // A line said once (role=status), cleared a few seconds later.
  function flash(key) {
    clearTimeout(state.flashTimer);
    state.flash = key;
    renderNote();
    state.flashTimer = setTimeout(() => { state.flash = null; renderNote(); }, FEEDBACK_SHOWN);
  }

  // The composer's one line about sending: muted, slow mode, or a passing
  // word. Slow mode's seconds are those when it was said: the countdown
  // is on the Send button, as a live region counting would be read out
  // every second.
  function renderNote() {
    let text = "";
    if (state.mute) {
      const until = state.mute.until === null ? t("mutedForever") : t("mutedUntil", untilText(state.mute.until));
      text = state.mute.reason ? `${until} ${t("reasonIs", state.mute.reason)}` : until;
    } else if (state.slow) text = t("SlowMode", state.slow.told);
    else if (state.flash) text = t(state.flash);
    ui.note.textContent = text;
  }

  // The refusal is kept, not its words, so a language switch translates
  // it too: `{reason: "lost"}`, or the server's reply.
  function fail(entry, refusal) {
    entry.item.dataset.state = "failed";
    entry.item.dataset.refusal = JSON.stringify(refusal);
    renderState(entry.item);
  }

  function retry(entry) {
    entry.item.dataset.state = "pending";
    ui.list.append(entry.item);  // it is sent now, so it goes last
    state.outbox.push(entry);
    decorate();
    scrollToBottom();
    if (!state.ws) connect();
    pumpSend();
  }

  // "sent" shows on our latest message only; pending and failed always.
  function renderState(item, latest = false) {
    const key = item.dataset.state;
    item.classList.toggle("failed", key === "failed");
    let label = item.querySelector(".state");
    item.querySelector(".retry")?.remove();
    if (key === "sent" && !latest) { label?.remove(); return; }
    if (!label) {
      label = document.createElement("span");
      label.className = "state";
      item.querySelector(".bubble").append(label);
    }
    if (key === "failed") {
      label.textContent = `${t("failed")}: ${reason(JSON.parse(item.dataset.refusal))}`;
    }
    else if (key === "pending") label.textContent = isOpen() ? t("pending") : t("waiting");
    else label.textContent = t("sent");
    if (key === "failed" && !state.gone && !state.removed) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "retry small";
      button.textContent = t("retry");
      button.addEventListener("click", () => retry(entries.get(item)));
      label.after(button);
    }
  }

  // -- typing ----------------------------------------------------------------------------------

  function noteTyping() {
    if (!state.registered || !ui.content.value) return;
    const now = Date.now();
    if (now - state.typingSent < TYPING_EVERY) return;
    state.typingSent = now;
    transmit({ type: "typing" });
  }

  function startTyping(name) {
    clearTimeout(state.typers.get(name));
    state.typers.set(name, setTimeout(() => stopTyping(name), TYPING_SHOWN));
    renderTyping();
  }

  function stopTyping(name) {
    if (!state.typers.has(name)) return;
    clearTimeout(state.typers.get(name));
    state.typers.delete(name);
    renderTyping();
  }

  function clearTypers() {
    for (const timer of state.typers.values()) clearTimeout(timer);
    state.typers.clear();
    renderTyping();
  }

  function renderTyping() {
    const names = Array.from(state.typers.keys());
    if (names.length === 0) ui.typing.textContent = "";
    else if (names.length <= 2) {
      fillNames(ui.typing, t(names.length === 1 ? "typing1" : "typing2", ...marks(names)), names);
    } else ui.typing.textContent = t("typingMany", names.length);
  }

  // A sentence with nicknames in it, each its own <bdi> element: a name
  // such as "Linh left. Mallory" or one in a right-to-left script cannot
  // pass for, or reorder, the words around it. The sentence is translated
  // with a private-use mark in each name's place, then split at them.
  function marks(names) {
    return names.map((_, i) => `\uE000${i}\uE001`);
  }

  function fillNames(into, text, names) {
    const parts = text.split(/\uE000(\d+)\uE001/);
    into.replaceChildren(...parts.map((part, i) => {
      if (i % 2 === 0) return part;
      const name = document.createElement("bdi");
      name.textContent = names[Number(part)];
      return name;
    }));
  }

  // -- attention: unread count, sound, desktop notification --------------------------------------

  function noteUnread(count) {
    state.unread += count;
    renderUnread();
  }

  function clearUnread() {
    if (!state.unread) return;
    state.unread = 0;
    renderUnread();
  }

  function renderUnread() {
    ui.unread.hidden = state.unread === 0 || atBottom();
    ui.unread.textContent = t("unread", state.unread);
    document.title = state.unread ? `(${state.unread}) ${PAGE_TITLE}` : PAGE_TITLE;
  }

  function alertUser(message, mention) {
    if (state.sound) beep();
    if (!state.notify || typeof Notification !== "function" || Notification.permission !== "granted") return;
    const who = mention ? t("mentioned", message.name) : message.name;
    // Two rooms open in two tabs: each its own notification, saying which.
    const title = ROOM ? `${who} · ${ROOM}` : who;
    try {
      const shown = new Notification(title, { body: message.content.slice(0, 200), tag: `chatbox${ROOM_PATH}` });
      shown.onclick = () => { window.focus(); shown.close(); };
    } catch (e) { /* some mobile browsers only notify from a service worker */ }
  }

  // A short tone made on the spot: no sound file to ship or fetch.
  let lastBeep = 0;
  function beep() {
    // Twenty mentions a second from a classmate must not be twenty tones.
    if (Date.now() - lastBeep < 3000) return;
    lastBeep = Date.now();
    try {
      state.audio = state.audio || new AudioContext();
      const ctx = state.audio;
      if (ctx.state === "suspended") ctx.resume();
      const tone = ctx.createOscillator();
      const gain = ctx.createGain();
      tone.frequency.value = 880;
      gain.gain.setValueAtTime(0.08, ctx.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 0.25);
      tone.connect(gain).connect(ctx.destination);
      tone.start();
      tone.stop(ctx.currentTime + 0.25);
    } catch (e) { /* no audio here */ }
  }

  function setSound(on) {
    state.sound = on;
    ui.sound.checked = on;
    save("sound", on ? "1" : null);
    if (on) beep();  // made during the click, so autoplay rules allow it later
  }

  async function setNotify(on) {
    if (on && typeof Notification === "function" && Notification.permission !== "granted") {
      on = (await Notification.requestPermission()) === "granted";
    }
    state.notify = on && typeof Notification === "function";
    ui.notify.checked = state.notify;
    save("notify", state.notify ? "1" : null);
  }

  // -- rooms: the heading, the share link, the switcher ---------------------------------------

  // "class-7a · chatbox", where "chatbox" leads back to the default room.
  // The default room keeps its plain "chatbox".
  function renderHeading() {
    if (!ROOM) return;
    const room = document.createElement("bdi");
    room.className = "room";
    room.textContent = ROOM;
    const home = document.createElement("a");
    home.className = "home";
    home.href = "/";
    home.textContent = TITLE;
    const brand = document.createElement("span");
    brand.className = "brand";
    brand.append(" · ", home);
    ui.heading.replaceChildren(room, brand);
  }

  function shareUrl() {
    return `${location.origin}${ROOM_PATH || "/"}`;
  }

  // The clipboard API exists only on https (and localhost); elsewhere the
  // link is selected for the user to copy, as a last resort by hand.
  async function copyLink() {
    let copied = false;
    if (navigator.clipboard && typeof navigator.clipboard.writeText === "function") {
      try {
        await navigator.clipboard.writeText(shareUrl());
        copied = true;
      } catch (e) { /* not allowed here: select it instead */ }
    }
    if (!copied) {
      ui.shareUrl.focus();
      ui.shareUrl.select();
      try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
    }
    showFeedback(copied ? "copied" : touch.matches ? "copyByTouch" : "copyByHand");
  }

  function showFeedback(key) {
    clearTimeout(state.feedbackTimer);
    state.feedback = key;
    renderFeedback();
    if (key) state.feedbackTimer = setTimeout(() => showFeedback(null), FEEDBACK_SHOWN);
  }

  function renderFeedback() {
    ui.shareFeedback.textContent = state.feedback ? t(state.feedback) : "";
  }

  // Asked when the menu opens, at most once per ROOMS_EVERY: a menu opened
  // and closed in a loop must not become a request loop. No list, a
  // failed request, or an answer not as expected: no switcher, and no error.
  async function refreshRooms() {
    if (state.roomsLoading || Date.now() - state.roomsAt < ROOMS_EVERY) return;
    state.roomsLoading = true;
    state.roomsAt = Date.now();
    let rooms = [];
    try {
      const response = await fetch("/rooms", { cache: "no-store", headers: { accept: "application/json" } });
      if (response.ok) rooms = listedRooms(await response.json());
    } catch (e) { /* no list today */ }
    state.roomsLoading = false;
    state.rooms = rooms;
    renderRooms();
  }

  // Only names a room can have become links: the list is the server's,
  // but a link is built from it, so it is checked like input.
  function listedRooms(body) {
    const list = body && Array.isArray(body.rooms) ? body.rooms : [];
    return list
      .filter((room) => room && typeof room.name === "string" && ROOM_NAME.test(room.name))
      .map((room) => ({
        name: room.name,
        online: Number.isSafeInteger(room.online) && room.online >= 0 ? room.online : null,
      }));
  }

  // The listed rooms, and the default room first: the way back to it.
  // A room that is gone offers the same ways out, the main room at least.
  function renderRooms() {
    ui.rooms.hidden = state.rooms.length === 0;
    const shown = [{ name: "", online: null }, ...state.rooms];
    ui.roomList.replaceChildren(...(ui.rooms.hidden ? [] : roomItems(shown)));
    ui.goneList.replaceChildren(...(state.gone
      ? roomItems(shown.filter((room) => !ROOM || room.name !== ROOM)) : []));
  }

  function roomItems(shown) {
    return shown.map((room) => {
      const link = document.createElement("a");
      link.className = "room-link";
      link.href = `/${room.name}`;
      if (room.name === ROOM) link.setAttribute("aria-current", "page");
      const name = document.createElement("bdi");
      name.className = "room-name";
      name.textContent = room.name || t("mainRoom");
      link.append(name);
      if (room.online !== null) {
        const online = document.createElement("span");
        online.className = "room-online";
        online.textContent = t("roomOnline", room.online);
        link.append(" ", online);
      }
      const item = document.createElement("li");
      item.append(link);
      return item;
    });
  }

  // -- rendering --------------------------------------------------------------------------------

  function setStatus(kind, key, ...args) {
    state.status = { kind, key, args };
    renderStatus();
  }

  function renderStatus() {
    const { kind, key, args } = state.status;
    ui.status.dataset.kind = kind;
    ui.statusText.textContent = t(key, ...args);
  }

  function renderConnection() {
    ui.connection.textContent = state.ws || state.wanted ? t("disconnect") : t("connect");
    for (const entry of state.outbox) renderState(entry.item);
    renderComposer();
  }

  // Joined: the composer; not joined: the nickname form and welcome line.
  // A room that is gone: neither, and the way out instead.
  function renderJoined() {
    const joined = Boolean(state.myName);
    const out = state.gone || Boolean(state.removed);
    ui.gone.hidden = !state.gone;
    ui.nameForm.hidden = joined || out;
    ui.composer.hidden = out;
    // A token holder can only be its token's nickname: nothing to rename to.
    ui.renameSection.hidden = !joined || out || state.auth !== null;
    if (!joined) ui.name.value = ui.name.value || load("name") || "";
    renderComposer();
    renderOnline();
  }

  function renderComposer() {
    const ready = Boolean(state.myName);
    ui.content.disabled = !ready;
    ui.send.disabled = !ready || Boolean(state.slow);
    ui.send.textContent = state.slow ? t("sendWait", slowLeft()) : t("send");
  }

  function renderWelcome() {
    ui.welcome.textContent = state.onlineCount === null ? "" : t("welcome", state.onlineCount);
  }

  function renderHint() {
    ui.hint.textContent = touch.matches ? t("touchHint") : t("enterHint");
  }

  // Characters as the server counts them (code points): 4,000 emoji are
  // a valid message, though they are 8,000 UTF-16 units.
  function characters(text) {
    let count = 0;
    for (const _ of text) count += 1;
    return count;
  }

  function renderCounter() {
    const length = characters(ui.content.value);
    ui.counter.textContent = length >= COUNTER_FROM ? t("counter", length) : "";
    ui.counter.classList.toggle("near", length >= MAX_CONTENT - 100);
  }

  // The counts at once; the list at most once a frame. Rebuilding a list of
  // 1,000 people for each of 600 joins and leaves in a burst (a class
  // reloading) kept the page busy for half a minute.
  let onlinePainting = 0;
  function renderOnline() {
    // Before joining the list is empty, but the welcome line's count is known.
    const count = state.myName || state.onlineCount === null
      ? state.online.length : state.onlineCount;
    ui.onlineCount.textContent = String(count);
    ui.onlineCountShort.textContent = String(count);
    if (!onlinePainting) onlinePainting = requestAnimationFrame(paintOnline);
  }

  function paintOnline() {
    onlinePainting = 0;
    // The list is rebuilt: a moderator's button keeps its focus.
    const focused = ui.onlineList.contains(document.activeElement)
      ? document.activeElement.dataset.name : undefined;
    const mod = moderating();
    // You first, then by name as this language sorts them: finding a
    // classmate among fifty is easier in order than in order of arrival.
    const collator = new Intl.Collator(LOCALE[state.lang]);
    const others = state.online.filter((name) => name !== state.myName).sort(collator.compare);
    const people = state.online.includes(state.myName) ? [state.myName, ...others] : others;
    ui.onlineList.replaceChildren(...people.map((name) => {
      const item = document.createElement("li");
      const avatar = avatarOf(name);
      const label = document.createElement("span");
      label.className = "person";
      label.textContent = name;
      if (state.verified.has(name)) label.append(" ", verifiedBadge());
      if (name === state.myName) {
        // Its own element: anyone may be called "An (you)", but only this
        // badge is drawn as one.
        const you = document.createElement("span");
        you.className = "you";
        you.textContent = `(${t("you")})`;
        label.append(" ", you);
      }
      if (name === state.myName) item.className = "me";
      item.append(avatar, label);
      if (mod && name !== state.myName) item.append(personControl(name));
      return item;
    }));
    if (focused !== undefined) {
      const again = Array.from(ui.onlineList.querySelectorAll(".mod-open"))
        .find((button) => button.dataset.name === focused);
      if (again) again.focus();
    }
  }

  function atBottom() {
    const box = ui.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    if (!document.hidden) clearUnread();
    else renderUnread();
  }

  function setTheme(theme) {
    const value = ["light", "dark"].includes(theme) ? theme : "system";
    ui.theme.value = value;
    if (value === "system") delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = value;
    save("theme", value === "system" ? null : value);
  }

  // On a phone the language and connection controls live in the menu.
  function placeControls() {
    if (phone.matches) ui.menuControls.append(ui.controls);
    else ui.onlineToggle.before(ui.controls);
  }

  // The menu and the phone's online panel overlap: one at a time.
  function openMenu(open) {
    if (open) showOnline(false);
    ui.menu.hidden = !open;
    ui.menuButton.setAttribute("aria-expanded", String(open));
    if (open) refreshRooms();
    else { closeRename(); showFeedback(null); }
  }

  function closeRename() {
    ui.renameForm.hidden = true;
    ui.renameOpen.hidden = false;
    ui.renameError.textContent = "";
  }

  function showOnline(open) {
    if (open && !ui.menu.hidden) openMenu(false);
    document.body.classList.toggle("show-online", open);
    ui.onlineToggle.setAttribute("aria-expanded", String(open));
  }

  // -- wiring -------------------------------------------------------------------------------------

  ui.nameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.name.value;
    state.focusOnJoin = true;
    state.savedName = null;  // typed now: a refusal is the answer, not a race
    if (isOpen()) requestName(name);
    else {
      state.pendingName = name;  // sent as soon as the socket opens
      if (!state.ws) connect();
    }
  });

  ui.renameOpen.addEventListener("click", () => {
    ui.renameOpen.hidden = true;
    ui.renameForm.hidden = false;
    ui.rename.value = state.myName || "";
    ui.rename.focus();
    ui.rename.select();
  });

  ui.renameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (isOpen() && state.registered) requestName(ui.rename.value);
  });

  ui.renameCancel.addEventListener("click", () => { closeRename(); ui.renameOpen.focus(); });

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = ui.content.value;
    if (!content.trim() || !state.myName) return;
    if (state.slow) {  // Enter while Send counts down: say it again, keep the words
      state.slow.told = slowLeft();
      renderNote();
      return;
    }
    if (characters(content) > MAX_CONTENT) {
      ui.counter.textContent = `${t("counter", characters(content))} · ${t("tooLong")}`;
      return;
    }
    ui.content.value = "";
    renderCounter();
    queueSend(content);
    ui.content.focus();
  });

  // On touch keyboards Enter is the only way to make a new line; Send is a button.
  ui.content.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !touch.matches) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });

  ui.content.addEventListener("input", () => { renderCounter(); noteTyping(); });

  // At the bottom when the box shrinks (the phone's status row appears, the
  // keyboard opens): stay there, or the last message goes under the box.
  let pinned = true;
  new ResizeObserver(() => {
    if (pinned) ui.messages.scrollTop = ui.messages.scrollHeight;
  }).observe(ui.messages);

  ui.messages.addEventListener("scroll", () => {
    pinned = atBottom();
    if (ui.messages.scrollTop < 40) loadOlder();
    if (atBottom() && !document.hidden) clearUnread();
    else renderUnread();
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && atBottom()) clearUnread();
  });

  ui.unread.addEventListener("click", scrollToBottom);
  ui.retryNow.addEventListener("click", () => { state.backoff = 1000; connect(); });
  ui.rejoin.addEventListener("click", () => {
    state.backoff = 1000;
    state.focusOnJoin = true;
    connect();
  });
  ui.connection.addEventListener("click", () => (state.ws || state.wanted ? disconnect() : connect()));
  ui.slowApply.addEventListener("click", () => {
    moderate({ action: "slow", seconds: Number(ui.slowSelect.value) });
  });
  ui.muteButton.addEventListener("click", () => {
    if (state.modTarget !== null) {
      moderate({ action: "mute", name: state.modTarget, seconds: Number(ui.muteSelect.value) });
    }
  });
  ui.unmuteButton.addEventListener("click", () => {
    if (state.modTarget !== null) moderate({ action: "unmute", name: state.modTarget });
  });
  // A kick is asked again before it is sent; the question takes the focus.
  ui.kickButton.addEventListener("click", () => {
    state.modConfirm = true;
    renderModPanel();
    ui.kickNo.focus();
  });
  ui.kickNo.addEventListener("click", () => {
    state.modConfirm = false;
    renderModPanel();
    ui.kickButton.focus();
  });
  ui.kickYes.addEventListener("click", () => {
    const name = state.modTarget;
    state.modConfirm = false;
    renderModPanel();
    ui.kickButton.focus();
    if (name !== null) moderate({ action: "kick", name });
  });
  ui.modClose.addEventListener("click", () => closePerson());
  ui.language.addEventListener("change", () => setLanguage(ui.language.value));
  ui.theme.addEventListener("change", () => setTheme(ui.theme.value));
  ui.sound.addEventListener("change", () => setSound(ui.sound.checked));
  ui.notify.addEventListener("change", () => setNotify(ui.notify.checked));
  ui.onlineToggle.addEventListener("click", () => {
    showOnline(!document.body.classList.contains("show-online"));
  });
  ui.menuButton.addEventListener("click", () => openMenu(ui.menu.hidden));
  ui.shareCopy.addEventListener("click", copyLink);
  ui.shareUrl.addEventListener("focus", () => ui.shareUrl.select());
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    // The kick's question is answered "no" by Escape, when it has the focus.
    if (state.modConfirm && ui.kickConfirm.contains(document.activeElement)) {
      ui.kickNo.click();
      return;
    }
    if (!ui.menu.hidden) { openMenu(false); ui.menuButton.focus(); }
    if (document.body.classList.contains("show-online")) {
      showOnline(false);
      ui.onlineToggle.focus();
    }
  });
  document.addEventListener("click", (event) => {
    if (!ui.menu.hidden && !ui.menu.parentElement.contains(event.target)) openMenu(false);
    const panel = document.querySelector(".online");
    if (document.body.classList.contains("show-online") && !panel.contains(event.target)
        && !ui.onlineToggle.contains(event.target)) showOnline(false);
  });
  phone.addEventListener("change", placeControls);
  touch.addEventListener("change", renderHint);

  takeTokenFromAddress();
  state.token = loadToken() ?? state.token;
  const browser = (navigator.language || "en").toLowerCase().startsWith("vi") ? "vi" : "en";
  state.lang = load("lang") || browser;
  state.myName = null;
  state.savedName = loadTabName();
  state.pendingName = state.savedName;  // rejoin on reload
  ui.name.value = state.pendingName || load("name") || "";
  state.sound = load("sound") === "1";
  ui.sound.checked = state.sound;
  state.notify = load("notify") === "1" && typeof Notification === "function"
    && Notification.permission === "granted";
  ui.notify.checked = state.notify;
  ui.notify.disabled = typeof Notification !== "function";
  setTheme(load("theme"));
  document.title = PAGE_TITLE;
  renderHeading();
  ui.shareUrl.value = shareUrl();
  placeControls();
  renderJoined();
  setLanguage(state.lang);
  connect();
  window.chatbox = { state };  // for tests and curious people
})();
