"""Plain sync Django views: they trigger and read runs without ``await``."""

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from durably import ValidationError

from .jobs import durably


@csrf_exempt  # a JSON API for other programs; a form would keep the CSRF check
@require_POST
def start_report(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
        run = durably.jobs.report.trigger(body)
    except (ValueError, ValidationError) as exc:  # bad JSON, or input the job refuses
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"id": run.id, "status": run.status.value}, status=202)


@require_GET
def report_status(request: HttpRequest, run_id: str) -> JsonResponse:
    run = durably.jobs.report.get_run(run_id)
    if run is None:
        return JsonResponse({"error": f"no report {run_id}"}, status=404)
    progress = run.progress
    return JsonResponse(
        {
            "id": run.id,
            "status": run.status.value,
            "progress": None
            if progress is None
            else {"current": progress.current, "total": progress.total},
            "output": run.output,
            "error": run.error,
        }
    )
