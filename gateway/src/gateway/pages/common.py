"""What every web page shares: rendering with the caller and a CSRF token, form tokens for
pages used before signing in, one-shot notices after a redirect, and errors shown as pages.

Pages ask the services through the same clients and flows as the API (`gateway.clients`,
`gateway.flows`), never through the API's route handlers, and hold no data of their own. A
service's error gets the HTTP status the API would give it (`gateway.errors.http_error`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from litestar import MediaType, Request, Response
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.response import Redirect, Template
from litestar.types import ExceptionHandlersMap

from contracts.identity import Principal
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcError
from gateway.auth import credentials, csrf_token_for
from gateway.errors import ApiError, detail_for_status, http_error
from gateway.settings import GatewaySettings

log = get_logger("gateway.pages")

FORM_COOKIE = "portal_form"
SECURE_FORM_COOKIE = "__Host-portal_form"
FLASH_COOKIE = "portal_notice"
SECURE_FLASH_COOKIE = "__Host-portal_notice"
FLASH_MAX_CHARS = 600

RELATIONSHIPS = [
    ("mother", "Mother"),
    ("father", "Father"),
    ("carer", "Carer"),
    ("guardian", "Guardian"),
    ("grandparent", "Grandparent"),
    ("other", "Other"),
]


def settings_of(request: Request) -> GatewaySettings:
    """The gateway's settings."""
    return request.app.state.settings


# -- CSRF for forms used before signing in -------------------------------------------------


def _form_cookie_name(settings: GatewaySettings) -> str:
    return SECURE_FORM_COOKIE if settings.secure_cookies else FORM_COOKIE


def _form_token(secret: str) -> str:
    # The page carries a hash of the cookie, not the cookie: a leaked page reveals nothing
    # that could be replayed as the cookie.
    return hashlib.sha256(b"form:" + secret.encode()).hexdigest()


def form_secret(request: Request) -> tuple[str, Cookie | None]:
    """The browser's form secret, and the cookie to set when it has none yet."""
    settings = settings_of(request)
    secret = request.cookies.get(_form_cookie_name(settings))
    if secret and 20 <= len(secret) <= 100:
        return secret, None
    secret = secrets.token_urlsafe(32)
    cookie = Cookie(
        key=_form_cookie_name(settings),
        value=secret,
        path="/",
        secure=settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )
    return secret, cookie


def anonymous_form_ok(request: Request, form: Mapping[str, Any]) -> bool:
    """Double-submit check of a form used before signing in (login, register, reset...)."""
    secret = request.cookies.get(_form_cookie_name(settings_of(request)))
    sent = form.get("csrf_token")
    if not secret or not isinstance(sent, str):
        return False
    return hmac.compare_digest(sent.encode(), _form_token(secret).encode())


def session_csrf(request: Request) -> str | None:
    """The CSRF token of the request's session cookie."""
    creds = credentials(request)
    if creds is None or creds.source != "cookie":
        return None
    return csrf_token_for(creds.token)


# -- notices carried across one redirect ---------------------------------------------------

# The cookie names a notice and the ids it is about, never a name or an address: it travels
# unencrypted (and over plain http in development), and a browser keeps it after the page.
# The page it leads to fills in the names from what it shows the same caller anyway. Only
# these sentences can appear, so a cookie set by anyone else cannot put words on our pages.
# key -> (sentence, the words for an id the page does not know)
NOTICES: dict[str, tuple[str, dict[str, str]]] = {
    "signed_out": ("You have signed out.", {}),
    "child_linked": ("{pupil} is now linked to your account.", {"pupil": "Your child"}),
    "child_already_linked": ("{pupil} was already linked to your account.", {"pupil": "Your child"}),
    "child_unlinked": ("The child is no longer linked to your account.", {}),
    "invitation_sent": (
        "Invitation sent to {invitation} for {pupil}.",
        {"invitation": "the address you entered", "pupil": "the pupil"},
    ),
    "parent_removed": ("The parent can no longer see {pupil}'s schoolwork.", {"pupil": "the pupil"}),
    "parent_removed_everywhere": ("The parent can no longer see any of their children at this school.", {}),
    "codes_created": ("New QR codes created for {count}. Print the QR sheet to hand them out.", {"count": "the class"}),
    "bar_added": (
        "{bar} can no longer be linked to {pupil}; their access ended.",
        {"bar": "The address", "pupil": "the pupil"},
    ),
    "bar_lifted": ("The bar is lifted: that address may be linked to {pupil} again.", {"pupil": "the pupil"}),
    "settings_saved": ("Settings saved.", {}),
    "invitation_withdrawn": (
        "The invitation to {invitation} is withdrawn: its code no longer works.",
        {"invitation": "that address"},
    ),
    "invitations_sent": ("Invitations sent to the school's contacts of the pupils without a linked parent.", {}),
    "staff_disabled": (
        "{staff} can no longer sign in; their sessions have ended.",
        {"staff": "The member of staff"},
    ),
    "staff_enabled": ("{staff} can sign in again with their old password.", {"staff": "The member of staff"}),
    "account_deleted": ("Your account has been deleted.", {}),
    "preferences_saved": ("Your choices are saved.", {}),
}
NOTICE_PARAMS = ("pupil", "invitation", "bar", "count", "staff")
MAX_NOTICE_ID = 128


def _flash_cookie_name(settings: GatewaySettings) -> str:
    return SECURE_FLASH_COOKIE if settings.secure_cookies else FLASH_COOKIE


def _flash(settings: GatewaySettings, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=_flash_cookie_name(settings),
        value=value,
        path="/",
        secure=settings.secure_cookies,
        httponly=True,
        samesite="lax",
        max_age=max_age,
    )


def flash(request: Request, key: str, **params: str | int) -> Cookie:
    """A notice shown once by the next page: one of `NOTICES`, with the ids (a pupil's, an
    invitation's, a bar's) or the count it is about."""
    if key not in NOTICES or set(params) - set(NOTICE_PARAMS):
        raise ValueError(f"no such notice: {key} {sorted(params)}")
    value = urlencode({"n": key, **{k: str(v)[:MAX_NOTICE_ID] for k, v in params.items()}})
    # Quoted once more: "=" and "&" are not cookie characters.
    return _flash(settings_of(request), quote(value, safe=""), 60)


def notice_text(value: str, names: Mapping[str, Mapping[str, str]]) -> str | None:
    """The sentence of a notice cookie, each id replaced by what `names` (kind -> id -> words)
    says of it, or by general words; None for anything that is not one of ours."""
    fields = dict(parse_qsl(unquote(value[:FLASH_MAX_CHARS]), keep_blank_values=True))
    known = NOTICES.get(fields.pop("n", ""))
    if known is None:
        return None
    sentence, general = known
    words: dict[str, str] = {}
    for kind in NOTICE_PARAMS:
        given = fields.get(kind, "")[:MAX_NOTICE_ID]
        if kind == "count" and given.isascii() and given.isdigit():
            words[kind] = f"{int(given)} pupil{'' if int(given) == 1 else 's'}"
        else:
            words[kind] = names.get(kind, {}).get(given) or general.get(kind, "")
    return sentence.format(**words)


def redirect(path: str, *, cookies: list[Cookie] | None = None) -> Redirect:
    """303 to a page of ours (with `flash(...)` among the cookies for a notice)."""
    return Redirect(path=path, status_code=303, cookies=list(cookies or []))


def safe_next(value: str | None) -> str:
    """A local path to go to after signing in; anything else goes home."""
    # "//host" and "/\host" are other sites to a browser.
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")) or len(value) > 500:
        return "/"
    return value


# -- rendering ---------------------------------------------------------------------------------


def render(
    request: Request,
    template: str,
    *,
    principal: Principal | None = None,
    status: int = 200,
    anonymous_form: bool = False,
    cookies: list[Cookie] | None = None,
    names: Mapping[str, Mapping[str, str]] | None = None,
    **context: Any,
) -> Template:
    """A page: the caller, the CSRF token its forms need and any pending notice in the context
    (`names`: kind -> id -> words, for the ids a notice names, from what the page shows)."""
    jar = list(cookies or [])
    if anonymous_form:
        secret, new_cookie = form_secret(request)
        csrf: str | None = _form_token(secret)
        if new_cookie is not None:
            jar.append(new_cookie)
    else:
        csrf = session_csrf(request) if principal is not None else None
    settings = settings_of(request)
    pending = request.cookies.get(_flash_cookie_name(settings))
    notice = notice_text(pending, names or {}) if pending else None
    if pending:
        jar.append(_flash(settings, "", 0))
    return Template(
        template_name=template,
        context={
            "principal": principal,
            "csrf_token": csrf,
            "notice": notice,
            "is_staff": principal is not None and principal.role != "parent",
            "is_admin": principal is not None and principal.role in ("school_admin", "trust_admin"),
            **context,
        },
        status_code=status,
        cookies=jar,
        media_type=MediaType.HTML,
    )


class FieldErrors(dict[str, str]):
    """Field name -> the message shown beside it (and linked from the summary)."""


def as_api_error(exc: RpcError | ApiError) -> ApiError:
    """The error as the API answers it: its status, code, detail and fields."""
    return exc if isinstance(exc, ApiError) else http_error(exc)


def field_errors_from(exc: RpcError | ApiError, default_field: str | None = None) -> tuple[FieldErrors, str]:
    """The per-field messages of a service error, and its sentence."""
    err = as_api_error(exc)
    errors = FieldErrors()
    for item in err.fields.get("errors", []) or []:
        if item.get("field"):
            message = str(item.get("message") or err.detail)
            errors[item["field"]] = message[:1].upper() + message[1:]
    if not errors and default_field:
        errors[default_field] = err.detail
    return errors, err.detail


# -- errors as pages ---------------------------------------------------------------------------

_TITLES = {
    400: "That link or form did not work",
    403: "This form has expired",
    404: "Page not found",
    409: "That could not be done",
    422: "Some details need checking",
    429: "Too many attempts",
    503: "Parent Portal is busy",
}


def _error_page(
    request: Request, status: int, detail: str, headers: Mapping[str, str] | None = None, code: str | None = None
) -> Response[Any]:
    if status == 401:
        # Only a page can be returned to: a form's target may not answer GET.
        if request.method == "GET":
            query = urlencode({"next": request.url.path + (f"?{request.url.query}" if request.url.query else "")})
            return Redirect(path=f"/login?{query}", status_code=303)
        return Redirect(path="/login", status_code=303)
    title = _TITLES.get(status, "Something went wrong")
    if code == "csrf_failed":
        detail = "For your safety this form works only for a short while. Go back, reload the page and try again."
    elif code == "cross_origin":
        title = "This form came from another website"
        detail = (
            "For your safety Parent Portal only accepts forms from its own pages, so nothing was done. "
            f"Open {settings_of(request).public_url} and try again from there."
        )
    return Template(
        template_name="pages/error.html",
        context={
            "title": title,
            "detail": detail,
            "status": status,
            "principal": None,
        },
        status_code=status,
        media_type=MediaType.HTML,
        headers=dict(headers or {}),
    )


def handle_api_error(request: Request, exc: ApiError) -> Response[Any]:
    """An `ApiError` raised under a page (a guard's 404, a CSRF failure) as a page."""
    return _error_page(request, exc.status_code, exc.detail, exc.headers, exc.code)


def handle_rpc_error(request: Request, exc: RpcError) -> Response[Any]:
    """A service's error under a page, answered with the status the API would give."""
    err = http_error(exc)
    return _error_page(request, err.status_code, err.detail, err.headers, err.code)


def handle_http_exception(request: Request, exc: HTTPException) -> Response[Any]:
    """Litestar's own errors (a malformed form, a wrong method) as a page."""
    status = exc.status_code
    if isinstance(exc, NotAuthorizedException):
        status = 401
    if status >= 500:
        return handle_unexpected(request, exc)
    detail = detail_for_status(status) if isinstance(exc, ValidationException) or not exc.detail else exc.detail
    return _error_page(request, status, detail)


def handle_unexpected(request: Request, exc: Exception) -> Response[Any]:
    """Anything unhandled: logged, answered with a page that names no detail."""
    log.error(
        "page_error",
        method=request.method,
        route=request.scope.get("path_template", ""),
        error=type(exc).__name__,
        exc_info=exc,
    )
    return _error_page(request, 500, detail_for_status(500))


def exception_handlers() -> ExceptionHandlersMap:
    """The page router's handlers: errors answered as HTML pages, 401 as a redirect to sign in."""
    return {
        ApiError: handle_api_error,
        RpcError: handle_rpc_error,
        HTTPException: handle_http_exception,
        Exception: handle_unexpected,
    }
