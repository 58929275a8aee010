"""The task layer: one contract per task, shared by the CLI, cohort mode, the runner, the Slicer Logics, the
benchmarks and the evaluation. Each task owns its request (inputs, targets, options), the request's validation
against a model card, its output names and files, and the shape of its result. Torch-free to import."""

from ..errors import InputError
from ..precision import AUTO_BATCH_SIZE
from .methods import LABELS, METHODS, Method, label, labels, method_for
from .request import (
    EXIT_CANCELLED, EXIT_FAILURE, EXIT_INPUT, EXIT_OK, EXIT_SOME_FAILED, PRECISIONS, Request, RunSettings,
    check_files, check_not_overwriting, choose_model, execute, load, models_for, offered_methods, warnings_to,
)
from .segment import SegmentRequest, parse_organs, probability_path
from .translate import TranslateRequest, is_mask, is_spread, parse_targets, target_of

REQUESTS = {TranslateRequest.COMMAND: TranslateRequest, SegmentRequest.COMMAND: SegmentRequest}


def request_from_job(job) -> Request:
    """The request a runner job (a JSON object) describes."""
    if not isinstance(job, dict) or job.get("task") not in REQUESTS:
        raise InputError(f"a job must be a JSON object whose task is one of {', '.join(REQUESTS)}")
    return REQUESTS[job["task"]].from_job(job)


__all__ = [
    "AUTO_BATCH_SIZE",
    "EXIT_CANCELLED", "EXIT_FAILURE", "EXIT_INPUT", "EXIT_OK", "EXIT_SOME_FAILED", "LABELS", "METHODS", "Method", "PRECISIONS",
    "REQUESTS", "Request", "RunSettings", "SegmentRequest", "TranslateRequest", "check_not_overwriting", "check_files",
    "choose_model", "execute",
    "is_mask", "is_spread", "label", "labels", "load", "method_for", "models_for", "offered_methods", "parse_organs",
    "parse_targets",
    "probability_path", "request_from_job", "target_of", "warnings_to",
]
