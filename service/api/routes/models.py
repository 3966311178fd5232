"""GET /v1/models: what the loaded model is."""

from fastapi import APIRouter

from service.api.deps import Model
from service.schemas import ModelInfo

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelInfo)
async def model_info(runtime: Model) -> ModelInfo:
    """The served model: version, classes, preset, device and the bundle's training metadata."""
    bundle = runtime.bundle
    return ModelInfo(
        model=runtime.version,
        classes=list(bundle.classes),
        preset=bundle.preset,
        device=str(runtime.device),
        proposal_settings=bundle.proposal_settings.as_dict(),
        metadata=bundle.metadata,
    )
