"""A respondent withdraws: ``/withdraw`` asks for confirmation, its form deletes the response.

Every survey page and the thank-you page link to ``/withdraw``; the private resume
link (``/r/<token>``, or ``/i/<token>`` with invitations) brings any browser back to
them, so a respondent can withdraw whenever they still have that link. The page names
what will be deleted and carries one form (CSRF-protected, no JavaScript): its button
erases the response with `valign.survey.erasure` (reason ``withdrawn``) and leads to
``/withdrawn``, which shows nothing of the response. A browser with no response in its
session is told how to find it (the private link) or whom to ask (the researchers,
with the response number).

Example (what `valign.survey.app.create_app` does)::

    app.include_router(withdraw_router(survey))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from valign.survey.erasure import Erasure, erase_respondents
from valign.survey.messages import messages
from valign.survey.state import BrowserSession, SurveyState, forget_respondent
from valign.web.bodies import openapi_form

# Route signatures are resolved at run time by FastAPI, so these are real imports.
from fastapi import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = ["withdraw_router", "CONFIRM"]

CONFIRM = "withdraw"  # the value of the confirmation button: nothing else erases


def withdraw_router(sv: SurveyState) -> APIRouter:
    """The routes ``/withdraw`` (GET: the confirmation page; POST: erase) and ``/withdrawn``."""
    from fastapi import APIRouter
    from starlette.concurrency import run_in_threadpool

    router = APIRouter()

    def words(sess: BrowserSession) -> dict[str, str]:
        """The withdrawal pages' words in the respondent's language (`valign.survey.messages`)."""
        return messages(sv.language(sess))["withdraw"]

    def erased(done: Erasure) -> None:
        if done.proposals:
            sv.forget_plans()

    @router.get("/withdraw")
    def confirm(request: Request) -> Response:
        sess = sv.session(request)
        with sv.db.read() as s:
            r = sv.respondent(s, sess)
        if r is None:
            return sv.html(request, forget_respondent(sess), "withdraw.html", page_title=words(sess)["title"], respondent_id=None)
        return sv.html(request, sess, "withdraw.html", page_title=words(sess)["title"], respondent_id=r.public_id, confirm=CONFIRM)

    @router.post("/withdraw", openapi_extra=openapi_form({"csrf": {"type": "string"}, "confirm": {"type": "string"}}, required=["csrf"]))
    async def withdraw(request: Request) -> Response:
        sess = sv.session(request)
        form = await sv.read_post(request, sess)  # the cookie first, then the body, strictly read (valign.web.bodies)
        return await run_in_threadpool(withdraw_now, request, sess, form.get("confirm") == CONFIRM)

    def withdraw_now(request: Request, sess: BrowserSession, confirmed: bool) -> Response:
        with sv.db.read() as s:
            r = sv.respondent(s, sess)
        if r is None:  # e.g. the form sent twice: the first one deleted it
            return sv.html(request, forget_respondent(sess), "withdraw.html", page_title=words(sess)["title"], respondent_id=None)
        if not confirmed:
            return sv.html(
                request, sess, "withdraw.html", page_title=words(sess)["title"], respondent_id=r.public_id, confirm=CONFIRM,
                error=words(sess)["choose"],
            )
        erased(erase_respondents(sv.db, [r.id], "withdrawn"))
        return sv.redirect(request, forget_respondent(sess), "/withdrawn")

    @router.get("/withdrawn")
    def withdrawn(request: Request) -> Response:
        sess = sv.session(request)
        return sv.html(request, sess, "withdrawn.html", page_title=words(sess)["withdrawn_title"])

    return router
