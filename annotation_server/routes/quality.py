"""Annotator quality over REST: the numbers of the admin quality page."""

from fastapi import APIRouter

from annotation_server.deps import CurrentUser, ReadSession
from annotation_server.schemas import IdPath, QualityOut, errors
from dspo.services import quality
from dspo.services.quality import QualityReport

router = APIRouter(tags=["quality"], responses=errors(401, 403, 422))


@router.get("/projects/{project_id}/quality", response_model=QualityOut, responses=errors(404))
def project_quality(project_id: IdPath, user: CurrentUser, session: ReadSession) -> QualityReport:
    """Per annotator: leave-one-out agreement with the others on shared tasks (with the task counts),
    shown-position counts of best and worst with a chi-square test against uniform, and answers faster
    than the project's min_lead_time_ms; per project: Krippendorff's alpha overall and over windows of
    tasks, the same position test and the lead-time histogram. For admins and the project's reviewers."""
    return quality.report_for(session, user, project_id)
