"""`/platform`: a small stand-in for the learning platform, so the demo's buttons lead somewhere.

The overview's links point into `PORTAL_PLATFORM_URL`; when that is not set they point here.
A real deployment sets it to the platform and this stand-in is never linked to.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Router, get
from litestar.params import Parameter
from litestar.response import Template

SECTIONS = {
    "homework": ("Homework", "the homework set for this pupil, with what is done and what is due"),
    "files": ("Files", "the pupil's own files and the work they have saved"),
    "messages": ("Messages", "the messages the pupil has received from teachers"),
}


def _page(section: str, pupil: str) -> Template:
    title, what = SECTIONS[section]
    return Template(
        template_name="platform_standin.html",
        context={"title": title, "what": what, "pupil": pupil, "sections": SECTIONS, "section": section},
    )


@get("/{section:str}", sync_to_thread=False, include_in_schema=False, operation_id="platform_section")
def platform_section(
    section: str, pupil: Annotated[str, Parameter(query="pupil", default="", max_length=128)]
) -> Template:
    """One section of the stand-in platform."""
    if section not in SECTIONS:
        from gateway.errors import ApiError

        raise ApiError(404, "not_found", "The demo platform has homework, files and messages only.")
    return _page(section, pupil)


@get("/", sync_to_thread=False, include_in_schema=False, operation_id="platform_home")
def platform_home() -> Template:
    """The stand-in's front page."""
    return _page("homework", "")


platform_router = Router(path="/platform", route_handlers=[platform_home, platform_section])
