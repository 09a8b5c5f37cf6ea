"""Whether a staff member may see a school, class or pupil: plain functions over a session.

A staff scope names schools and trusts (a trust admin sees every school of their trusts).
Whatever lies outside it answers `not_found`, exactly as something that does not exist, so a
scope never reveals what other schools hold.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import linking as contract
from contracts.kit.rpc import RpcFailure
from linking.tables import Pupil, School, SchoolClass


def not_found(what: str) -> RpcFailure:
    """`not_found`: "no such pupil", "no such class", …"""
    return RpcFailure(contract.E_NOT_FOUND, f"no such {what}")


async def school_ids(s: AsyncSession, scope: contract.StaffScope) -> set[str]:
    """Every school of the scope: those it names and those of the trusts it names."""
    allowed = set(scope.school_ids)
    if scope.trust_ids:
        rows = await s.execute(select(col(School.school_id)).where(col(School.trust_id).in_(scope.trust_ids)))
        allowed.update(rows.scalars())
    return allowed


async def school_in_scope(s: AsyncSession, scope: contract.StaffScope, school_id: str) -> str:
    """The school's id if the scope holds it (the school need not be in the roster copy yet)."""
    if school_id not in await school_ids(s, scope):
        raise not_found("school")
    return school_id


async def class_in_scope(s: AsyncSession, scope: contract.StaffScope, class_id: str) -> tuple[SchoolClass, str]:
    """The class and its school's name ("" before the school arrives) if the scope holds it."""
    row = (
        await s.execute(
            select(SchoolClass, col(School.name))
            .outerjoin(School, col(School.school_id) == col(SchoolClass.school_id))
            .where(col(SchoolClass.class_id) == class_id)
        )
    ).first()
    if row is None or row[0].school_id not in await school_ids(s, scope):
        raise not_found("class")
    return row[0], row[1] or ""


async def pupil_in_scope(s: AsyncSession, scope: contract.StaffScope, pupil_id: str) -> Pupil:
    """The pupil if they are at a school of the scope now (a pupil who left is not found)."""
    pupil = await s.get(Pupil, pupil_id)
    if pupil is None or pupil.left_at is not None or pupil.school_id not in await school_ids(s, scope):
        raise not_found("pupil")
    return pupil


async def pupil_record_in_scope(s: AsyncSession, scope: contract.StaffScope, pupil_id: str) -> Pupil:
    """The pupil if their school is in the scope, whether or not they left (their audit trail)."""
    pupil = await s.get(Pupil, pupil_id)
    if pupil is None or pupil.school_id not in await school_ids(s, scope):
        raise not_found("pupil")
    return pupil
