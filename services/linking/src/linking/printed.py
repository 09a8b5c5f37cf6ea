"""Printed codes: made for a class or a pupil, previewed by parents, printed as QR codes and sheets.

Each public coroutine takes a request model of `contracts.linking` and returns its reply, or
raises `RpcFailure` with one of the contract's error codes. One session per call.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import linking as contract
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcFailure
from linking import codes, redemption, roster, sheet
from linking.context import LinkingContext
from linking.guessing import Guessing
from linking.qr import QrCache
from linking.scope import class_in_scope, pupil_in_scope
from linking.tables import PRINTED, ClassMember, LinkCode, Pupil, School

log = get_logger("linking.printed")


def _filename(stem: str, ext: str) -> str:
    # Platform ids are opaque: keep a Content-Disposition header safe whatever they contain.
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:100] + "." + ext


@dataclass
class _LiveCode:
    code_id: str
    pupil_id: str
    cipher: bytes
    mask: int | None
    expires_at: datetime


class PrintedCodes:
    """Printed codes, their QR codes and class sheets (renderings cached), and previews of any code."""

    def __init__(self, ctx: LinkingContext, *, guessing: Guessing) -> None:
        self.ctx = ctx
        self.guessing = guessing
        self.qr_cache = QrCache()

    async def create_codes(self, req: contract.CreateCodesRequest) -> contract.CreateCodesReply:
        """ "Create QR codes": new printed codes; the pupils' earlier ones stop working at once."""
        for attempt in range(3):
            try:
                return await self._create_codes(req)
            except (IntegrityError, OperationalError):
                # A pupil who joined the class meanwhile got a code from another request, or
                # PostgreSQL broke a deadlock with the roster consumer: start again afresh.
                if attempt == 2:
                    raise
                log.info("create_codes_retry", attempt=attempt + 1)
        raise AssertionError("unreachable")

    async def _create_codes(self, req: contract.CreateCodesRequest) -> contract.CreateCodesReply:
        now = self.ctx.now()
        revoked_urls: set[str] = set()
        async with self.ctx.unit_of_work() as uow:
            s = uow.session
            if req.class_id is not None:
                cls, _ = await class_in_scope(s, req.scope, req.class_id)
                school_id, class_id = cls.school_id, cls.class_id
                pupil_ids = list(
                    (
                        await s.execute(
                            select(col(Pupil.pupil_id))
                            .join(ClassMember, col(ClassMember.pupil_id) == col(Pupil.pupil_id))
                            .where(col(ClassMember.class_id) == class_id, col(Pupil.left_at).is_(None))
                            .order_by(col(Pupil.pupil_id))
                        )
                    ).scalars()
                )
            else:
                assert req.pupil_id is not None
                pupil = await pupil_in_scope(s, req.scope, req.pupil_id)
                school_id, class_id, pupil_ids = pupil.school_id, None, [pupil.pupil_id]
            # Requests for the same pupils take turns (PostgreSQL row locks, in one order so two
            # never wait on each other; SQLite's writers take turns anyway): each one then sees
            # the codes the one before made live, and replaces them.
            await s.execute(
                select(col(Pupil.pupil_id))
                .where(col(Pupil.pupil_id).in_(pupil_ids))
                .order_by(col(Pupil.pupil_id))
                .with_for_update()
            )
            settings = await self.ctx.read_settings(s, school_id)
            expires_at = now + timedelta(days=settings.printed_code_days)
            if req.only_missing:
                # Read after the lock: a code another request just made counts as there. A
                # pupil in two classes keeps the card the other class printed.
                have = set(
                    (
                        await s.execute(
                            select(col(LinkCode.pupil_id)).where(
                                col(LinkCode.live_pupil_id).in_(pupil_ids),
                                col(LinkCode.school_id) == school_id,
                                col(LinkCode.expires_at) > now,
                            )
                        )
                    ).scalars()
                )
                pupil_ids = [p for p in pupil_ids if p not in have]

            old = (
                await s.execute(
                    select(col(LinkCode.id), col(LinkCode.pupil_id), col(LinkCode.code_cipher)).where(
                        col(LinkCode.live_pupil_id).in_(pupil_ids)
                    )
                )
            ).all()
            if old:
                await s.execute(
                    update(LinkCode)
                    .where(col(LinkCode.id).in_([o.id for o in old]))
                    .values(revoked_at=now, live_pupil_id=None)
                )
                # Flushed before the inserts: the unique live_pupil_id must be free first.
                await s.flush()
            vault = self.ctx.vault
            for o in old:
                if o.code_cipher:
                    try:
                        revoked_urls.add(self.ctx.link_url(vault.decrypt(o.code_cipher, pupil_id=o.pupil_id)))
                    except Exception:  # noqa: BLE001, S110 - written under another key: nothing cached, nothing to forget
                        pass

            fresh = [(pid, codes.generate()) for pid in pupil_ids]
            # The mask search is the slow part of a QR code: done once here, in a thread, and
            # the renderings kept, so the sheet printed next is quick.
            masks = await asyncio.to_thread(
                lambda: [self.qr_cache.make(self.ctx.link_url(c)).qr.mask for _, c in fresh]
            )
            created: list[contract.CreatedCode] = []
            for (pid, code), mask in zip(fresh, masks, strict=True):
                code_id = uuid.uuid4().hex
                s.add(
                    LinkCode(
                        id=code_id,
                        kind=PRINTED,
                        pupil_id=pid,
                        school_id=school_id,
                        class_id=class_id,
                        code_hash=vault.lookup_hash(code),
                        code_cipher=vault.encrypt(code, pupil_id=pid),
                        key_id=vault.key_id,
                        qr_mask=mask,
                        live_pupil_id=pid,
                        created_at=now,
                        created_by=req.actor_id,
                        expires_at=expires_at,
                    )
                )
                created.append(contract.CreatedCode(pupil_id=pid, code_id=code_id, expires_at=expires_at))
            await s.flush()
            if created:
                for c in created:
                    self.ctx.audit(
                        uow,
                        pupil_id=c.pupil_id,
                        school_id=school_id,
                        actor=f"staff:{req.actor_id}",
                        action="code_regenerated",
                        reason=f"printed code {c.code_id}",
                    )
                await uow.emit(
                    contract.CODES_REGENERATED,
                    contract.CodesRegenerated(
                        school_id=school_id,
                        class_id=class_id,
                        pupil_ids=[c.pupil_id for c in created],
                        code_ids=[c.code_id for c in created],
                        revoked_code_ids=[o.id for o in old],
                        actor_id=req.actor_id,
                    ),
                    aggregate=f"class:{class_id}" if class_id else f"pupil:{pupil_ids[0]}",
                )
            uow.after_commit(lambda: self.qr_cache.forget(revoked_urls))
        log.info("codes_created", school_id=school_id, class_id=class_id, count=len(created), revoked=len(old))
        return contract.CreateCodesReply(class_id=class_id, codes=created)

    async def preview_code(self, req: contract.PreviewCodeRequest) -> contract.CodePreview:
        """What a code is for: the child's first name, school, class and the school's policy."""
        code = codes.normalise(req.code)
        now = self.ctx.now()
        found = None
        async with self.ctx.db.reader() as s:
            if code is not None:
                found = (
                    await s.execute(
                        select(LinkCode, Pupil, School)
                        .join(Pupil, col(Pupil.pupil_id) == col(LinkCode.pupil_id))
                        .join(School, col(School.school_id) == col(Pupil.school_id))
                        .where(
                            col(LinkCode.code_hash).in_(self.ctx.vault.lookup_hashes(code)),
                            col(LinkCode.revoked_at).is_(None),
                            col(LinkCode.expires_at) > now,
                            col(Pupil.left_at).is_(None),
                            # As a redemption: a code only names its pupil at the school that made it.
                            col(LinkCode.school_id) == col(Pupil.school_id),
                        )
                    )
                ).first()
            if found is not None:
                link_code, pupil, school = found
                class_name = await roster.class_name(s, pupil.pupil_id, link_code.class_id)
                settings = await self.ctx.read_settings(s, school.school_id)
        if found is None:
            await self.guessing.preview_failed(req)
            raise redemption.invalid_code()
        return contract.CodePreview(
            first_name=pupil.first_name,
            school_id=school.school_id,
            school_name=school.name,
            class_name=class_name,
            aup=contract.AupReply(version=settings.aup_version, text=settings.aup_text, school_id=school.school_id),
            kind=link_code.kind,
            expires_at=link_code.expires_at,
            school_language=settings.language,
        )

    async def _live_codes(self, s: AsyncSession, pupil_ids: list[str]) -> dict[str, _LiveCode]:
        now = self.ctx.now()
        rows = await s.execute(
            select(
                col(LinkCode.id),
                col(LinkCode.pupil_id),
                col(LinkCode.code_cipher),
                col(LinkCode.qr_mask),
                col(LinkCode.expires_at),
            ).where(col(LinkCode.live_pupil_id).in_(pupil_ids), col(LinkCode.expires_at) > now)
        )
        return {
            r.pupil_id: _LiveCode(r.id, r.pupil_id, r.code_cipher, r.qr_mask, r.expires_at)
            for r in rows
            if r.code_cipher
        }

    async def pupil_qr(self, req: contract.PupilQrRequest) -> contract.Document:
        """One pupil's printed code as an SVG or PNG QR code."""
        async with self.ctx.db.reader() as s:
            pupil = await pupil_in_scope(s, req.scope, req.pupil_id)
            live = (await self._live_codes(s, [pupil.pupil_id])).get(pupil.pupil_id)
        if live is None:
            raise RpcFailure(contract.E_NO_CODE, "this pupil has no printed code yet: create QR codes first")
        code = self.ctx.vault.decrypt(live.cipher, pupil_id=live.pupil_id)
        rendering = self.qr_cache.get(self.ctx.link_url(code), live.mask)
        name = _filename(f"qr-{pupil.pupil_id}", req.format)
        if req.format == "svg":
            return contract.Document(content_type="image/svg+xml", filename=name, text=rendering.svg_document())
        png = await asyncio.to_thread(rendering.png)
        return contract.Document(content_type="image/png", filename=name, data_base64=base64.b64encode(png).decode())

    async def pupil_sheet(self, req: contract.PupilSheetRequest) -> contract.Document:
        """One pupil's cut-out card (a lost card, a pupil who joined mid-year), as HTML or PDF."""
        async with self.ctx.db.reader() as s:
            pupil = await pupil_in_scope(s, req.scope, req.pupil_id)
            live = (await self._live_codes(s, [pupil.pupil_id])).get(pupil.pupil_id)
            if live is None:
                raise RpcFailure(contract.E_NO_CODE, "this pupil has no printed code yet: create a QR code first")
            made_for = (
                await s.execute(select(col(LinkCode.class_id)).where(col(LinkCode.id) == live.code_id))
            ).scalar()
            class_name = await roster.class_name(s, pupil.pupil_id, made_for)
            school = await s.get(School, pupil.school_id)
            language = (await self.ctx.read_settings(s, pupil.school_id)).language
        school_name = school.name if school else ""
        timezone = school.timezone if school else "UTC"
        host = urlsplit(self.ctx.public_url).netloc or self.ctx.public_url
        code = self.ctx.vault.decrypt(live.cipher, pupil_id=pupil.pupil_id)
        url = self.ctx.link_url(code)

        def render() -> contract.Document:
            card = sheet.Card(
                pupil_name=f"{pupil.first_name} {pupil.last_name}",
                class_name=class_name,
                school_name=school_name,
                code=codes.display(code),
                url=url,
                expires_at=live.expires_at,
                timezone=timezone,
                qr=self.qr_cache.get(url, live.mask),
            )
            stem = f"qr-code-{pupil.pupil_id}"
            if req.format == "pdf":
                pdf = sheet.render_pdf(
                    [card], class_name=class_name, school_name=school_name, host=host, language=language
                )
                return contract.Document(
                    content_type="application/pdf",
                    filename=_filename(stem, "pdf"),
                    data_base64=base64.b64encode(pdf).decode(),
                )
            html = sheet.render_html(
                [card], class_name=class_name, school_name=school_name, host=host, language=language
            )
            return contract.Document(
                content_type="text/html; charset=utf-8", filename=_filename(stem, "html"), text=html
            )

        return await asyncio.to_thread(render)

    async def class_sheet(self, req: contract.ClassSheetRequest) -> contract.Document:
        """The class's cut-out cards as an HTML page or an A4 PDF."""
        async with self.ctx.db.reader() as s:
            cls, school_name = await class_in_scope(s, req.scope, req.class_id)
            school = await s.get(School, cls.school_id)
            pupils = list(
                (
                    await s.execute(
                        select(Pupil)
                        .join(ClassMember, col(ClassMember.pupil_id) == col(Pupil.pupil_id))
                        .where(col(ClassMember.class_id) == cls.class_id, col(Pupil.left_at).is_(None))
                        .order_by(col(Pupil.last_name), col(Pupil.first_name), col(Pupil.pupil_id))
                    )
                ).scalars()
            )
            live = await self._live_codes(s, [p.pupil_id for p in pupils])
            language = (await self.ctx.read_settings(s, cls.school_id)).language
        if not live:
            raise RpcFailure(contract.E_NO_CODE, "this class has no printed codes yet: create QR codes first")
        timezone = school.timezone if school else "UTC"
        host = urlsplit(self.ctx.public_url).netloc or self.ctx.public_url
        vault = self.ctx.vault

        def render() -> contract.Document:
            cards = []
            for p in pupils:
                lc = live.get(p.pupil_id)
                if lc is None:
                    continue  # joined the class after the codes were made
                code = vault.decrypt(lc.cipher, pupil_id=p.pupil_id)
                url = self.ctx.link_url(code)
                cards.append(
                    sheet.Card(
                        pupil_name=f"{p.first_name} {p.last_name}",
                        class_name=cls.name,
                        school_name=school_name,
                        code=codes.display(code),
                        url=url,
                        expires_at=lc.expires_at,
                        timezone=timezone,
                        qr=self.qr_cache.get(url, lc.mask),
                    )
                )
            if req.format == "pdf":
                pdf = sheet.render_pdf(
                    cards, class_name=cls.name, school_name=school_name, host=host, language=language
                )
                return contract.Document(
                    content_type="application/pdf",
                    filename=_filename(f"qr-codes-{cls.class_id}", "pdf"),
                    data_base64=base64.b64encode(pdf).decode(),
                )
            html = sheet.render_html(cards, class_name=cls.name, school_name=school_name, host=host, language=language)
            return contract.Document(
                content_type="text/html; charset=utf-8",
                filename=_filename(f"qr-codes-{cls.class_id}", "html"),
                text=html,
            )

        return await asyncio.to_thread(render)
