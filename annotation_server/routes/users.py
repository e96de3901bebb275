from fastapi import APIRouter, status

from annotation_server.deps import AdminUser, ReadSession, TokenCacheDep, WriteSession
from annotation_server.schemas import IdPath, UserCreate, UserOut, UserUpdate, errors
from dspo.models import User
from dspo.services import users

router = APIRouter(prefix="/users", tags=["users"])


@router.get("", response_model=list[UserOut], responses=errors(401, 403))
def list_users(_: AdminUser, session: ReadSession) -> list[User]:
    return users.list_users(session)


@router.post(
    "",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    responses=errors(401, 403, 409, 400, 413, 422),
)
def create_user(body: UserCreate, _: AdminUser, session: WriteSession) -> User:
    return users.create_user(session, body.username, body.password, body.role)


@router.get("/{user_id}", response_model=UserOut, responses=errors(401, 403, 404, 422))
def get_user(user_id: IdPath, _: AdminUser, session: ReadSession) -> User:
    return users.get_user(session, user_id)


@router.patch("/{user_id}", response_model=UserOut, responses=errors(401, 403, 404, 409, 400, 413, 422))
def update_user(
    user_id: IdPath, body: UserUpdate, admin: AdminUser, session: WriteSession, cache: TokenCacheDep
) -> User:
    """Change a user's password, role or state. A new password, or deactivation, ends all the user's
    tokens and web sessions."""
    return users.update_user(
        session, cache, user_id, acting_user_id=admin.id, **body.model_dump(exclude_none=True)
    )
