"""The chat page of ``valign serve``: talk to the model and tell it where it went wrong.

Plain server-rendered HTML forms (no JavaScript): a message box, the conversation so
far, and under the model's latest answer 👍 / 👎 buttons with an optional correction,
which go to the server's feedback store (`valign.feedback`) for the next KTO round.
The same defences as the survey's pages (`valign.survey.security`): a signed,
HttpOnly session cookie with a CSRF token on every form, a per-session rate limit on
model calls, a strict Content-Security-Policy. The conversation travels in a signed
hidden field, so a page cannot put words in the model's mouth; nothing about the
person is stored, only the conversation and the feedback.

Example:
    >>> app.include_router(chat_page_router("embedded", batcher, FeedbackStore("sqlite:///feedback.db")))
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations
# (Request, Form) at runtime, and they are imported inside `chat_page_router`.
import asyncio
import os
import secrets
import uuid
from importlib import resources
from typing import TYPE_CHECKING, Any

from valign.types import Conversation, GenConfig

if TYPE_CHECKING:
    from fastapi import APIRouter

    from valign.feedback import FeedbackStore
    from valign.serve import Batcher

__all__ = ["chat_page_router", "MAX_MESSAGE_CHARS", "MAX_TURNS"]

MAX_MESSAGE_CHARS = 4000
MAX_TURNS = 12  # user messages kept in one conversation; older turns are dropped
COOKIE = "valign_chat"
CHAT_GEN = GenConfig(temperature=0.7, max_new_tokens=256)


def chat_page_router(
    name: str,
    batcher: "Batcher",
    feedback: "FeedbackStore | None",
    *,
    secret: str | None = None,
    per_minute: int = 20,
    gen: GenConfig = CHAT_GEN,
) -> "APIRouter":
    """``GET/POST /chat``, ``POST /chat/feedback`` and ``/chat/style.css``."""
    from fastapi import APIRouter, Form, Request
    from fastapi.responses import HTMLResponse, RedirectResponse, Response
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from valign.feedback import MAX_CORRECTION_CHARS, FeedbackError
    from valign.survey.render import stylesheet
    from valign.survey.security import SECURITY_HEADERS, RateLimiter, Signer, check_csrf, csrf_token

    signer = Signer(secret or os.environ.get("VALIGN_CHAT_SECRET") or secrets.token_hex(32), purpose="chat")
    limiter = RateLimiter(per_minute=per_minute, burst=5)
    address_limiter = RateLimiter(per_minute=per_minute * 5, burst=20)
    env = Environment(
        loader=FileSystemLoader(str(resources.files("valign") / "data" / "templates" / "chat")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    router = APIRouter()

    def session(request: "Request") -> "str | None":
        data = signer.unsign(request.cookies.get(COOKIE), max_age=12 * 3600)
        return data.get("sid") if data else None

    def page(sid: str, history: Conversation, *, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template("chat.html").render(
            model=name, history=history, history_token=signer.sign({"h": history}), csrf=csrf_token(signer, sid),
            feedback_on=feedback is not None, max_message=MAX_MESSAGE_CHARS, max_correction=MAX_CORRECTION_CHARS, **ctx,
        )
        resp = HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})
        resp.set_cookie(COOKIE, signer.sign({"sid": sid}), httponly=True, samesite="lax", max_age=12 * 3600, path="/chat")
        return resp

    def read_history(token: str) -> Conversation | None:
        data = signer.unsign(token, max_age=12 * 3600) if token else {"h": []}
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
        return Response(stylesheet() + CHAT_CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

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
        if not text or len(text) > MAX_MESSAGE_CHARS:
            problem = "Write a message first." if not text else f"Your message is {len(text)} characters; shorten it to at most {MAX_MESSAGE_CHARS}."
            return page(sid, past, status=400, error=problem, draft=message[:MAX_MESSAGE_CHARS])
        # Per session and per address: a new session is one GET away, an address is not.
        address = request.client.host if request.client else "?"
        if not (limiter.allow(sid) and address_limiter.allow(address)):
            return page(sid, past, status=429, error="You are sending messages faster than this server answers; wait a minute and send again.", draft=text)
        conv: Conversation = [*past, {"role": "user", "content": text}]
        while sum(m["role"] == "user" for m in conv) > MAX_TURNS:
            conv = conv[2:]
        try:
            comps = await asyncio.wrap_future(batcher.submit(conv, gen))
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
        if not address_limiter.allow(request.client.host if request.client else "?"):
            return page(sid, past, status=429, error="Too much feedback from this address; wait a minute and send again.")
        try:
            await asyncio.to_thread(feedback.rate, f"{completion_id}:0", rating, correction)
        except FeedbackError as e:
            return page(sid, past, status=400, error=str(e), completion_id=completion_id, correction=correction)
        return page(sid, past, thanks=True)

    return router


CHAT_CSS = """
/* chat page additions */
.turn { margin: 0 0 1rem; padding: 0.75rem 1rem; border-left: 5px solid #505a5f; background: #f3f2f1; }
.turn.assistant { border-left-color: #1d4f91; background: #ffffff; border-top: 1px solid #b1b4b6; border-right: 1px solid #b1b4b6; border-bottom: 1px solid #b1b4b6; }
.turn p { margin: 0.25rem 0; white-space: pre-wrap; }
textarea { width: 100%; font: inherit; padding: 0.5rem; border: 2px solid #0b0c0c; }
.rate { display: flex; gap: 1rem; margin: 0.5rem 0; }
"""
