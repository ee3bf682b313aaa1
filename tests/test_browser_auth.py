"""Issue 15 as the bundled client shows it, in a real Chromium: a sign-in
link (`/ROOM?token=T`) joins as its nickname and leaves the address bar
clean, a refused token says why and is not retried, verified nicknames
carry a badge, a guest trying one is told, and a moderator of the room
has controls (delete, kick, mute, unmute, slow mode) that nobody else sees.

The first tests drive the page against `Signed`, test_browser_moderation's
scripted server taught the contract's auth frames (each shape made by
chatbox.wire.messages) and checking tokens with PyJWT as the real server
does: the client alone, whatever the server does today. The last ones run
the real server with --auth optional (or required) and --auth-secret.
"""

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_twisted
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from pytest_twisted import ensureDeferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from chatbox.wire import codec, messages
from chatbox.wire.clock import Timestamps
from tests.chromium import (
    DESKTOP,
    LOCALES,
    PHONE,
    SIZES,
    Browser,
    in_browser,
    in_reactor,
    join,
    message_texts,
    page_url,
    say,
    skip_without_chromium,
)
from tests.server import start_server
from tests.test_browser_moderation import (
    ZONE,
    Scripted,
    ScriptedProtocol,
    audit_both_themes,
    local_until,
    theme,
)
from tests.test_browser_rooms import refused_lines_only

if skip := skip_without_chromium():
    pytestmark = skip

SECRET = b"a test secret long enough for HS256, 32 bytes at least"
TEACHER = "Cô Lan"

TEXT = {
    "en": {
        "verified": "(verified)",
        "signed_in": f"Signed in with your link as {TEACHER}.",
        "hint_verified": "This nickname belongs to a verified user: choose another.",
        "hint_token": f"Your sign-in link is for {TEACHER}: join as {TEACHER}.",
        "TokenExpired": "Your sign-in link has expired; ask for a new one.",
        "TokenWrongRoom": "Your sign-in link is for another room.",
        "TokenBadSignature": "This sign-in link is not valid here; ask for a new one.",
        "guest": "Continue as a guest",
        "needs": "This chat needs a sign-in link: open the link you were given.",
        "try_again": "Try again",
        "deleted": "Message deleted.",
        "muted": lambda n, w: f"{n} is muted until {w}.",
        "unmuted": lambda n: f"{n} can send messages again.",
        "kicked": lambda n: f"{n} was removed from the chat.",
        "slow": "Slow mode: one message every 30 s.",
        "slow_off": "Slow mode is off.",
        "held": lambda s: f"Slow mode: you can send again in {s} s.",
        "send": "Send",
        "send_wait": lambda s: f"Send ({s})",
        "kick_question": lambda n: f"Remove {n} from the chat?",
        "moderate": lambda n: f"Moderate {n}",
        "delete": "Delete",
        "not_moderator": "You are not a moderator of this room.",
        "refused": lambda e: f"Refused: {e}",
        "kicked_page": "A moderator removed you from the chat.",
        "muted_page": "You are muted until",
        "unmuted_page": "You can send messages again.",
    },
    "vi": {
        "verified": "(đã xác minh)",
        "signed_in": f"Đã đăng nhập bằng liên kết với tên {TEACHER}.",
        "hint_verified": "Biệt danh này thuộc về một người dùng đã xác minh: "
        "hãy chọn biệt danh khác.",
        "hint_token": f"Liên kết đăng nhập của bạn dành cho {TEACHER}: "
        f"hãy vào với tên {TEACHER}.",
        "TokenExpired": "Liên kết đăng nhập của bạn đã hết hạn; "
        "hãy xin một liên kết mới.",
        "TokenWrongRoom": "Liên kết đăng nhập của bạn dành cho một phòng khác.",
        "TokenBadSignature": "Liên kết đăng nhập này không dùng được ở đây; "
        "hãy xin một liên kết mới.",
        "guest": "Tiếp tục với tư cách khách",
        "needs": "Phòng trò chuyện này cần liên kết đăng nhập: "
        "hãy mở liên kết bạn được gửi.",
        "try_again": "Thử lại",
        "deleted": "Đã xoá 1 tin nhắn.",
        "muted": lambda n, w: f"{n} bị cấm gửi tin nhắn đến {w}.",
        "unmuted": lambda n: f"{n} đã có thể gửi tin nhắn trở lại.",
        "kicked": lambda n: f"Đã mời {n} ra khỏi phòng trò chuyện.",
        "slow": "Chế độ chậm: mỗi người một tin nhắn mỗi 30 giây.",
        "slow_off": "Đã tắt chế độ chậm.",
        "held": lambda s: f"Chế độ chậm: bạn có thể gửi tiếp sau {s} giây.",
        "send": "Gửi",
        "send_wait": lambda s: f"Gửi ({s})",
        "kick_question": lambda n: f"Mời {n} ra khỏi phòng trò chuyện?",
        "moderate": lambda n: f"Điều hành {n}",
        "delete": "Xoá",
        "not_moderator": "Bạn không phải người điều hành của phòng này.",
        "refused": lambda e: f"Bị từ chối: {e}",
        "kicked_page": "Người điều hành đã mời bạn ra khỏi phòng trò chuyện.",
        "muted_page": "Bạn bị cấm gửi tin nhắn đến",
        "unmuted_page": "Bạn đã có thể gửi tin nhắn trở lại.",
    },
}


def mint(
    name: str,
    seconds: float = 3600,
    roles: list[str] | None = None,
    rooms: list[str] | None = None,
    secret: bytes = SECRET,
) -> str:
    """A token as an operator's website would sign it (HS256, the secret)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": name, "iat": now, "exp": int(now + seconds)}
    if roles is not None:
        claims["roles"] = roles
    if rooms is not None:
        claims["rooms"] = rooms
    return jwt.encode(claims, secret, algorithm="HS256")


def link(base: str, token: str) -> str:
    return f"{base}?token={token}"


def stored_token(page: Any) -> str | None:
    return page.evaluate(
        "() => Object.keys(sessionStorage).filter(k => k.startsWith('chatbox.token'))"
        ".map(k => sessionStorage.getItem(k))[0] ?? null"
    )


def badges_of(page: Any, selector: str) -> list[str]:
    """The badge's words (for a screen reader) in each element matched."""
    return page.eval_on_selector_all(
        selector,
        "els => els.map(e => e.querySelector('.verified-badge')"
        " ? e.querySelector('.verified-word').textContent : null)",
    )


def online_badges(page: Any) -> dict[str, bool]:
    return page.eval_on_selector_all(
        "#online-list li",
        """items => Object.fromEntries(items.map(li => [
             li.querySelector('.person').firstChild.textContent,
             Boolean(li.querySelector('.verified-badge'))]))""",
    )


def painted(page: Any, expected: dict[str, bool]) -> None:
    """The online list is painted once a frame, after the state changes: wait
    for the painted list itself (a busy machine can take more than a frame),
    then compare, so a wrong list still fails with both shown."""
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(
            """expected => {
                 const items = [...document.querySelectorAll('#online-list li')];
                 const seen = Object.fromEntries(items.map(li => [
                   li.querySelector('.person').firstChild.textContent,
                   Boolean(li.querySelector('.verified-badge'))]));
                 return JSON.stringify(Object.entries(seen).sort())
                   === JSON.stringify(Object.entries(expected).sort());
               }""",
            arg=expected,
            timeout=10_000,
        )
    assert online_badges(page) == expected


def no_controls(page: Any) -> None:
    assert page.locator("#mod-tools").is_hidden()
    assert page.locator(".mod-delete").count() == 0
    assert page.locator(".mod-open").count() == 0


def language(page: Any, lang: str) -> None:
    page.click("#menu-button")
    page.select_option("#language", lang)
    page.keyboard.press("Escape")


# -- a scripted server that checks tokens ---------------------------------------


class Signed(Scripted):
    """Scripted, with the contract's tokens: a handshake `?token=` checked
    with PyJWT (expired, bad signature, wrong room refused with auth_refused
    and close 4401), the nickname a token vouches for protected from
    guests, the verified marker on replies, events, history and `get`, and
    moderator requests acted on as the Moderator would (or refused with
    `refuse_moderate`). `required`: no token, no socket (401)."""

    room = ""

    def __init__(self) -> None:
        super().__init__()
        self.identities: dict[ScriptedProtocol, dict] = {}
        self.protected: set[str] = set()
        self.verified: set[str] = set()
        self.handshake_tokens: list[str | None] = []
        self.refuse_moderate: tuple[str, str] | None = None
        self.required = False
        self.tell_refusal = True  # False: the close (4401) alone says why

    def listen(self) -> None:
        super().listen()
        site = self.port.factory
        site.resource = RequireToken(self, site.resource)

    def opened(self, connection: ScriptedProtocol) -> None:
        super().opened(connection)
        token = (connection.http_request_params.get("token") or [None])[0]
        self.handshake_tokens.append(token)
        if token is None:
            return
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
            rooms = claims.get("rooms")
            if rooms is not None and self.room not in rooms:
                raise LookupError("the token is not good in this room")
        except jwt.ExpiredSignatureError:
            return self.refuse_token(connection, "TokenExpired", "the token expired")
        except jwt.InvalidSignatureError:
            return self.refuse_token(connection, "TokenBadSignature", "a wrong key")
        except LookupError as e:
            return self.refuse_token(connection, "TokenWrongRoom", str(e))
        self.identities[connection] = claims
        self.protected.add(claims["sub"])
        reply = messages.auth_ok(
            claims["sub"],
            sorted(claims.get("roles", [])),
            rooms,
            claims["exp"] * 1000,
        )
        self.write(connection, reply)
        return None

    def write(self, connection: ScriptedProtocol, message: dict | bytes) -> None:
        """Nothing for a connection already closing (the test's end aborts
        them all, and each one's leave is broadcast to the others)."""
        if connection.state == ScriptedProtocol.STATE_OPEN:
            super().write(connection, message)

    def refuse_token(self, connection: Any, reason: str, error: str) -> None:
        if self.tell_refusal:
            self.write(connection, messages.auth_refused(reason, error))
        connection.sendClose(code=4401, reason=reason)

    def closed(self, connection: ScriptedProtocol) -> None:
        self.identities.pop(connection, None)
        name = self.names.get(connection)
        super().closed(connection)
        self.verified.discard(name)

    def request(self, connection: ScriptedProtocol, message: dict) -> None:
        kind = message.get("type")
        name = self.names.get(connection)
        identity = self.identities.get(connection)
        now = self.clock.now()
        if kind == "name" and name is None:
            self.requests.append(message)
            wanted = message["name"]
            error = self.refuse.get(wanted, "")
            if identity is not None and wanted != identity["sub"]:
                error = "token"
            elif identity is None and wanted in self.protected:
                error = "verified"
            if error or wanted in self.names.values():
                reply = messages.register_refused(
                    wanted, "NameAlreadyUsed", error or None
                )
                self.write(connection, reply)
                return
            verified = identity is not None
            self.names[connection] = wanted
            if verified:
                self.verified.add(wanted)
            self.write(connection, messages.register_ok(wanted, now, verified))
            self.broadcast(messages.joined(wanted, now, verified), but=connection)
        elif kind == "get":
            self.requests.append(message)
            entries = [codec.encode(e) for e in self.page(message)]
            online = list(self.names.values())
            verified = [n for n in online if n in self.verified]
            reply = messages.get_ok(name, now, entries, online, verified)
            self.write(connection, reply)
        elif kind == "send" and self.hold is None:
            self.requests.append(message)
            content = message["content"]
            verified = name in self.verified
            entry = self.store(name, content, "verified" if verified else None)
            self.write(
                connection,
                messages.send_ok(
                    name, content, now, entry["id"], message.get("send_id"), verified
                ),
            )
            event = messages.posted(
                name, content, now, entry["id"], "verified" if verified else None
            )
            self.broadcast(event, connection)
        elif kind == "moderate":
            self.requests.append(message)
            self.write(connection, self.moderate(identity, message))
        else:
            super().request(connection, message)

    def moderate(self, identity: dict | None, message: dict) -> dict:
        action = message["action"]
        if identity is None or "moderator" not in identity.get("roles", []):
            return messages.moderate_refused(action, "NotModerator", "not a moderator")
        if self.refuse_moderate is not None:
            return messages.moderate_refused(action, *self.refuse_moderate)
        target = message.get("name")
        if action == "delete":
            ids = [i for i in message["ids"] if i in {e["id"] for e in self.history}]
            self.delete(ids)
            return messages.moderate_ok("delete", ids=ids)
        if action == "slow":
            # As the Moderator: the whole room is told, the moderator too.
            self.broadcast(messages.slow_mode(message["seconds"], self.clock.now()))
            return messages.moderate_ok("slow", seconds=message["seconds"])
        if target not in self.names.values():
            return messages.moderate_refused(action, "NoSuchUser")
        if action == "kick":
            self.notice(target, "kick", "", None)
            self.close(target, 4001, "")
            return messages.moderate_ok("kick", name=target)
        if action == "mute":
            until = int(time.time() * 1000) + message["seconds"] * 1000
            self.notice(target, "mute", "", until)
            return messages.moderate_ok("mute", name=target, until=until)
        self.notice(target, "unmute", "", None)
        return messages.moderate_ok("unmute", name=target)


class RequireToken(Resource):
    """The chat's root, but under `required` a socket without a token gets
    the contract's 401 before any WebSocket (the page itself is served)."""

    def __init__(self, chat: Signed, root: Resource) -> None:
        super().__init__()
        self.chat = chat
        self.root = root

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if path == b"static":
            return self.root.getChildWithDefault(path, request)
        return self

    def render(self, request: Request) -> bytes:
        upgrade = b"websocket" in (request.getHeader(b"upgrade") or b"").lower()
        if upgrade and self.chat.required and b"token" not in request.args:
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"this chat needs a sign-in token: open the link you were given\n"
        return self.root.render(request)


@pytest_twisted.async_yield_fixture
async def chat():
    signed = Signed()
    signed.listen()
    yield signed
    await signed.stop()


def open_page(browser: Browser, url: str, lang: str, viewport: dict, **more) -> Any:
    return browser.page(
        url, locale=LOCALES[lang], viewport=viewport, timezone_id=ZONE, **more
    )


def now() -> Any:
    return Timestamps().now()


def registered(page: Any) -> None:
    page.wait_for_function("window.chatbox.state.registered")


def signed_in_said(page: Any, words: dict) -> None:
    """The status line says the link signed us in, readable at any size."""
    status = page.locator("#status-text")
    assert status.inner_text() == words["signed_in"]
    box = status.bounding_box()
    assert box is not None and box["width"] > 50 and box["height"] > 5, box


# -- a sign-in link ---------------------------------------------------------------


@SIZES
@ensureDeferred
async def test_a_sign_in_link_joins_as_its_name_and_leaves_the_address_bar(
    chat, viewport, lang
):
    token = mint(TEACHER)
    words = TEXT[lang]

    def scenario(browser: Browser) -> None:
        lan = open_page(browser, link(chat.url, token), lang, viewport)
        registered(lan)
        # Joined as the token's nickname without typing it, and told so
        # where it shows, on a phone too (its name form is gone by now).
        assert lan.evaluate("window.chatbox.state.myName") == TEACHER
        signed_in_said(lan, words)
        assert chat.handshake_tokens == [token]
        # Out of the address bar and the history entry, kept for this tab.
        assert lan.url == chat.url
        assert lan.evaluate("location.search") == ""
        assert stored_token(lan) == token
        assert token not in lan.evaluate("JSON.stringify(localStorage)")
        # The nickname cannot be changed: the rename entry is not offered.
        assert lan.locator("#rename-section").is_hidden()
        assert online_badges(lan) == {TEACHER: True}
        say(lan, "Good morning, class")
        assert badges_of(lan, ".message.mine") == [words["verified"]]
        # A reload reconnects with the token from this tab, not the address.
        lan.reload()
        registered(lan)
        assert chat.handshake_tokens == [token, token]
        assert lan.url == chat.url
        assert lan.evaluate("window.chatbox.state.myName") == TEACHER
        signed_in_said(lan, words)
        other = "vi" if lang == "en" else "en"
        language(lan, other)
        signed_in_said(lan, TEXT[other])

    await in_browser(scenario)


@SIZES
@ensureDeferred
async def test_a_verified_name_has_a_badge_for_everyone_and_a_guest_is_told(
    chat, viewport, lang
):
    chat.store("Linh", "before class")
    token = mint(TEACHER)
    words = TEXT[lang]

    def scenario(browser: Browser) -> None:
        bo = open_page(browser, chat.url, lang, viewport)
        join(bo, "Bo")
        lan = open_page(browser, link(chat.url, token), lang, viewport)
        registered(lan)
        bo.wait_for_function(
            f"window.chatbox.state.online.includes({json.dumps(TEACHER)})"
        )
        say(lan, "Good morning, class")
        bo.wait_for_selector("text=Good morning, class")
        await_badges = badges_of(bo, "#message-list .message")
        assert await_badges == [None, words["verified"]]
        # In words (title and text), not colour only; the online list too.
        assert bo.get_attribute(".message[data-verified] .verified-badge", "title")
        assert online_badges(bo) == {"Bo": False, TEACHER: True}
        say(bo, f"Good morning, {TEACHER}")
        assert badges_of(bo, ".message.mine") == [None]
        assert audit_both_themes(bo) == {"light": [], "dark": []}
        if bo.locator("#online").is_hidden():  # the phone's online panel
            bo.click("#online-toggle")
            assert audit_both_themes(bo) == {"light": [], "dark": []}
        # From history too, after a reload: the entry says so.
        bo.reload()
        registered(bo)
        bo.wait_for_selector("text=Good morning, class")
        assert badges_of(bo, "#message-list .message") == [
            None,
            words["verified"],
            None,
        ]
        assert online_badges(bo) == {"Bo": False, TEACHER: True}
        # The flags follow joins, renames and leaves.
        for event, after in [
            (messages.joined("Minh", now(), True), {"Minh": True}),
            (messages.renamed("Minh", "Minh A", now(), True), {"Minh A": True}),
            (messages.renamed("Minh A", "Minh B", now()), {"Minh B": False}),
            (messages.renamed("Minh B", "Minh", now(), True), {"Minh": True}),
            (messages.left("Minh", now()), {}),
        ]:
            in_reactor(chat.broadcast, event)
            expected = {"Bo": False, TEACHER: True, **after}
            last = next(iter(after), "Bo")
            bo.wait_for_function(
                f"window.chatbox.state.online.length === {len(expected)}"
                f" && window.chatbox.state.online.includes({json.dumps(last)})"
            )
            painted(bo, expected)
        lan.close()
        bo.wait_for_function(
            f"!window.chatbox.state.online.includes({json.dumps(TEACHER)})"
        )
        painted(bo, {"Bo": False})
        # A guest trying the verified nickname: refused, and told why.
        guest = open_page(browser, chat.url, lang, viewport)
        guest.fill("#name", TEACHER)
        guest.press("#name", "Enter")
        guest.wait_for_selector(f"#name-error >> text={words['hint_verified']}")
        assert guest.inner_text("#name-error") == words["hint_verified"]
        guest.wait_for_timeout(2000)
        asked = [r for r in chat.requests if r.get("name") == TEACHER]
        assert len(asked) == 2, asked  # the teacher's, and the guest's once
        # The other language says the same.
        other = "vi" if lang == "en" else "en"
        language(bo, other)
        assert badges_of(bo, "#message-list .message[data-verified]") == [
            TEXT[other]["verified"]
        ]

    await in_browser(scenario)


@ensureDeferred
async def test_a_name_refused_for_the_token_says_whose_link_it_is(chat):
    chat.refuse = {TEACHER: "token"}

    def scenario(browser: Browser) -> None:
        for lang in ("en", "vi"):
            page = open_page(browser, link(chat.url, mint(TEACHER)), lang, DESKTOP)
            page.wait_for_selector(f"#name-error >> text={TEXT[lang]['hint_token']}")
            assert page.inner_text("#name-error") == TEXT[lang]["hint_token"]
            # Locked to the token's nickname, and saying so.
            assert page.input_value("#name") == TEACHER
            assert page.evaluate("document.querySelector('#name').readOnly")
            assert page.inner_text("#signed-in") == TEXT[lang]["signed_in"]

    await in_browser(scenario)


@pytest.mark.parametrize(
    ("reason", "lang"),
    [
        ("TokenExpired", "en"),
        ("TokenExpired", "vi"),
        ("TokenWrongRoom", "vi"),
        ("TokenBadSignature", "en"),
    ],
)
@ensureDeferred
async def test_a_refused_token_says_why_and_is_not_tried_again(chat, reason, lang):
    token = {
        "TokenExpired": lambda: mint(TEACHER, seconds=-3600),
        "TokenWrongRoom": lambda: mint(TEACHER, rooms=["class-7a"]),
        "TokenBadSignature": lambda: mint(TEACHER, secret=b"x" * 40),
    }[reason]()
    words = TEXT[lang]

    def scenario(browser: Browser) -> None:
        lan = open_page(browser, link(chat.url, token), lang, DESKTOP)
        lan.wait_for_selector("#removed:not([hidden])")
        assert lan.inner_text("#removed-title") == words[reason]
        assert lan.inner_text("#rejoin") == words["guest"]
        assert lan.url == chat.url
        assert stored_token(lan) is None
        opens = chat.opens
        lan.wait_for_timeout(4000)
        assert chat.opens == opens, "it tried the refused token again"
        assert chat.handshake_tokens == [token]
        assert audit_both_themes(lan) == {"light": [], "dark": []}
        # On as a guest: no token is sent again, even after a reload.
        lan.click("#rejoin")
        lan.wait_for_function("window.chatbox.state.ws !== null")
        join(lan, "Khách")
        lan.reload()
        registered(lan)
        assert chat.handshake_tokens == [token, None, None]

    await in_browser(scenario)


@ensureDeferred
async def test_a_refused_token_with_only_its_close_frame_is_dropped_too(chat):
    """The close code and reason alone (the frame before it lost, or a
    server that does not send it) say as much."""
    chat.tell_refusal = False
    token = mint(TEACHER, seconds=-3600)

    def scenario(browser: Browser) -> None:
        lan = open_page(browser, link(chat.url, token), "en", DESKTOP)
        lan.wait_for_selector("#removed:not([hidden])")
        assert lan.inner_text("#removed-title") == TEXT["en"]["TokenExpired"]
        assert stored_token(lan) is None
        lan.wait_for_timeout(3000)
        assert chat.handshake_tokens == [token]

    await in_browser(scenario)


@pytest.mark.parametrize("lang", ["en", "vi"])
@ensureDeferred
async def test_no_token_where_one_is_required_says_a_link_is_needed(chat, lang):
    chat.required = True
    words = TEXT[lang]

    def scenario(browser: Browser) -> None:
        page = open_page(browser, chat.url, lang, PHONE)
        page.wait_for_selector(f"#status-text >> text={words['needs']}", timeout=15_000)
        assert page.locator("#retry-now").is_visible()
        assert chat.opens == 0
        needs_a_link(page, words)
        assert audit_both_themes(page) == {"light": [], "dark": []}
        # A socket let in after all (the guess was wrong: a room back after
        # a restart refuses for a while too): the nickname form is back.
        in_reactor(setattr, chat, "required", False)
        # The page also retries by itself: click only while the button is
        # still shown, checked and clicked in one step of the page's thread,
        # so the automatic retry winning the race is no failure.
        page.evaluate(
            """() => { const button = document.querySelector('#retry-now');
                       if (button && button.offsetParent) button.click(); }"""
        )
        page.wait_for_selector("#name-form:not([hidden])")
        assert page.locator("#sign-in").is_hidden()
        join(page, "Bo")
        page.close()
        in_reactor(setattr, chat, "required", True)
        page = open_page(browser, chat.url, lang, PHONE)
        page.wait_for_selector("#sign-in:not([hidden])", timeout=15_000)
        # With a link, the same tab gets in.
        page.goto(link(chat.url, mint(TEACHER)))
        registered(page)
        assert page.url == chat.url
        assert page.locator("#sign-in").is_hidden()
        assert page.locator("#composer").is_visible()
        refused_lines_only(browser)

    await in_browser(scenario)


def notices(page: Any) -> list[str]:
    return page.locator("#message-list .notice").all_inner_texts()


def send_reads(page: Any, text: str) -> None:
    """Soon: a wait the page should have dropped would end by itself later."""
    page.wait_for_function(
        f"document.querySelector('#send').innerText === {json.dumps(text)}",
        timeout=3000,
    )


@SIZES
@ensureDeferred
async def test_slow_mode_turned_off_ends_a_wait_at_once_and_is_said(
    chat, viewport, lang
):
    """A student held by slow mode counts down on the Send button; when a
    moderator turns it off the server takes her message at once, so the
    page stops waiting then, and says so; turned on, it says how often."""
    words = TEXT[lang]

    def scenario(browser: Browser) -> None:
        bo = open_page(browser, chat.url, lang, viewport)
        join(bo, "Bo")
        in_reactor(setattr, chat, "hold", ("SlowMode", 28.0))
        bo.fill("#content", "my answer")
        bo.press("#content", "Enter")
        bo.wait_for_selector(f"#composer-note >> text={words['held'](28)}")
        assert bo.inner_text("#send") in {words["send_wait"](s) for s in (28, 27)}
        assert bo.locator("#send").is_disabled()
        # Off: at once, not in 28 s.
        in_reactor(setattr, chat, "hold", None)
        in_reactor(chat.broadcast, messages.slow_mode(0, now()))
        bo.wait_for_selector(f"#message-list .notice >> text={words['slow_off']}")
        send_reads(bo, words["send"])
        assert bo.locator("#send").is_enabled()
        assert bo.inner_text("#composer-note") == ""
        assert bo.evaluate("window.chatbox.state.slow") is None
        bo.click("#send")
        bo.wait_for_selector(".message.mine[data-state=sent] >> text=my answer")
        # On again: how often, in words; and a wait it makes is no longer
        # than the new interval.
        in_reactor(chat.broadcast, messages.slow_mode(30, now()))
        bo.wait_for_selector(f"#message-list .notice >> text={words['slow']}")
        assert notices(bo)[-2:] == [words["slow_off"], words["slow"]]
        assert audit_both_themes(bo) == {"light": [], "dark": []}
        in_reactor(setattr, chat, "hold", ("SlowMode", 600.0))
        bo.fill("#content", "too soon")
        bo.press("#content", "Enter")
        bo.wait_for_selector(f"#composer-note >> text={words['held'](600)}")
        in_reactor(chat.broadcast, messages.slow_mode(5, now()))
        bo.wait_for_function(
            "window.chatbox.state.slow"
            " && window.chatbox.state.slow.until <= Date.now() + 5000"
        )
        # Said in the other language after a switch, as every notice.
        other = "vi" if lang == "en" else "en"
        language(bo, other)
        assert notices(bo)[-3:-1] == [TEXT[other]["slow_off"], TEXT[other]["slow"]]

    await in_browser(scenario)


def needs_a_link(page: Any, words: dict) -> None:
    """The page's guess that a sign-in link is needed: said where the
    nickname form was, and nothing offered that cannot work."""
    sign_in = page.locator("#sign-in")
    assert sign_in.is_visible()
    assert sign_in.inner_text() == words["needs"]
    assert page.locator("#name-form").is_hidden()
    assert page.locator("#composer").is_hidden()
    assert page.locator("#rename-section").is_hidden()


# -- moderator controls ------------------------------------------------------------


def show_online(page: Any) -> None:
    """On a phone the online list (and the moderator tools) is a panel."""
    if page.locator("#online").is_hidden():
        page.click("#online-toggle")


def open_person(page: Any, name: str, words: dict) -> None:
    """Open a person's moderator panel from the keyboard."""
    show_online(page)
    button = page.get_by_role("button", name=words["moderate"](name), exact=True)
    button.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#mod-person:not([hidden])")


@SIZES
@ensureDeferred
async def test_a_moderator_deletes_mutes_and_kicks_from_the_page(chat, viewport, lang):
    token = mint(TEACHER, roles=["moderator"], rooms=[""])
    words = TEXT[lang]

    def scenario(browser: Browser) -> None:
        bo = open_page(browser, chat.url, lang, viewport)
        join(bo, "Bo")
        lan = open_page(browser, link(chat.url, token), lang, viewport)
        registered(lan)
        say(bo, "buy followers")
        say(bo, "see you at nine")
        lan.wait_for_selector("text=see you at nine")
        # A delete button on each message, reached by keyboard.
        spam = lan.locator(".message", has_text="buy followers").locator(".mod-delete")
        assert spam.inner_text().startswith(words["delete"])
        spam.focus()
        lan.keyboard.press("Enter")
        bo.wait_for_function("!document.body.innerText.includes('buy followers')")
        assert message_texts(bo) == ["see you at nine"]
        lan.wait_for_selector(f"#mod-status >> text={words['deleted']}")
        assert chat.requests[-1] == {"type": "moderate", "action": "delete", "ids": [1]}
        # Slow mode for the room (on a phone, in the online panel).
        show_online(lan)
        lan.select_option("#slow-select", "30")
        lan.click("#slow-apply")
        lan.wait_for_selector(f"#mod-status >> text={words['slow']}")
        bo.wait_for_selector(f"#message-list .notice >> text={words['slow']}")
        assert chat.requests[-1] == {
            "type": "moderate",
            "action": "slow",
            "seconds": 30,
        }
        # Mute Bo for an hour: Bo is told; then unmuted.
        open_person(lan, "Bo", words)
        lan.select_option("#mute-select", "3600")
        lan.click("#mute-button")
        bo.wait_for_selector(f"#composer-note >> text={words['muted_page']}")
        request = chat.requests[-1]
        assert request == {
            "type": "moderate",
            "action": "mute",
            "name": "Bo",
            "seconds": 3600,
        }
        until = int(time.time() * 1000) + 3_600_000
        said = lan.inner_text("#mod-status")
        assert said in {
            words["muted"]("Bo", local_until(until + d)) for d in (-60_000, 0)
        }, said
        lan.click("#unmute-button")
        bo.wait_for_selector(f"#composer-note >> text={words['unmuted_page']}")
        lan.wait_for_selector(f"#mod-status >> text={words['unmuted']('Bo')}")
        # Kick asks first; Cancel (which has the focus) sends nothing.
        lan.click("#kick-button")
        assert lan.inner_text("#kick-question") == words["kick_question"]("Bo")
        assert lan.evaluate("document.activeElement.id") == "kick-no"
        asked = len(chat.requests)
        lan.keyboard.press("Enter")
        assert lan.locator("#kick-confirm").is_hidden()
        assert lan.evaluate("document.activeElement.id") == "kick-button"
        assert len(chat.requests) == asked
        lan.click("#kick-button")
        assert audit_both_themes(lan) == {"light": [], "dark": []}
        show_online(lan)  # the menu closed it on a phone
        lan.click("#kick-yes")
        bo.wait_for_selector("#removed:not([hidden])")
        assert bo.inner_text("#removed-title") == words["kicked_page"]
        lan.wait_for_selector(f"#mod-status >> text={words['kicked']('Bo')}")
        assert chat.requests[-1] == {"type": "moderate", "action": "kick", "name": "Bo"}

    await in_browser(scenario)


@ensureDeferred
async def test_the_servers_refusal_of_a_moderator_action_is_shown(chat):
    chat.refuse_moderate = ("Refused", "a verified moderator of the room")
    token = mint(TEACHER, roles=["moderator"])

    def scenario(browser: Browser) -> None:
        bo = open_page(browser, chat.url, "en", DESKTOP)
        join(bo, "Bo")
        lan = open_page(browser, link(chat.url, token), "vi", DESKTOP)
        registered(lan)
        open_person(lan, "Bo", TEXT["vi"])
        lan.click("#mute-button")
        said = TEXT["vi"]["refused"]("a verified moderator of the room")
        lan.wait_for_selector(f"#mod-status >> text={said}")
        language(lan, "en")
        said = TEXT["en"]["refused"]("a verified moderator of the room")
        assert lan.inner_text("#mod-status") == said
        assert bo.locator("#composer-note").inner_text() == ""
        # The server no longer counts her a moderator (a token past its
        # expiry on a clock ahead of hers): said in her language.
        in_reactor(setattr, chat, "refuse_moderate", ("NotModerator", "expired"))
        lan.click("#unmute-button")
        lan.wait_for_selector(f"#mod-status >> text={TEXT['en']['not_moderator']}")

    await in_browser(scenario)


@ensureDeferred
async def test_nobody_but_a_moderator_sees_the_controls(chat):
    chat.store("Linh", "hello")

    def scenario(browser: Browser) -> None:
        guest = open_page(browser, chat.url, "en", DESKTOP)
        join(guest, "Bo")
        verified = open_page(browser, link(chat.url, mint("Minh")), "vi", DESKTOP)
        registered(verified)
        # A moderator whose token ends in a few seconds: controls, then none.
        short = mint(TEACHER, seconds=4, roles=["moderator"])
        lan = open_page(browser, link(chat.url, short), "en", DESKTOP)
        registered(lan)
        lan.wait_for_selector(".mod-delete")
        assert lan.locator("#mod-tools").is_visible()
        assert lan.locator(".mod-open").count() == 2  # Bo, Minh; not herself
        for page in (guest, verified):
            page.wait_for_selector("text=hello")
            no_controls(page)
        lan.wait_for_function("!document.querySelector('.mod-delete')", timeout=8000)
        no_controls(lan)

    await in_browser(scenario)


# -- the real server ---------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "auth-secret"
    path.write_bytes(SECRET + b"\n")
    return path


@pytest_twisted.async_yield_fixture
async def signed_server(data_file: Path, secret_file: Path):
    running = await start_server(
        data_file, "--auth=optional", f"--auth-secret={secret_file}"
    )
    yield running
    await running.stop()


@ensureDeferred
async def test_the_real_server_a_link_a_badge_and_a_guest_told(signed_server):
    server = signed_server
    url = page_url(server)

    def scenario(browser: Browser) -> None:
        lan = browser.page(link(url, mint(TEACHER)), viewport=DESKTOP)
        registered(lan)
        assert lan.url == url
        assert lan.evaluate("window.chatbox.state.myName") == TEACHER
        signed_in_said(lan, TEXT["en"])
        bo = browser.join(url, "Bo", viewport=DESKTOP)
        say(lan, "Good morning")
        bo.wait_for_selector("text=Good morning")
        assert badges_of(bo, "#message-list .message") == ["(verified)"]
        assert online_badges(bo) == {"Bo": False, TEACHER: True}
        guest = browser.page(url, locale="vi-VN", viewport=PHONE)
        guest.fill("#name", TEACHER)
        guest.press("#name", "Enter")
        guest.wait_for_selector(f"#name-error >> text={TEXT['vi']['hint_verified']}")
        # Offline, still hers.
        lan.close()
        bo.wait_for_function(
            f"!window.chatbox.state.online.includes({json.dumps(TEACHER)})"
        )
        guest.press("#name", "Enter")
        guest.wait_for_timeout(500)
        guest.wait_for_selector(f"#name-error >> text={TEXT['vi']['hint_verified']}")
        bo.reload()
        registered(bo)
        assert badges_of(bo, "#message-list .message") == ["(verified)"]

    await in_browser(scenario)


@ensureDeferred
async def test_a_link_to_a_server_without_auth_still_lets_one_join(server):
    """--auth off ignores tokens and never answers one: the page waits a
    few seconds for the answer, then is a guest's page."""
    url = page_url(server)

    def scenario(browser: Browser) -> None:
        page = browser.page(link(url, mint(TEACHER)), viewport=DESKTOP)
        assert page.url == url
        page.wait_for_function(
            "window.chatbox.state.status.key === 'pickName'", timeout=10_000
        )
        assert page.evaluate("document.querySelector('#name').readOnly") is False
        join(page, "Khách")
        no_controls(page)

    await in_browser(scenario)


LONG_ROOMS = ["", *(f"class-{i:03d}-{'x' * 30}" for i in range(99))]


@pytest.mark.parametrize("expired", [False, True], ids=["good", "expired"])
@ensureDeferred
async def test_a_token_too_long_for_the_url_goes_in_an_auth_request(
    signed_server, expired
):
    """A token with a hundred rooms makes a URL past the server's 2,048
    bytes (414 for the page itself): in the page's fragment, which the
    server never sees, it works, sent in an `auth` request."""
    url = page_url(signed_server)
    token = mint(TEACHER, seconds=-3600 if expired else 3600, rooms=LONG_ROOMS)
    assert len(token) > 4000

    def scenario(browser: Browser) -> None:
        sockets: list[str] = []
        page = browser.page(
            f"{url}#token={token}",
            viewport=DESKTOP,
            setup=lambda p: p.on("websocket", lambda ws: sockets.append(ws.url)),
        )
        if expired:
            page.wait_for_selector("#removed:not([hidden])")
            assert page.inner_text("#removed-title") == TEXT["en"]["TokenExpired"]
            assert stored_token(page) is None
        else:
            registered(page)
            assert page.evaluate("window.chatbox.state.myName") == TEACHER
            assert page.evaluate("window.chatbox.state.meVerified") is True
        assert page.url == url
        assert sockets and all("token" not in each for each in sockets), sockets

    await in_browser(scenario)


@ensureDeferred
async def test_the_real_server_refuses_an_expired_link_and_the_page_says_so(
    signed_server,
):
    url = page_url(signed_server)
    expired = mint(TEACHER, seconds=-3600)  # well past the leeway

    def scenario(browser: Browser) -> None:
        lan = browser.page(link(url, expired), locale="vi-VN", viewport=DESKTOP)
        lan.wait_for_selector("#removed:not([hidden])")
        assert lan.inner_text("#removed-title") == TEXT["vi"]["TokenExpired"]
        assert lan.url == url
        assert stored_token(lan) is None
        lan.click("#rejoin")
        join(lan, "Khách")

    await in_browser(scenario)


@ensureDeferred
async def test_the_real_server_a_moderator_acts_from_the_page(signed_server):
    url = page_url(signed_server)
    token = mint(TEACHER, roles=["moderator"], rooms=[""])
    words = TEXT["en"]

    def scenario(browser: Browser) -> None:
        bo = browser.join(url, "Bo", viewport=DESKTOP, timezone_id=ZONE)
        no_controls(bo)
        lan = browser.page(link(url, token), viewport=DESKTOP, timezone_id=ZONE)
        registered(lan)
        say(bo, "buy followers")
        lan.wait_for_selector("text=buy followers")
        lan.locator(".message", has_text="buy followers").locator(".mod-delete").click()
        bo.wait_for_function("!document.body.innerText.includes('buy followers')")
        lan.wait_for_selector(f"#mod-status >> text={words['deleted']}")
        open_person(lan, "Bo", words)
        lan.click("#mute-button")  # 5 min, the first choice
        bo.wait_for_selector(f"#composer-note >> text={words['muted_page']}")
        lan.click("#unmute-button")
        bo.wait_for_selector(f"#composer-note >> text={words['unmuted_page']}")
        lan.click("#kick-button")
        lan.click("#kick-yes")
        bo.wait_for_selector("#removed:not([hidden])")
        lan.wait_for_selector(f"#mod-status >> text={words['kicked']('Bo')}")
        no_controls(bo)
        theme(lan, "dark")

    await in_browser(scenario)


@ensureDeferred
async def test_the_real_server_slow_mode_off_frees_a_held_student_at_once(
    signed_server,
):
    url = page_url(signed_server)
    token = mint(TEACHER, roles=["moderator"], rooms=[""])
    words = TEXT["vi"]

    def scenario(browser: Browser) -> None:
        bo = browser.join(url, "Bo", viewport=PHONE, locale="vi-VN")
        lan = browser.page(link(url, token), viewport=DESKTOP)
        registered(lan)
        lan.select_option("#slow-select", "30")
        lan.click("#slow-apply")
        bo.wait_for_selector(f"#message-list .notice >> text={words['slow']}")
        say(bo, "one")
        bo.fill("#content", "two")
        bo.press("#content", "Enter")
        bo.wait_for_selector("#composer-note:not(:empty)")
        assert bo.inner_text("#composer-note") in {words["held"](s) for s in (30, 29)}
        assert bo.locator("#send").is_disabled()
        lan.select_option("#slow-select", "0")
        lan.click("#slow-apply")
        bo.wait_for_selector(f"#message-list .notice >> text={words['slow_off']}")
        send_reads(bo, words["send"])
        bo.click("#send")
        bo.wait_for_selector(".message.mine[data-state=sent] >> text=two")

    await in_browser(scenario)


@ensureDeferred
async def test_the_real_server_with_auth_required_asks_for_a_link(
    data_file, secret_file
):
    server = await start_server(
        data_file, "--auth=required", f"--auth-secret={secret_file}"
    )
    url = page_url(server)

    def scenario(browser: Browser) -> None:
        page = browser.page(url, viewport=DESKTOP)
        needs = TEXT["en"]["needs"]
        page.wait_for_selector(f"#status-text >> text={needs}", timeout=15_000)
        needs_a_link(page, TEXT["en"])
        page.goto(link(url, mint(TEACHER)))
        registered(page)
        refused_lines_only(browser)

    try:
        await in_browser(scenario)
    finally:
        await server.stop()
