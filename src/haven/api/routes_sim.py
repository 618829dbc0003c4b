"""Control of a simulated cluster (`haven sim serve`): inject faults, read virtual time."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from haven.api.auth import require_admin, require_read
from haven.api.bodies import documented, model_body
from haven.api.context import ApiContext, ApiProblem, context, first_line, invalid
from haven.api.schemas import ERRORS, INVALID, READ_ERRORS, Accepted, FaultIn

router = APIRouter(prefix="/api/v1/sim", tags=["simulation"])


def _sim(ctx: ApiContext) -> Any:
    if ctx.sim_control is None:
        raise ApiProblem(404, "this API does not serve a simulated cluster")
    return ctx.sim_control


@router.get("", dependencies=[Depends(require_read)], responses=READ_ERRORS)
def sim_info(ctx: ApiContext = Depends(context)) -> dict[str, Any]:
    """Virtual time, speed and scenario of the simulation."""
    return _sim(ctx).info()


@router.post("/fault", status_code=202, response_model=Accepted, responses={**ERRORS, **INVALID},
             dependencies=[Depends(require_admin)], openapi_extra=documented(FaultIn))
def sim_fault(ctx: ApiContext = Depends(context),
              body: FaultIn = Depends(model_body(FaultIn, "fault"))) -> Accepted:
    """Inject a fault line, as a scenario's timeline would: `power off h1`, `power on h1`, ..."""
    sim = _sim(ctx)
    try:
        sim.fault(body.line)
    except (ValueError, KeyError) as error:
        raise invalid(f"fault {body.line!r} was not understood",
                      [f"line: {first_line(error)}"]) from None
    if ctx.on_write is not None:
        ctx.on_write()
    return Accepted(message=f"fault injected: {body.line}")
