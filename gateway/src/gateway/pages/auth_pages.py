"""Pages used before signing in: sign in and out, register, check your email, verify, forgot
and reset password. Their forms are protected by a double-submit form cookie, since there is
no session yet to derive a CSRF token from."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import Template
from pydantic import ValidationError

from contracts.kit.i18n import N_
from contracts.kit.rpc import RpcError
from gateway import flows
from gateway.api.auth import RegisterBody
from gateway.auth import (
    change_password,
    clear_session_cookie,
    client_ip,
    end_replaced_sessions,
    end_session,
    session_cookie,
)
from gateway.clients import Clients
from gateway.errors import ApiError
from gateway.i18n import page_language, translate
from gateway.pages.common import (
    RELATIONSHIPS,
    FieldErrors,
    anonymous_form_ok,
    as_api_error,
    field_errors_from,
    flash,
    redirect,
    render,
    safe_next,
    settings_of,
)

EXPIRED_FORM = N_("This form had expired, so nothing was sent. Please try again.")


def _text(form: Any, name: str, limit: int = 1024) -> str:
    value = form.get(name)
    return value.strip()[:limit] if isinstance(value, str) else ""


def _pydantic_errors(exc: ValidationError) -> FieldErrors:
    errors = FieldErrors()
    for item in exc.errors():
        field = str(item["loc"][0]) if item.get("loc") else "form"
        errors.setdefault(field, str(item.get("msg", "Check this field")).removeprefix("Value error, "))
    return errors


# -- sign in and out ---------------------------------------------------------------------------


@get("/login", include_in_schema=False, operation_id="page_login")
async def login_page(
    request: Request, next_: Annotated[str | None, Parameter(query="next", required=False, max_length=500)] = None
) -> Template:
    """The sign-in form, for parents and staff alike."""
    return render(request, "pages/login.html", anonymous_form=True, next=safe_next(next_), values={}, errors={})


@post("/login", include_in_schema=False, status_code=200, operation_id="page_login_submit")
async def login_submit(request: Request, clients: NamedDependency[Clients]) -> Response[Any]:
    """Sign in: the session cookie is set (replacing any session the browser held, which ends)
    and the browser goes where it was heading."""
    form = await request.form()
    values = {"email": _text(form, "email", 254)}
    next_path = safe_next(_text(form, "next", 500))

    def again(errors: FieldErrors, message: str | None = None, status: int = 400) -> Template:
        return render(
            request,
            "pages/login.html",
            anonymous_form=True,
            status=status,
            next=next_path,
            values=values,
            errors=errors,
            message=message,
        )

    if not anonymous_form_ok(request, form):
        return again(FieldErrors(), EXPIRED_FORM, 403)
    given = form.get("password")
    password = given if isinstance(given, str) else ""
    errors = FieldErrors()
    if not values["email"]:
        errors["email"] = N_("Enter your email address")
    if not password:
        errors["password"] = N_("Enter your password")
    if errors:
        return again(errors)
    try:
        reply = await clients.identity.login(values["email"], password[:1024], client_ip(request))
    except RpcError as exc:
        err = as_api_error(exc)
        if err.status_code == 401:
            return again(FieldErrors(password=N_("The email address or password is not right")), status=401)
        if err.status_code == 403:
            return render(
                request,
                "pages/check_email.html",
                anonymous_form=True,
                status=403,
                email=values["email"],
                unverified=True,
            )
        if err.status_code in (422, 429):
            return again(FieldErrors(), err.detail, err.status_code)
        raise
    await end_replaced_sessions(request)
    cookie = session_cookie(settings_of(request), reply.access_token, reply.expires_in)
    return redirect(next_path, cookies=[cookie])


@post("/logout", include_in_schema=False, status_code=200, operation_id="page_logout")
async def logout_submit(request: Request) -> Response[Any]:
    """Sign out on every replica, then back to the sign-in page."""
    await request.form()  # parsed once; the CSRF check reads the same
    await end_session(request)
    return redirect("/login", cookies=[clear_session_cookie(settings_of(request)), flash(request, "signed_out")])


# -- register and verify ------------------------------------------------------------------------


async def _link_context(clients: Clients, request: Request, code: str | None) -> dict[str, Any]:
    """The child and policy of a registration that came with a code (or the default policy)."""
    if code:
        try:
            preview = await clients.linking.preview_code(code[:256], client_ip(request))
        except RpcError as exc:
            err = as_api_error(exc)
            if err.status_code in (404, 429):
                return {
                    "code": None,
                    "code_problem": err.detail,
                    **(await _default_policy(clients, page_language(request))),
                }
            raise
        lang = page_language(request, None, preview.school_language)
        return {
            "code": code,
            "child": preview,
            "policy_name": translate(N_("{school}'s acceptable-use policy"), lang).format(school=preview.school_name),
            "policy_text": preview.aup.text,
            "school_language": preview.school_language,
        }
    return {"code": None, **(await _default_policy(clients, page_language(request)))}


async def _default_policy(clients: Clients, lang: str) -> dict[str, Any]:
    policy = await clients.linking.aup()
    return {"policy_name": translate(N_("the Parent Portal acceptable-use policy"), lang), "policy_text": policy.text}


@get("/register", include_in_schema=False, operation_id="page_register")
async def register_page(request: Request, clients: NamedDependency[Clients], code: str | None = None) -> Template:
    """Create an account; with `?code=` it also links that child once the address is confirmed."""
    context = await _link_context(clients, request, code)
    return render(
        request,
        "pages/register.html",
        anonymous_form=True,
        values={},
        errors={},
        relationships=RELATIONSHIPS,
        **context,
    )


@post("/register", include_in_schema=False, status_code=200, operation_id="page_register_submit")
async def register_submit(request: Request, clients: NamedDependency[Clients]) -> Template:
    """Register (the API's registration flow, its checks of form included), then "check your email"."""
    form = await request.form()
    code = _text(form, "code", 64) or None
    values = {
        "name": _text(form, "name", 200),
        "email": _text(form, "email", 254),
        "relationship": _text(form, "relationship", 20),
        "accept_aup": form.get("accept_aup") == "yes",
    }

    async def again(errors: FieldErrors, message: str | None = None, status: int = 400) -> Template:
        context = await _link_context(clients, request, code)
        lang = page_language(request, None, context.get("school_language"))
        if context.get("child") and lang == "en":
            errors = FieldErrors({k: v.replace("the child", context["child"].first_name) for k, v in errors.items()})
        elif context.get("child"):
            # The sentence in the page's language, as it is (the name would change its words).
            errors = FieldErrors({k: translate(v, lang) for k, v in errors.items()})
        return render(
            request,
            "pages/register.html",
            anonymous_form=True,
            status=status,
            values=values,
            errors=errors,
            message=message,
            relationships=RELATIONSHIPS,
            **context,
        )

    if not anonymous_form_ok(request, form):
        return await again(FieldErrors(), EXPIRED_FORM, 403)
    given = form.get("password")
    password = given if isinstance(given, str) else ""
    errors = FieldErrors()
    if not values["name"]:
        errors["name"] = N_("Enter your name")
    if not values["email"]:
        errors["email"] = N_("Enter your email address")
    if not password:
        errors["password"] = N_("Choose a password")
    if code and values["relationship"] not in dict(RELATIONSHIPS):
        errors["relationship"] = N_("Choose your relationship to the child")
    if not values["accept_aup"]:
        errors["accept_aup"] = N_("Accept the acceptable-use policy to register")
    if errors:
        return await again(errors)
    try:
        # The API's body: the same checks of form (an email address like one, a name).
        body = RegisterBody(
            email=values["email"],
            password=password[:1024],
            name=values["name"],
            accept_aup=True,
            code=code,
            relationship=values["relationship"] or None,
        )
        await flows.register(
            clients,
            flows.Registration(
                email=body.email,
                password=body.password,
                name=body.name,
                code=body.code,
                relationship=body.relationship,
                client_ip=client_ip(request),
            ),
        )
    except ValidationError as exc:
        return await again(_pydantic_errors(exc), status=422)
    except RpcError as exc:
        err = as_api_error(exc)
        if err.status_code in (404, 409):
            return await again(FieldErrors(), err.detail, err.status_code)
        if err.status_code in (422, 429):
            field_errors, detail = field_errors_from(exc)
            return await again(field_errors, None if field_errors else detail, err.status_code)
        raise
    return render(request, "pages/check_email.html", anonymous_form=True, email=values["email"], unverified=False)


@post("/resend-verification", include_in_schema=False, status_code=200, operation_id="page_resend_verification")
async def resend_submit(request: Request, clients: NamedDependency[Clients]) -> Template:
    """Send the verification email again."""
    form = await request.form()
    email = _text(form, "email", 254)
    if not anonymous_form_ok(request, form) or not email:
        return render(
            request, "pages/check_email.html", anonymous_form=True, status=403, email=email, message=EXPIRED_FORM
        )
    await clients.identity.resend_verification(email)
    return render(request, "pages/check_email.html", anonymous_form=True, email=email, resent=True)


@get("/verify", include_in_schema=False, operation_id="page_verify")
async def verify_page(request: Request, token: str | None = None) -> Template:
    """The link of the verification email: one button confirms the address."""
    # A button rather than confirming on GET: mail scanners that open links must not use it up.
    return render(request, "pages/verify.html", anonymous_form=True, token=token or "")


@post("/verify", include_in_schema=False, status_code=200, operation_id="page_verify_submit")
async def verify_submit(request: Request, clients: NamedDependency[Clients]) -> Template:
    """Confirm the address; any child registered with a code is linked from now on."""
    form = await request.form()
    token = _text(form, "token", 256)
    if not anonymous_form_ok(request, form):
        return render(request, "pages/verify.html", anonymous_form=True, status=403, token=token, message=EXPIRED_FORM)
    try:
        if not token:
            raise ApiError(400, "invalid_token", N_("This link is not complete."))
        await clients.identity.verify(token)
    except (RpcError, ApiError) as exc:
        err = as_api_error(exc)
        if err.status_code in (400, 422):
            return render(request, "pages/verify.html", anonymous_form=True, status=400, token="", failed=True)
        raise
    return render(request, "pages/verified.html")


# -- forgot and reset password ------------------------------------------------------------------


@get("/forgot-password", include_in_schema=False, operation_id="page_forgot_password")
async def forgot_page(request: Request) -> Template:
    """Ask for a link to choose a new password."""
    return render(request, "pages/forgot.html", anonymous_form=True, values={}, errors={})


@post("/forgot-password", include_in_schema=False, status_code=200, operation_id="page_forgot_password_submit")
async def forgot_submit(request: Request, clients: NamedDependency[Clients]) -> Template:
    """Send the reset link (the same answer whether the address has an account or not)."""
    form = await request.form()
    email = _text(form, "email", 254)
    if not anonymous_form_ok(request, form):
        return render(
            request,
            "pages/forgot.html",
            anonymous_form=True,
            status=403,
            values={"email": email},
            errors={},
            message=EXPIRED_FORM,
        )
    if not email:
        return render(
            request,
            "pages/forgot.html",
            anonymous_form=True,
            status=400,
            values={},
            errors=FieldErrors(email=N_("Enter your email address")),
        )
    await clients.identity.password_reset(email)
    return render(request, "pages/forgot_sent.html", email=email)


@get("/reset-password", include_in_schema=False, operation_id="page_reset_password")
async def reset_page(request: Request, token: str | None = None) -> Template:
    """The link of the reset email: choose a new password."""
    return render(request, "pages/reset.html", anonymous_form=True, token=token or "", errors={})


@post("/reset-password", include_in_schema=False, status_code=200, operation_id="page_reset_password_submit")
async def reset_submit(state: State, request: Request) -> Template:
    """Set the new password; every session of the account ends."""
    form = await request.form()
    token = _text(form, "token", 256)
    given = form.get("password")
    password = given if isinstance(given, str) else ""

    def again(errors: FieldErrors, status: int = 400, **extra: Any) -> Template:
        return render(
            request, "pages/reset.html", anonymous_form=True, status=status, token=token, errors=errors, **extra
        )

    if not anonymous_form_ok(request, form):
        return again(FieldErrors(), 403, message=EXPIRED_FORM)
    if not password:
        return again(FieldErrors(password=N_("Choose a new password")))
    try:
        if not token:
            raise ApiError(400, "invalid_token", N_("This link is not complete."))
        await change_password(state, token, password[:1024])
    except (RpcError, ApiError) as exc:
        err = as_api_error(exc)
        if err.status_code == 400:
            return again(FieldErrors(), 400, failed=True)
        if err.status_code == 422:
            field_errors, _ = field_errors_from(exc, "password")
            return again(field_errors, 422)
        raise
    return render(request, "pages/reset_done.html")


ROUTES = [
    login_page,
    login_submit,
    logout_submit,
    register_page,
    register_submit,
    resend_submit,
    verify_page,
    verify_submit,
    forgot_page,
    forgot_submit,
    reset_page,
    reset_submit,
]
