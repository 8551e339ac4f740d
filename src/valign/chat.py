"""The chat page of ``valign serve``: talk to the model and tell it where it went wrong.

Plain server-rendered HTML forms (no JavaScript): a message box, the conversation so
far, and under the model's latest answer 👍 / 👎 buttons with an optional correction,
which go to the server's feedback store (`valign.feedback`) for the next KTO round.
The same defences as the survey's pages, from the shared web layer (`valign.web`): a
signed, HttpOnly session cookie with a CSRF token on every form, a per-session rate
limit on model calls, a strict Content-Security-Policy, the shared stylesheet. The
conversation travels in a signed hidden field, so a page cannot put words in the
model's mouth; nothing about the person is stored, only the conversation and the
feedback.

`valign.serve.create_app` mounts it; by hand::

    app.include_router(chat_page_router("embedded", batcher.submit, FeedbackStore("sqlite:///feedback.db")))
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations
# (Request, Form) at runtime, and they are imported inside `chat_page_router`.
import asyncio
import concurrent.futures
import os
import secrets
import uuid
from typing import TYPE_CHECKING, Any, Callable

from valign.serve_limits import RefusedError
from valign.types import Completion, Conversation, GenConfig

if TYPE_CHECKING:
    from fastapi import APIRouter

    from valign.feedback import FeedbackStore

__all__ = ["chat_page_router", "Submit", "MAX_MESSAGE_CHARS", "MAX_TURNS"]

# What answers a conversation: queue it with these settings, get its completions later
# (`valign.scheduler.Batcher.submit` behind the server's limits, so the chat page shares
# its batches; it raises `RefusedError` for what the limits refuse).
Submit = Callable[[Conversation, GenConfig], concurrent.futures.Future[list[Completion]]]

MAX_MESSAGE_CHARS = 4000
MAX_TURNS = 12  # user messages kept in one conversation; older turns are dropped
COOKIE = "valign_chat"
SESSION_SECONDS = 12 * 3600  # a chat session (and the conversation it signed) lasts half a day
CHAT_GEN = GenConfig(temperature=0.7, max_new_tokens=256)


def chat_page_router(
    name: str,
    submit: Submit,
    feedback: "FeedbackStore | None",
    *,
    secret: str | None = None,
    per_minute: int = 20,
    gen: GenConfig = CHAT_GEN,
) -> "APIRouter":
    """``GET/POST /chat``, ``POST /chat/feedback`` and ``/chat/style.css``."""
    from fastapi import APIRouter, Form, Request
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    from valign.feedback import MAX_CORRECTION_CHARS, FeedbackError
    from valign.web.cookies import SignedCookie
    from valign.web.csrf import check_csrf, csrf_token
    from valign.web.headers import SECURITY_HEADERS
    from valign.web.ratelimit import RateLimiter, client_address
    from valign.web.signing import Signer
    from valign.web.templates import stylesheet, template_env

    signer = Signer(secret or os.environ.get("VALIGN_CHAT_SECRET") or secrets.token_hex(32), purpose="chat")
    cookie = SignedCookie(COOKIE, signer, path="/chat", max_age=SESSION_SECONDS)
    limiter = RateLimiter(per_minute=per_minute, burst=5)
    address_limiter = RateLimiter(per_minute=per_minute * 5, burst=20)
    env = template_env("chat")
    css = stylesheet("chat/chat.css")
    router = APIRouter()

    def session(request: "Request") -> "str | None":
        data = cookie.read(request.cookies)
        return data.get("sid") if data else None

    def page(sid: str, history: Conversation, *, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template("chat.html").render(
            model=name, history=history, history_token=signer.sign({"h": history}), csrf=csrf_token(signer, sid),
            feedback_on=feedback is not None, max_message=MAX_MESSAGE_CHARS, max_correction=MAX_CORRECTION_CHARS, **ctx,
        )
        resp = HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})
        cookie.write(resp, {"sid": sid})
        return resp

    def read_history(token: str) -> Conversation | None:
        data = signer.unsign(token, max_age=SESSION_SECONDS) if token else {"h": []}
        return None if data is None else data.get("h", [])

    def accept(request: "Request", csrf: str, history: str) -> "tuple[str, Conversation] | Response":
        """The session and the conversation of a form post, or the response refusing it."""
        sid = session(request)
        if sid is None or not check_csrf(signer, sid, csrf):
            return HTMLResponse("<p>This form has expired. <a href=\"/chat\">Start again</a>.</p>", status_code=403, headers=SECURITY_HEADERS)
        past = read_history(history)
        if past is None:  # altered or expired: start over rather than trust it
            return RedirectResponse("/chat", status_code=303)
        return sid, past

    @router.get("/chat/style.css")
    async def style() -> Response:
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    @router.get("/chat", response_class=HTMLResponse)
    async def chat_home(request: Request) -> HTMLResponse:
        return page(session(request) or secrets.token_urlsafe(16), [])

    @router.post("/chat", response_class=HTMLResponse)
    async def chat_send(request: Request, csrf: str = Form(""), history: str = Form(""), message: str = Form("")) -> Response:
        accepted = accept(request, csrf, history)
        if isinstance(accepted, Response):
            return accepted
        sid, past = accepted
        text = message.strip()
        if "\x00" in text:
            return page(sid, past, status=400, error="Your message contains a NUL character; remove it and send again.", draft=text.replace("\x00", ""))
        if not text or len(text) > MAX_MESSAGE_CHARS:
            problem = "Write a message first." if not text else f"Your message is {len(text)} characters; shorten it to at most {MAX_MESSAGE_CHARS}."
            return page(sid, past, status=400, error=problem, draft=message[:MAX_MESSAGE_CHARS])
        # Per session and per address: a new session is one GET away, an address is not.
        address = client_address(request)
        if not (limiter.allow(sid) and address_limiter.allow(address)):
            return page(sid, past, status=429, error="You are sending messages faster than this server answers; wait a minute and send again.", draft=text)
        conv: Conversation = [*past, {"role": "user", "content": text}]
        while sum(m["role"] == "user" for m in conv) > MAX_TURNS:
            conv = conv[2:]
        try:
            comps = await asyncio.wrap_future(submit(conv, gen))
        except RefusedError as e:  # too long for the model's context, or the server is full
            return page(sid, past, status=e.refusal.status, error=_page_sentence(e.refusal.message), draft=text)
        except Exception as e:  # the model failed (e.g. the conversation outgrew its context): say so, keep the page
            return page(sid, past, status=500, error=f"The model could not answer ({type(e).__name__}); start a new conversation or try a shorter message.", draft=text)
        answer = comps[0].text
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if feedback is not None:
            await asyncio.to_thread(feedback.record, f"{completion_id}:0", name, conv, answer)
        return page(sid, [*conv, {"role": "assistant", "content": answer}], completion_id=completion_id)

    @router.post("/chat/feedback", response_class=HTMLResponse)
    async def chat_feedback(
        request: Request, csrf: str = Form(""), history: str = Form(""), completion_id: str = Form(""),
        rating: str = Form(""), correction: str = Form(""),
    ) -> Response:
        accepted = accept(request, csrf, history)
        if isinstance(accepted, Response):
            return accepted
        sid, past = accepted
        if feedback is None:
            return page(sid, past, status=404, error="This server does not collect feedback.")
        if not address_limiter.allow(client_address(request)):
            return page(sid, past, status=429, error="Too much feedback from this address; wait a minute and send again.")
        if "\x00" in correction or "\x00" in completion_id:
            return page(sid, past, status=400, error="The correction contains a NUL character; remove it and send again.",
                        completion_id=completion_id.replace("\x00", ""), correction=correction.replace("\x00", ""))
        try:
            await asyncio.to_thread(feedback.rate, f"{completion_id}:0", rating, correction)
        except FeedbackError as e:
            return page(sid, past, status=400, error=str(e), completion_id=completion_id, correction=correction)
        return page(sid, past, thanks=True)

    return router


def _page_sentence(message: str) -> str:
    """An API sentence as the page shows it: capitalised."""
    return message[:1].upper() + message[1:]
