"""The `meddiffusion` command line: translate, segment, models, info, demo, bench, web.

Bad input ends with one line `error: ...` on stderr and a non-zero exit, no traceback unless --debug, and no output
file left behind (outputs are written all-or-nothing at the very end).
"""

from __future__ import annotations

import argparse
import signal
import sys
import unicodedata
from pathlib import Path

from . import __version__, tasks
from .bench import command as bench_command
from .errors import Cancelled, InputError
from .precision import AUTO_BATCH_SIZE
from .progress import CancelToken


class UsageError(Exception):
    """A command line argparse refuses: reported as one `error:` line like any other bad input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def one_line(text: str) -> str:
    """`text` as one printable line: a newline or escape sequence in a file name must not split or forge the line."""
    return "".join(ch if unicodedata.category(ch)[0] != "C" or ch == " " else ascii(ch)[1:-1] for ch in str(text))


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _batch_size(value: str) -> int | str:
    return value if value == AUTO_BATCH_SIZE else _positive(value)


def _add_run_options(parser: argparse.ArgumentParser, task: str) -> None:
    methods = [m.key for m in tasks.METHODS.values() if m.task == task and m.runnable]
    parser.add_argument("--method", choices=methods, help=f"method (default: the default model's, {methods[0]})")
    parser.add_argument("--model", help="model name (see `meddiffusion models list`) or a model folder")
    parser.add_argument("--steps", type=_positive, help="sampling steps (default: the model card's)")
    parser.add_argument("--samples", type=_positive, default=1,
                        help="samples to draw; K > 1 also writes an uncertainty/probability volume")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same output")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--batch-size", type=_batch_size, default=AUTO_BATCH_SIZE,
                        help="slices per batch, or auto (default): the model card's for the device, else 4 for small "
                             "networks and 1 for paper-scale ones on a CPU, 8 on a GPU (halved on GPU out-of-memory)")
    parser.add_argument("--precision", choices=tasks.PRECISIONS, default="auto",
                        help="auto: bf16 on GPUs that have it, fp16 on older GPUs; on CPUs bf16 where the CPU has "
                             "native bf16 (AMX, AVX512-BF16) and the model card allows it, else fp32; or force one")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the networks: the first batch pays the compile time (reported)")
    parser.add_argument("--cohort", type=Path, help="CSV with one case per row (see README); resumable, sharded under torchrun")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist already (refused otherwise)")
    parser.add_argument("--series", metavar="UID", help="the DICOM series to read when an input folder holds several")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meddiffusion", description="Fast diffusion models for MRI translation and CT segmentation.")
    parser.add_argument("--version", action="version", version=f"meddiffusion {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    translate = commands.add_parser("translate", help="synthesize missing MRI contrasts (CDM: T1+T2 -> T1c, T2-FLAIR; "
                                                      "EDTS-Trans: T1 -> T2)")
    translate.add_argument("--t1", type=Path, help="T1 (t1n) volume: the reference geometry of the outputs")
    translate.add_argument("--t2", type=Path, help="T2 (t2w) volume, for models that take one (CDM); resampled onto "
                                                   "the T1 grid if needed")
    translate.add_argument("--targets", help="comma-separated targets among the model's outputs (default: all of them)")
    translate.add_argument("--out-dir", type=Path, required=True,
                           help="writes <target>.nii.gz (and <target>_std.nii.gz when --samples > 1)")
    translate.add_argument("--per-volume-representation", action="store_true",
                           help="CDM: draw one target representation for the whole volume instead of one per slice")
    translate.add_argument("--save-mask", action="store_true",
                           help="EDTS-Trans: also write <target>_mask.nii.gz, the mask M (0..1): how much of each "
                                "voxel is the diffusion refiner's (the rest is the regression's)")
    translate.add_argument("--refine-strength", type=float, default=1.0, metavar="S",
                           help="EDTS-Trans: start the refiner from the regression noised to this fraction of its "
                                "sampling chain and run only that fraction of the steps (0 < S <= 1; default 1: from "
                                "pure noise, every step, as published)")
    translate.add_argument("--refine-every-slice", action="store_true",
                           help="EDTS-Trans: run the refiner on every slice, also where the mask marks (almost) "
                                "nothing; by default those slices get the regression alone")
    translate.add_argument("--register", action="store_true",
                           help="rigidly register T2 to T1 first (mutual information); the transform is reported and "
                                "written to registration.json next to the outputs; the input files are not changed")
    _add_run_options(translate, "translation")

    segment = commands.add_parser("segment", help="segment a CT volume (SDSeg, single-step latent diffusion)")
    segment.add_argument("--image", type=Path, help="CT volume in HU")
    segment.add_argument("--out", type=Path, help="label volume to write (.nii.gz, .nrrd; .seg.nrrd: Slicer's segmentation "
                                                  "file with named, coloured organs); with --cohort, a folder")
    segment.add_argument("--threshold", type=float, default=0.5,
                         help="probability threshold for the label of a one-segment model (a multi-organ model gives "
                              "each voxel its most probable organ)")
    segment.add_argument("--organs", help="organs to keep, comma-separated keys, names or label numbers "
                                          "(e.g. liver,spleen; default: all the model's; see `meddiffusion models show`)")
    segment.add_argument("--outside-body", action="store_true",
                         help="also label voxels outside the patient's body; by default everything outside the largest "
                              "connected region above -500 HU (an arm or the table beside the trunk) is background")
    segment.add_argument("--keep-far-islands", action="store_true",
                         help="keep labelled regions lying more than 40 mm along the body axis from the largest one; "
                              "by default they are background (a bladder or a muscle taken for an organ in the pelvis "
                              "or chest of a long scan); keep them for an organ far from the others, such as a kidney "
                              "transplanted into the pelvis")
    _add_run_options(segment, "segmentation")

    models = commands.add_parser("models", help="list or describe installed models")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_commands.add_parser("list", help="installed models (bundled and user)")
    show = models_commands.add_parser("show", help="a model's card")
    show.add_argument("name")

    info = commands.add_parser("info", help="check a volume and print its geometry and intensities")
    info.add_argument("path", type=Path)

    demo = commands.add_parser("demo", help="run the bundled models on the bundled sample cases")
    demo.add_argument("--out-dir", type=Path, default=Path("out/demo"))
    demo.add_argument("--device", default="auto")

    bench = commands.add_parser("bench", help="measure speed and memory: both methods at the bundled and the papers' "
                                              "scale, their pixel-space peers, precisions (see docs/benchmarks.md)")
    bench_command.add_arguments(bench)

    web = commands.add_parser("web", help="the browser app (trame-slicer): sample cases, upload, both tasks, downloads")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1: this machine only); any other needs the access token")
    web.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    web.add_argument("--token", help="access token to require (default with a non-local --host: a random one, printed)")
    web.add_argument("--max-upload-mb", type=float, default=512, help="upload size limit in MB")
    web.add_argument("--open", action="store_true", help="open the page in this machine's browser")
    web.add_argument("--device", default="auto", help="device of the runs: auto | cpu | cuda | cuda:N | mps")
    return parser


def _cancel_on_signals(cancel: CancelToken) -> list:
    """SIGTERM and SIGINT cancel the run (checked between sampling steps): the first one asks, a second one
    interrupts at once. SIGINT is handled even when the shell set it to ignored, as it does for background jobs."""
    def handler(signum, _frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()

    restore = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            restore.append((signum, signal.signal(signum, handler)))
        except (ValueError, OSError):  # not the main thread (e.g. an embedding application): cannot install
            pass
    return restore


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    cancel = CancelToken()
    restore = _cancel_on_signals(cancel)
    try:
        args = build_parser().parse_args(argv)
        with tasks.warnings_to(lambda message: print(f"warning: {one_line(message)}", file=sys.stderr)):
            return _dispatch(args, cancel)
    except (InputError, UsageError) as error:
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return tasks.EXIT_INPUT
    except (Cancelled, KeyboardInterrupt):
        if debug:
            raise
        print("error: cancelled; nothing was written", file=sys.stderr)
        return tasks.EXIT_CANCELLED
    except Exception as error:  # noqa: BLE001 - the last line of defence for a clinician-facing tool
        if debug:
            raise
        print(f"error: unexpected failure ({type(error).__name__}: {one_line(error)}); rerun with --debug and report it",
              file=sys.stderr)
        return tasks.EXIT_FAILURE
    finally:
        for signum, previous in restore:
            signal.signal(signum, previous)


def _dispatch(args: argparse.Namespace, cancel: CancelToken) -> int:
    from . import commands

    handler = {
        "translate": commands.run_command, "segment": commands.run_command,
        "models": commands.models_command, "info": commands.info_command, "demo": commands.demo_command,
        "web": _web_command, "bench": lambda parsed, _cancel: bench_command.run(parsed),
    }[args.command]
    return handler(args, cancel) or 0


def _web_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    """The web app (MedDiffusionWeb, beside this package in the source checkout; needs the web extra)."""
    try:
        from MedDiffusionWeb import server
    except ImportError:
        raise InputError("the web app (MedDiffusionWeb) is not installed here; run it from the source checkout "
                         "after `make venv`") from None
    try:
        return server.serve(host=args.host, port=args.port, token=args.token, max_upload_mb=args.max_upload_mb,
                            open_browser=args.open, device=args.device)
    except server.WebUnavailable as error:
        raise InputError(str(error)) from None


if __name__ == "__main__":
    sys.exit(main())
