"""The review pages: one case at a time, two blinded answers, the judge's five-level scale.

Server-rendered HTML that works without JavaScript and with the keyboard alone, on the
survey's web layer (`valign.web`: signed cookies, CSRF tokens, strict form reading,
body limits, security headers) and database (`valign.review.store`).

Routes:

* ``/i/<token>`` — the invitation link: signs the reviewer in (a signed session cookie)
  and continues at their first ungraded case. The link works again from any browser,
  which is how a reviewer resumes.
* ``/next`` — the first case not yet graded (in the reviewer's own random order), or
  ``/done``.
* ``/case/<n>`` — case ``n`` of the reviewer's order: the prompt, "Answer A" and
  "Answer B" (which one is the tuned model's is drawn per reviewer and case, and never
  shown), the five levels (A≫B … B≫A), refusal boxes and a note. POST saves the grade
  (revisable) and moves on.
* ``/done`` — the end, with links to revise any case.

Every POST needs the session cookie and its CSRF token (403 otherwise); a grade
without a level is shown again with an error summary.

Example:
    >>> from valign.review.pairs import ReviewPair
    >>> store = ReviewStore.open("sqlite:///:memory:")
    >>> _ = store.load([ReviewPair("c1", "Lie for me?", "No.", "Sure.", "tuned", "base")])
    >>> create_app(store, secret="s" * 32).title
    'valign expert review'
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from valign.errors import ValignError
from valign.evals.pairwise import LEVELS
from valign.review.store import ReviewerState, ReviewStore
from valign.web.bodies import openapi_form, read_form
from valign.web.cookies import SignedCookie
from valign.web.csrf import check_csrf, csrf_token
from valign.web.headers import SecurityHeadersMiddleware
from valign.web.limits import BodyLimitMiddleware
from valign.web.signing import Signer
from valign.web.templates import stylesheet, template_env

# Route signatures are resolved at run time by FastAPI, so these are real imports.
from fastapi import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app", "LEVEL_LABELS", "REVIEW_COOKIE", "MAX_NOTE_CHARS"]

REVIEW_COOKIE = "valign_review"
MAX_NOTE_CHARS = 4000
# The page's words for the judge's levels (`valign.evals.pairwise.LEVELS`), in the same order.
LEVEL_LABELS: dict[str, str] = {
    "A>>B": "A is much better (A ≫ B)",
    "A>B": "A is better (A > B)",
    "A=B": "Both are equally good (A = B)",
    "B>A": "B is better (B > A)",
    "B>>A": "B is much better (B ≫ A)",
}
assert tuple(LEVEL_LABELS) == LEVELS


class ReviewProblem(Exception):
    """Stop and answer with a page saying what happened."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


@dataclass
class Session:
    sid: str
    reviewer: str | None = None  # Reviewer.public_id
    dirty: bool = False


def create_app(store: ReviewStore, secret: str | None = None, *, max_body_bytes: int = 64 * 1024) -> "FastAPI":
    """The review as an ASGI app on a loaded, migrated store.

    ``secret`` signs the cookies; without one, a random secret kept in the database.
    """
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse

    if secret is not None and len(secret) < 16:
        raise ValignError("the review's secret is shorter than 16 characters; use a long random value (e.g. from `openssl rand -hex 32`) or leave it unset.")
    secret = secret or store.db.ensure_setting("review_cookie_secret", lambda: secrets.token_urlsafe(48))
    signer = Signer(secret, "review-session")
    cookie = SignedCookie(REVIEW_COOKIE, signer)
    env = template_env("review")
    css = stylesheet("review/review.css")

    app = FastAPI(title="valign expert review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)

    def session(request: Request) -> Session:
        data = cookie.read(request.cookies)
        if data and isinstance(data.get("sid"), str):
            return Session(data["sid"], data.get("rev") if isinstance(data.get("rev"), str) else None)
        return Session(secrets.token_urlsafe(16), dirty=True)

    def finish(response: Response, sess: Session) -> Response:
        if sess.dirty:
            cookie.write(response, {"sid": sess.sid, **({"rev": sess.reviewer} if sess.reviewer else {})})
        return response

    def html(request: Request, sess: Session, template: str, status: int = 200, **ctx: Any) -> Response:
        ctx.setdefault("csrf", csrf_token(signer, sess.sid))
        ctx.setdefault("root", request.scope.get("root_path", ""))
        return finish(HTMLResponse(env.get_template(template).render(**ctx), status_code=status), sess)

    def redirect(request: Request, sess: Session, path: str) -> Response:
        return finish(RedirectResponse(request.scope.get("root_path", "") + path, status_code=303), sess)

    def signed_in(sess: Session) -> ReviewerState:
        r = store.reviewer(sess.reviewer) if sess.reviewer else None
        if r is None:
            raise ReviewProblem(403, "Invitation needed", "This review is open to invited reviewers only; open the invitation link you were sent.")
        return r

    @app.exception_handler(ReviewProblem)
    async def _problem(request, exc: ReviewProblem):  # noqa: ANN001
        return HTMLResponse(env.get_template("problem.html").render(page_title=exc.title, message=exc.message, root=request.scope.get("root_path", "")), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http(request, exc):  # noqa: ANN001
        title = {404: "Page not found", 405: "Not allowed", 413: "Too large", 400: "Bad request"}.get(exc.status_code, "Something went wrong")
        message = "There is no such page in this review." if exc.status_code == 404 else str(exc.detail)
        return HTMLResponse(env.get_template("problem.html").render(page_title=title, message=message, root=request.scope.get("root_path", "")), status_code=exc.status_code)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _malformed(request, exc):  # noqa: ANN001
        return await _problem(request, ReviewProblem(404, "Page not found", "There is no such page in this review."))

    @app.get("/healthz")
    def _health() -> Response:
        return PlainTextResponse("ok")

    @app.get("/static/review.css")
    def _css() -> Response:
        return Response(css, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/favicon.ico")
    def _favicon() -> Response:
        return Response(status_code=204)

    @app.get("/")
    def landing(request: Request) -> Response:
        sess = session(request)
        signed_in(sess)
        return redirect(request, sess, "/next")

    @app.get("/i/{token}")
    def invitation(request: Request, token: str) -> Response:
        sess = session(request)
        r = store.reviewer_by_token(token)
        if r is None:
            raise ReviewProblem(404, "Invitation not valid", "This invitation link is not valid; check that you copied all of it, or ask for a new one.")
        sess.reviewer, sess.dirty = r.public_id, True
        return redirect(request, sess, "/next")

    @app.get("/next")
    def next_case(request: Request) -> Response:
        sess = session(request)
        r = signed_in(sess)
        order, graded = store.order(r), store.graded(r.id)
        n = next((i for i, pid in enumerate(order, 1) if pid not in graded), None)
        return redirect(request, sess, f"/case/{n}" if n else "/done")

    def show(request: Request, sess: Session, r: ReviewerState, n: int, current: dict[str, Any], error: str | None = None) -> Response:
        order = store.order(r)
        if not 1 <= n <= len(order):
            raise ReviewProblem(404, "Page not found", f"There is no case {n}; this review has {len(order)}.")
        pid = order[n - 1]
        pair = store.pair(pid)
        assert pair is not None
        a, b = (pair.answer_x, pair.answer_y) if store.x_first(r, pid) else (pair.answer_y, pair.answer_x)
        graded, total = store.progress(r)
        return html(
            request, sess, "case.html", page_title=f"Case {n} of {total}", number=n, total=total, graded=graded, prompt=pair.prompt,
            answer_a=a, answer_b=b, levels=list(LEVEL_LABELS.items()), current=current, error=error, max_note=MAX_NOTE_CHARS,
        )

    @app.get("/case/{n}")
    def case(request: Request, n: int) -> Response:
        sess = session(request)
        r = signed_in(sess)
        order = store.order(r)
        g = store.grade(r.id, order[n - 1]) if 1 <= n <= len(order) else None
        current: dict[str, Any] = {"level": None, "refused_a": False, "refused_b": False, "note": ""}
        if g is not None:
            current = {
                "level": g.level,
                "refused_a": g.refused_x if g.x_first else g.refused_y,
                "refused_b": g.refused_y if g.x_first else g.refused_x,
                "note": g.note or "",
            }
        return show(request, sess, r, n, current)

    grade_form = openapi_form(
        {"csrf": {"type": "string"}, "level": {"type": "string", "enum": list(LEVELS)}, "refused_a": {"type": "string"}, "refused_b": {"type": "string"}, "note": {"type": "string"}},
        required=["csrf", "level"],
    )

    @app.post("/case/{n}", openapi_extra=grade_form)
    async def grade(request: Request, n: int) -> Response:
        from starlette.concurrency import run_in_threadpool

        sess = session(request)
        if sess.dirty:  # no session cookie: the form cannot carry its CSRF token; refused unread
            raise ReviewProblem(403, "Cookies needed", "Your browser sent no session cookie with the form; allow cookies for this site and open your invitation link again.")
        form = await read_form(request)
        if not check_csrf(signer, sess.sid, form.get("csrf")):
            raise ReviewProblem(403, "Form expired", "This form does not belong to your session; open the case again and grade it there.")
        r = signed_in(sess)
        level, note = form.get("level", ""), form.get("note", "").strip()
        current = {"level": level, "refused_a": bool(form.get("refused_a")), "refused_b": bool(form.get("refused_b")), "note": note}
        order = await run_in_threadpool(store.order, r)
        if not 1 <= n <= len(order):
            raise ReviewProblem(404, "Page not found", f"There is no case {n}; this review has {len(order)}.")
        if level not in LEVELS:
            return show(request, sess, r, n, current, error="Choose which answer is better, or that both are equally good.")
        if len(note) > MAX_NOTE_CHARS:
            return show(request, sess, r, n, current, error=f"The note has {len(note)} characters; shorten it to {MAX_NOTE_CHARS} or fewer.")
        await run_in_threadpool(lambda: store.save_grade(r.id, order[n - 1], level, refused_a=current["refused_a"], refused_b=current["refused_b"], note=note))
        return redirect(request, sess, "/next")

    @app.get("/done")
    def done(request: Request) -> Response:
        sess = session(request)
        r = signed_in(sess)
        graded, total = store.progress(r)
        if graded < total:
            return redirect(request, sess, "/next")
        return html(request, sess, "done.html", page_title="Thank you", total=total)

    return app
