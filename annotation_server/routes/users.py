from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from annotation_server.deps import AdminUser, SessionDep, TokenCacheDep, get_or_404
from annotation_server.schemas import UserCreate, UserOut, UserUpdate
from dspo.models import User
from dspo.security import hash_password

router = APIRouter(prefix="/users", tags=["users"])


@router.get("", response_model=list[UserOut])
def list_users(_: AdminUser, session: SessionDep) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


@router.post("", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, _: AdminUser, session: SessionDep) -> User:
    user = User(username=body.username, password_hash=hash_password(body.password), role=body.role)
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, f"user {body.username!r} already exists") from None
    return user


@router.get("/{user_id}", response_model=UserOut)
def get_user(user_id: int, _: AdminUser, session: SessionDep) -> User:
    return get_or_404(session, User, user_id, "user")


@router.patch("/{user_id}", response_model=UserOut)
def update_user(
    user_id: int, body: UserUpdate, admin: AdminUser, session: SessionDep, cache: TokenCacheDep
) -> User:
    user = get_or_404(session, User, user_id, "user")
    if user.id == admin.id and (body.role == "annotator" or body.is_active is False):
        raise HTTPException(status.HTTP_409_CONFLICT, "you cannot demote or deactivate yourself")
    if body.password is not None:
        user.password_hash = hash_password(body.password)
    if body.role is not None:
        user.role = body.role
    if body.is_active is not None:
        user.is_active = body.is_active
    session.commit()
    cache.forget_user(user.id)
    return user
