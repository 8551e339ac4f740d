"""The web layer shared by every page valign serves: the survey, its admin pages and
the chat page of ``valign serve``.

One module per concern, each with public names only:

* `valign.web.signing` — `Signer`: HMAC-signed JSON payloads (cookies, hidden fields).
* `valign.web.cookies` — `SignedCookie`: an HttpOnly cookie holding a signed payload.
* `valign.web.csrf` — `csrf_token` / `check_csrf`: the per-session form token.
* `valign.web.auth` — `AdminAuth`: the bearer admin token, compared in constant time.
* `valign.web.ratelimit` — `RateLimiter` (token buckets in memory, or `SqlBuckets` in a
  database every worker process shares) and `client_address`.
* `valign.web.headers` — `SECURITY_HEADERS` and the ASGI middleware that adds them.
* `valign.web.limits` — `BodyLimitMiddleware`: request bodies over a stated size get
  413 before they are read.
* `valign.web.bodies` — `read_form` / `read_json_object`: bodies read strictly (text
  fields sent once, JSON objects of finite values), 400 with one sentence otherwise.
* `valign.web.templates` — `template_env` (autoescaped Jinja over
  ``valign/data/templates/<folder>``) and `stylesheet` (the one shared CSS file,
  ``valign/data/templates/web/style.css``, plus a page family's additions).
* `valign.web.database` — engines, read/write sessions, UTC timestamps and the Alembic
  runner that the survey database and the feedback store each use for their own tables.

What a page family decides itself stays with it: the survey's routes and state in
`valign.survey`, the chat page in `valign.chat`, the feedback tables in `valign.feedback`.
"""
